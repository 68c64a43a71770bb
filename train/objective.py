"""What training minimises and how validation measures it.

Rate-distortion presets minimise  bpp + lambda * 255^2 * MSE  with uniform noise for rounding (Balle, Laparra,
Simoncelli, "End-to-end optimized image compression", ICLR 2017); the loop adds the entropy bottleneck's quantile
loss on its own optimiser. The seed presets train on MSE alone, as their articles do (no rate term), though
through the same noisy latents.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aectl.train.zoo import Preset


def bits_per_pixel(likelihoods: torch.Tensor, num_pixels: int) -> torch.Tensor:
    return torch.log2(likelihoods).sum().neg() / num_pixels


def psnr(mse: float) -> float:
    return 10 * math.log10(1 / max(mse, 1e-12))


def loss_terms(model, preset: Preset, x: torch.Tensor, out: dict) -> dict:
    mse = F.mse_loss(out["x_hat"], x)
    if not preset.rate_distortion:
        return {"loss": mse, "mse": mse}
    bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
    return {"loss": bpp + preset.params["lmbda"] * 255**2 * mse, "mse": mse, "bpp": bpp}


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
