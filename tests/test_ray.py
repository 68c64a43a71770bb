"""Bulk compression on Ray Data with a local 2-CPU Ray: every file decodes to the same pixels as the local path."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aectl.runtime import AectlError, Codec
from conftest import aectl_exe

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")


@pytest.fixture(scope="module")
def image_dir(kodak, photos, tmp_path_factory):
    src = tmp_path_factory.mktemp("ray-in")
    (src / "sub").mkdir()
    for name in ("kodim01.png", "kodim04.png", "kodim09.png"):
        Image.open(kodak / name).save(src / name)
    Image.open(photos / "003.png").crop((0, 0, 500, 300)).save(src / "sub" / "photo.png")
    (src / "sub" / "broken.png").write_bytes(b"not a png")
    return src


def test_cli_engine_ray_matches_local_path(trained, image_dir, tmp_path):
    _, bundle = trained["factorized"]
    out = tmp_path / "out"
    proc = subprocess.run([aectl_exe(), "compress", image_dir, "-m", bundle, "-o", out, "--engine", "ray",
                           "--workers", "2", "--provider", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # the broken file
    assert proc.stderr.count("broken.png") == 1
    # aectl's lines: Ray's own notices (token authentication, progress bars, its log of the run) are kept quiet,
    # all but the core worker's warning that restarts are on (ray-project/ray#53727), which no option hides.
    lines = [line for line in proc.stderr.splitlines() if "core_worker.cc" not in line]
    assert lines[1:] == ["4 ok, 1 failed"], proc.stderr
    quality = json.loads((bundle / "manifest.json").read_text())["architecture"]["quality"]
    assert proc.stdout.count(f" q{quality}, ") == 4, proc.stdout  # the bundle's quality, as the local engine says
    local = Codec(bundle, provider="cpu", threads=1)
    sources = [p for p in image_dir.rglob("*.png") if p.name != "broken.png"]
    for src in sources:
        aec = out / src.relative_to(image_dir).with_suffix(".aec")
        expected = np.asarray(local.decompress(local.compress(src)))
        assert np.array_equal(np.asarray(local.decompress(aec.read_bytes())), expected), src.name


def test_cli_engine_ray_keeps_max_pixels_and_names_its_flags(trained, kodak, tmp_path):
    """--max-pixels never reached the Ray workers: a file past it was compressed anyway (a guard the user set,
    ignored), and their errors named the Python API's parameters, not the CLI's flags."""
    _, bundle = trained["factorized"]
    src = tmp_path / "in"
    src.mkdir()
    Image.open(kodak / "kodim01.png").save(src / "big.png")  # 393,216 pixels
    Image.open(kodak / "kodim01.png").crop((0, 0, 320, 240)).save(src / "small.png")
    out = tmp_path / "out"
    proc = subprocess.run([aectl_exe(), "compress", src, "-m", bundle, "-o", out, "--engine", "ray", "--workers", "1",
                           "--max-pixels", "100000", "--provider", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "big.png" in proc.stderr, proc.stderr
    assert "exceeds the limit of 100000 pixels (raise --max-pixels if you trust this file)" in proc.stderr
    assert (out / "small.aec").is_file() and not (out / "big.aec").exists()


def _copies(kodak, folder, count: int, crop=None, tiles: int = 1):
    """`count` copies of a kodak-dev photo (or of a crop of it, or of it tiled `tiles` x `tiles` times, which takes
    that many times longer to code) as PNGs in a new folder."""
    folder.mkdir()
    image = Image.open(kodak / "kodim01.png")
    if tiles > 1:
        image = Image.fromarray(np.tile(np.asarray(image), (tiles, tiles, 1)))
    for i in range(count):
        (image.crop(crop) if crop else image).save(folder / f"{i:02}.png")
    return folder


def _start(trained, src, out, *options) -> subprocess.Popen:
    """`aectl compress --engine ray` on one worker, running in the background."""
    _, bundle = trained["factorized"]
    return subprocess.Popen([aectl_exe(), "compress", src, "-m", bundle, "-o", out, "--engine", "ray", "--workers",
                             "1", "--provider", "cpu", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _workers(proc: subprocess.Popen) -> list[int]:
    """The Ray workers under a command: its MapWorker processes, found through /proc."""
    return [pid for pid in _descendants(proc.pid) if _cmdline(pid).startswith("ray::MapWorker")]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's worker through /proc")
def test_cli_engine_ray_survives_one_worker_death_and_keeps_json_clean(trained, kodak, tmp_path):
    """One death is survived (the batch is retried on a restarted worker), and the line Ray's driver prints about
    it went to stdout, so --json's stdout was no longer one JSON document; it goes to stderr now."""
    out = tmp_path / "out"
    proc = _start(trained, _copies(kodak, tmp_path / "in", 8), out, "--json")
    try:
        deadline, killed = time.monotonic() + 180, None
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            workers = _workers(proc)
            if workers:
                time.sleep(0.3)
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert killed is not None, stderr
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["ok"] == 8 and report["failed"] == 0
    assert len(list(out.glob("*.aec"))) == 8


def test_cli_engine_ray_checks_each_job_as_the_local_engine_does(trained, kodak, tmp_path):
    """The Ray path skipped the local engine's checks of each job: with --force it wrote over its own input (a
    PNG named pic.aec, lost), and a FIFO as input hung the command. --fail-fast was ignored."""
    _, bundle = trained["factorized"]
    src = tmp_path / "in"
    src.mkdir()
    Image.open(kodak / "kodim01.png").crop((0, 0, 96, 64)).save(src / "pic.aec", format="PNG")
    original = (src / "pic.aec").read_bytes()
    os.mkfifo(src / "fifo.png")
    Image.open(kodak / "kodim01.png").crop((0, 0, 96, 64)).save(src / "good.png")
    run = [aectl_exe(), "compress", src / "pic.aec", src / "fifo.png", src / "good.png", "-m", bundle, "--force",
           "--engine", "ray", "--workers", "1", "--provider", "cpu"]
    proc = subprocess.run(run + ["--fail-fast"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and not (src / "good.aec").exists(), proc.stderr  # stopped at the first failure
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {src / 'pic.aec'}: output would overwrite the input" in proc.stderr
    assert f"error: {src / 'fifo.png'}: not a regular file" in proc.stderr
    assert (src / "pic.aec").read_bytes() == original and (src / "good.aec").is_file()


def test_cli_engine_ray_refuses_an_unusable_provider_once(trained, kodak, tmp_path):
    """An unusable provider was reported once per file, from the workers; now once, before any file."""
    from aectl.runtime.providers import probe

    if probe("tensorrt")[0]:
        pytest.skip("TensorRT works here")
    _, bundle = trained["factorized"]
    src = _copies(kodak, tmp_path / "in", 2, crop=(0, 0, 96, 64))
    proc = subprocess.run([aectl_exe(), "compress", src, "-m", bundle, "-o", tmp_path / "out", "--engine", "ray",
                           "--workers", "1", "--provider", "tensorrt"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "core_worker.cc" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: --provider tensorrt: "), proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_engine_ray_sigterm_exits_143(trained, kodak, tmp_path):
    """Ray took SIGTERM over: the command exited 15 with a stack dump, not 143 with `error: terminated`."""
    out = tmp_path / "out"
    proc = _start(trained, _copies(kodak, tmp_path / "in", 24), out)
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("*.aec")):
            assert time.monotonic() < deadline and proc.poll() is None, "no output, or the run ended before the signal"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143 and stderr.splitlines()[-1] == "error: terminated", stderr
    assert "SIGTERM received" not in stderr
    assert all(p.suffix == ".aec" for p in out.iterdir())  # no temporary file left


def _descendants(pid: int) -> list[int]:
    """Every process under `pid`, read from /proc (children before grandchildren)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's workers through /proc")
def test_cli_engine_ray_ends_when_its_workers_keep_dying(trained, kodak, tmp_path):
    """Ray Data restarted a dead worker and retried its batch without end: a file that kills its worker each time
    (out of memory) hung the command. Here every worker is killed as it starts, as the OOM killer would: the run
    now ends in one line, exit 1, once the worker has died three times."""
    out = tmp_path / "out"
    # Tiled 3x3, so a worker that slips through the polling below (a loaded machine) cannot finish its batch
    # before it is killed: that would end the run with exit 0.
    proc = _start(trained, _copies(kodak, tmp_path / "in", 4, tiles=3), out)
    kills = set()
    try:
        deadline = time.monotonic() + 180  # before the fix: still restarting its worker at the deadline
        while time.monotonic() < deadline and proc.poll() is None:
            for pid in set(_workers(proc)) - kills:
                os.kill(pid, signal.SIGKILL)
                kills.add(pid)
            time.sleep(0.05)
        running = proc.poll() is None
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert not running, f"still running after {len(kills)} worker deaths"
    assert proc.returncode == 1, stderr
    assert stderr.splitlines()[-1:] == ["error: a Ray worker kept dying (out of memory, or killed): 4 of 4 "
                                        "files were left undone (Ray's logs say why: "
                                        "/tmp/ray/session_latest/logs on a local Ray)"], stderr
    assert stderr.count("\n") <= 2, stderr  # and at most Ray's warning that restarts are on (ray#53727)
    assert not out.exists() or not list(out.iterdir())  # no partial or temporary file


def test_map_batches_round_trip_in_process(trained, image_dir):
    from aectl.integrations.ray import CompressBatch, DecompressBatch, _check_reachable

    _, bundle = trained["seed-conv"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # A real GCS passes the check that --engine ray makes of RAY_ADDRESS (connect, then its HTTP/2 greeting).
        _check_reachable(ray.get_runtime_context().gcs_address)
        paths = sorted(str(p) for p in image_dir.glob("*.png"))
        ds = ray.data.from_items([{"path": p} for p in paths])
        kwargs = {"bundle": str(bundle)}
        rows = (ds.map_batches(CompressBatch, fn_constructor_kwargs=kwargs, batch_size=2,
                               compute=ray.data.ActorPoolStrategy(size=2), batch_format="numpy")
                  .map_batches(DecompressBatch, fn_constructor_kwargs=kwargs, batch_size=2,
                               compute=ray.data.ActorPoolStrategy(size=1), batch_format="numpy")
                  .take_all())
    finally:
        ray.shutdown()
    local = Codec(bundle, provider="cpu", threads=1)
    assert sorted(r["path"] for r in rows) == paths
    for row in rows:
        assert row["error"] == ""
        expected = np.asarray(local.decompress(local.compress(row["path"])))
        assert np.array_equal(row["image"], expected)


def test_a_worker_reads_back_its_file_under_the_raised_pixel_limit(kodak, tmp_path, monkeypatch):
    """A worker read back the header of each file it wrote under the format's default limit (2^28 pixels), so an
    image between that and a raised --max-pixels was coded, then refused. Coding a 2^28-pixel image is out of
    reach here, so the default stands at 1,000 pixels for the test: a 64x48 image under --max-pixels 10^6."""
    from aectl.integrations.ray import CompressBatch
    from aectl.runtime import container
    from aectl.runtime.registry import shipped_bundle

    Image.open(kodak / "kodim07.png").convert("RGB").crop((0, 0, 64, 48)).save(tmp_path / "x.png")
    monkeypatch.setattr(container.parse, "__defaults__", (1000,))
    rows = CompressBatch(str(shipped_bundle(1)), threads=1, max_pixels=10**6)({"path": np.array([str(tmp_path /
                                                                                                  "x.png")], object)})
    assert list(rows["error"]) == [""] and tuple(rows["size"][0])[:2] == (64, 48)


def test_a_malformed_ray_address_is_one_line(kodak, tmp_path):
    """ray.init's ValueError for RAY_ADDRESS=garbage read as an internal error once the CLI stopped printing every
    ValueError as the user's; it is a bad environment, said in one line."""
    Image.open(kodak / "kodim01.png").crop((0, 0, 32, 32)).save(tmp_path / "a.png")
    proc = subprocess.run([aectl_exe(), "compress", str(tmp_path / "a.png"), "--engine", "ray", "-o",
                           str(tmp_path / "a.aec")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": "garbage"})
    assert proc.returncode == 1
    assert proc.stderr == "error: --engine ray cannot start (RAY_ADDRESS=garbage): Invalid address format: garbage\n", \
        proc.stderr
    assert not (tmp_path / "a.aec").exists()


def test_a_ray_address_where_nothing_listens_is_one_line(kodak, tmp_path):
    """RAY_ADDRESS=127.0.0.1:1 (no cluster there) blocked in ray.init for good, retrying every 40 s, and SIGTERM
    waited for the retry: the one TCP connect first says so at once."""
    Image.open(kodak / "kodim01.png").crop((0, 0, 32, 32)).save(tmp_path / "a.png")
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        proc = subprocess.run([aectl_exe(), "compress", str(tmp_path / "a.png"), "--engine", "ray", "-o",
                               str(tmp_path / "a.aec")], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RAY_ADDRESS": address})
        assert proc.returncode == 1
        assert proc.stderr == (f"error: --engine ray cannot reach RAY_ADDRESS={address} (Connection refused); start "
                               "the cluster there, or unset RAY_ADDRESS for a local Ray\n"), proc.stderr
        assert not (tmp_path / "a.aec").exists()


def _serve_once_each(answer: bytes | None) -> tuple[str, threading.Thread]:
    """A listener on a free local port whose every connection gets `answer` (None: closed at once), as a
    RAY_ADDRESS; served on a thread until the test's one client has gone."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)

    def serve():
        with listener:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                return
            with connection:
                if answer is not None:
                    connection.recv(1024)
                    connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{listener.getsockname()[1]}", thread


def test_a_ray_address_of_something_else_is_one_line(kodak, tmp_path):
    """RAY_ADDRESS=HOST:8265 (the dashboard's HTTP port, a common slip for the GCS's 6379) passed the TCP
    connect, and ray.init then retried every 40 s without end (82 s by hand before `timeout` killed it): a server
    that does not greet as gRPC is refused at once, by the CLI and by the check alone."""
    from aectl.integrations.ray import _check_reachable

    Image.open(kodak / "kodim01.png").crop((0, 0, 32, 32)).save(tmp_path / "a.png")
    address, server = _serve_once_each(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    proc = subprocess.run([aectl_exe(), "compress", str(tmp_path / "a.png"), "--engine", "ray", "-o",
                           str(tmp_path / "a.aec")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": address})
    server.join(timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: --engine ray: RAY_ADDRESS={address} is not a Ray cluster's address (what answers "
                           "there does not speak gRPC); give HEAD:6379 (the GCS port) or ray://HEAD:10001, or unset "
                           "RAY_ADDRESS for a local Ray\n"), proc.stderr
    assert not (tmp_path / "a.aec").exists()
    for answer in (None, b"SSH-2.0-OpenSSH_9.6\r\n", bytes(9)):  # hung up; another protocol; a DATA frame first
        address, server = _serve_once_each(answer)
        with pytest.raises(AectlError, match="is not a Ray cluster's address"):
            _check_reachable("ray://" + address)
        server.join(timeout=60)
    address, server = _serve_once_each(b"\x15\x03\x03\x00\x02\x02\x32")  # a TLS alert: a TLS cluster, RAY_USE_TLS unset
    with pytest.raises(AectlError, match="answers in TLS; set RAY_USE_TLS=1"):
        _check_reachable(address)
    server.join(timeout=60)
