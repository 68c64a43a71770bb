"""A run's folder: made and locked while the run trains, and its validation log (`log.jsonl`), appended as the run
goes and cut back to the checkpoint's step on resume."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from aectl.runtime.errors import AectlError
from aectl.runtime.outputs import atomic_write, make_folders, remove_empty, write_error
from aectl.train.checkpoint import CHECKPOINT

if TYPE_CHECKING:
    from aectl.train.distributed import Distributed

RUN_FILES = (CHECKPOINT, "run.json", "log.jsonl")  # what a run writes into its folder


@contextlib.contextmanager
def run_folder(out: Path, ddp: Distributed):
    """The run folder, made if needed and locked while the run trains, so that a second `train` on it (a resume
    while the run still trains) stops in one line instead of interleaving logs and checkpoints (POSIX flock;
    elsewhere no lock). A folder made here and left empty (the photos failed to load) is removed again. Rank 0
    holds the lock for all ranks and tells them whether it got it (they waited 35 s for it in the next collective
    call, then failed in torch's words)."""
    if not ddp.is_main:
        problem = ddp.share()
        if problem:
            raise AectlError(problem)
        yield
        return
    made: list[Path] = []
    fd, problem, locked = None, None, False
    try:
        try:
            make_folders(out, made)
            fd = os.open(out, os.O_RDONLY)
            locked = _lock(fd)
            if not locked:
                problem = f"{out} is being trained by another process; wait for it to finish or stop it"
        except OSError as exc:
            problem = str(write_error(out, exc))
        problem = ddp.share(problem)
        if problem:
            raise AectlError(problem)
        yield
    finally:
        if locked or fd is None:  # never a folder another process holds the lock of (it made it meanwhile)
            remove_empty(made)  # a failed run's folders, its parents' too, while the lock is still held
        if fd is not None:
            os.close(fd)  # releases the lock


def _lock(fd: int) -> bool:
    """An exclusive lock on an open folder: False if another process holds one (True where flock is missing)."""
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except BlockingIOError:
        return False
    return True


def append_log(path: Path, metrics: dict) -> None:
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
    except OSError as exc:  # "[Errno 27] File too large" named no file
        raise write_error(path, exc) from None


def truncate_log(path: Path, step: int) -> None:
    """Drop validation lines written after the checkpoint we resume from (a run killed between saves), and any
    line that is not a validation record (a kill during the append cut one short; it blocked --resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in kept).encode(), force=True)
