"""The real console script: train -> export -> verify -> info on real photos, and one-line errors."""
import json
import re
import subprocess

import pytest

from conftest import ROOT, aectl_exe


def aectl(*args, check=True, timeout=600):
    proc = subprocess.run([aectl_exe(), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_train_export_verify_info(photos, tmp_path):
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    proc = aectl("train", "--preset", "seed-conv", "--data", photos, "--out", run, "--steps", "8",
                 "--batch-size", "4", "--fit-steps", "5", "--seed", "1")
    assert "matches the article's counts" in proc.stderr
    assert "final validation: PSNR" in proc.stdout
    for change in (("--batch-size", "5"), ("--quality", "3"), ("--stop-at", "4")):  # one line, no table first
        refused = aectl("train", "--out", run, "--resume", *change, check=False)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
    aectl("export", run, "-o", bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    proc = aectl("verify", bundle, run)
    assert proc.stdout.startswith("ok:")
    info = json.loads(aectl("info", bundle, "--json").stdout)
    assert info["preset"] == "seed-conv" and "--steps 8" in info["training"]["command"]
    again = aectl("export", run, "-o", bundle, check=False)
    assert again.returncode != 0 and "--force" in again.stderr
    # --force replaces a bundle, never the run it is exported from (or a folder holding it).
    run_files = {p.name: p.read_bytes() for p in run.iterdir()}
    assert "last.pt" in run_files
    for out in (run, tmp_path):
        refused = aectl("export", run, "-o", out, "--force", check=False)
        assert refused.returncode == 1 and "holds the input" in refused.stderr, refused.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == run_files, "the run is intact"


def test_bad_arguments_print_one_line_and_exit_non_zero(tmp_path):
    cases = [
        ("train", "--preset", "nope", "--data", tmp_path, "--out", tmp_path / "r"),
        ("train", "--no-such-option"),
        ("train", "--preset", "factorized", "--channels", "0,0", "--data", tmp_path, "--out", tmp_path / "r"),
        ("train", "--preset", "factorized", "--epochs", "0", "--data", tmp_path, "--out", tmp_path / "r"),
        ("train", "--preset", "factorized", "--batch-size", "0", "--data", tmp_path, "--out", tmp_path / "r"),
        ("export", tmp_path / "missing", "-o", tmp_path / "b"),
        ("info", tmp_path),
        ("compress", tmp_path / "missing.png", "-m", tmp_path),
        ("verify",),
    ]
    for args in cases:
        proc = aectl(*args, check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("option, message", [
    (("--threads", "100000"), "--threads 100000: give 1.."),  # would otherwise try to start 100000 threads
    (("--threads", "-1"), "--threads -1: give 1.."),
    (("--max-bpp", "inf"), "positive and finite"),
    (("--max-bpp", "nan"), "positive and finite"),
    (("--workers", "-3", "--engine", "ray"), "--workers takes a positive count"),
])
def test_impossible_option_values_are_refused_before_any_work(tmp_path, kodak, option, message):
    proc = aectl("compress", kodak / "kodim01.png", "-o", tmp_path / "out", "--provider", "cpu", *option,
                 check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {proc.stderr.strip()[7:]}"
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_info_on_a_missing_path_says_so(tmp_path):
    proc = aectl("info", tmp_path / "nope.aec", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path / 'nope.aec'}: no such file or directory"


def test_doctor_lists_working_cpu_provider():
    proc = aectl("doctor")
    assert "onnxruntime" in proc.stdout
    assert "provider cpu" in proc.stdout and "works" in proc.stdout
    from aectl.runtime.cores import default_threads
    assert re.search(rf"\b{default_threads() or 'onnxruntime chooses'} by default", proc.stdout)  # no --threads


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_asking_for_an_unusable_gpu_provider_is_one_clear_line(tmp_path, kodak, provider):
    """Where the provider does not really run (doctor's probe, not just get_available_providers: onnxruntime-gpu
    lists CUDA on machines without a GPU), compress and decompress stop before any file with one line."""
    from aectl.runtime.providers import probe

    works, _ = probe(provider)
    if works:
        pytest.skip(f"{provider} works here; covered by tests/test_cuda.py")
    images = [kodak / "kodim01.png", kodak / "kodim02.png"]
    for args in (("compress", *images, "-o", tmp_path / "out"), ("decompress", tmp_path, "-o", tmp_path / "out")):
        proc = aectl(*args, "--provider", provider, check=False)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert f"--provider {provider}:" in lines[0] or "not usable here" in lines[0], lines[0]
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()


def test_doctor_probes_gpu_providers():
    from aectl.runtime.providers import probe

    proc = aectl("doctor")
    for name in ("cuda", "tensorrt"):
        works, verdict = probe(name)
        assert f"provider {name}" in proc.stdout
        assert ("works" in proc.stdout.split(f"provider {name}")[1].splitlines()[0]) == works, verdict


def test_png_compression_changes_file_size_not_pixels(tmp_path, kodak_image):
    """`decompress` writes PNGs at zlib level 1 unless --png-compression says otherwise: byte for byte what
    Pillow writes at level 1, the same pixels at level 9 in a smaller file; a level outside 0-9 is one line and
    writes nothing."""
    import numpy as np
    from PIL import Image

    source, aec = tmp_path / "crop.png", tmp_path / "crop.aec"
    Image.fromarray(kodak_image[:192, :256]).save(source)
    aectl("compress", source, "-m", ROOT / "models" / "factorized-q4", "-o", aec, "--provider", "cpu")
    default, level9 = tmp_path / "default.png", tmp_path / "level9.png"
    aectl("decompress", aec, "-o", default, "--provider", "cpu")
    aectl("decompress", aec, "-o", level9, "--provider", "cpu", "--png-compression", "9")
    pixels = np.asarray(Image.open(default))
    assert np.array_equal(pixels, np.asarray(Image.open(level9)))
    assert level9.stat().st_size < default.stat().st_size
    pillow_level1 = tmp_path / "pillow.png"
    Image.fromarray(pixels).save(pillow_level1, compress_level=1)
    assert pillow_level1.read_bytes() == default.read_bytes()
    refused = aectl("decompress", aec, "-o", tmp_path / "bad.png", "--png-compression", "10", check=False)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.strip() == "error: --png-compression 10: give a zlib level from 0 to 9"
    assert not (tmp_path / "bad.png").exists()
