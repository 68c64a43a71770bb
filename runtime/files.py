"""Many files in, many files out: input discovery (recursive, tree mirrored), output naming, and a per-file
result so one bad file is reported and skipped while the rest completes."""
from __future__ import annotations

import errno
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from aectl.runtime import container
from aectl.runtime.errors import AectlError
from aectl.runtime.outputs import atomic_write, check_output_file

AEC_SUFFIX = ".aec"
# An input "-" is standard input, -o - standard output: one file through a pipe, as in gzip. Told apart by
# identity: Path("./-"), a file called "-", compares equal to it.
STDIO = Path("-")
# What a folder walk picks up (a file named on the command line is read whatever its suffix): the photo formats
# Pillow reads, AVIF, JPEG 2000 and QOI among them (a folder of .avif or .jfif photos was "no image files"), and
# HEIC/HEIF through pillow-heif (`aectl[heif]`; without it, each such file says how to install it).
IMAGE_SUFFIXES = {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".webp", ".avif",
                  ".heic", ".heif", ".jp2", ".j2k", ".qoi", ".ppm", ".pgm", ".pbm", ".pnm", ".gif", ".tga"}


@dataclass
class Job:
    source: Path
    target: Path
    error: str | None = None  # known before any work (a folder of the walk that could not be read)


@dataclass
class Result:
    source: str
    target: str | None  # None for a folder that could not be read
    ok: bool
    error: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    bpp: float | None = None
    ratio: float | None = None
    quality: int | None = None      # the bundle's quality (architecture.quality), or the one a budget chose
    seconds: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def is_stdio(path) -> bool:
    return path is STDIO


def label(path: Path, stream: str) -> str:
    """How a job's end is named in reports: its path, or stdin/stdout."""
    return stream if is_stdio(path) else str(path)


def write_stdout(data: bytes) -> None:
    """A whole output at once to standard output (made in memory first, so a failure writes nothing). Under
    PYTHONUNBUFFERED, stdout's buffer is a raw FileIO whose write() may take only part of the data (a pipe's 64 KB,
    a file-size limit): it is called until all is written, so a reader that left or a full disk is an error, not
    a cut-off file reported as written."""
    out = sys.stdout.buffer
    rest = memoryview(data)
    try:
        while rest:
            rest = rest[out.write(rest) or 0:]
        out.flush()
    except BrokenPipeError:  # the reader left (`| head`): its choice, not this file's failure
        raise
    except OSError as exc:
        raise AectlError(f"cannot write to standard output: {exc.strerror or exc}") from None


def plan_jobs(inputs: Iterable[Path], out: Path | None, suffixes: set[str], new_suffix: str,
              out_is_folder: bool = False) -> list[Job]:
    """Files as given; directories walked recursively for `suffixes`, their tree mirrored under `out`.

    A single file with `out` ending in new_suffix is written there (unless `out_is_folder`: -o written with a
    trailing slash); otherwise `out` is a directory (default: next to each input).
    """
    inputs = list(inputs)
    jobs = []
    for src in inputs:
        if is_folder(src):
            found, unreadable, _ = walk_folder(src, suffixes)  # hidden files taken
            for f in found:
                rel = f.relative_to(src)
                base = (out / src.resolve().name if len(inputs) > 1 else out) if out else src  # '..' has no name
                jobs.append(Job(f, (base / rel).with_suffix(new_suffix)))
            jobs += [Job(folder, folder, error=f"cannot read folder: {reason}") for folder, reason in unreadable]
        else:
            if out is not None and len(inputs) == 1 and out.suffix.lower() == new_suffix and not out_is_folder and \
                    not is_folder(out):
                target = out
            else:
                target = (out / src.name if out else src).with_suffix(new_suffix)
            jobs.append(Job(src, target))
    return _one_job_per_target(jobs)


def is_folder(path: Path) -> bool:
    """Whether `path` is a folder; one that cannot be looked at (its folder not searchable) is taken as a file,
    and fails as one with its reason when it is read or written, while the batch goes on (the error ended the
    whole batch, or named an output as if it were an input). The standard stream `-` is never one, whatever
    the working folder holds (a folder named "-" there made `decompress - -o s.jpg` refuse its -o)."""
    if is_stdio(path):
        return False
    try:
        return path.is_dir()
    except OSError:
        return False


class Walk(NamedTuple):
    found: list[Path]                     # the files taken, sorted
    unreadable: list[tuple[Path, str]]    # the folders that could not be read, with why
    hidden: list[Path]                    # hidden files (of the suffixes) and folders passed over, if asked to


def walk_folder(folder: Path, suffixes: set[str], skip_hidden: bool = False) -> Walk:
    """The files under `folder` with one of `suffixes`, and the folders that could not be read with why: rglob
    skipped an unreadable folder without a word (exit 0, its photos never compressed), and a path past PATH_MAX
    ended the batch. Folder symlinks are not followed, as before; FIFOs and sockets are skipped. A symlink that
    leads nowhere is kept, to fail as that file (it was skipped without a word), as when named.

    `skip_hidden` passes over hidden files and folders (`is_hidden`), for the commands that read a folder as a
    data set (train, export's calibration, eval, bench); compress and decompress take them, as gzip -r and zip
    -r do: a folder compressed and then deleted must not lose the files that were not seen."""
    found, unreadable, hidden = [], [], []

    def note(exc: OSError) -> None:
        unreadable.append((Path(exc.filename) if exc.filename else folder, exc.strerror or str(exc)))

    for root, folders, names in os.walk(folder, onerror=note):
        if skip_hidden:
            hidden += [Path(root, name) for name in folders if is_hidden(name)]
            folders[:] = [name for name in folders if not is_hidden(name)]  # not walked into at all
        for name in names:
            if _wanted(Path(root, name), suffixes):
                (hidden if skip_hidden and is_hidden(name) else found).append(Path(root, name))
    return Walk(sorted(found), sorted(unreadable), sorted(hidden))


def files_in(folder: Path, suffixes: set[str]) -> list[Path]:
    """The files directly in `folder` (eval's --data, bench's --images) that a walk would take, sorted, hidden
    ones passed over as for a data set: a FIFO there hung eval, which opened it, and bench passed over a symlink
    that leads nowhere without a word."""
    return sorted(path for path in folder.iterdir() if not is_hidden(path.name) and _wanted(path, suffixes))


def _wanted(path: Path, suffixes: set[str]) -> bool:
    """Whether a walk takes a name it found: a file with one of `suffixes`; FIFOs and sockets are passed over,
    a symlink that leads nowhere is kept, to fail as that file."""
    if path.suffix.lower() not in suffixes:
        return False
    try:
        return path.is_file() or broken_link(path) is not None
    except OSError:  # its own reason comes when it is opened, as that file's error
        return True


def is_hidden(name: str) -> bool:
    """Whether a name found in a folder is hidden (starts with a dot). A macOS copy leaves `._photo.png` beside
    each photo, AppleDouble metadata that no image reader opens, and viewers keep `.thumbnails/`: a data set's
    walk that took them stopped train at the first and trained on the second."""
    return name.startswith(".")


def broken_link(path: Path) -> str | None:
    """Why a symlink at `path` leads to no file (to a missing one, or round a loop), or None."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "a symlink to a missing file" if path.is_symlink() else None
    except OSError as exc:
        return "a symlink loop" if exc.errno == errno.ELOOP else None
    return None


def _one_job_per_target(jobs: list[Job]) -> list[Job]:
    """An input named twice runs once. Two inputs that map to one output (photo.jpg and photo.png ->
    photo.aec) would overwrite each other in the same run, --force or not: refused before any work."""
    seen: dict[str, Path] = {}
    unique = []
    for job in jobs:
        if job.error:
            unique.append(job)
            continue
        key = os.path.realpath(job.target)  # (Path.resolve raised RuntimeError on a symlink loop)
        if key not in seen:
            seen[key] = job.source
            unique.append(job)
        elif os.path.realpath(seen[key]) != os.path.realpath(job.source):
            raise AectlError(f"{seen[key]} and {job.source} would both be written to {job.target}; "
                             "rename one or give them different folders")
    return unique


def run_jobs(jobs: list[Job], work: Callable[[Job], tuple[bytes | None, dict]], force: bool,
             write: Callable[[Job, bytes | object], None] | None = None,
             on_result: Callable[[Result], None] | None = None, fail_fast: bool = False,
             check_source: Callable[[Path], None] | None = None) -> list[Result]:
    """Run `work` per job, writing each output atomically; errors become failed results, not exceptions.
    `check_source` refuses an input of the wrong kind before the output checks, so that the error names what is
    wrong (`decompress photo.png` said "output would overwrite the input"). fail_fast stops after the first
    failure."""
    results = []
    for job in jobs:
        start = time.perf_counter()
        names = label(job.source, "stdin"), None if job.error else label(job.target, "stdout")  # no output
        try:
            if job.error:
                raise AectlError(job.error)
            check_job(job, force, check_source)
            output, info = work(job)
            if write is not None:
                write(job, output)
            elif is_stdio(job.target):
                write_stdout(output)
            else:
                atomic_write(job.target, output, force=force)
            result = Result(*names, True, seconds=time.perf_counter() - start, **info)
        except AectlError as exc:
            result = Result(*names, False, error=str(exc))
        except BrokenPipeError:
            raise
        except OSError as exc:  # reading the input, say: the file fails, the batch goes on
            result = Result(*names, False, error=exc.strerror or str(exc))
        except MemoryError:
            result = Result(*names, False, error="out of memory")
        results.append(result)
        if on_result:
            on_result(result)
        if fail_fast and not result.ok:
            break
    return results


def check_job(job: Job, force: bool, check_source: Callable[[Path], None] | None = None) -> None:
    """Refuse a job before any work: its input not a regular file (a FIFO would block), of the wrong kind, the
    input itself as output, or an output there already without `force`."""
    if not is_stdio(job.source):
        if not job.source.is_file():  # ("no such file" for a dangling symlink read as if it were not there)
            raise AectlError(broken_link(job.source) or ("not a regular file" if job.source.exists() else
                                                         "no such file"))
        if check_source is not None:
            check_source(job.source)
    if is_stdio(job.target):
        return
    if not is_stdio(job.source) and os.path.realpath(job.target) == os.path.realpath(job.source):
        raise AectlError("output would overwrite the input")
    check_output_file(job.target, force)


def compress_info(data: bytes, width: int, height: int, channels: int, bit_depth: int) -> dict:
    raw = width * height * channels * bit_depth // 8
    return {"bytes": len(data), "width": width, "height": height, "bpp": 8 * len(data) / (width * height),
            "ratio": raw / len(data)}


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(len(container.MAGIC))


def require_aec(path: Path) -> None:
    """Refuse a file that is not an .aec file, from its first bytes."""
    container.check_magic(_head(path))


def refuse_aec(path: Path) -> None:
    """Refuse an .aec file as an image to compress (`compress photo.aec` said "output would overwrite the input")."""
    if _head(path) == container.MAGIC:
        raise AectlError("already an .aec file (decompress it first)")


def read_aec(path: Path) -> bytes:
    """An .aec file's bytes, refused from its header and size when they disagree, before the rest is read: a file
    of gigabytes behind a valid header was read whole first (2 GB: 2.15 GB of memory, 4.4 s, to say
    "unexpected bytes")."""
    with open(path, "rb") as fh:
        head = fh.read(container.HEAD_BYTES)
        if len(head) == container.HEAD_BYTES:  # shorter: a file that is growing; parse judges what is read
            container.check_size(head, os.fstat(fh.fileno()).st_size)
        fh.seek(0)
        return fh.read()  # one copy in memory (head + rest made a second)


def read_header(path: Path, max_pixels: int = container.DEFAULT_MAX_PIXELS) -> container.Header:
    try:
        return container.parse(read_aec(path), max_pixels)[0]
    except OSError as exc:
        raise AectlError(f"{path}: {exc.strerror}") from None
    except AectlError as exc:
        raise AectlError(f"{path}: {exc}") from None
