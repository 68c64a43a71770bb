"""Bulk compression on Ray Data with a local 2-CPU Ray: every file decodes to the same pixels as the local path."""
import subprocess

import numpy as np
import pytest
from PIL import Image

from aectl.runtime import Codec
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


def test_map_batches_round_trip_in_process(trained, image_dir):
    from aectl.integrations.ray import CompressBatch, DecompressBatch

    _, bundle = trained["seed-conv"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
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
