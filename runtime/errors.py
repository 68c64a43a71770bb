"""The one exception type users see: the CLI prints it as a single `error: ...` line."""
import os
from pathlib import Path


class AectlError(Exception):
    """An error caused by the input, the environment or a bundle, with a message meant for the user."""


# Signals that asked this process to stop (SIGINT/SIGTERM), recorded by whoever handled them, so the CLI can
# exit with the conventional status (130 for Ctrl-C, 143 for SIGTERM) after everything has been cleaned up.
received_signals: list[int] = []


def write_error(path, exc: OSError) -> AectlError:
    """The one-line error for an OSError while writing `path`: names a file standing where a folder must be,
    otherwise the OS's reason, never the temporary file's name."""
    blocker = _nearest_existing(Path(path).parent)
    if blocker is not None and not blocker.is_dir():
        return AectlError(f"cannot write {path}: {blocker} is a file, not a folder")
    return AectlError(f"cannot write {path}: {exc.strerror or exc}")


def check_writable_folder(folder) -> None:
    """Refuse a results folder that cannot be made or written into, before minutes of measuring."""
    existing = _nearest_existing(Path(folder))
    if existing is None:
        return
    if not existing.is_dir():
        raise AectlError(f"cannot write into {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AectlError(f"cannot write into {folder}: {existing} is not writable")


def _nearest_existing(path: Path) -> Path | None:
    """`path` or its closest ancestor that exists: what decides whether a folder can be made there."""
    return next((p for p in (path, *path.parents) if p.exists()), None)
