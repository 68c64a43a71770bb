"""The two halves of a model as stand-alone modules, each the exact function one ONNX file computes."""
from __future__ import annotations

import torch
from torch import nn


class EncoderGraph(nn.Module):
    """x in [0, 1] (N, 3, H, W) -> continuous latent y. Quantisation happens in the runtime (numpy)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)


class DecoderGraph(nn.Module):
    """Dequantised latent -> reconstruction clamped to [0, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.model.decode(y_hat).clamp(0.0, 1.0)
