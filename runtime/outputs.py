"""Where outputs are written: never a partial file (a temporary name, then a rename), never a name that is
taken replaced without --force (checked before any work, and again by the rename itself), never a folder left
behind by a write that failed; and one-line messages for what the file system refuses."""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from aectl.runtime.errors import AectlError, exists_error, option


def check_output_file(path: Path, force: bool) -> None:
    """Refuse an output file's name before any work: taken by a folder (--force would fail on it: "Is a
    directory"), or, without force, by anything, a dangling symlink included (it was replaced without --force)."""
    try:
        is_dir = path.is_dir()
    except OSError as exc:  # its folder not searchable: said as the input's "Permission denied"
        raise write_error(path, exc) from None
    if is_dir:
        raise AectlError(f"{path} is a folder; {option('force', True)} replaces files only: move it, or write "
                         "elsewhere")
    if os.path.lexists(path) and not force:
        raise exists_error(path)


def write_error(path, exc: OSError) -> AectlError:
    """The one-line error for an OSError while writing `path`: names a file standing where a folder must be,
    otherwise the OS's reason, never the temporary file's name."""
    blocker = _nearest_existing(Path(path).parent)
    if blocker is not None and not blocker.is_dir():
        return AectlError(f"cannot write {path}: {blocker} is a file, not a folder")
    return AectlError(f"cannot write {path}: {exc.strerror or exc}")


def check_writable_folder(folder) -> None:
    """Refuse a results folder that cannot be made or written into, before minutes of measuring."""
    for part in (Path(folder), *Path(folder).parents):  # a symlink to nothing: mkdir fails there, "File exists"
        if os.path.islink(part) and not part.exists():
            raise AectlError(f"cannot write into {folder}: {part} is a symlink to a missing folder")
    existing = _nearest_existing(Path(folder))
    if existing is None:
        return
    if not existing.is_dir():
        raise AectlError(f"cannot write into {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AectlError(f"cannot write into {folder}: {existing} is not writable")
    try:  # what access() cannot tell: /proc takes no files, nor does a working folder deleted meanwhile
        with tempfile.TemporaryFile(dir=existing, prefix=".aectl-probe-"):
            pass
    except OSError as exc:
        raise AectlError(f"cannot write into {folder}: {exc.strerror or exc}") from None


def _nearest_existing(path: Path) -> Path | None:
    """`path` or its closest ancestor that exists: what decides whether a folder can be made there."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def _rename_without_replacing(tmp: str, path: Path) -> None:
    """Give `tmp` the name `path` unless something took that name since it was checked: two aectl runs writing
    the same outputs both replaced each other's files without --force. link() fails on a taken name where
    rename() replaces it; a file system without hard links falls back to a second check and rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise exists_error(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def hidden_sibling(path: Path, tag: str = "") -> Path:
    """A fresh hidden name beside `path` for a temporary file or folder (`.NAME[.tag].RANDOM`). A name of up to
    255 bytes must leave room for the bytes added here (long names failed "File name too long"): cut in bytes,
    as the file system counts them (a cut multi-byte character stays valid bytes)."""
    stem = os.fsdecode(os.fsencode(path.name)[:200])
    return path.parent / f".{stem}{tag}.{secrets.token_hex(8)}"


def make_folders(path: Path, made: list[Path]) -> None:
    """mkdir -p (as pathlib's: the deepest first, a parent only when it is missing) that appends to `made`, as
    each is made, the folders this call itself created: never one that existed before (a `..` in the path hid
    those from an exists() check, and a pre-existing empty folder was removed), nor one another process made
    meanwhile (mkdir fails with EEXIST here). remove_empty(made) undoes it."""
    path = Path(path)
    try:
        created = _mkdir(path)
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_folders(path.parent, made)
        # Once: a parent that is there yet takes no folder (/proc, a working folder deleted meanwhile) failed
        # the same way again, forever (a RecursionError, an internal error after eval's measuring).
        created = _mkdir(path)
    if created:
        made.append(path)


def _mkdir(path: Path) -> bool:
    """Whether os.mkdir made `path`: False where a folder is there already (made meanwhile, perhaps)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    return True


def remove_empty(folders: list[Path]) -> None:
    """A failed write's new folders (make_folders) removed again, deepest first, as if never asked for; the first
    that holds anything (another writer's files) stops it."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None], force: bool = False) -> None:
    """Write next to the destination, then rename: an interruption never leaves a partial file. `data` is the
    bytes, or a function that writes them to the open file (image_io.write_image's Pillow save)."""
    write = data if callable(data) else (lambda fh: fh.write(data))
    _write_together({Path(path): write}, force)


def atomic_write_files(files: dict[Path, bytes], force: bool = False) -> None:
    """Several files that make one output (eval's report): every one is written complete under a temporary name
    before any is renamed, so a full disk or an error while writing leaves the older files as they were (it left
    an older run's rd.png beside this run's results.json). The renames themselves are one by one: a file another
    writer makes meanwhile, or an interrupt between two renames, can still leave a mix."""
    _write_together({Path(path): (lambda fh, data=data: fh.write(data)) for path, data in files.items()}, force)


_FOLDER_TRIES = 3  # how often a write makes its folder again after another writer's failure removed it


def _write_together(writers: dict[Path, Callable], force: bool) -> None:
    """Each temporary file's name is set before the file is created (exclusively, like tempfile.mkstemp, which
    hands the name over only after creating it: a Ctrl-C or SIGTERM raised in between left the file behind), so
    the cleanup below always knows it."""
    for path in writers:
        if os.path.lexists(path) and not force:  # a dangling symlink too, as cp refuses to write through one
            raise exists_error(path)
    temporaries: list[str] = []
    staged: list[tuple[str, Path]] = []
    made: list[Path] = []  # folders made for the files, removed again if the write fails
    path = None
    try:
        for path, write in writers.items():
            make_folders(path.parent, made)
            folder_tries = 1
            while True:
                temporaries.append(f"{hidden_sibling(path)}.tmp")
                try:
                    fd = os.open(temporaries[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
                    break
                except FileExistsError:  # another writer's file: not ours to remove
                    temporaries.pop()
                except FileNotFoundError:  # the folder was removed meanwhile by another write that made it and
                    temporaries.pop()      # failed (remove_empty below): made again
                    if folder_tries == _FOLDER_TRIES:
                        raise
                    folder_tries += 1
                    make_folders(path.parent, made)
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            staged.append((temporaries[-1], path))
        for tmp, path in staged:
            with contextlib.suppress(FileNotFoundError):  # a file replaced keeps its mode, as Pillow's save over
                replaced = os.lstat(path)                     # it would (a fixed 0644 ignored a umask of 077); a
                if stat.S_ISREG(replaced.st_mode):            # symlink replaced gives no mode of its own
                    os.chmod(tmp, stat.S_IMODE(replaced.st_mode))
            if force:
                os.replace(tmp, path)
            else:
                _rename_without_replacing(tmp, path)
    except BaseException as exc:
        for tmp in temporaries:
            if os.path.exists(tmp):
                os.unlink(tmp)
        remove_empty(made)  # `-o new/a/b` whose first file failed left new/a/b/ behind, empty
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
