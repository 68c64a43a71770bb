"""aectl's default intra-op thread count (runtime/cores.py): physical cores among the CPUs this process may use,
within a cgroup CPU quota, read from real sysfs/cgroup file layouts."""
import os
import subprocess
import sys

import pytest

from aectl.runtime.cores import cpu_quota, default_threads, physical_cores


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_smt_siblings_count_as_one_core(tmp_path):
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3", 4: "4"}.items():
        write(tmp_path / f"cpu{cpu}" / "topology" / "core_cpus_list", siblings + "\n")
    assert physical_cores({0, 1, 2, 3, 4}, tmp_path) == 3
    assert physical_cores({0, 2}, tmp_path) == 1
    write(tmp_path / "cpu5" / "topology" / "thread_siblings_list", "5-6\n")  # kernels before 5.7
    write(tmp_path / "cpu6" / "topology" / "thread_siblings_list", "5-6\n")
    assert physical_cores({5, 6}, tmp_path) == 1
    assert physical_cores({7, 8}, tmp_path) == 2  # no topology: each logical CPU is a core


@pytest.mark.parametrize("v2, v1, expected", [
    ("200000 100000\n", None, 2), ("150000 100000\n", None, 2), ("50000 100000\n", None, 1),
    ("max 100000\n", None, None), (None, ("-1", "100000"), None), (None, ("300000", "100000"), 3),
    (None, None, None), ("garbage\n", None, None)])
def test_cgroup_quota(tmp_path, v2, v1, expected):
    if v2 is not None:
        write(tmp_path / "cpu.max", v2)
    if v1 is not None:
        write(tmp_path / "cpu" / "cpu.cfs_quota_us", v1[0] + "\n")
        write(tmp_path / "cpu" / "cpu.cfs_period_us", v1[1] + "\n")
    assert cpu_quota(tmp_path) == expected


def test_quota_caps_the_default(tmp_path):
    write(tmp_path / "cgroup" / "cpu.max", "100000 100000\n")
    assert default_threads(cgroup=tmp_path / "cgroup") == 1
    assert 1 <= default_threads() <= os.cpu_count()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_default_follows_the_affinity_mask():
    """taskset (or a cpuset) limiting the process to one CPU gives one thread; onnxruntime's own default ignores it."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from aectl.runtime.cores import default_threads; print(default_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
