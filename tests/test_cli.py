"""The real console script: train -> export -> verify -> info on real photos, and one-line errors."""
import json
import subprocess

from conftest import aectl_exe


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
    aectl("export", run, "-o", bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    proc = aectl("verify", bundle, run)
    assert proc.stdout.startswith("ok:")
    info = json.loads(aectl("info", bundle, "--json").stdout)
    assert info["preset"] == "seed-conv" and "--steps 8" in info["training"]["command"]
    again = aectl("export", run, "-o", bundle, check=False)
    assert again.returncode != 0 and "--force" in again.stderr


def test_bad_arguments_print_one_line_and_exit_non_zero(tmp_path):
    cases = [
        ("train", "--preset", "nope", "--data", tmp_path, "--out", tmp_path / "r"),
        ("train", "--no-such-option"),
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


def test_doctor_lists_working_cpu_provider():
    proc = aectl("doctor")
    assert "onnxruntime" in proc.stdout
    assert "provider cpu" in proc.stdout and "works" in proc.stdout


def test_asking_for_cuda_without_it_is_a_clear_error(tmp_path, trained, kodak):
    from aectl.runtime.providers import import_ort

    if "CUDAExecutionProvider" in import_ort().get_available_providers():
        import pytest
        pytest.skip("CUDA provider present; covered by the CUDA tests")
    _, bundle = trained["seed-conv"]
    proc = aectl("compress", kodak / "kodim01.png", "-m", bundle, "-o", tmp_path / "x.aec", "--provider", "cuda",
                 check=False)
    assert proc.returncode != 0 and "cuda" in proc.stderr.lower()
    assert not (tmp_path / "x.aec").exists()
