"""The shipped models' recipes as data: the from-scratch command list and what `build` still has to run."""
from pathlib import Path

from aectl.train.recipes import SHIPPED, STAGES, pending, recipe


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
