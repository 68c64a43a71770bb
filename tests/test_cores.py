"""aectl's default intra-op thread count (runtime/cores.py): physical cores among the CPUs this process may use,
within its cgroup's CPU quota, read from real sysfs/cgroup file layouts."""
import os
import subprocess
import sys

import pytest

from aectl.runtime.cores import cpu_quota, default_threads, physical_cores


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def smt_machine(tmp_path):
    """sysfs of 4 cores, two of them with an SMT sibling: cpu0+cpu4, cpu1+cpu5, cpu2, cpu3."""
    for cpu, siblings in {0: "0,4", 1: "1,5", 2: "2", 3: "3", 4: "0,4", 5: "1,5"}.items():
        write(tmp_path / "sys" / f"cpu{cpu}" / "topology" / "core_cpus_list", siblings + "\n")
    return tmp_path


def test_smt_siblings_count_as_one_core(smt_machine, tmp_path):
    sys_cpu = smt_machine / "sys"
    assert physical_cores({0, 1, 2, 3, 4, 5}, sys_cpu) == 4
    assert physical_cores({0, 4}, sys_cpu) == 1
    write(sys_cpu / "cpu6" / "topology" / "thread_siblings_list", "6-7\n")  # kernels before 5.7
    write(sys_cpu / "cpu7" / "topology" / "thread_siblings_list", "6-7\n")
    assert physical_cores({6, 7}, sys_cpu) == 1
    assert physical_cores({7, 8}, sys_cpu) is None  # cpu8 has no topology: unknown, onnxruntime chooses
    assert default_threads({8}, sys_cpu, tmp_path / "no-cgroup", tmp_path / "no-proc") is None


@pytest.mark.parametrize("v2, v1, expected", [
    ("200000 100000\n", None, 2), ("150000 100000\n", None, 2), ("50000 100000\n", None, 1),
    ("max 100000\n", None, None), (None, ("-1", "100000"), None), (None, ("300000", "100000"), 3),
    (None, None, None), ("garbage\n", None, None)])
def test_cgroup_quota_at_the_root(tmp_path, v2, v1, expected):
    """What a container sees: its own group mounted at /sys/fs/cgroup (v2 cpu.max, or v1's cfs files)."""
    if v2 is not None:
        write(tmp_path / "cpu.max", v2)
    if v1 is not None:
        write(tmp_path / "cpu" / "cpu.cfs_quota_us", v1[0] + "\n")
        write(tmp_path / "cpu" / "cpu.cfs_period_us", v1[1] + "\n")
    assert cpu_quota(tmp_path, tmp_path / "no-proc") == expected


def test_cgroup_v2_quota_of_the_process_group_and_its_parents(tmp_path):
    """A host process in a systemd slice: /proc/self/cgroup names its group; the tightest quota on the way up
    counts, whether it is the group's own or a parent's."""
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "max 100000\n")
    write(root / "system.slice" / "cpu.max", "300000 100000\n")
    write(root / "system.slice" / "job.service" / "cpu.max", "max 100000\n")
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/system.slice/job.service\n")
    assert cpu_quota(root, proc) == 3
    write(root / "system.slice" / "job.service" / "cpu.max", "100000 100000\n")
    assert cpu_quota(root, proc) == 1


def test_quota_caps_the_default(smt_machine, tmp_path):
    sys_cpu, proc = smt_machine / "sys", tmp_path / "no-proc"
    assert default_threads({0, 1, 2, 3, 4, 5}, sys_cpu, tmp_path / "none", proc) == 4
    write(tmp_path / "cgroup" / "cpu.max", "200000 100000\n")
    assert default_threads({0, 1, 2, 3, 4, 5}, sys_cpu, tmp_path / "cgroup", proc) == 2
    assert default_threads({2}, sys_cpu, tmp_path / "cgroup", proc) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_default_follows_the_affinity_mask():
    """taskset (or a cpuset) limiting the process to one CPU gives one thread; onnxruntime's own default ignores it.
    Where the default is one thread already, one CPU would change nothing to see."""
    if (default_threads() or 0) <= 1:
        pytest.skip(f"the default here is {default_threads()} thread(s) without a mask: nothing to tell apart")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from aectl.runtime.cores import default_threads; print(default_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
