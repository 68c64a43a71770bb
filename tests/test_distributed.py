"""`torchrun --nproc_per_node 2 aectl train ...` on CPU (gloo): replicas stay identical, the run follows a
single-process run with the same global batch, and a checkpoint resumes under a different world size.

Tolerance: validation loss within 1e-3 relative of the single-process run (the two differ only in the order of
float reductions; Adam can turn that into weight differences of a few learning rates on near-zero gradients)."""
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from conftest import aectl_exe

ARGS = ["train", "--preset", "seed-conv", "--batch-size", "8", "--seed", "2", "--fit-steps", "3", "--threads", "1",
        "--no-progress"]
TOLERANCE = 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Loaded into every process of a torchrun (PYTHONPATH): reports how many DDP wrappers are still alive when a
# rank leaves the process group. One left alive is freed during interpreter shutdown, after the group, and
# gloo's teardown then aborts the process now and then ("terminate called without an active exception").
TEARDOWN_PROBE = """
import gc, sys
import torch
import torch.distributed as dist
_destroy = dist.destroy_process_group
def destroy_process_group(*args, **kwargs):
    alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    print(f"DDP wrappers alive at destroy_process_group: {alive}", file=sys.stderr)
    return _destroy(*args, **kwargs)
dist.destroy_process_group = destroy_process_group
"""


def _torchrun(probe_dir, nproc: int, *args):
    (probe_dir / "sitecustomize.py").write_text(TEARDOWN_PROBE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), aectl_exe(), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(probe_dir), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = re.findall(r"DDP wrappers alive at destroy_process_group: (\d+)", proc.stderr)
    assert reports == ["0"] * nproc, proc.stderr[-3000:]
    return proc


def _single(*args):
    proc = subprocess.run([aectl_exe(), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _ckpt(run):
    return torch.load(run / "last.pt", weights_only=False)


def _val_loss(ckpt):
    return [h["val_loss"] for h in ckpt["history"] if not h.get("fitted")][-1]


@pytest.fixture(scope="module")
def single_run(photos, tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    _single(*ARGS, "--data", photos, "--out", run, "--steps", "8")
    return run


def test_two_processes_hold_identical_weights_and_match_one_process(photos, tmp_path, single_run):
    run = tmp_path / "ddp"
    _torchrun(tmp_path, 2, *ARGS, "--data", photos, "--out", run, "--steps", "8")
    ddp = _ckpt(run)
    assert ddp["run"]["world_size"] == 2
    digests = ddp["run"]["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "replicas drifted"
    assert list(run.iterdir()) and sorted(p.name for p in run.iterdir()) == ["last.pt", "log.jsonl", "run.json"]
    assert _val_loss(ddp) == pytest.approx(_val_loss(_ckpt(single_run)), rel=TOLERANCE)


def test_resume_with_a_different_world_size(photos, tmp_path, single_run):
    run = tmp_path / "mixed"
    _torchrun(tmp_path, 2, *ARGS, "--data", photos, "--out", run, "--steps", "4")
    resumed = _single(*ARGS, "--data", photos, "--out", run, "--steps", "8", "--resume")
    # Not begun again: a restart from step 0 also ends near the single run's loss.
    assert f"resumed {run} at step 4" in resumed.stdout + resumed.stderr, resumed.stdout
    mixed = _ckpt(run)
    assert mixed["step"] == 8 and mixed["run"]["world_size"] == 1
    assert _val_loss(mixed) == pytest.approx(_val_loss(_ckpt(single_run)), rel=TOLERANCE)


def test_a_locked_run_folder_stops_every_rank_in_one_line(photos, tmp_path):
    """Rank 0 locks the run folder for all ranks. When another `train` held it, rank 0 stopped in one line and the
    other ranks waited for it in their first collective call, then failed in torch's words (35 s here). Rank 0
    now tells them, and each stops with the same line."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running `train` holds
    try:
        # torchrun checks its ranks every 0.1 s and terminates the others once one has failed: rank 1, slow to
        # print after the broadcast on a loaded machine, would say "terminated" instead. 2 s leaves it time.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--monitor-interval", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), aectl_exe(), *ARGS, "--data",
               str(photos), "--out", str(run), "--steps", "4"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        os.close(fd)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0
    assert lines == [f"error: {run} is being trained by another process; wait for it to finish or stop it"] * 2, \
        proc.stderr[-3000:]
