"""GPU providers against the CPU one, on the shipped model and kodak-dev. Each test runs only where the provider
really runs a model (doctor's probe); elsewhere it is skipped with the probe's reason.

Stated tolerances (fp32 on both sides, TF32 off):
- latent symbols: at most 1e-4 of them differ between a GPU and a CPU encoder, each by at most 1 (a value
  within float noise of a rounding boundary); the continuous latents agree to 1e-3 absolute;
- one file decoded on a GPU and on the CPU: pixels differ by at most 1 level of 255, at most 1% of them;
- a GPU-encoded file decodes on the CPU (and vice versa) without error at the same PSNR within 0.05 dB."""
import subprocess

import numpy as np
import pytest
from PIL import Image

from aectl.runtime import Codec, container
from aectl.runtime.metrics import psnr
from aectl.runtime.providers import EXECUTION_PROVIDERS, probe
from aectl.runtime.registry import shipped_bundles
from conftest import PHOTOS, aectl_exe

SHIPPED = shipped_bundles()
GPU = [pytest.param(name, marks=pytest.mark.skipif(not probe(name)[0], reason=f"{name}: {probe(name)[1]}"))
       for name in ("cuda", "tensorrt")]
SYMBOL_MISMATCH_MAX = 1e-4
LATENT_ATOL = 1e-3
PIXEL_FRACTION_MAX = 0.01


@pytest.fixture(scope="module")
def images(kodak):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(kodak.glob("*.png"))[:6]]


@pytest.fixture(scope="module")
def cpu():
    return Codec(SHIPPED[0], provider="cpu")


def gpu_codec(name: str) -> Codec:
    codec = Codec(SHIPPED[0], provider=name)
    codec.network.session("encoder"), codec.network.session("decoder")
    assert codec.network.providers == [EXECUTION_PROVIDERS[name]] * 2
    return codec


@pytest.mark.parametrize("name", GPU)
def test_outputs_stay_on_the_device_until_copied(name, images):
    gpu = gpu_codec(name)
    x = np.stack([images[0][:256, :256]]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    y = gpu.encode(x)
    binding = gpu.network.binding("encoder")
    assert binding.device == "cuda" and binding.input.device_name().lower() == "cuda"
    assert binding.binding.get_outputs()[0].device_name().lower() == "cuda"
    session = gpu.network.session("encoder")
    plain = session.run(None, {"x": x})[0]
    assert np.allclose(y, plain, atol=1e-6, rtol=0), np.abs(y - plain).max()


@pytest.mark.parametrize("name", GPU)
def test_latent_symbols_agree_with_cpu(name, images, cpu):
    gpu = gpu_codec(name)
    total = mismatched = 0
    for image in images:
        x = image.transpose(2, 0, 1)[None].astype(np.float32) / 255
        y_gpu, y_cpu = gpu.encode(x), cpu.encode(x)
        assert np.abs(y_gpu - y_cpu).max() <= LATENT_ATOL
        s_gpu, s_cpu = gpu.network.quantize(y_gpu), cpu.network.quantize(y_cpu)
        assert np.abs(s_gpu.astype(np.int64) - s_cpu).max() <= 1
        total += s_cpu.size
        mismatched += int((s_gpu != s_cpu).sum())
    rate = mismatched / total
    print(f"{name}: {mismatched} of {total} symbols differ from CPU ({rate:.2e})")
    assert rate <= SYMBOL_MISMATCH_MAX


@pytest.mark.parametrize("name", GPU)
def test_files_cross_between_gpu_and_cpu(name, images, cpu):
    gpu = gpu_codec(name)
    for image in images:
        from_gpu, from_cpu = gpu.compress(image), cpu.compress(image)
        for blob in (from_gpu, from_cpu):
            on_cpu, on_gpu = np.asarray(cpu.decompress(blob)), np.asarray(gpu.decompress(blob))
            diff = np.abs(on_cpu.astype(int) - on_gpu)
            assert diff.max() <= 1 and (diff > 0).mean() <= PIXEL_FRACTION_MAX, (diff.max(), (diff > 0).mean())
        q_gpu, q_cpu = psnr(image, cpu.decompress(from_gpu)), psnr(image, cpu.decompress(from_cpu))
        assert abs(q_gpu - q_cpu) <= 0.05
        assert container.parse(from_gpu)[0] == container.parse(from_cpu)[0]


@pytest.mark.parametrize("name", GPU)
def test_cli_compress_on_gpu_decompress_on_cpu(name, kodak, tmp_path):
    sources = sorted(kodak.glob("*.png"))[:2]
    for step in (["compress", *sources, "-o", tmp_path / "aec", "--provider", name],
                 ["decompress", tmp_path / "aec", "-o", tmp_path / "png", "--provider", "cpu"]):
        proc = subprocess.run([aectl_exe(), *map(str, step)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    for src in sources:
        assert psnr(np.asarray(Image.open(src).convert("RGB")),
                    np.asarray(Image.open(tmp_path / "png" / (src.stem + ".png")))) > 25


@pytest.mark.skipif(not probe("cuda")[0], reason=f"cuda: {probe('cuda')[1]}")
def test_auto_picks_cuda_where_it_works():
    codec = Codec(SHIPPED[0], provider="auto")
    codec.network.session("encoder")
    assert codec.network.providers == ["CUDAExecutionProvider"]


@pytest.mark.skipif(not probe("tensorrt")[0], reason=f"tensorrt: {probe('tensorrt')[1]}")
def test_tensorrt_engines_are_cached(tmp_path, monkeypatch, images):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    Codec(SHIPPED[0], provider="tensorrt").compress(images[0][:256, :256])
    cached = list((tmp_path / "aectl" / "trt").iterdir())
    assert cached, "no TensorRT engine or timing cache written"


@pytest.mark.parametrize("name", GPU)
def test_verify_runs_every_check_on_the_asked_gpu(name, request, tmp_path):
    """verify's decoder-only and variant checks once ran on the CPU whatever was asked. Each line names the
    provider its sessions ran on, so here, where a GPU runs, a check on the CPU would show (on a machine with the
    CPU alone the two cannot be told apart: tests/test_precision.py). It trains and exports, so it needs the
    training photos and the export extras, which benchmarks/gpu_check.sh does not carry to the GPU machine."""
    if not PHOTOS.is_dir():
        pytest.skip(f"training photos not found at {PHOTOS}")
    pytest.importorskip("onnxscript", reason="the export extras (aectl[train]) are not installed")
    from aectl.export.onnx_export import export_bundle
    from aectl.runtime.bundle import strip_bundle

    photos = request.getfixturevalue("photos")  # after the checks: the fixtures train on them
    run, fp32 = request.getfixturevalue("trained")["factorized"]
    fp16 = tmp_path / "fp16"
    export_bundle(run, fp16, precision="fp16", calibration=photos, log=lambda *_: None)
    for bundle in (fp32, strip_bundle(fp32, tmp_path / "stripped").path, fp16):
        proc = subprocess.run([aectl_exe(), "verify", str(bundle), str(run), "--provider", name, "--images",
                               str(photos)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert lines and all(f" on {name}" in line for line in lines), (bundle.name, proc.stdout)
