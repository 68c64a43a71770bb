"""The scripts in benchmarks/ behave as aectl's commands do (benchmarks/bench_script.py): a bad argument or bundle
ends in one line before any measurement, never a traceback; --help shows the whole description."""
import ast
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "bench_script.py")
TAKE_A_BUNDLE = ["batch_probe", "entropy_probe", "int8_probe", "kodak_rate", "node_profile", "precision",
                 "spinning_probe", "threads_probe"]


def run(script, *args, cwd=None):
    return subprocess.run([sys.executable, ROOT / "benchmarks" / f"{script}.py", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("script", [p.stem for p in SCRIPTS])
def test_help_shows_the_whole_description(script):
    """The description was the docstring's first line, cut mid-sentence."""
    proc = run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    doc = ast.get_docstring(ast.parse((ROOT / "benchmarks" / f"{script}.py").read_text()))
    first_paragraph = " ".join(doc.split("\n\n")[0].split())
    assert first_paragraph in " ".join(proc.stdout.split())


@pytest.mark.parametrize("script", TAKE_A_BUNDLE)
def test_a_missing_bundle_is_one_line(script, tmp_path):
    """Each ended in a traceback (an uncaught AectlError)."""
    proc = run(script, str(tmp_path / "nothing"), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        f"error: {tmp_path / 'nothing'}: not a bundle directory (expected a folder with manifest.json)"], proc.stderr


def test_arguments_are_checked_before_measuring(tmp_path):
    """A --json folder that does not exist failed after the measurement; --rounds 1 printed nan; a bad --big
    failed after all the timing; kodak_rate on a folder without images raised IndexError."""
    proc = run("entropy_probe", "--json", str(tmp_path / "no" / "e.json"))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    proc = run("batch_probe", "--rounds", "1")
    assert proc.returncode == 2 and "--rounds: 1: give at least 2" in proc.stderr
    proc = run("ort_knobs", "--big", "256")
    assert proc.returncode == 2 and "--big 256: give HxW" in proc.stderr
    proc = run("kodak_rate", str(ROOT / "models" / "factorized-q1"), "--data", str(tmp_path))
    assert proc.returncode == 1 and proc.stderr.splitlines() == [f"error: --data {tmp_path}: no .png images there"]
    # Counts of rounds, repeats and passes that leave nothing to take a median of: an IndexError after the set-up
    # (spinning_probe), or a failure after all the calibrating and timing (int8_probe, precision, ort_knobs).
    for script, args in [("int8_probe", ["--rounds", "0"]), ("spinning_probe", ["--rounds", "0"]),
                         ("ort_knobs", ["--repeats", "0"]), ("precision", ["a", "b", "--repeats", "0"]),
                         ("entropy_probe", ["--passes", "0"]), ("entropy_probe", ["--cache-passes", "0"]),
                         ("node_profile", ["--runs", "0"]), ("cross_provider", ["--repeat", "0"])]:
        proc = run(script, *args)
        assert proc.returncode == 2 and f"{args[-2]}: 0: give at least 1" in proc.stderr, (script, proc.stderr)
