"""A run's checkpoint (`last.pt`): written atomically, loaded without running code, and turned back into the
model its stored options describe. Export and parity read runs through here too."""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from aectl.runtime.errors import AectlError
from aectl.runtime.outputs import atomic_write
from aectl.train.zoo import Preset, get_preset

if TYPE_CHECKING:
    import torch

CHECKPOINT = "last.pt"


def atomic_torch_save(obj, path: Path) -> None:
    """Serialised in memory, then written through the runtime's atomic writer: a full disk or a file-size limit
    says `cannot write last.pt: File too large` and leaves no temporary file (torch.save to a fixed .tmp name
    left one behind, behind an `inline_container.cc` internal error)."""
    import torch  # here, not with the module: run_options reads paths and options through it before torch loads

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer(), force=True)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file, or a run directory's latest one. Loaded with torch's `weights_only` unpickler: a
    checkpoint holds tensors, dicts, lists and numbers only, and the full unpickler runs whatever code a file
    names (a crafted .pt ran a shell command before it was refused as corrupt)."""
    import torch

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


def preset_of(config: dict) -> Preset:
    """A run's preset from its stored options (older seed runs may hold an unused quality)."""
    if config["preset"] != "factorized":
        return get_preset(config["preset"])
    channels = tuple(config["channels"]) if config.get("channels") else None
    return get_preset("factorized", config.get("quality"), channels)


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


def entropy_fitted(ckpt: dict) -> bool:
    """Whether a seed preset's entropy model was fitted at the checkpoint's step (the end of its run): a fit at
    an earlier end, before the run was extended, no longer fits its weights."""
    last = (ckpt.get("history") or [{}])[-1]
    return bool(last.get("fitted")) and last.get("step") == ckpt.get("step")


def training_data(config: dict) -> str | None:
    """The folder a run trained on, as an absolute path where the checkpoint knows it (export's default
    calibration photos, found from any working directory)."""
    return config.get("data_path") or config.get("data")
