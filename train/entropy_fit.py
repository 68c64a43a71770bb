"""Fitting the factorized density to a model's latents with its transforms frozen: after training for the seed
presets (whose articles store float latents), and before training for a run started from an exported bundle
(which keeps its density only as integer tables)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from aectl.runtime.errors import AectlError
from aectl.train.data import CropSampler
from aectl.train.objective import psnr


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


def architecture_differs(source) -> AectlError:
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
        raise architecture_differs(bundle_dir) from None
    if any(not k.startswith("entropy.") for k in missing):
        raise architecture_differs(bundle_dir)
    model.to(device)
    fit_density(model, sampler, device, fit_steps, batch_size)
    model.train()
    log(f"initialised from bundle {bundle_dir} ({bundle.model_id}); entropy model refitted ({fit_steps} steps)")
