"""The shipped models' recipes as data: the from-scratch command list and what `build` still has to run."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from aectl.runtime.errors import AectlError
from aectl.train.recipes import SHIPPED, STAGES, build, pending, recipe


def test_every_shipped_quality_has_a_from_scratch_recipe():
    for quality in SHIPPED:
        commands = recipe(quality, Path("runs"))
        assert commands[0].startswith("aectl train") and "--init-from" not in commands[0], quality
        assert f"-q {quality} " in commands[-2]
        assert commands[-1].startswith("aectl export") and f"--out models/factorized-q{quality} " in commands[-1]
        assert "--entropy-classes 8" in commands[-1]  # the shipped bundles carry classified tables
        # Every --init-from names what an earlier command produced: a run paused or ended at that step, or an
        # export into that bundle.
        for i, cmd in enumerate(commands):
            if "--init-from" not in cmd:
                continue
            source = cmd.split("--init-from ")[1].split()[0]
            if source.endswith(".bundle"):
                made = [c for c in commands[:i] if c.startswith("aectl export") and c.endswith(f"--out {source}")]
            else:
                run, step = source[:-len(".pt")].split("@")
                made = [c for c in commands[:i] if f"--out {run} " in c
                        and (f"--stop-at {step} " in c or (f"--steps {step} " in c and "--stop-at" not in c))]
            assert made, (quality, source)


def test_q6_starts_from_q5s_exported_bundle():
    commands = recipe(6, Path("runs"))
    export = [c for c in commands[:-1] if c.startswith("aectl export")]
    assert export == ["aectl export runs/q5@7000.pt --out runs/q5.bundle"]
    assert [c for c in commands if "--out runs/q6 " in c][0].endswith("--init-from runs/q5.bundle --resume")
    assert commands[-2].endswith("--out runs/q6-polish --init-from runs/q6@6000.pt --resume")


def test_build_skips_ancestors_once_the_starting_bundle_exists(tmp_path):
    assert [s.name for s in pending("q6", tmp_path)] == ["q4-base", "q5", "q6"]
    (tmp_path / "q5.bundle").mkdir()
    assert [s.name for s in pending("q6-polish", tmp_path)] == ["q6", "q6-polish"]
    assert [s.name for s in pending("q2", tmp_path)] == ["q4-base", "q2-base", "q2"]
    assert all(STAGES[name].quality == q for q, name in SHIPPED.items())


def test_commands_keep_a_path_with_spaces_one_word(tmp_path):
    """Paths went into the commands unquoted: `--data "my photos"` ran as `--data my` plus a stray `photos`."""
    runs = tmp_path / "my runs"
    for cmd in recipe(4, runs, "/data/my photos"):
        args = shlex.split(cmd)
        for flag in ("--data", "--calibration"):
            if flag in args:
                assert args[args.index(flag) + 1] == "/data/my photos", cmd
        assert args[args.index("--out") + 1].startswith((str(runs), "models/")), cmd


def test_show_prints_the_commands_build_runs_and_the_manifest_records():
    """`show` defaulted to --runs runs while stage and build use runs/models, the paths each manifest records."""
    shown = subprocess.run([sys.executable, "-m", "aectl.train.recipes", "show", "4"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert shown == recipe(4, Path("runs/models"))
    manifest = json.loads((Path(__file__).resolve().parents[1] / "models/factorized-q4/manifest.json").read_text())
    assert shown == manifest["training"]["recipe"]


@pytest.mark.parametrize("args", [["show", "abc"], ["show"], ["bogus"], ["build", "4"], ["show", "4", "--runs"]])
def test_usage_errors_are_one_line(args):
    """Each of these ended in a Python traceback (typer's exception, uncaught)."""
    proc = subprocess.run([sys.executable, "-m", "aectl.train.recipes", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_build_refuses_an_existing_out_before_training(tmp_path):
    """The refusal came from export, after every stage had trained."""
    out = tmp_path / "bundle"
    out.mkdir()
    with pytest.raises(AectlError, match="exists; pass --force"):
        build(4, tmp_path / "runs", out, data=str(tmp_path / "no photos here"))
    assert not (tmp_path / "runs").exists()
