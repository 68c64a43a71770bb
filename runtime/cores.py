"""How many intra-op threads a session gets when the caller names no count: one per physical core this
process may run on, within its cgroup's CPU quota.

onnxruntime's own default (intra_op_num_threads 0) counts physical cores too, but also pins each of its worker
threads to one core while the calling thread stays free; when the OS puts the caller on a worker's core (after
file I/O, say) the two share that core while another idles. aectl's per-file loop compressed 64x64 crops 2.4x
slower that way and 768x512 photos 1.14x (benchmarks/threads_probe.py). An explicit count sets no affinity.
onnxruntime's count also ignores `taskset` and container quotas
(https://github.com/microsoft/onnxruntime/discussions/10916); this one does not. Where the core topology is
unknown (no Linux sysfs), the choice stays with onnxruntime, as before.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def default_threads(cpus: set[int] | None = None, sys_cpu: Path = _SYS_CPU, cgroup: Path = _CGROUP,
                    proc_cgroup: Path = _PROC_CGROUP) -> int | None:
    """Physical cores among `cpus` (default: the CPUs this process may use), capped by a cgroup CPU quota and at
    least 1; None where the topology is unknown."""
    cores = physical_cores(usable_cpus() if cpus is None else cpus, sys_cpu)
    if cores is None:
        return None
    return max(1, min(cores, cpu_quota(cgroup, proc_cgroup) or math.inf))


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sys_cpu: Path = _SYS_CPU) -> int | None:
    """How many cores `cpus` span, SMT siblings sharing one (Linux sysfs topology); None without it."""
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        for name in ("core_cpus_list", "thread_siblings_list"):  # the second on kernels before 5.7
            try:
                cores.add((topology / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return None
    return len(cores) or None


def cpu_quota(cgroup: Path = _CGROUP, proc_cgroup: Path = _PROC_CGROUP) -> int | None:
    """CPUs' worth of time the process's cgroup allows (docker --cpus, Kubernetes limits, systemd CPUQuota),
    rounded up; None when unlimited or unknown. cgroup v2: the smallest cpu.max ("QUOTA PERIOD" or "max PERIOD")
    of the process's group (from /proc/self/cgroup) and its ancestors; else cgroup v1's cfs files at the
    mount's root, which is the process's own group inside a container."""
    group = cgroup / _v2_group(proc_cgroup).strip("/")
    quotas = []
    while True:
        try:
            fields = (group / "cpu.max").read_text().split()
        except OSError:
            fields = []
        if len(fields) == 2:
            quotas.append(_quota(*fields))
        if group == cgroup or cgroup not in group.parents:
            break
        group = group.parent
    if not any(quotas):
        try:
            quotas.append(_quota((cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip(),
                                 (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()))
        except OSError:
            pass
    quotas = [q for q in quotas if q]
    return min(quotas) if quotas else None


def _v2_group(proc_cgroup: Path) -> str:
    """The process's cgroup v2 path ("0::/system.slice/x.service"), or the root where there is none."""
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip()
    except OSError:
        pass
    return "/"


def _quota(quota: str, period: str) -> int | None:
    """ceil(quota / period), or None for no quota: "max" (v2), -1 (v1), or anything unreadable."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return math.ceil(quota_us / period_us)
