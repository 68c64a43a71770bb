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


def test_the_recipe_recorded_is_the_one_build_ran(tmp_path, monkeypatch):
    """build recorded the default --runs, --data and --out whatever it was given (`make models RUNS=...`). Its
    training and export are stood in for (hours of work); what it records is checked word by word."""
    from aectl.train import recipes

    bundle = tmp_path / "my q3"
    exported = []

    def export_stands_in(cmd: str) -> None:  # the export build runs last writes the bundle's manifest
        exported.append(cmd)
        bundle.mkdir()
        (bundle / "manifest.json").write_text(json.dumps({"training": {}}))

    monkeypatch.setattr(recipes, "train_stage", lambda *args: None)
    monkeypatch.setattr(recipes, "_run", export_stands_in)
    recipes.build(3, tmp_path / "my runs", bundle, "/data/my photos")
    recorded = json.loads((bundle / "manifest.json").read_text())["training"]["recipe"]
    assert len(exported) == 1 and recorded[-1] == exported[0], "the export recorded is the one build ran"
    assert shlex.split(recorded[0])[shlex.split(recorded[0]).index("--out") + 1] == str(tmp_path / "my runs" / "q4-base")
    assert shlex.split(recorded[-1])[shlex.split(recorded[-1]).index("--out") + 1] == str(bundle)
    assert all("--data /data/my photos" not in c and "/data/my photos" in shlex.split(c) for c in recorded
               if "--data" in c or "--calibration" in c)


@pytest.mark.parametrize("how", ["terminal Ctrl-C", "SIGTERM to build", "SIGINT to a background build"])
def test_a_stopped_stage_saves_its_checkpoint_and_leaves_nothing_running(how, photos, tmp_path):
    """subprocess.run killed the stage's `aectl train` 0.25 s after a Ctrl-C, before it could save (the work since
    its last checkpoint was lost); SIGTERM stopped the build and left its training running on its own."""
    import contextlib
    import os
    import signal
    import time

    from PIL import Image

    data = tmp_path / "photos"
    data.mkdir()
    for path in sorted(photos.iterdir())[:3]:
        with Image.open(path) as img:
            img.convert("RGB").crop((0, 0, 256, 192)).save(data / f"{path.stem}.png")
    runs = tmp_path / "runs"
    background = how == "SIGINT to a background build"  # a script's `cmd &` starts it with SIGINT ignored
    proc = subprocess.Popen([sys.executable, "-m", "aectl.train.recipes", "stage", "q4-base", "--runs", str(runs),
                             "--data", str(data)], stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None)
    try:
        deadline = time.monotonic() + 120
        while not (runs / "q4-base" / "run.json").exists():  # training has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.2)
        time.sleep(2)
        expected = signal.SIGTERM if how == "SIGTERM to build" else signal.SIGINT
        if how == "terminal Ctrl-C":  # the terminal signals the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(expected)
        _, stderr = proc.communicate(timeout=120)
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):  # nothing of the build still running
            os.killpg(proc.pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + expected, stderr
    assert f"stopped by signal {int(expected)} at step" in stderr and "checkpoint saved" in stderr, stderr
    assert stderr.splitlines()[-1] == "error: stopped; run the same command again to resume", stderr
    assert (runs / "q4-base" / "last.pt").is_file()


def test_a_stage_stopped_at_its_pause_resumes(photos, tmp_path, monkeypatch):
    """A stop landing at a pause (the run saved at that step, its snapshot not yet copied) left the stage
    unresumable: the same command ran `--stop-at N --resume` on a run already at N, which train refuses."""
    from PIL import Image

    import aectl.train.recipes as recipes

    data = tmp_path / "photos"
    data.mkdir()
    for path in sorted(photos.iterdir())[:3]:
        with Image.open(path) as img:
            img.convert("RGB").crop((0, 0, 96, 64)).save(data / f"{path.stem}.png")
    monkeypatch.setattr(recipes, "COMMON", "--preset factorized --channels 8,8 --crop 32 --batch-size 2 "
                                           "--threads 1 --seed 0 --no-progress")
    monkeypatch.setattr(recipes, "STAGES", {"tiny": recipes.Stage("tiny", 4, 1e-3, 4, snapshots=(2,))})
    runs = tmp_path / "runs"
    recipes._run(recipes.commands(recipes.STAGES["tiny"], runs, str(data))[0])  # paused at 2, as a stop there
    assert not (runs / "tiny@2.pt").exists()
    recipes.train_stage("tiny", runs, str(data))
    assert recipes._at_step(runs / "tiny", 4)
    assert (runs / "tiny@2.pt").is_file() and (runs / "tiny@4.pt").is_file()


def test_an_interrupt_between_stages_is_one_line_with_the_signals_status():
    """typer returns 130 for a KeyboardInterrupt instead of raising it, so the build exited 130 with nothing said,
    SIGTERM (143) included."""
    code = ("import signal, sys\nimport aectl.train.recipes as recipes\n"
            "def stopped_here(*args, **kwargs):\n    signal.raise_signal(signal.SIGTERM)\n"
            "recipes.recipe = stopped_here\nsys.argv = ['recipes', 'show', '3']\nrecipes.main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143 and proc.stderr == "error: stopped; run the same command again to resume\n", \
        (proc.returncode, proc.stderr)

