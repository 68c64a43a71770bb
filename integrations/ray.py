"""Bulk compression on Ray Data (optional extra: `pip install 'aectl[ray]'`).

`CompressBatch` / `DecompressBatch` are callable classes for `Dataset.map_batches`: Ray builds one per worker,
so the bundle is loaded and its onnxruntime sessions created once per worker, then every batch of images
(or paths) becomes .aec bytes (and back). A bad item gets an error string in its row instead of failing the
whole job.

    import ray
    from aectl.integrations.ray import CompressBatch
    ds = ray.data.from_items([{"path": p} for p in paths])
    out = ds.map_batches(CompressBatch, fn_constructor_kwargs={"bundle": "bundles/q3"},
                         batch_size=16, concurrency=8, batch_format="numpy")

`compress_jobs` drives that for `aectl compress --engine ray`: rows stream back to the driver, which writes
each output atomically as it arrives, so memory stays bounded however many files there are.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from aectl.runtime import AectlError, Codec, Decoder
from aectl.runtime.container import DEFAULT_MAX_PIXELS
from aectl.runtime.errors import command_line
from aectl.runtime.files import Job, Result, check_job, compress_info, refuse_aec
from aectl.runtime.outputs import atomic_write

_TRIES = 3  # a worker that dies is restarted, and its batch retried, until it has run this many times


class CompressBatch:
    """map_batches callable: {"path": [...]} or {"image": [uint8 arrays as Pillow's fromarray reads them, ...]}
    -> adds "aec", "error", "size" and "seconds" (each item's compress time on the worker).
    `cli_messages`: errors name `aectl compress --engine ray`'s flags, not a Python caller's parameters."""

    def __init__(self, bundle: str, provider: str = "cpu", threads: int | None = 1, format_version: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, cli_messages: bool = False):
        self.codec = Codec(bundle, provider=provider, threads=threads, format_version=format_version,
                           max_pixels=max_pixels)
        self.cli_messages = cli_messages

    def __call__(self, batch: dict) -> dict:
        with command_line() if self.cli_messages else contextlib.nullcontext():
            return self._compress(batch)

    def _compress(self, batch: dict) -> dict:
        items = batch["image"] if "image" in batch else batch["path"]
        blobs, errors, sizes, seconds = [], [], [], []
        for item in items:
            start = time.perf_counter()
            try:
                data = self.codec.compress(item if isinstance(item, np.ndarray) else str(item))
                header = _header(data, self.codec.max_pixels)
                blobs.append(data)
                sizes.append((header.width, header.height, header.channels, header.bit_depth))
                errors.append("")
            except AectlError as exc:
                blobs.append(b"")
                sizes.append((0, 0, 0, 0))
                errors.append(str(exc))
            seconds.append(time.perf_counter() - start)
        out = {k: v for k, v in batch.items() if k != "image"}
        out["aec"] = np.array(blobs, dtype=object)
        out["error"] = np.array(errors, dtype=object)
        out["size"] = np.array(sizes, dtype=np.int64)
        out["seconds"] = np.array(seconds)
        return out


class DecompressBatch:
    """map_batches callable: {"aec": [bytes, ...]} -> adds "image" (each file's pixels as Pillow gives them:
    HxWx3 or HxWx4 uint8, HxW or HxWx2 for gray, HxW uint16 for 16-bit gray) and "error"."""

    def __init__(self, bundle: str, provider: str = "cpu", threads: int | None = 1):
        self.decoder = Decoder(bundle, provider=provider, threads=threads)

    def __call__(self, batch: dict) -> dict:
        images, errors = [], []
        for data in batch["aec"]:
            try:
                images.append(np.asarray(self.decoder.decompress(bytes(data))))
                errors.append("")
            except AectlError as exc:
                images.append(np.zeros((0, 0, 3), np.uint8))
                errors.append(str(exc))
        out = dict(batch)
        out["image"] = np.array(images + [None], dtype=object)[:-1]  # ragged: keep one object per row
        out["error"] = np.array(errors, dtype=object)
        return out


def _header(data: bytes, max_pixels: int):
    """The header of a file this worker just wrote, read under the limit it was written under (the format's
    default limit refused images between it and a raised --max-pixels, after they were coded)."""
    from aectl.runtime.container import parse

    return parse(data, max_pixels)[0]


def compress_jobs(jobs: list[Job], bundle: str | Path, force: bool, workers: int | None = None,
                  provider: str = "cpu", batch_size: int = 8, format_version: int | None = None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, threads: int = 1) -> Iterator[Result]:
    """Compress `jobs` on the Ray cluster (RAY_ADDRESS, else a local one) and write outputs on the driver, for
    `aectl compress --engine ray` (errors name its flags). Each job is checked here first, as the local engine
    checks it: only inputs that may be read and outputs that may be written reach the workers."""
    try:
        import ray
    except ImportError:
        raise AectlError("--engine ray needs Ray: pip install 'aectl[ray]'") from None
    ready = []
    for job in jobs:
        try:
            if job.error:  # a folder of the walk that could not be read
                raise AectlError(job.error)
            check_job(job, force, refuse_aec)
            ready.append(job)
        except (AectlError, OSError) as exc:
            yield Result(str(job.source), None if job.error else str(job.target), False,
                         error=str(exc) if isinstance(exc, AectlError) else exc.strerror or str(exc))
    if not ready:
        return
    _start_quietly(ray, workers)
    try:  # on a worker, since they may have a GPU the driver lacks: once, not once per file
        ray.get(ray.remote(_require_provider).remote(provider))
    except ray.exceptions.RayTaskError as exc:
        raise (exc.cause if exc.cause is not None else exc) from None
    targets = {str(job.source): job for job in ready}
    dataset = ray.data.from_items([{"path": str(job.source)} for job in ready])
    kwargs = {"bundle": str(Path(bundle).resolve()), "provider": provider, "threads": threads,
              "format_version": format_version, "max_pixels": max_pixels, "cli_messages": True}
    with warnings.catch_warnings():  # Ray 2.60 warns that max_restarts and max_task_retries will move
        warnings.simplefilter("ignore", DeprecationWarning)
        # Ray Data restarts a dead worker and retries its batch without end, so a file that kills its worker (out
        # of memory) would hang the command: bounded here, the run ends instead, with the files written so far.
        mapped = dataset.map_batches(CompressBatch, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                                     compute=ray.data.ActorPoolStrategy(size=workers or 1), batch_format="numpy",
                                     max_restarts=_TRIES - 1, max_task_retries=_TRIES - 1)
    done = 0
    try:
        for result in _write_rows(mapped.iter_rows(), targets, force):
            done += 1
            yield result
    except ray.exceptions.RayTaskError as exc:  # a bug in a worker: the original error, not Ray's traceback
        raise (exc.cause if exc.cause is not None else exc) from None
    except ray.exceptions.RayActorError:
        raise AectlError(f"a Ray worker kept dying (out of memory, or killed): {len(ready) - done} of "
                         f"{len(ready)} files were left undone (Ray's logs say why: /tmp/ray/session_latest/logs on a "
                         "local Ray)") from None


def _start_quietly(ray, workers: int | None) -> None:
    """Connect to Ray (or start a local one) with its own notices kept off stderr: aectl reports per file. Ray
    takes SIGTERM over for its own exit (15, a stack dump); aectl's handler is put back (143, one line)."""
    import logging

    import ray.data  # before its logger is quieted: importing ray.data configures its logging afresh

    if not ray.is_initialized():
        _check_reachable(os.environ.get("RAY_ADDRESS", ""))
        previous = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except (ValueError, ConnectionError) as exc:  # RAY_ADDRESS malformed, or a ray:// one without ray[client]
            where = f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "a local Ray"
            raise AectlError(f"--engine ray cannot start ({where}): {exc}") from None
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its tracebacks too: the error comes back here
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """One TCP connect to RAY_ADDRESS's host and port first, and one HTTP/2 greeting there. Where nothing answers,
    or something that is not a gRPC server (Ray's GCS and its client server are; the dashboard's HTTP port 8265,
    a common slip for 6379, is not), Ray 2.60's `ray.init` retries without end ("Failed to get cluster ID from
    GCS server" every 40 s) and defers SIGTERM meanwhile, as users of other tools have found
    (openshift-psap/auto-tuning-vllm#90). Addresses without a port (`auto`, `local`) and malformed ones are left
    to Ray, and so is the greeting where Ray speaks TLS (RAY_USE_TLS)."""
    host_port = address.removeprefix("ray://")
    if not host_port or host_port == address and "://" in address:
        return
    try:
        where = urllib.parse.urlsplit("//" + host_port)
        host, port = where.hostname, where.port
    except ValueError:
        return
    if not host or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            answer = _http2_answer(connection, timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise AectlError(f"--engine ray cannot reach RAY_ADDRESS={address} ({reason}); start the cluster there, "
                         "or unset RAY_ADDRESS for a local Ray") from None
    if answer is None or len(answer) == 9 and answer[3] == _SETTINGS_FRAME:
        return
    if answer[:1] in (_TLS_ALERT, _TLS_HANDSHAKE):
        raise AectlError(f"--engine ray: RAY_ADDRESS={address} answers in TLS; set RAY_USE_TLS=1 (with Ray's "
                         "RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY and RAY_TLS_CA_CERT) to reach it")
    raise AectlError(f"--engine ray: RAY_ADDRESS={address} is not a Ray cluster's address (what answers there "
                     "does not speak gRPC); give HEAD:6379 (the GCS port) or ray://HEAD:10001, or unset "
                     "RAY_ADDRESS for a local Ray")


_SETTINGS_FRAME = 0x04
# RFC 9113, section 3.4: the client's preface, then its (empty) SETTINGS frame: length 0, type, flags 0, stream 0.
_HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + bytes([_SETTINGS_FRAME]) + bytes(5)
_TLS_ALERT, _TLS_HANDSHAKE = b"\x15", b"\x16"  # a TLS server's answer to bytes that are not TLS starts so


def _http2_answer(connection: socket.socket, timeout: float) -> bytes | None:
    """The first 9 bytes (a frame header) the server at the other end sends back to an HTTP/2 client's greeting,
    fewer if it stops or stays silent: every gRPC server's first frame is SETTINGS (RFC 9113, section 3.4).
    None where Ray is set to speak TLS, which this greeting is not."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return None
    connection.settimeout(timeout)
    header = b""
    try:
        connection.sendall(_HTTP2_GREETING)
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                break
            header += chunk
    except OSError:  # silent past the timeout, or it hung up on the greeting
        pass
    return header


def _require_provider(provider: str) -> None:
    from aectl.runtime.providers import require_provider

    with command_line():
        require_provider(provider)


def _write_rows(rows, targets: dict, force: bool) -> Iterator[Result]:
    """Each compressed row written to its job's target as it arrives, as a Result."""
    for row in rows:
        job = targets[row["path"]]
        if row["error"]:
            yield Result(str(job.source), str(job.target), False, error=row["error"])
            continue
        try:
            atomic_write(job.target, bytes(row["aec"]), force=force)
        except AectlError as exc:
            yield Result(str(job.source), str(job.target), False, error=str(exc))
            continue
        w, h, c, d = (int(v) for v in row["size"])
        yield Result(str(job.source), str(job.target), True, seconds=float(row["seconds"]),
                     **compress_info(bytes(row["aec"]), w, h, c, d))
