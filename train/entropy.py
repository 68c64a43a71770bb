"""The factorized ("entropy bottleneck") density of Balle et al., "Variational image compression with a
scale hyperprior" (ICLR 2018), appendix 6.1.

Each latent channel c has its own univariate density, given by a learned cumulative function
    F_c(x) = sigmoid(f_K(...f_1(x))),  f_k(x) = g_k(H_k x + b_k),  g_k(x) = x + a_k * tanh(x)
with H_k kept positive (softplus) so F_c is monotonic. The probability of an integer symbol is the mass of
F_c over [y - 1/2, y + 1/2]; training replaces rounding by additive uniform noise (Balle et al., ICLR 2017).

Per channel we also learn three quantiles (tail mass / 2, median, 1 - tail mass / 2) through an auxiliary loss;
the export turns the density between the outer quantiles into integer CDF tables for the range coder.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

TAIL_MASS = 1e-9  # probability left outside a channel's table; symbols there take the escape path


class EntropyBottleneck(nn.Module):
    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0,
                 likelihood_bound: float = 1e-9):
        super().__init__()
        self.channels = channels
        self.likelihood_bound = likelihood_bound
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for k in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[k + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[k + 1], dims[k]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[k + 1], 1) - 0.5))
            if k < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[k + 1], 1)))
        quantiles = torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1)
        self.quantiles = nn.Parameter(quantiles)  # (C, 1, 3): lower tail, median, upper tail
        target = math.log(2 / TAIL_MASS - 1)
        self.register_buffer("quantile_targets", torch.tensor([-target, 0.0, target]), persistent=False)

    def logits_cdf(self, x: torch.Tensor, stop_gradient: bool = False) -> torch.Tensor:
        """x: (C, 1, L) -> logit of the cumulative F_c at x, same shape."""
        for k, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            x = torch.matmul(F.softplus(matrix), x) + bias
            if k < len(self.factors):
                factor = self.factors[k].detach() if stop_gradient else self.factors[k]
                x = x + torch.tanh(factor) * torch.tanh(x)
        return x

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability mass of each value of y (N, C, ...) over its unit-width quantisation bin."""
        shape = y.shape
        values = y.transpose(0, 1).reshape(self.channels, 1, -1)
        lower = self.logits_cdf(values - 0.5)
        upper = self.logits_cdf(values + 0.5)
        # Subtract in the tail where the sigmoids are least saturated, for numerical accuracy.
        sign = -torch.sign(lower + upper).detach()
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = p.reshape(self.channels, shape[0], *shape[2:]).transpose(0, 1)
        return torch.clamp(p, min=self.likelihood_bound)

    def medians(self) -> torch.Tensor:
        return self.quantiles[:, 0, 1].detach()

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: noisy y and its likelihoods. Eval: y rounded around the medians and its likelihoods."""
        if self.training:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            offset = self.medians().reshape(1, -1, *([1] * (y.dim() - 2)))
            y_hat = torch.round(y - offset) + offset
        return y_hat, self.likelihood(y_hat)

    def aux_loss(self) -> torch.Tensor:
        """Pulls the learned quantiles to the tail-mass targets of the (frozen) density."""
        logits = self.logits_cdf(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.quantile_targets).sum()

    @torch.no_grad()
    def pmf_tables(self) -> dict[str, torch.Tensor]:
        """Per channel: the integer offset of the first symbol and the pmf over [lower, upper] quantile support.

        Symbols are y - median rounded; the table covers the integers from floor(lower - median) to
        ceil(upper - median). Returned as float64 probabilities; export quantises them to integers.
        """
        medians = self.medians()
        low = torch.floor(self.quantiles[:, 0, 0] - medians).clamp(max=0)
        high = torch.ceil(self.quantiles[:, 0, 2] - medians).clamp(min=0)
        length = int((high - low).max().item()) + 1
        grid = torch.arange(length, dtype=torch.float32)
        values = (low[:, None] + grid[None, :] + medians[:, None]).reshape(self.channels, 1, -1)
        lower = self.logits_cdf(values - 0.5)
        upper = self.logits_cdf(values + 0.5)
        sign = -torch.sign(lower + upper)
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        pmf = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).reshape(self.channels, -1)
        lengths = (high - low).long() + 1
        return {"pmf": pmf.double(), "offset": low.long(), "length": lengths, "medians": medians.double()}
