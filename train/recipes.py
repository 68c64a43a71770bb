"""How every shipped bundle was trained, as data: the exact `aectl train` stages, from scratch, in order.

Training budget here is a 2-core CPU, so the shipped qualities share work: one long quality-4 run from
scratch, and the other qualities start from its weights (or a neighbour's) with their own lambda, as
learned-codec papers do when they fine-tune a rate point from a neighbouring one. A stage may be paused at
several steps (`snapshots`) so later stages can start from that point; `--stop-at` pauses a run without
changing its learning-rate schedule, and `--resume` continues it exactly.

    python -m aectl.train.recipes show 4                 # the commands behind models/factorized-q4
    python -m aectl.train.recipes build 4 --runs runs/models --out models/factorized-q4

`build` runs (or resumes) every stage the quality needs, exports the bundle and records the recipe in its
manifest ("training.recipe"). From scratch it is many CPU hours; on a GPU, `--device cuda` in COMMON.
Runs are repeatable (seeded, resume is exact), but a retrain on another machine or torch version matches
the shipped numbers statistically, not bit for bit.
"""
from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import typer

from aectl.runtime.errors import TRAIN_MODULES, AectlError, missing_extra, received_signals, require_extra
from aectl.runtime.outputs import atomic_write

DATA = "../shared/data/photos"
ENTROPY_CLASSES = 8  # classified entropy tables fitted at export on the training photos (export/entropy_classes.py)
COMMON = "--preset factorized --channels 64,128 --crop 128 --batch-size 8 --threads 1 --seed 0 --no-progress"


@dataclass(frozen=True)
class Stage:
    name: str                      # run folder under --runs
    quality: int
    lr: float
    steps: int                     # the length the learning-rate schedule is planned for
    init_from: str | None = None   # "stage" (its end) or "stage@step" (one of its snapshots)
    via_bundle: bool = False       # start from init_from's exported bundle (ONNX weights, density refitted)
    stop_at: int | None = None     # where the stage ends, if before `steps`
    snapshots: tuple[int, ...] = field(default=())

    @property
    def end(self) -> int:
        return self.stop_at or self.steps

    def pauses(self) -> list[int]:
        return sorted(set(self.snapshots) | {self.end})


STAGES = {s.name: s for s in (
    Stage("q4-base", 4, 3e-4, 300_000, stop_at=26_840, snapshots=(14_349,)),
    Stage("q2-base", 2, 3e-4, 300_000, init_from="q4-base@14349", stop_at=9_677),
    Stage("q4", 4, 3e-5, 2_000, init_from="q4-base@26840"),
    Stage("q5", 5, 3e-4, 7_000, init_from="q4-base@26840"),
    Stage("q2", 2, 3e-4, 7_000, init_from="q2-base@9677"),
    # Trained after the checkpoints above were lost between sessions: these start from the neighbouring
    # quality's exported bundle (`--init-from BUNDLE`), which a from-scratch build exports the same way.
    Stage("q6", 6, 3e-4, 6_000, init_from="q5", via_bundle=True),
    Stage("q1", 1, 3e-4, 5_000, init_from="q2", via_bundle=True),
    Stage("q3", 3, 3e-4, 7_000, init_from="q4", via_bundle=True),
    # Polish: a longer low learning-rate phase. The last 10% of each stage above (at a tenth of its rate) was
    # worth 0.4-0.8 dB; these continue at that rate for longer.
    Stage("q6-polish", 6, 3e-5, 3_000, init_from="q6"),
    Stage("q5-polish", 5, 3e-5, 3_000, init_from="q5", via_bundle=True),
    Stage("q4-polish", 4, 3e-5, 3_000, init_from="q4", via_bundle=True),
    Stage("q3-polish", 3, 3e-5, 3_000, init_from="q3"),
    Stage("q2-polish", 2, 3e-5, 3_000, init_from="q2", via_bundle=True),
    Stage("q1-polish", 1, 3e-5, 3_000, init_from="q1"),
    # Long: another full cycle at a third of the first rate (then a tenth of it for the last 10%) for the
    # qualities the BD-rate against JPEG is most sensitive to (the middle of the curve).
    Stage("q2-long", 2, 1e-4, 11_000, init_from="q2-polish"),
    Stage("q3-long", 3, 1e-4, 11_000, init_from="q3-polish"),
    Stage("q4-long", 4, 1e-4, 11_000, init_from="q4-polish"),
    # A point above 1 bpp: quality 7 (lambda 0.0932) fine-tuned from the polished quality 6.
    Stage("q7", 7, 3e-4, 5_000, init_from="q6-polish"),
    Stage("q7-polish", 7, 3e-5, 2_000, init_from="q7"),
    # A second long cycle for quality 2: 0.232 -> 0.228 bpp at the same 28.25 dB on kodak-dev.
    Stage("q2-long2", 2, 1e-4, 11_000, init_from="q2-long"),
    # The long stage for quality 5 too: 0.677 bpp / 32.34 dB -> 0.692 / 32.59 dB (+1.04 -> +1.18 dB over JPEG).
    Stage("q5-long", 5, 1e-4, 11_000, init_from="q5-polish"),
)}
# quality -> the stage whose end is shipped
SHIPPED = {1: "q1", 2: "q2-long2", 3: "q3-long", 4: "q4-long", 5: "q5-long", 6: "q6-polish",
           7: "q7-polish"}


def stage_named(name: str) -> Stage:
    if name not in STAGES:
        raise AectlError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]


def lineage(name: str) -> list[Stage]:
    """The stages a stage depends on, roots first, itself last."""
    stage = stage_named(name)
    parent = stage.init_from.split("@")[0] if stage.init_from else None
    return (lineage(parent) if parent else []) + [stage]


def snapshot(runs: Path, name: str, step: int) -> Path:
    return runs / f"{name}@{step}.pt"


def source_checkpoint(runs: Path, ref: str) -> Path:
    name, _, step = ref.partition("@")
    return snapshot(runs, name, int(step) if step else STAGES[name].end)


def source_bundle(runs: Path, ref: str) -> Path:
    """Where a stage's end is exported for stages that start from a bundle."""
    return runs / f"{ref}.bundle"


def init_source(runs: Path, stage: Stage) -> Path:
    return source_bundle(runs, stage.init_from) if stage.via_bundle else source_checkpoint(runs, stage.init_from)


def commands(stage: Stage, runs: Path, data: str = DATA) -> list[str]:
    """One `aectl train` command per pause point; each after the first resumes the same run."""
    out = []
    for i, pause in enumerate(stage.pauses()):
        cmd = (f"aectl train {COMMON} -q {stage.quality} --lr {stage.lr:g} --steps {stage.steps} "
               f"--data {_q(data)} --out {_q(runs / stage.name)}")
        if stage.init_from:
            cmd += f" --init-from {_q(init_source(runs, stage))}"
        if pause != stage.steps:
            cmd += f" --stop-at {pause}"
        out.append(cmd + " --resume")
    return out


def shipped_stage(quality: int) -> str:
    """The stage whose end is shipped as `quality`."""
    if quality not in SHIPPED:
        raise AectlError(f"no recipe for quality {quality}; shipped: {', '.join(map(str, SHIPPED))}")
    return SHIPPED[quality]


def recipe(quality: int, runs: Path = Path("runs"), data: str = DATA, bundle: Path | None = None) -> list[str]:
    """The commands that make a shipped quality from scratch, ending in the export into `bundle` (by default
    where it ships, models/factorized-qN)."""
    out = []
    for stage in lineage(shipped_stage(quality)):
        if stage.via_bundle:
            out.append(export_command(runs, stage))
        out += commands(stage, runs, data)
    bundle = Path(f"models/factorized-q{quality}") if bundle is None else bundle
    return out + [ship_command(shipped_snapshot(runs, quality), bundle, data)]


def shipped_snapshot(runs: Path, quality: int) -> Path:
    """The checkpoint a quality's bundle is exported from: its shipped stage at its end."""
    name = shipped_stage(quality)
    return snapshot(runs, name, STAGES[name].end)


def ship_command(checkpoint: Path, out: Path, data: str) -> str:
    """The export that makes a shipped bundle: fp32, with classified entropy tables fitted on the training data."""
    return (f"aectl export {_q(checkpoint)} --out {_q(out)} --entropy-classes {ENTROPY_CLASSES} "
            f"--calibration {_q(data)}")


def export_command(runs: Path, stage: Stage) -> str:
    """How a via_bundle stage's starting bundle is made from its parent's snapshot."""
    return (f"aectl export {_q(source_checkpoint(runs, stage.init_from))} "
            f"--out {_q(source_bundle(runs, stage.init_from))}")


def _q(path) -> str:
    """A path as one shell word, so that the printed commands run as shown and _run splits them back right."""
    return shlex.quote(str(path))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """A stage's command was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP); carries the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _run(cmd: str) -> None:
    """Run one stage's command and wait for it. Ctrl-C, SIGTERM and SIGHUP are passed on to it and waited for,
    so `aectl train` saves its checkpoint and the next build resumes there: subprocess.run killed it 0.25 s after
    a Ctrl-C (before its step ended, so the work since its last checkpoint was lost), and SIGTERM left it
    training on its own, holding its run folder's lock."""
    typer.echo(f"$ {cmd}", err=True)
    args = shlex.split(cmd)
    args[0] = str(Path(sys.executable).parent / "aectl")
    received: list[int] = []
    child: subprocess.Popen | None = None

    def pass_on(signum, frame) -> None:
        received.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)  # twice for a terminal's Ctrl-C, which reached it too: train stops once

    # Installed before the child starts, so a signal during its start is passed on too (it orphaned it). An
    # inherited ignored SIGINT (a script's background job) is taken back, as `aectl train` does; nohup's SIGHUP
    # stays ignored.
    handled = [s for s in STOP_SIGNALS if s != signal.SIGHUP or signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, pass_on) for s in handled}
    try:
        if received:
            raise Stopped(received[0])
        child = subprocess.Popen(args)
        if received:  # it arrived while the child started
            child.send_signal(received[0])
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received or -status in STOP_SIGNALS or status - 128 in STOP_SIGNALS:  # aectl exits 128 + the signal
        raise Stopped(received[0] if received else -status if status < 0 else status - 128)
    if status != 0:
        raise AectlError(f"stage failed: {cmd}")


def _at_step(run: Path, step: int) -> bool:
    """Whether a run's checkpoint stands at `step` (a stage paused there, or stopped at the pause itself)."""
    from aectl.train.checkpoint import load_checkpoint

    return (run / "last.pt").is_file() and load_checkpoint(run / "last.pt").get("step") == step


def _keep_snapshot(runs: Path, stage: Stage, pause: int) -> None:
    with open(runs / stage.name / "last.pt", "rb") as last:  # whole or not at all, as it is skipped once it exists
        atomic_write(snapshot(runs, stage.name, pause), lambda fh: shutil.copyfileobj(last, fh), force=True)


def pending(name: str, runs: Path) -> list[Stage]:
    """The stages `build` must visit for a stage, roots first: ancestors are skipped once what the stage starts
    from (a snapshot, or an exported bundle) is already in `runs`."""
    stage = stage_named(name)
    if stage.init_from is None or init_source(runs, stage).exists():
        return [stage]
    return pending(stage.init_from.split("@")[0], runs) + [stage]


def train_stage(name: str, runs: Path, data: str = DATA) -> None:
    """Run (or resume) a stage and whatever it still needs, keeping a snapshot at each of its pauses."""
    for stage in pending(name, runs):
        if stage.via_bundle and not source_bundle(runs, stage.init_from).exists():
            _run(export_command(runs, stage))
        for pause, cmd in zip(stage.pauses(), commands(stage, runs, data)):
            if snapshot(runs, stage.name, pause).exists():
                continue
            # A stop at the pause itself (or between the run and the copy) left the run there without its
            # snapshot, and `--stop-at` on a run already at that step is refused: the copy is what was missing.
            if not _at_step(runs / stage.name, pause):
                try:
                    _run(cmd)
                except Stopped:
                    if _at_step(runs / stage.name, pause):
                        _keep_snapshot(runs, stage, pause)
                    raise
            _keep_snapshot(runs, stage, pause)


def build(quality: int, runs: Path, out: Path, data: str = DATA, force: bool = False) -> Path:
    """Train (resuming whatever is done), export, and record the recipe in the bundle's manifest."""
    if out.exists() and not force:  # before hours of training, not after
        raise AectlError(f"--out {out} exists; pass --force to replace it")
    train_stage(shipped_stage(quality), runs, data)
    _run(ship_command(shipped_snapshot(runs, quality), out, data) + (" --force" if force else ""))
    record_recipe(out, quality, runs, data)
    return out


def record_recipe(bundle: Path, quality: int, runs: Path = Path("runs/models"), data: str = DATA) -> None:
    """Write the from-scratch commands into the manifest (not part of the model id or the file hashes): the ones
    this build ran, with its --runs, --data and --out (it recorded the defaults whatever they were)."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["training"]["recipe"] = recipe(quality, runs, data, bundle)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(manifest_path)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


@app.command()
def show(quality: int, runs: Path = typer.Option(Path("runs/models")), data: str = DATA) -> None:
    """Print the commands that train a shipped quality from scratch."""
    typer.echo("\n".join(recipe(quality, runs, data)))


@app.command("stage")
def stage_command(name: str, runs: Path = typer.Option(Path("runs/models")), data: str = DATA) -> None:
    """Run (or resume) one stage, shipped or not, and the stages it starts from."""
    require_extra(*TRAIN_MODULES)  # a stage may export its starting bundle
    train_stage(name, runs, data)


@app.command("build")
def build_command(quality: int, runs: Path = typer.Option(Path("runs/models")),
                  out: Path = typer.Option(...), data: str = DATA,
                  force: bool = typer.Option(False, "--force", help="replace the bundle at --out")) -> None:
    """Run every stage a shipped quality needs (resuming), then export it with its recipe recorded."""
    require_extra(*TRAIN_MODULES)
    build(quality, runs, out, data, force)


def _raise_interrupt(signum, frame) -> None:
    received_signals.append(signum)
    raise KeyboardInterrupt


def _stopped(signum: int | None = None) -> None:
    """One line, and the shell's status for the signal (the stage's, else the first this process got)."""
    print("error: stopped; run the same command again to resume", file=sys.stderr)
    sys.exit(128 + (signum or (received_signals[0] if received_signals else signal.SIGINT)))


def main() -> None:
    """`python -m aectl.train.recipes`: errors and stops in one line, as aectl's own commands give them."""
    signal.signal(signal.SIGTERM, _raise_interrupt)  # between stages too: no half-copied snapshot left
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        code = app(standalone_mode=False)
    except AectlError as exc:
        sys.exit(f"error: {exc}")
    except ModuleNotFoundError as exc:  # an install without the [train] extra: a 40-line traceback
        message = missing_extra(exc)
        if message is None:
            raise
        sys.exit(f"error: {message}")
    except Stopped as stop:  # the stage said where it stopped; the same command resumes from there
        _stopped(stop.signum)
    except (KeyboardInterrupt, typer.Abort):
        _stopped()
    except typer.exceptions.TyperException as exc:  # usage errors: one line, as aectl's own commands give them
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message:  # none when the help was printed (no arguments)
            print(f"error: {message}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    if code == 130 or received_signals:  # typer returns 130 for a KeyboardInterrupt instead of raising it
        _stopped()
    sys.exit(code)


if __name__ == "__main__":
    main()
