"""The architectures. Each maps images in [0, 1] (N, 3, H, W) to a latent y and back.

Every model exposes the same small interface, which training and export rely on:
    encode(x) -> y            continuous latent
    decode(y_hat) -> x_hat    reconstruction (unclamped; export adds the clamp to [0, 1])
    entropy                   EntropyBottleneck over the latent channels, in units of `latent_step`
    latent_step               quantisation step: symbols = round(y / step - median)
"""
from __future__ import annotations

import torch
from torch import nn

from aectl.train.entropy import EntropyBottleneck
from aectl.train.layers import GDN, SubPixelConv, conv


class CompressionModel(nn.Module):
    """Shared quantisation logic; subclasses define encode/decode."""

    latent_channels: int

    def __init__(self, latent_step: float = 1.0):
        super().__init__()
        self.register_buffer("latent_step", torch.tensor(float(latent_step)))
        self.entropy = EntropyBottleneck(self.latent_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        """Integer symbols (as floats) of a latent, as the runtime computes them."""
        medians = self.entropy.medians().reshape(1, -1, *([1] * (y.dim() - 2)))
        return torch.round(y / self.latent_step - medians)

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        medians = self.entropy.medians().reshape(1, -1, *([1] * (symbols.dim() - 2)))
        return (symbols + medians) * self.latent_step

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.encode(x)
        scaled_hat, likelihoods = self.entropy(y / self.latent_step)
        x_hat = self.decode(scaled_hat * self.latent_step)
        return {"x_hat": x_hat, "likelihoods": likelihoods, "y": y}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The quantised reconstruction the codec produces: decode(dequantize(quantize(encode(x))))."""
        return self.decode(self.dequantize(self.quantize(self.encode(x)))).clamp(0, 1)


class SeedConv(CompressionModel):
    """First seed article: Conv 3-12-24-48-24 (kernel 4, stride 2, padding 1, ReLU) and a mirrored
    ConvTranspose decoder with a sigmoid. 64x64 crops give a 24x4x4 latent; any multiple of 16 works."""

    latent_channels = 24
    widths = (3, 12, 24, 48, 24)

    def __init__(self, latent_step: float = 1.0):
        super().__init__(latent_step)
        w = self.widths
        enc: list[nn.Module] = []
        dec: list[nn.Module] = []
        for i in range(4):
            enc += [nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1), nn.ReLU()]
            dec += [nn.ConvTranspose2d(w[4 - i], w[3 - i], 4, stride=2, padding=1), nn.ReLU()]
        dec[-1] = nn.Sigmoid()
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, y_hat):
        return self.decoder(y_hat)


class SeedDense(CompressionModel):
    """Second seed article: a 48x48x3 image flattened to 6912 values, dense layers with BatchNorm down to
    half (3456) and a quarter (1728), mirrored back up to 6912 with a sigmoid."""

    latent_channels = 1728
    side = 48

    def __init__(self, latent_step: float = 1.0):
        super().__init__(latent_step)
        full = 3 * self.side * self.side
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(full, full // 2), nn.BatchNorm1d(full // 2), nn.ReLU(),
            nn.Linear(full // 2, full // 4), nn.BatchNorm1d(full // 4), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(full // 4, full // 2), nn.BatchNorm1d(full // 2), nn.ReLU(),
            nn.Linear(full // 2, full), nn.Sigmoid(),
        )

    def encode(self, x):
        return self.encoder(x)

    def decode(self, y_hat):
        return self.decoder(y_hat).reshape(-1, 3, self.side, self.side)


class Factorized(CompressionModel):
    """Factorized-prior model of Balle et al. (ICLR 2017 / ICLR 2018 "bmshj2018-factorized"): four 5x5
    stride-2 convolutions with GDN, mirrored synthesis with inverse GDN. The synthesis upsamples with
    sub-pixel convolutions instead of transposed ones (see layers.SubPixelConv): same receptive field,
    faster and INT8-quantisable decoders."""

    def __init__(self, n: int = 128, m: int = 192, latent_step: float = 1.0):
        self.latent_channels = m
        super().__init__(latent_step)
        self.n, self.m = n, m
        self.analysis = nn.Sequential(
            conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m),
        )
        self.synthesis = nn.Sequential(
            SubPixelConv(m, n), GDN(n, inverse=True), SubPixelConv(n, n), GDN(n, inverse=True),
            SubPixelConv(n, n), GDN(n, inverse=True), SubPixelConv(n, 3),
        )

    def encode(self, x):
        return self.analysis(x)

    def decode(self, y_hat):
        return self.synthesis(y_hat)
