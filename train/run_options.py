"""What a run trains with: its options, checked in one line each before any photo loads, and on `--resume` merged
with the options its checkpoint holds (run options must match; a new schedule is taken with a note)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from aectl.runtime.errors import AectlError
from aectl.runtime.providers import check_threads
from aectl.train.checkpoint import CHECKPOINT, load_checkpoint, preset_of, training_data
from aectl.train.data import STL10_SIDE
from aectl.train.run_folder import RUN_FILES
from aectl.train.zoo import Preset, get_preset

# Options that make a run what it is. A resumed run takes them from its checkpoint and refuses other values
# (start a new run with --init-from for that).
RUN_OPTIONS = ("preset", "quality", "channels", "seed", "data", "data_root", "crop", "batch_size")
# The schedule (steps or epochs, lr, fit_steps): a resumed run keeps its own unless given again, and takes a
# new value with a note (e.g. more --steps).
FIT_STEPS = 1000


@dataclass(kw_only=True)
class TrainConfig:
    out: str
    preset: str | None = None        # needed for a new run; a resumed run's is taken from its checkpoint
    data: str | None = None          # likewise; kept as given (the manifest quotes it)
    data_path: str | None = None     # the same folder, absolute (set by resolve_run, kept across resumes)
    quality: int | None = None
    channels: tuple[int, int] | None = None
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None          # 0 for a new run
    device: str = "auto"
    resume: bool = False
    data_root: str | None = None
    threads: int | None = None
    crop: int | None = None          # override the preset's training crop side
    init_from: str | None = None     # start from another run's weights (e.g. a neighbouring quality)
    checkpoint_every: float = 60.0   # seconds between checkpoints
    fit_steps: int | None = None     # entropy-model fitting steps (FIT_STEPS): seed presets after training,
                                     # bundle init before
    stop_at: int | None = None       # pause here with a checkpoint; the schedule still follows steps/epochs
    force: bool = False              # start a new run over the run files already in `out`


def resolve_run(cfg: TrainConfig, log=print) -> tuple[TrainConfig, dict | None]:
    """The options a run trains with, and the checkpoint it continues (None for a new run).

    A new run needs --preset and --data. A resumed run takes every option not given again from its checkpoint:
    the run options must match (compared as the values they stand for: `data` and `data/` are one folder, an
    omitted --batch-size is the preset's), while a new schedule is taken with a note. Photos moved since the run
    was made are followed with --data NEW, also with a note."""
    if not cfg.out or cfg.data == "":  # "" is the working directory to Path
        raise AectlError(f"--{'out' if not cfg.out else 'data'} \"\": give a folder")
    if cfg.force and cfg.resume:
        raise AectlError("--force starts a new run over the one in --out and --resume continues it: give one")
    _check_numbers(cfg)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if not ckpt_path.exists() or cfg.force:
        earlier = [name for name in RUN_FILES[1:] if (out / name).exists()]
        if cfg.resume:  # killed before its first checkpoint: it starts again, its log with it
            log(f"note: nothing to resume in {out}; starting a new run")
        elif earlier and not cfg.force:  # the new run's log was appended to the old one's
            raise AectlError(f"{out} holds {' and '.join(earlier)} of an earlier run; pass --force to start a new "
                             "run there, or pick another --out")
        if cfg.preset is None or cfg.data is None:
            raise AectlError("a new run needs --preset and --data")
        if cfg.init_from and not Path(cfg.init_from).exists():  # it was said after the photos were loaded
            raise AectlError(f"--init-from {cfg.init_from}: no such checkpoint or bundle")
        if cfg.fit_steps is not None and cfg.preset == "factorized" and \
                not (cfg.init_from and (Path(cfg.init_from) / "manifest.json").is_file()):  # ignored without a word
            log("note: --fit-steps does nothing here: a factorized run trains its density with the model (it "
                "refits one only for --init-from BUNDLE)")
        cfg = replace(cfg, seed=cfg.seed or 0, fit_steps=FIT_STEPS if cfg.fit_steps is None else cfg.fit_steps,
                      data_path=absolute_data(cfg.data),  # both absolute: resumed from elsewhere, they still name it
                      data_root=str(Path(cfg.data_root).resolve()) if cfg.data_root else None)
        _check_options(cfg)
        _check_init_source(cfg)
        return cfg, None
    if not cfg.resume:
        raise AectlError(f"{out} already holds a checkpoint; pass --resume to continue it, --force to start a new "
                         "run over it, or pick another --out")
    resumed = load_checkpoint(ckpt_path)
    old = resumed["config"]
    merged = {key: old.get(key) if getattr(cfg, key) is None else getattr(cfg, key) for key in RUN_OPTIONS}
    # The folder it was, wherever this command runs from (runs before data_path: resolved from here).
    merged["data_path"] = ((old.get("data_path") or absolute_data(old["data"])) if cfg.data is None
                           else absolute_data(cfg.data))
    if merged["channels"] is not None:
        merged["channels"] = tuple(merged["channels"])
    if merged["preset"] != "factorized":  # only what was given now, which _check_options refuses
        merged.update(quality=cfg.quality, channels=cfg.channels)
    before, now = _effective_options(old), _effective_options(merged)
    recorded = training_data(old)
    if recorded != "stl10" and not Path(recorded).is_dir():  # moved or deleted since the run was made
        if cfg.data is None:
            raise AectlError(f"the run's training data {recorded} is not a folder here any more; if it moved, "
                             "pass --data FOLDER with --resume")
        if now["data"] != "stl10":  # the only way on for a run whose photos moved (it was refused as "differs")
            log(f"note: the run's training data {recorded} is gone; training goes on with {now['data']}")
            before["data"] = now["data"]
    for key in RUN_OPTIONS:
        if before[key] != now[key]:
            raise AectlError(f"--resume: --{key.replace('_', '-')} {now[key]} differs from the run in {out} "
                             f"({before[key]}); start a new run from it with --init-from {out}")
    if cfg.steps is None and cfg.epochs is None:
        merged.update(steps=old.get("steps"), epochs=old.get("epochs"))
    elif (cfg.steps, cfg.epochs) != (old.get("steps"), old.get("epochs")):
        if cfg.steps is not None and cfg.steps <= resumed["step"]:  # it rewrote the run as finished, unfitted
            raise AectlError(f"--steps {cfg.steps}: the run in {out} is already at step {resumed['step']}; give "
                             "more steps to go on training")
        log(f"note: the schedule now follows --{'steps' if cfg.steps is not None else 'epochs'} "
            f"{cfg.steps if cfg.steps is not None else cfg.epochs}")
    merged["lr"] = old.get("lr") if cfg.lr is None else cfg.lr
    if cfg.lr is not None and cfg.lr != resumed.get("run", {}).get("lr", old.get("lr")):
        log(f"note: the learning rate is now {cfg.lr:g}")
    merged["fit_steps"] = old.get("fit_steps", FIT_STEPS) if cfg.fit_steps is None else cfg.fit_steps
    # torch's thread count changes how float sums are split, so the run keeps its own to continue exactly.
    merged["threads"] = old.get("threads") if cfg.threads is None else cfg.threads
    if cfg.threads is not None and cfg.threads != old.get("threads"):
        used = old.get("threads") or "torch's default"
        log(f"note: training now runs on {cfg.threads} threads (the run used {used}); the weights will differ in "
            "their last bits from an uninterrupted run's")
    cfg = replace(cfg, **merged)
    _check_options(cfg)
    if cfg.stop_at is not None and cfg.stop_at <= resumed["step"]:
        raise AectlError(f"--stop-at {cfg.stop_at}: the run in {out} is already at step {resumed['step']}")
    return cfg, resumed


def _check_init_source(cfg: TrainConfig) -> None:
    """What --init-from names must hold this run's architecture, said before the photos load (it was said after
    them, as "its architecture differs", naming neither). A seed-dense bundle cannot be trained on: export folds
    its BatchNorm into the dense layers, so their own weights are not in it ("weights not found")."""
    if not cfg.init_from:
        return
    source = Path(cfg.init_from)
    if (source / "manifest.json").is_file():
        from aectl.runtime.bundle import read_json

        recorded = read_json(source / "manifest.json")
        recorded = recorded if isinstance(recorded, dict) else {}
        if recorded.get("preset") == "seed-dense":
            raise AectlError(f"--init-from {source}: a seed-dense bundle holds its BatchNorm folded into the dense "
                             "layers, so their training weights are not in it; start from the run's folder or its "
                             "checkpoint instead")
        arch = recorded.get("architecture") if isinstance(recorded.get("architecture"), dict) else {}
        theirs = _architecture(recorded.get("preset"), (arch.get("n"), arch.get("m")))
    else:
        config = load_checkpoint(source).get("config") or {}
        theirs = _architecture(config["preset"], _channels_of(preset_of(config))) if config.get("preset") else None
    ours = _architecture(cfg.preset, _channels_of(get_preset(cfg.preset, cfg.quality, cfg.channels)))
    if theirs and theirs != ours:
        raise AectlError(f"--init-from {source}: its architecture differs from this run's: it is {theirs}, this run "
                         f"{ours}")


def _channels_of(preset: Preset) -> tuple[int, int] | None:
    return (preset.params["n"], preset.params["m"]) if "n" in preset.params else None


def _architecture(preset: str | None, channels) -> str | None:
    """A model's architecture as the options that choose it: `seed-conv`, `factorized --channels 64,128`."""
    if preset == "factorized":
        known = channels and None not in channels
        return f"factorized --channels {channels[0]},{channels[1]}" if known else None
    return preset  # None where not recorded: left, as unknown channels are, to the weights' own check


def _check_numbers(cfg: TrainConfig) -> None:
    """The numbers' own ranges, whatever the run: checked first, so that a resume's note on a new schedule
    (`the schedule now follows --epochs 0`) is not printed for a value then refused."""
    for name in ("batch_size", "epochs", "steps", "stop_at", "fit_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise AectlError(f"--{name.replace('_', '-')} must be positive")
    if cfg.steps is not None and cfg.epochs is not None:
        raise AectlError("give --steps or --epochs, not both")
    # --lr 0 trained at the preset's rate; -1 and inf failed in torch's words once the photos were loaded
    if cfg.lr is not None and not 0 < cfg.lr < math.inf:
        raise AectlError(f"--lr {cfg.lr:g}: give a positive learning rate")
    if cfg.seed is not None and not 0 <= cfg.seed < 2**63:
        raise AectlError(f"--seed {cfg.seed}: give a whole number from 0 to 2**63 - 1")
    if not cfg.checkpoint_every >= 0:  # nan compared false and never saved
        raise AectlError(f"--checkpoint-every {cfg.checkpoint_every:g}: give seconds, 0 or more")


def _check_options(cfg: TrainConfig) -> None:
    """Refuse impossible options in one line before any data is loaded."""
    preset = get_preset(cfg.preset, cfg.quality, cfg.channels)
    if cfg.crop is not None:  # 0 was the preset's crop and -16 a multiple of 16 (numpy then failed)
        if cfg.crop < 1:
            raise AectlError("--crop must be positive")
        if preset.fixed_size and cfg.crop != preset.fixed_size:
            raise AectlError(f"--crop: {preset.name} only takes {preset.fixed_size}x{preset.fixed_size} inputs")
        if cfg.crop % preset.stride:
            raise AectlError(f"--crop must be a multiple of {preset.stride} for {preset.name}")
    _check_numbers(cfg)
    if cfg.steps is not None and cfg.stop_at is not None and cfg.stop_at > cfg.steps:
        raise AectlError(f"--stop-at {cfg.stop_at} is past the run's last step ({cfg.steps})")
    if cfg.data_root and cfg.data != "stl10":  # it was ignored without a word
        raise AectlError("--data-root is the folder holding stl10_binary/, for --data stl10 only")
    batch_size = cfg.batch_size or preset.batch_size
    if batch_size < preset.min_batch:  # torch's ValueError at the first step, after run.json was written
        raise AectlError(f"--batch-size {batch_size}: {preset.name} needs at least {preset.min_batch} crops a step "
                         "(its BatchNorm takes its statistics from the batch)")
    crop = cfg.crop or preset.crop
    if cfg.data == "stl10" and crop > STL10_SIDE:  # numpy's "high <= 0" at the first batch
        raise AectlError(f"--data stl10: its images are {STL10_SIDE}x{STL10_SIDE}, smaller than {preset.name}'s "
                         f"{crop}x{crop} crops; give --crop {STL10_SIDE // preset.stride * preset.stride} or less, or "
                         "a folder of larger images")
    check_threads(cfg.threads, allow_auto=False)  # torch's thread count: 0 is not onnxruntime's "own choice" here


def _effective_options(config: dict) -> dict:
    """What a run's options stand for, with the preset's defaults filled in and the data folder resolved."""
    preset = preset_of(config)
    data = training_data(config)
    return {"preset": preset.name, "quality": preset.params.get("quality"),
            "channels": (preset.params["n"], preset.params["m"]) if "n" in preset.params else None,
            "seed": config.get("seed") or 0, "data": data if data == "stl10" else str(Path(data).resolve()),
            "data_root": str(Path(config["data_root"]).resolve()) if config.get("data_root") else None,
            "crop": config.get("crop") or preset.crop, "batch_size": config.get("batch_size") or preset.batch_size}


def config_dict(cfg: TrainConfig) -> dict:
    d = dict(cfg.__dict__)
    d["channels"] = list(cfg.channels) if cfg.channels else None
    return d


def absolute_data(data: str) -> str | None:
    return None if data == "stl10" else str(Path(data).resolve())
