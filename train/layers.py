"""Math pieces shared by the architectures: GDN and the non-negative reparametrisation it needs.

GDN is from Balle, Laparra, Simoncelli, "Density Modeling of Images using a Generalized Normalization
Transformation" (ICLR 2016) and "End-to-end Optimized Image Compression" (ICLR 2017):

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij * x_j^2)        (inverse GDN multiplies instead)

beta and gamma must stay positive; following the 2017 paper they are stored as the square root of an offset
value and passed through a lower bound, which keeps gradients alive near zero.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class NonNegative(nn.Module):
    """Stores a non-negative parameter p as sqrt(p + pedestal), bounded below by `minimum`."""

    pedestal = 2.0**-18

    def __init__(self, initial: torch.Tensor, minimum: float = 0.0):
        super().__init__()
        self.bound = (minimum + self.pedestal) ** 0.5
        self.raw = nn.Parameter(torch.sqrt(torch.clamp(initial + self.pedestal, min=self.pedestal)))

    def forward(self) -> torch.Tensor:
        # clamp keeps the value in range; the straight-through form lets gradients pull it back up.
        raw = self.raw + (torch.clamp(self.raw, min=self.bound) - self.raw).detach()
        return raw * raw - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalisation over channels (inverse=True gives IGDN for the synthesis side)."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta = NonNegative(torch.ones(channels), minimum=beta_min)
        self.gamma = NonNegative(gamma_init * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        gamma = self.gamma().reshape(channels, channels, 1, 1)
        norm = F.conv2d(x * x, gamma, self.beta())
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def conv(in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    """A 'same'-padded strided convolution: an input of H x W becomes H/stride x W/stride."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)


class SubPixelConv(nn.Sequential):
    """Upsampling by `scale` as a convolution followed by depth-to-space (Shi et al., CVPR 2016).

    A 3x3 convolution producing scale^2 x out_ch channels covers the same receptive field as a 5x5 stride-2
    transposed convolution, but runs as a plain convolution: it quantises to QLinearConv and uses the fast conv
    kernels of every onnxruntime provider, where ConvTranspose does not.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, scale: int = 2):
        super().__init__(nn.Conv2d(in_ch, out_ch * scale * scale, kernel, padding=kernel // 2), nn.PixelShuffle(scale))
