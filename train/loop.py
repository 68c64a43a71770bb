"""The training loop, top to bottom: data, model, optimisers, steps, validation, checkpoints.

Each step lowers train.objective's loss on the main optimiser and the entropy bottleneck's quantile loss on its
own. After training, the seed presets get a quantisation step and a factorized density fitted to their latents
(train.entropy_fit), so that they get a real bitstream too.

A run directory holds `run.json` (what was asked), `last.pt` (written atomically; everything needed to resume
exactly: weights, optimiser states, step, RNG states, the options) and `log.jsonl` (one line per validation).
`--resume` takes the run's options from its checkpoint (train.run_options), so `aectl train --out RUN --resume`
continues it as it was started.
"""
from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path

import torch

from aectl.runtime.errors import AectlError, received_signals
from aectl.runtime.outputs import atomic_write
from aectl.train.checkpoint import CHECKPOINT, atomic_torch_save, entropy_fitted, load_checkpoint, load_weights
from aectl.train.data import (CropSampler, center_crops, folder_digest, load_folder, load_stl10,
                              validation_copies)
from aectl.train.distributed import Distributed
from aectl.train.entropy_fit import architecture_differs, fit_seed_entropy, init_from_bundle
from aectl.train.objective import evaluate, loss_terms
from aectl.train.run_folder import RUN_FILES, append_log, run_folder, truncate_log
from aectl.train.run_options import TrainConfig, absolute_data, config_dict, resolve_run
from aectl.train.zoo import get_preset

MIN_EPOCH_STEPS = 50


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AectlError("--device cuda: this torch build sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise AectlError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def learning_rate(base: float, step: int, total: int) -> float:
    """Constant, then a tenth for the last 10% of the run (a common schedule for these models)."""
    return base * (0.1 if step >= 0.9 * total else 1.0)


def train(cfg: TrainConfig, progress: bool = True, log=print,
          resolved: tuple[TrainConfig, dict | None] | None = None) -> dict:
    """Run (or resume) training; returns the final metrics. Checkpoints land in cfg.out.
    resolved: what resolve_run(cfg) returned, when the caller has already checked the options."""
    cfg, resumed = resolved or resolve_run(cfg, log)
    device = pick_device(cfg.device)
    ddp = Distributed(device)  # joined first, so that every rank hears whether rank 0 could lock the run folder
    with run_folder(Path(cfg.out), ddp), _sigint_heard():
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

    data_digest, photos_changed = None, False
    if cfg.data == "stl10":
        named = Path("stl10")  # the name means the data set, whatever the working folder holds
        if named.is_dir() and not (cfg.data_root and Path(cfg.data_root).resolve() == named.resolve()):
            log("note: --data stl10 names the STL10 dataset; give ./stl10 for the folder of that name here")
        train_imgs, val_imgs, val_names = load_stl10(Path(cfg.data_root) if cfg.data_root else None, preset.crop)
    else:
        # As given where it still names the folder from here (validation names stay as the user wrote them).
        here = cfg.data if cfg.data_path in (None, absolute_data(cfg.data)) else cfg.data_path
        train_imgs, val_imgs, val_names = load_folder(Path(here), preset.crop, log)
        data_digest = folder_digest(Path(here))
        recorded = resumed.get("run", {}).get("data_digest") if resumed else None
        photos_changed = recorded not in (None, data_digest)
        if photos_changed:  # "continues exactly" held only for the photos it started with
            log(f"note: {here} holds other photos than when the run started; training goes on with them, so it "
                "no longer continues exactly as it would have")
        if val_imgs is train_imgs:  # split_holdout cannot hold one image out: validation figures are training ones
            log("note: --data holds one image, so it is also the validation image; validation figures measure "
                "training fit, not generalisation")
        else:
            for name in validation_copies(train_imgs, val_imgs, val_names):
                log(f"note: the validation image {name} is also a training image (the same pixels under another "
                    "name); its validation figures measure training fit, not generalisation")
    sampler = CropSampler(train_imgs, preset.crop, cfg.seed)
    val = torch.from_numpy(center_crops(val_imgs, preset.crop))
    # An epoch covers the training pixels once (in random crops); at least MIN_EPOCH_STEPS for tiny datasets.
    steps_per_epoch = max(MIN_EPOCH_STEPS, round(sampler.total_pixels / (preset.crop**2 * batch_size)))
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch
    if cfg.stop_at is not None and cfg.stop_at > total:
        raise AectlError(f"--stop-at {cfg.stop_at} is past the run's last step ({total})")
    schedule = f"--epochs {cfg.epochs}" if cfg.epochs else "its one epoch"
    planned = resumed.get("run", {}).get("total_steps") if resumed else None
    if cfg.steps is None and photos_changed and planned not in (None, total) and ddp.is_main:  # they moved its end
        log(f"note: the schedule ({schedule}) now ends at step {total}, not {planned}: an epoch is "
            f"{steps_per_epoch} steps with the photos here now (the learning rate drops at 90% of it)")
    if resumed and total < resumed["step"]:  # --epochs fewer than done: it marked the run finished as it was
        schedule += "" if cfg.epochs else " (fewer photos now)"
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
                raise architecture_differs(cfg.init_from) from None
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
        truncate_log(out / "log.jsonl", step)
        log(f"resumed {out} at step {step}")

    if ddp.is_main and not resumed:  # --force, or a run that died before its first checkpoint: nothing of it
        for name in RUN_FILES:       # is kept (the folder itself was made by run_folder)
            (out / name).unlink(missing_ok=True)
    command = "aectl " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    before = resumed.get("run", {}) if resumed else {}
    # A resumed run keeps the command that started it (`train --out RUN --resume` alone reproduces nothing) and
    # lists the resumes after it.
    run_info = {"command": before.get("command") or command,
                "resumed_with": before.get("resumed_with", []) + [command] if resumed else [],
                "config": config_dict(cfg), "preset": preset.to_dict(), "batch_size": batch_size, "lr": lr,
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
        atomic_torch_save({"config": config_dict(cfg), "preset": preset.to_dict(), "model": model.state_dict(),
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
                    append_log(out / "log.jsonl", metrics)
                    bar.note(f"step {step} val: PSNR {metrics['val_psnr']:.2f} dB, est. {metrics['val_bpp']:.3f} bpp, "
                             f"loss {metrics['val_loss']:.4g}")
                if step == total:  # every rank at once: the last checkpoint shows the replicas never drifted
                    run_info["rank_weight_digests"] = ddp.weight_digests(model)
                saved = time.monotonic() - last_save > cfg.checkpoint_every or step == end
                if saved:
                    save()
                    last_save = time.monotonic()
                if stop_requested:
                    if not saved:
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

    # The last step's checkpoint is on disk with the digests (writing it again cost seed-dense a second GB); a run
    # resumed at its last step, to fit its entropy model, has not hashed its weights yet.
    if "rank_weight_digests" not in run_info:
        run_info["rank_weight_digests"] = ddp.weight_digests(model)
    try:
        if ddp.is_main:
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


class _sigint_heard:
    """SIGINT inherited as ignored (a script's background job) raises KeyboardInterrupt for the duration (main
    thread only), so `kill -INT` stops the data loading and the seed presets' entropy fit as it stops the steps
    (_graceful_stop); the fit went on unheard. A handler of the caller's own is left in place."""

    def __enter__(self):
        self.taken = False
        try:
            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                self.taken = True
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc):
        if self.taken:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


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
