"""Decoder-only deployment: stripped bundles, the torch-free edge install (built by `make test`), the example
edge service, and the ORT-format decoder."""
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aectl.runtime import Codec, Decoder, load_bundle
from aectl.runtime.bundle import strip_bundle
from aectl.runtime.errors import AectlError

ROOT = Path(__file__).resolve().parents[1]
EDGE_PYTHON = os.environ.get("AECTL_EDGE_PYTHON")
needs_edge = pytest.mark.skipif(not EDGE_PYTHON, reason="the edge environment is built by `make test` "
                                "(AECTL_EDGE_PYTHON unset)")


@pytest.fixture(scope="module")
def edge_files(trained, kodak, tmp_path_factory):
    """Files compressed by the full install, the stripped bundle, and the full install's decoded pixels."""
    _, bundle = trained["factorized"]
    root = tmp_path_factory.mktemp("edge")
    stripped = strip_bundle(bundle, root / "edge-bundle").path
    codec = Codec(bundle, provider="cpu")
    files, expected = [], {}
    for name in ("kodim01.png", "kodim07.png"):
        aec = root / "aec" / name.replace(".png", ".aec")
        aec.parent.mkdir(exist_ok=True)
        aec.write_bytes(codec.compress(kodak / name))
        expected[aec.stem] = np.asarray(codec.decompress(aec.read_bytes()))
        files.append(aec)
    return root, stripped, files, expected


def test_stripped_bundle_decodes_and_refuses_to_compress(edge_files, kodak):
    _, stripped, files, expected = edge_files
    assert sorted(p.name for p in stripped.iterdir()) == ["decoder.onnx", "manifest.json"]
    decoder = Decoder(stripped, provider="cpu")
    assert np.array_equal(np.asarray(decoder.decompress(files[0].read_bytes())), expected[files[0].stem])
    with pytest.raises(AectlError, match="decoder-only"):
        Codec(stripped, provider="cpu").compress(kodak / "kodim01.png")


@needs_edge
def test_edge_environment_has_no_torch_and_decodes_identically(edge_files, tmp_path):
    root, stripped, files, expected = edge_files
    listing = subprocess.run([EDGE_PYTHON, "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listing.stdout)}
    assert "torch" not in names and "onnx" not in names and "aectl" in names
    edge_aectl = Path(EDGE_PYTHON).parent / "aectl"
    out = tmp_path / "decoded"
    proc = subprocess.run([edge_aectl, "decompress", *files, "-m", stripped, "-o", out], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    for aec in files:
        assert np.array_equal(np.asarray(Image.open(out / f"{aec.stem}.png")), expected[aec.stem])
    proc = subprocess.run([EDGE_PYTHON, "-c", "import aectl.runtime, sys; from aectl.runtime import Decoder; "
                           "assert 'torch' not in sys.modules"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_edge_service_returns_png(edge_files):
    root, stripped, files, expected = edge_files
    python = EDGE_PYTHON or sys.executable
    server = subprocess.Popen([python, str(ROOT / "examples" / "edge_client.py"), "--bundle", str(stripped),
                               "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[-1]
        body = files[0].read_bytes()
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=120) as resp:
            assert resp.headers["Content-Type"] == "image/png"
            png = resp.read()
        import io
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected[files[0].stem])
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, data=body[:-3]), timeout=60)
        assert err.value.code == 400 and b"truncated" in err.value.read()
        host, port = url.split("/")[2].split(":")
        with socket.create_connection((host, int(port)), timeout=60) as raw:  # a header urllib would not send
            raw.sendall(b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            assert raw.recv(1 << 16).startswith(b"HTTP/1.0 400 ")  # the connection was dropped
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as resp:
            assert resp.status == 200, "the service keeps serving after a bad request"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_export_decoder_only_with_ort_format(trained, edge_files, tmp_path):
    from aectl.export.onnx_export import export_bundle

    run, full = trained["factorized"]
    _, _, files, expected = edge_files
    out = tmp_path / "edge"
    export_bundle(run, out, decoder_only=True, ort=True, log=lambda *_: None)
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "decoder.ort", "manifest.json"]
    manifest = load_bundle(out).manifest
    assert manifest["model_id"] == load_bundle(full).model_id and manifest["decoder_only"]
    # `bundle strip --ort` keeps only the ORT-format decoder: the runtime loads it and decodes the same pixels.
    ort_only = tmp_path / "ort-only"
    proc = subprocess.run([sys.executable, "-m", "aectl.cli.main", "bundle", "strip", str(out), "-o", str(ort_only),
                           "--ort"], capture_output=True, text=True)
    assert proc.returncode == 0 and "ORT format" in proc.stdout, proc.stderr
    assert sorted(p.name for p in ort_only.iterdir()) == ["decoder.ort", "manifest.json"]
    assert "decoder" not in load_bundle(ort_only).manifest["files"]
    decoded = Decoder(ort_only, provider="cpu").decompress(files[1].read_bytes())
    assert np.abs(np.asarray(decoded).astype(int) - expected[files[1].stem]).max() <= 1
    # Only decoder.ort copied to a client, the manifest untouched: README said the runtime loads it when the
    # bundle has no decoder.onnx, and it said "decoder.onnx is missing".
    (out / "decoder.onnx").unlink()
    again = Decoder(out, provider="cpu").decompress(files[1].read_bytes())
    assert np.array_equal(np.asarray(again), np.asarray(decoded))
    with pytest.raises(AectlError, match="has no decoder.ort: export it with --ort first"):
        strip_bundle(full, tmp_path / "no-ort", ort_only=True)
    assert not (tmp_path / "no-ort").exists()
