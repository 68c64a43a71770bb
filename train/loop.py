"""The training loop, top to bottom: data, model, optimisers, steps, validation, checkpoints.

Rate-distortion presets minimise  bpp + lambda * 255^2 * MSE  with uniform noise for rounding (Balle et al.
2017) plus the entropy bottleneck's quantile loss on its own optimiser. The seed presets train on MSE alone, as
their articles do (no rate term), though through the same noisy latents; afterwards a quantisation step and a
factorized density are fitted to their latents (fit_seed_entropy) so that they get a real bitstream too.

A run directory holds `run.json` (what was asked), `last.pt` (written atomically; everything needed to resume
exactly: weights, optimiser states, step, RNG states, the options) and `log.jsonl` (one line per validation).
`--resume` takes the run's options from its checkpoint, so `aectl train --out RUN --resume` continues it as it
was started.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import shlex
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from aectl.runtime.errors import AectlError, received_signals
from aectl.runtime.outputs import atomic_write, make_folders, remove_empty, write_error
from aectl.runtime.providers import check_threads
from aectl.train.data import STL10_SIDE, CropSampler, center_crops, folder_digest, load_folder, load_stl10
from aectl.train.distributed import Distributed
from aectl.train.zoo import Preset, get_preset

CHECKPOINT = "last.pt"
RUN_FILES = (CHECKPOINT, "run.json", "log.jsonl")  # what a run writes into its folder
MIN_EPOCH_STEPS = 50


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AectlError("--device cuda: this torch build sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise AectlError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def bits_per_pixel(likelihoods: torch.Tensor, num_pixels: int) -> torch.Tensor:
    return torch.log2(likelihoods).sum().neg() / num_pixels


def psnr(mse: float) -> float:
    return 10 * math.log10(1 / max(mse, 1e-12))


def atomic_torch_save(obj, path: Path) -> None:
    """Serialised in memory, then written through the runtime's atomic writer: a full disk or a file-size limit
    says `cannot write last.pt: File too large` and leaves no temporary file (torch.save to a fixed .tmp name
    left one behind, behind an `inline_container.cc` internal error)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer(), force=True)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file, or a run directory's latest one. Loaded with torch's `weights_only` unpickler: a
    checkpoint holds tensors, dicts, lists and numbers only, and the full unpickler runs whatever code a file
    names (a crafted .pt ran a shell command before it was refused as corrupt)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise AectlError(f"no checkpoint at {path} (train first: aectl train ... --out RUN_DIR)")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": a plain pickle, refused just below
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise AectlError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    except Exception as exc:  # torch's own message tells the reader to turn the check off
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):  # a class or function it names
            raise AectlError(f"cannot read checkpoint {path}: it holds Python objects besides weights and numbers, "
                             "which only a trusted file may load (aectl's own checkpoints never do)") from None
        raise AectlError(f"cannot read checkpoint {path}: not a complete torch checkpoint (cut short, or another "
                         "kind of file)") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("config"), dict) or "preset" not in ckpt["config"]:
        raise AectlError(f"{path} is not an aectl checkpoint (a torch file without aectl's config and model "
                         "weights; aectl train writes them)")
    return ckpt


def build_from_checkpoint(ckpt: dict, path="the checkpoint") -> tuple[torch.nn.Module, Preset]:
    preset = preset_of(ckpt["config"])
    model = preset.build()
    load_weights(model, ckpt["model"], path, preset)
    model.eval()
    return model, preset


def load_weights(model, weights: dict, path, preset: Preset) -> None:
    """A checkpoint's weights into the model its options describe, or one line (torch's size-mismatch
    RuntimeError ran to 500 characters)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise AectlError(f"{path}: its weights do not fit the {preset.name} model its options describe") from None


@torch.no_grad()
def evaluate(model, preset: Preset, val: torch.Tensor, device: torch.device) -> dict:
    """Validation: quantised reconstruction PSNR, estimated bpp, and the training loss on the val crops."""
    model.eval()
    mse_sum, bits, loss_sum = 0.0, 0.0, 0.0
    for start in range(0, len(val), 16):
        x = val[start:start + 16].to(device)
        out = model(x)
        x_hat = out["x_hat"].clamp(0, 1)
        mse = F.mse_loss(x_hat, x).item()
        mse_sum += mse * len(x)
        bits += torch.log2(out["likelihoods"]).sum().neg().item()
        loss_sum += loss_terms(model, preset, x, out)["loss"].item() * len(x)
    model.train()
    n = len(val)
    mse = mse_sum / n
    return {"val_loss": loss_sum / n, "val_mse": mse, "val_psnr": psnr(mse),
            "val_bpp": bits / (n * val.shape[-1] * val.shape[-2])}


def loss_terms(model, preset: Preset, x: torch.Tensor, out: dict) -> dict:
    mse = F.mse_loss(out["x_hat"], x)
    if not preset.rate_distortion:
        return {"loss": mse, "mse": mse}
    bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
    return {"loss": bpp + preset.params["lmbda"] * 255**2 * mse, "mse": mse, "bpp": bpp}


def learning_rate(base: float, step: int, total: int) -> float:
    """Constant, then a tenth for the last 10% of the run (a common schedule for these models)."""
    return base * (0.1 if step >= 0.9 * total else 1.0)


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
                      data_path=_absolute(cfg.data),  # both absolute: resumed from elsewhere, they still name it
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
    merged["data_path"] = (old.get("data_path") or _absolute(old["data"])) if cfg.data is None else _absolute(cfg.data)
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


def preset_of(config: dict) -> Preset:
    """A run's preset from its stored options (older seed runs may hold an unused quality)."""
    if config["preset"] != "factorized":
        return get_preset(config["preset"])
    channels = tuple(config["channels"]) if config.get("channels") else None
    return get_preset("factorized", config.get("quality"), channels)


def _effective_options(config: dict) -> dict:
    """What a run's options stand for, with the preset's defaults filled in and the data folder resolved."""
    preset = preset_of(config)
    data = training_data(config)
    return {"preset": preset.name, "quality": preset.params.get("quality"),
            "channels": (preset.params["n"], preset.params["m"]) if "n" in preset.params else None,
            "seed": config.get("seed") or 0, "data": data if data == "stl10" else str(Path(data).resolve()),
            "data_root": str(Path(config["data_root"]).resolve()) if config.get("data_root") else None,
            "crop": config.get("crop") or preset.crop, "batch_size": config.get("batch_size") or preset.batch_size}


def train(cfg: TrainConfig, progress: bool = True, log=print,
          resolved: tuple[TrainConfig, dict | None] | None = None) -> dict:
    """Run (or resume) training; returns the final metrics. Checkpoints land in cfg.out.
    resolved: what resolve_run(cfg) returned, when the caller has already checked the options."""
    cfg, resumed = resolved or resolve_run(cfg, log)
    device = pick_device(cfg.device)
    ddp = Distributed(device)  # joined first, so that every rank hears whether rank 0 could lock the run folder
    with _run_folder(Path(cfg.out), ddp):
        try:
            return _train(cfg, resumed, progress, log, ddp, ddp.device(device))
        except BaseException:
            if ddp.is_main and not resumed and not (Path(cfg.out) / CHECKPOINT).exists():
                for name in RUN_FILES:  # a new run that failed before its first checkpoint leaves nothing: its
                    (Path(cfg.out) / name).unlink(missing_ok=True)  # run.json blocked the retry ("pass --force")
            raise


def _train(cfg: TrainConfig, resumed: dict | None, progress: bool, log, ddp: Distributed,
           device: torch.device) -> dict:
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    preset = get_preset(cfg.preset, cfg.quality, cfg.channels)
    if cfg.crop is not None:
        preset.crop = cfg.crop
    batch_size = cfg.batch_size or preset.batch_size
    lr = preset.lr if cfg.lr is None else cfg.lr
    ddp.check_batch(batch_size, preset.min_batch)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    data_digest = None
    if cfg.data == "stl10":
        train_imgs, val_imgs, val_names = load_stl10(Path(cfg.data_root) if cfg.data_root else None, preset.crop)
    else:
        # As given where it still names the folder from here (validation names stay as the user wrote them).
        here = cfg.data if cfg.data_path in (None, _absolute(cfg.data)) else cfg.data_path
        train_imgs, val_imgs, val_names = load_folder(Path(here), preset.crop)
        data_digest = folder_digest(Path(here))
        recorded = resumed.get("run", {}).get("data_digest") if resumed else None
        if recorded not in (None, data_digest):  # "continues exactly" held only for the photos it started with
            log(f"note: {here} holds other photos than when the run started; training goes on with them, so it "
                "no longer continues exactly as it would have")
        if val_imgs is train_imgs:  # split_holdout cannot hold one image out: validation figures are training ones
            log("note: --data holds one image, so it is also the validation image; validation figures measure "
                "training fit, not generalisation")
    sampler = CropSampler(train_imgs, preset.crop, cfg.seed)
    val = torch.from_numpy(center_crops(val_imgs, preset.crop))
    # An epoch covers the training pixels once (in random crops); at least MIN_EPOCH_STEPS for tiny datasets.
    steps_per_epoch = max(MIN_EPOCH_STEPS, round(sampler.total_pixels / (preset.crop**2 * batch_size)))
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch
    if cfg.stop_at is not None and cfg.stop_at > total:
        raise AectlError(f"--stop-at {cfg.stop_at} is past the run's last step ({total})")
    if resumed and total < resumed["step"]:  # --epochs fewer than done: it marked the run finished as it was
        schedule = f"--epochs {cfg.epochs}" if cfg.epochs else "its one epoch (fewer photos now)"
        raise AectlError(f"the schedule ({schedule}) ends at step {total}; the run in {out} is already at step "
                         f"{resumed['step']}; give more --epochs to go on training")
    if resumed and resumed["step"] == total and (preset.rate_distortion or entropy_fitted(resumed)):
        if ddp.is_main:  # it refitted, logged and saved again
            log(f"the run in {out} is finished (step {total}); nothing to do (more --steps or --epochs train on)")
        ddp.barrier()
        ddp.close()
        return (resumed["history"][-1] if resumed["history"] else {}) if ddp.is_main else {}

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = preset.build().to(device)
    if ddp.rank:
        torch.manual_seed(cfg.seed + 7919 * ddp.rank)  # other ranks draw their own quantisation noise
    main_params = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    optimizer = torch.optim.Adam(main_params, lr=lr)
    aux_optimizer = torch.optim.Adam([model.entropy.quantiles], lr=1e-3)
    step, history = 0, []
    if cfg.init_from and not resumed:
        if (Path(cfg.init_from) / "manifest.json").is_file():
            init_from_bundle(model, Path(cfg.init_from), sampler, batch_size, device, cfg.fit_steps, log)
        else:
            source = load_checkpoint(Path(cfg.init_from))
            try:
                model.load_state_dict(source["model"])
            except RuntimeError:
                raise _architecture_differs(cfg.init_from) from None
            log(f"initialised from {cfg.init_from} (step {source.get('step')})")
    if resumed:
        state = resumed.get("resume", resumed)  # checkpoints before 0.1 kept the training state top-level
        load_weights(model, state["model"], ckpt_path, preset)
        optimizer.load_state_dict(resumed["optimizer"])
        aux_optimizer.load_state_dict(resumed["aux_optimizer"])
        sampler.set_state(state["sampler"])
        if ddp.is_main:
            torch.set_rng_state(state["torch_rng"])
        else:
            torch.manual_seed(cfg.seed + 7919 * ddp.rank + step)
        step, history = resumed["step"], resumed["history"]
        _truncate_log(out / "log.jsonl", step)
        log(f"resumed {out} at step {step}")

    if ddp.is_main and not resumed:  # --force, or a run that died before its first checkpoint: nothing of it
        for name in RUN_FILES:       # is kept (the folder itself was made by _run_folder)
            (out / name).unlink(missing_ok=True)
    command = "aectl " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    before = resumed.get("run", {}) if resumed else {}
    # A resumed run keeps the command that started it (`train --out RUN --resume` alone reproduces nothing) and
    # lists the resumes after it.
    run_info = {"command": before.get("command") or command,
                "resumed_with": before.get("resumed_with", []) + [command] if resumed else [],
                "config": _config_dict(cfg), "preset": preset.to_dict(), "batch_size": batch_size, "lr": lr,
                "total_steps": total, "steps_per_epoch": steps_per_epoch, "train_images": len(train_imgs),
                "val": val_names, "data_digest": data_digest, "device": str(device), "world_size": ddp.world}
    if ddp.is_main:
        atomic_write(out / "run.json", json.dumps(run_info, indent=2).encode(), force=True)

    def save(resume_state: dict | None = None):
        """resume_state: the training state to continue from, when `model` holds post-training fits."""
        if not ddp.is_main:
            return
        state = resume_state or {"model": model.state_dict(), "sampler": sampler.state(),
                                 "torch_rng": torch.get_rng_state()}
        atomic_torch_save({"config": _config_dict(cfg), "preset": preset.to_dict(), "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "aux_optimizer": aux_optimizer.state_dict(),
                           "resume": state, "step": step, "history": history, "run": run_info}, ckpt_path)

    model.train()
    last_save = time.monotonic()
    end = min(total, cfg.stop_at) if cfg.stop_at else total
    net = ddp.wrap(model, preset.rate_distortion)

    def train_steps() -> None:
        nonlocal step, last_save
        with _progress(progress and ddp.is_main, total, step) as bar:
            while step < end:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(lr, step, total)
                x = ddp.my_slice(torch.from_numpy(sampler.batch(batch_size))).to(device)
                out_ = net(x)
                terms = loss_terms(model, preset, x, out_)
                if not torch.isfinite(terms["loss"]):
                    raise AectlError(f"loss is not finite at step {step}; lower --lr or resume from the last checkpoint")
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(main_params, 1.0)
                optimizer.step()
                aux = model.entropy.aux_loss()
                aux_optimizer.zero_grad(set_to_none=True)
                aux.backward()
                aux_optimizer.step()
                step += 1
                bar.update(step, terms)
                if ddp.is_main and (step % steps_per_epoch == 0 or step == total):
                    metrics = {"step": step, "epoch": step / steps_per_epoch, **evaluate(model, preset, val, device)}
                    history.append(metrics)
                    _append_log(out / "log.jsonl", metrics)
                    bar.note(f"step {step} val: PSNR {metrics['val_psnr']:.2f} dB, est. {metrics['val_bpp']:.3f} bpp, "
                             f"loss {metrics['val_loss']:.4g}")
                if time.monotonic() - last_save > cfg.checkpoint_every or step == end:
                    save()
                    last_save = time.monotonic()
                if stop_requested:
                    save()
                    log(f"stopped by signal {stop_requested[0]} at step {step}; checkpoint saved, continue with --resume")
                    raise KeyboardInterrupt

    # Ctrl-C and SIGTERM finish the current step, save, then stop: a kill loses nothing but the step in flight.
    stop_requested: list[int] = []

    def request_stop(signum: int) -> None:
        stop_requested.append(signum)
        received_signals.append(signum)

    with _graceful_stop(request_stop):
        train_steps()
    # DDP's reducer holds the process group and sits in reference cycles; freed only at interpreter exit, after
    # destroy_process_group, gloo's threads died during finalisation (SIGABRT, "terminate called without an
    # active exception", pytorch/pytorch#179291). ddp.close() collects it first.
    del net
    if step < total:  # paused by --stop-at (checkpoint already written): continue later with --resume
        ddp.barrier()
        ddp.close()
        log(f"paused at step {step} of {total} (--stop-at); continue with --resume")
        return {}  # no final figures yet (the last validation's were printed as "final")

    # Every rank hashes its weights; rank 0 records them, so a run can show its replicas never drifted.
    run_info["rank_weight_digests"] = ddp.weight_digests(model)
    try:
        if ddp.is_main:
            save()
            if not preset.rate_distortion:
                # Fitting changes the model and draws random numbers: keep the pre-fit state for --resume.
                trained_state = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                                 "sampler": sampler.state(), "torch_rng": torch.get_rng_state()}
                try:
                    fit_seed_entropy(model, sampler, val, device, cfg.fit_steps, batch_size, log)
                except KeyboardInterrupt:  # said only "interrupted": the trained weights are saved, the fit is not
                    log(f"stopped during the entropy fit; the trained weights are saved (step {step}): "
                        f"aectl train --out {out} --resume fits it")
                    raise
                history.append({"step": step, "fitted": True, **evaluate(model, preset, val, device)})
                save(trained_state)
    finally:
        # Everyone leaves the process group together, after rank 0 has written its last checkpoint.
        ddp.barrier()
        ddp.close()
    if not ddp.is_main:
        return {}
    final = history[-1] if history else {}
    log(f"done: {step} steps; {out / CHECKPOINT}")
    return final


def fit_seed_entropy(model, sampler: CropSampler, val: torch.Tensor, device, steps: int, batch_size: int, log) -> None:
    """Seed presets store float latents in their articles. To range-code them we pick the coarsest uniform
    quantisation step that costs at most 0.5 dB on the validation crops, then fit a factorized density to the
    scaled latents (noise for rounding, as in training) with the decoder frozen."""
    model.eval()
    with torch.no_grad():
        y = model.encode(val.to(device))
        ref = F.mse_loss(model.decode(y).clamp(0, 1), val.to(device)).item()
        spread = float(y.std()) or 1.0
        step_size = spread / 256
        for k in range(8, -1, -1):
            candidate = spread / 2**k
            q = torch.round(y / candidate) * candidate
            mse = F.mse_loss(model.decode(q).clamp(0, 1), val.to(device)).item()
            if psnr(mse) < psnr(ref) - 0.5:
                break
            step_size = candidate
    model.latent_step.fill_(step_size)
    log(f"fitting entropy model: latent step {step_size:.4g} (float-latent PSNR {psnr(ref):.2f} dB)")
    fit_density(model, sampler, device, steps, batch_size)


def fit_density(model, sampler: CropSampler, device, steps: int, batch_size: int) -> None:
    """Fit the factorized density (and its tail quantiles) to the latents of training crops, with the
    transforms frozen: the rate term of the training loss, rounding replaced by noise."""
    step_size = float(model.latent_step)
    eb = model.entropy
    eb.train()
    opt = torch.optim.Adam([p for n, p in eb.named_parameters() if n != "quantiles"], lr=1e-2)
    aux_opt = torch.optim.Adam([eb.quantiles], lr=1e-2)
    with torch.no_grad():
        # Start the quantiles where the data is, so the aux loss has little to travel.
        y_train = model.encode(torch.from_numpy(sampler.batch(max(batch_size, 64))).to(device)) / step_size
        flat = y_train.transpose(0, 1).reshape(y_train.shape[1], -1)
        eb.quantiles.data[:, 0, 1] = flat.median(dim=1).values
        eb.quantiles.data[:, 0, 0] = flat.min(dim=1).values - 1
        eb.quantiles.data[:, 0, 2] = flat.max(dim=1).values + 1
    for _ in range(steps):
        with torch.no_grad():
            y_s = model.encode(torch.from_numpy(sampler.batch(batch_size)).to(device)) / step_size
        _, likelihoods = eb(y_s)
        rate = -torch.log2(likelihoods).sum() / y_s.numel()
        opt.zero_grad(set_to_none=True)
        rate.backward()
        opt.step()
        aux = eb.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
    eb.eval()


def entropy_fitted(ckpt: dict) -> bool:
    """Whether a seed preset's entropy model was fitted at the checkpoint's step (the end of its run): a fit at
    an earlier end, before the run was extended, no longer fits its weights."""
    last = (ckpt.get("history") or [{}])[-1]
    return bool(last.get("fitted")) and last.get("step") == ckpt.get("step")


def _architecture_differs(source) -> AectlError:
    return AectlError(f"--init-from {source}: its architecture differs from this run's")


def init_from_bundle(model, bundle_dir: Path, sampler: CropSampler, batch_size: int, device, fit_steps: int,
                     log) -> None:
    """Start from an exported bundle instead of a checkpoint: the transforms take the bundle's ONNX weights
    (train.torch_ref reads them back exactly), and since a bundle keeps its density only as integer tables,
    the entropy model is refitted to the latents of training crops before training starts. This is how a
    quality is fine-tuned from a neighbouring shipped one when that one's checkpoint is not at hand."""
    from aectl.runtime.bundle import load_bundle
    from aectl.train.torch_ref import build_torch_model

    bundle = load_bundle(bundle_dir)
    source = build_torch_model(bundle)
    weights = {k: v for k, v in source.state_dict().items() if not k.startswith("entropy.")}
    try:
        missing, _ = model.load_state_dict(weights, strict=False)
    except RuntimeError:
        raise _architecture_differs(bundle_dir) from None
    if any(not k.startswith("entropy.") for k in missing):
        raise _architecture_differs(bundle_dir)
    model.to(device)
    fit_density(model, sampler, device, fit_steps, batch_size)
    model.train()
    log(f"initialised from bundle {bundle_dir} ({bundle.model_id}); entropy model refitted ({fit_steps} steps)")


class _graceful_stop:
    """Route SIGINT/SIGTERM/SIGHUP to a callback for the duration (main thread only; elsewhere a no-op). SIGHUP
    ignored (under nohup) stays ignored."""

    def __init__(self, callback):
        self.callback, self.previous = callback, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:  # nohup's choice; a script's
                continue  # background job inherits SIGINT ignored, and Ctrl-C / kill -INT still saves and stops
            try:
                self.previous[sig] = signal.signal(sig, lambda signum, frame: self.callback(signum))
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _run_folder(out: Path, ddp: Distributed):
    """The run folder, made if needed and locked while the run trains, so that a second `train` on it (a resume
    while the run still trains) stops in one line instead of interleaving logs and checkpoints (POSIX flock;
    elsewhere no lock). A folder made here and left empty (the photos failed to load) is removed again. Rank 0
    holds the lock for all ranks and tells them whether it got it (they waited 35 s for it in the next collective
    call, then failed in torch's words)."""
    if not ddp.is_main:
        problem = ddp.share()
        if problem:
            raise AectlError(problem)
        yield
        return
    made: list[Path] = []
    fd, problem, locked = None, None, False
    try:
        try:
            make_folders(out, made)
            fd = os.open(out, os.O_RDONLY)
            locked = _lock(fd)
            if not locked:
                problem = f"{out} is being trained by another process; wait for it to finish or stop it"
        except OSError as exc:
            problem = str(write_error(out, exc))
        problem = ddp.share(problem)
        if problem:
            raise AectlError(problem)
        yield
    finally:
        if locked or fd is None:  # never a folder another process holds the lock of (it made it meanwhile)
            remove_empty(made)  # a failed run's folders, its parents' too, while the lock is still held
        if fd is not None:
            os.close(fd)  # releases the lock


def _lock(fd: int) -> bool:
    """An exclusive lock on an open folder: False if another process holds one (True where flock is missing)."""
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except BlockingIOError:
        return False
    return True


def _append_log(path: Path, metrics: dict) -> None:
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
    except OSError as exc:  # "[Errno 27] File too large" named no file
        raise write_error(path, exc) from None


def _truncate_log(path: Path, step: int) -> None:
    """Drop validation lines written after the checkpoint we resume from (a run killed between saves), and any
    line that is not a validation record (a kill during the append cut one short; it blocked --resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in kept).encode(), force=True)


def _config_dict(cfg: TrainConfig) -> dict:
    d = dict(cfg.__dict__)
    d["channels"] = list(cfg.channels) if cfg.channels else None
    return d


def _absolute(data: str) -> str | None:
    return None if data == "stl10" else str(Path(data).resolve())


def training_data(config: dict) -> str | None:
    """The folder a run trained on, as an absolute path where the checkpoint knows it (export's default
    calibration photos, found from any working directory)."""
    return config.get("data_path") or config.get("data")


class _progress:
    """A rich progress bar with step, loss and speed, or plain periodic lines when not interactive."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled, self.total, self.start = enabled, total, start
        self.t0 = time.monotonic()

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} steps/s"),
                                TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, loss="-", speed="-")
        return self

    def update(self, step: int, terms: dict) -> None:
        if self.enabled and (step % 5 == 0 or step == self.total):
            speed = (step - self.start) / max(time.monotonic() - self.t0, 1e-9)
            self.bar.update(self.task, completed=step, loss=f"{terms['loss'].item():.4g}", speed=f"{speed:.2f}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
