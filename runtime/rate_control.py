"""Fitting a file into a byte budget: encode with the best shipped quality whose .aec file fits.

Learned codecs have no rate control knob inside one model, so we try the quality levels from the highest down
and keep the first file that fits (file size grows with quality, so the first fit is the best one).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from aectl.runtime.errors import AectlError, option


def check_budget(max_bytes: int | None, max_bpp: float | None) -> None:
    """Exactly one budget, positive and finite (--max-bpp inf or nan is a typo, not a budget)."""
    if (max_bytes is None) == (max_bpp is None):
        raise AectlError(f"give exactly one of {option('max_bytes')} and {option('max_bpp')}")
    for name, value in (("max_bytes", max_bytes), ("max_bpp", max_bpp)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise AectlError(f"{option(name, value)}: give a number")  # True was taken as 1 B, "0.5" a TypeError
    if any(v is not None and not 0 < v < math.inf for v in (max_bytes, max_bpp)):  # nan fails both comparisons
        raise AectlError(f"{option('max_bytes')}/{option('max_bpp')} must be positive and finite")


class QualityLadder:
    """Codecs for several bundles, tried best-first; each codec loads on first use."""

    def __init__(self, bundles: dict[int, Path], **codec_options):
        if not bundles:
            raise AectlError(f"no models to choose from for {option('max_bytes')}/{option('max_bpp')}")
        self.bundles = dict(sorted(bundles.items(), reverse=True))  # highest quality first
        self.options = codec_options
        self._codecs: dict = {}

    def codec(self, quality: int):
        from aectl.runtime.codec import Codec

        if quality not in self._codecs:
            self._codecs[quality] = Codec(self.bundles[quality], **self.options)
        return self._codecs[quality]

    def compress_within(self, image, max_bytes: int | None = None, max_bpp: float | None = None) -> tuple[bytes, int]:
        """The file of the highest quality that fits, and that quality. `image` is anything Codec.compress takes."""
        from aectl.runtime import container, image_io

        check_budget(max_bytes, max_bpp)
        first = self.codec(next(iter(self.bundles)))
        if isinstance(image, (str, os.PathLike)):  # decode the file once, not once per candidate
            image = image_io.open_image(os.fspath(image), first.max_pixels)  # max_pixels=None: the codec's reading
        smallest = None
        for quality in self.bundles:
            data = self.codec(quality).compress(image)
            header = container.parse(data)[0]
            rate = 8 * len(data) / (header.width * header.height)  # as reported: its own bpp always fits --max-bpp
            if (len(data) <= max_bytes) if max_bpp is None else (rate <= max_bpp):
                return data, quality
            smallest = (len(data), rate, quality)
        needs = f"{smallest[0]} B" if max_bpp is None else f"{smallest[1]:.4g} bpp ({smallest[0]} B)"
        lowest = f"the lowest quality (q{smallest[2]})" if len(self.bundles) > 1 else "this model"
        budget = f"{max_bytes} B" if max_bpp is None else f"{max_bpp:g} bpp"
        raise AectlError(f"does not fit in {budget}: {lowest} needs {needs}")
