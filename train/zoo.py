"""One place that maps a preset name (and quality) to its constructor, training recipe and export rules.

As in optimum's model configs, each preset declares beside the model what export and the runtime need: input
size rule (fixed size or stride), which axes are dynamic and the parity tolerance.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from aectl.runtime.errors import AectlError

if TYPE_CHECKING:
    from torch import nn

# Factorized prior, MSE: lambda per quality as in Balle et al. 2018 / CompressAI's model zoo
# (loss = rate_bpp + lambda * 255^2 * MSE). N/M: the papers use 128/192 up to quality 5 and 192/320 above;
# those are the defaults here and `--channels N,M` overrides them (the shipped CPU-trained models are smaller).
FACTORIZED_QUALITIES: dict[int, tuple[float, int, int]] = {
    1: (0.0018, 128, 192),
    2: (0.0035, 128, 192),
    3: (0.0067, 128, 192),
    4: (0.0130, 128, 192),
    5: (0.0250, 128, 192),
    6: (0.0483, 192, 320),
    7: (0.0932, 192, 320),
    8: (0.1800, 192, 320),
}


@dataclass
class Preset:
    name: str
    description: str
    crop: int                 # training crop side
    fixed_size: int | None    # input side the model only accepts (None: fully convolutional)
    stride: int               # input sides must be a multiple of this
    batch_size: int
    lr: float
    tolerance: float          # max |torch - onnxruntime| on [0, 1] reconstructions, fp32
    rate_distortion: bool     # trained on rate + lambda * distortion (else MSE only, density fitted after)
    params: dict = field(default_factory=dict)
    # Reduced-precision decoders (aectl export --precision), against the fp32 torch decoder on real latents:
    # largest |difference| on [0, 1] pixels, and the least PSNR of the variant's output taken against the fp32
    # output. fp16 keeps GDN in fp32 and differs by a few 1e-4; int8 moves pixels by up to a few 1e-2 and
    # costs about 0.2 dB against the original image on kodak-dev (benchmarks/README.md).
    variant_tolerances: dict = field(default_factory=lambda: {
        "fp16": {"max_abs_diff": 5e-3, "min_psnr_db": 55.0},
        "int8": {"max_abs_diff": 0.25, "min_psnr_db": 32.0},
    })

    @property
    def min_batch(self) -> int:
        """Crops per process a training step needs: seed-dense's BatchNorm takes its statistics from the batch,
        and one crop has none (torch: "Expected more than 1 value per channel when training")."""
        return 2 if self.name == "seed-dense" else 1

    def build(self) -> nn.Module:
        """The model, untrained. Its modules import torch here, not with the zoo: `aectl train` checks a preset's
        options before torch loads (a mistyped option is refused at once)."""
        from aectl.train.models import Factorized, SeedConv, SeedDense

        if self.name == "seed-conv":
            return SeedConv()
        if self.name == "seed-dense":
            return SeedDense()
        return Factorized(self.params["n"], self.params["m"])

    def to_dict(self) -> dict:
        return asdict(self)


def get_preset(name: str, quality: int | None = None, channels: tuple[int, int] | None = None) -> Preset:
    if name in ("seed-conv", "seed-dense") and (quality is not None or channels is not None):
        raise AectlError(f"--quality and --channels choose a factorized model; {name} has one fixed size")
    if name == "seed-conv":
        return Preset(name, "first seed article: conv 3-12-24-48-24 autoencoder, 64x64 crops", crop=64,
                      fixed_size=None, stride=16, batch_size=32, lr=1e-3, tolerance=1e-4, rate_distortion=False)
    if name == "seed-dense":
        return Preset(name, "second seed article: dense 6912-3456-1728 autoencoder with BatchNorm, 48x48",
                      crop=48, fixed_size=48, stride=48, batch_size=32, lr=1e-3, tolerance=1e-4,
                      rate_distortion=False)
    if name == "factorized":
        quality = 3 if quality is None else quality
        if quality not in FACTORIZED_QUALITIES:
            raise AectlError(f"--quality {quality}: the factorized preset has qualities 1..8")
        lmbda, n, m = FACTORIZED_QUALITIES[quality]
        if channels is not None:
            n, m = channels
            if not (1 <= n <= 4096 and 1 <= m <= 4096):
                raise AectlError(f"--channels N,M: each must be 1..4096, got {n},{m}")
        return Preset(name, f"factorized prior (Balle et al. 2018), quality {quality}", crop=256,
                      fixed_size=None, stride=16, batch_size=8, lr=1e-4, tolerance=1e-4, rate_distortion=True,
                      params={"quality": quality, "lmbda": lmbda, "n": n, "m": m})
    raise AectlError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


PRESETS = ("seed-conv", "seed-dense", "factorized")
