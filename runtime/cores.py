"""How many intra-op threads a session gets when the caller names no count: one per physical core this
process may run on, within its container's CPU quota.

onnxruntime's own default (intra_op_num_threads 0) counts physical cores too, but also pins each of its worker
threads to one core while the calling thread stays free; when the OS puts the caller on a worker's core (after
file I/O, say) the two share that core while another idles. aectl's per-file loop compressed 64x64 photos 2.3x
slower that way and 768x512 ones 1.2x (benchmarks/threads_probe.py). An explicit count sets no affinity.
onnxruntime's count also ignores `taskset` and container quotas
(https://github.com/microsoft/onnxruntime/discussions/10916); this one does not.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP = Path("/sys/fs/cgroup")


def default_threads(sys_cpu: Path = _SYS_CPU, cgroup: Path = _CGROUP) -> int:
    """Physical cores among the CPUs this process may use, capped by a cgroup CPU quota; at least 1."""
    return max(1, min(physical_cores(usable_cpus(), sys_cpu), cpu_quota(cgroup) or math.inf))


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sys_cpu: Path = _SYS_CPU) -> int:
    """How many cores `cpus` span: SMT siblings share one core (Linux sysfs topology; elsewhere each logical
    CPU counts as a core)."""
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
            cores.add(str(cpu))
    return len(cores)


def cpu_quota(cgroup: Path = _CGROUP) -> int | None:
    """CPUs' worth of time a cgroup quota allows (docker --cpus, Kubernetes limits), rounded up; None when
    unlimited or unknown. cgroup v2's cpu.max ("QUOTA PERIOD" or "max PERIOD"), else v1's cfs files."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 writes -1 for no quota
        return None
    return math.ceil(quota_us / period_us)
