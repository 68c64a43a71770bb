"""Fitting a file into a byte budget: encode with the best shipped quality whose .aec file fits.

Learned codecs have no rate control knob inside one model, so we encode with quality levels until the best one
that fits is known. On photos file size grows with quality (every kodak-dev image and training photo, for the
shipped models), so a level that fits with the next level up not fitting settles it. Which level to try next is
predicted from the bundles' mean bpp on kodak-dev (the manifest's `evaluation`) and this image's rates at the
levels tried: an interpolation search, 2.1 encodes per image on average on photos where trying from the highest
down took 3.6 (README.md).

On flat images (a solid colour, a gradient, little noise) the size need not grow: the header and the per-channel
side information outweigh the few symbols, and a higher level can make a smaller file (q3 5,444 B against q2's
6,300 B for one violet 768x512). Where this image's sizes fell, or grew less than GROWTH_LIKE_PHOTOS as fast as
the kodak-dev means between the levels tried, every level above the best one found is tried as well.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Callable

from aectl.runtime.errors import AectlError, option

# The least growth of an image's rate against the kodak-dev means (log-log, between two levels tried) that the
# search trusts. Photos grow 0.64-1.59 between neighbouring levels (1.0 on average); on 90 flat, graphic and
# tiny images, thresholds of 0.62 and below missed the best level for some budgets, 0.65 and above for none.
GROWTH_LIKE_PHOTOS = 0.75


def check_budget(max_bytes: int | None, max_bpp: float | None) -> None:
    """Exactly one budget, positive and finite (--max-bpp inf or nan is a typo, not a budget)."""
    if (max_bytes is None) == (max_bpp is None):
        raise AectlError(f"give exactly one of {option('max_bytes')} and {option('max_bpp')}")
    for name, value in (("max_bytes", max_bytes), ("max_bpp", max_bpp)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):  # np ints too
            raise AectlError(f"{option(name, value)}: give a number")  # True was taken as 1 B, "0.5" a TypeError
    if any(v is not None and not 0 < v < math.inf for v in (max_bytes, max_bpp)):  # nan fails both comparisons
        raise AectlError(f"{option('max_bytes')}/{option('max_bpp')} must be positive and finite")


class QualityLadder:
    """Codecs for several bundles by quality level; each codec loads on first use."""

    def __init__(self, bundles: dict[int, Path], **codec_options):
        if not bundles:
            raise AectlError(f"no models to choose from for {option('max_bytes')}/{option('max_bpp')}")
        self.bundles = dict(sorted(bundles.items()))  # lowest quality first
        self.options = codec_options
        self._codecs: dict = {}
        self._mean_bpp = {q: _mean_bpp(path) for q, path in self.bundles.items()}

    @property
    def loaded(self) -> list[int]:
        """The quality levels whose codecs are loaded (each holds its sessions and their memory)."""
        return sorted(self._codecs)

    def codec(self, quality: int):
        from aectl.runtime.codec import Codec

        if quality not in self._codecs:
            self._codecs[quality] = Codec(self.bundles[quality], **self.options)
        return self._codecs[quality]

    def compress_within(self, image, max_bytes: int | None = None, max_bpp: float | None = None) -> tuple[bytes, int]:
        """The file of the highest quality that fits, and that quality. `image` is anything Codec.compress takes."""
        from aectl.runtime import container, image_io
        from aectl.runtime.codec import pixel_limit

        check_budget(max_bytes, max_bpp)
        if isinstance(image, (str, os.PathLike)):  # decode the file once, not once per candidate
            limit = pixel_limit(self.options.get("max_pixels", container.DEFAULT_MAX_PIXELS))
            with image_io.open_image(os.fspath(image), limit) as opened:  # closed after (see Codec._pixels)
                return self.compress_within(opened, max_bytes, max_bpp)
        pixels = _pixel_count(image)
        # (a budget past 2^62 bytes is no limit: 8 * 10**400 / pixels overflowed a float)
        target_bpp = max_bpp if max_bpp is not None else 8 * min(max_bytes, 1 << 62) / pixels if pixels else None
        files: dict[int, tuple[bytes, float]] = {}  # the file of each level tried, and its bpp

        def try_level(quality: int) -> tuple[bool, float]:
            codec = self.codec(quality)
            data = codec.compress(image)
            header = container.parse(data, codec.max_pixels)[0]  # under its own limit, not the default's
            rate = 8 * len(data) / (header.width * header.height)  # as reported: a file fits its own bpp
            files[quality] = data, rate
            return (len(data) <= max_bytes) if max_bpp is None else (rate <= max_bpp), rate

        best = self._best_fitting(try_level, target_bpp)
        if best is not None:
            return files[best][0], best
        smallest = min(files, key=lambda q: (len(files[q][0]), q))
        size, rate = len(files[smallest][0]), files[smallest][1]
        needs = f"{size} B" if max_bpp is None else f"{rate:.4g} bpp ({size} B)"
        lowest = "this model" if len(self.bundles) == 1 else f"the lowest quality (q{smallest})" \
            if smallest == min(self.bundles) else f"the smallest file (q{smallest})"
        budget = f"{max_bytes} B" if max_bpp is None else f"{max_bpp:g} bpp"
        raise AectlError(f"does not fit in {budget}: {lowest} needs {needs}")

    def _best_fitting(self, try_level: Callable[[int], tuple[bool, float]], target_bpp: float | None) -> int | None:
        """The highest level whose file fits; `try_level` encodes at a level and says whether its file fits and
        at what rate. First the search that assumes sizes grow with quality, then, for an image whose sizes do
        not grow as photos' do, every level above its answer."""
        levels = list(self.bundles)
        rates: dict[int, float] = {}  # bpp of each level tried
        fits: dict[int, bool] = {}

        def attempt(quality: int) -> None:
            fits[quality], rates[quality] = try_level(quality)

        low, high = 0, len(levels)  # levels[low:high] are the ones not yet settled
        while low < high:
            at = self._next_try(levels[low:high], rates, target_bpp)
            attempt(levels[low + at])
            low, high = (low + at + 1, high) if fits[levels[low + at]] else (low, low + at)

        def untried_above() -> list[int]:
            best = max((q for q in fits if fits[q]), default=None)
            return [q for q in levels if q not in rates and (best is None or q > best)]

        if len(rates) == 1 and untried_above():  # one level tried: the next one up shows how the size grows
            attempt(untried_above()[0])
        if not self._grows_like_photos(rates):
            for quality in reversed(untried_above()):  # the first that fits, from the top, is the highest
                attempt(quality)
                if fits[quality]:
                    break
        return max((q for q in fits if fits[q]), default=None)

    def _grows_like_photos(self, rates: dict[int, float]) -> bool:
        """Whether this image's rate rose, between each two levels tried, at least GROWTH_LIKE_PHOTOS as fast as
        the kodak-dev means did (log-log); without the means, whether it rose at all."""
        tried = sorted(rates)
        for low, high in zip(tried, tried[1:]):
            if rates[high] < rates[low]:
                return False
            low_mean, high_mean = self._mean_bpp[low], self._mean_bpp[high]
            if low_mean and high_mean and high_mean > low_mean and \
                    math.log(rates[high] / rates[low]) < GROWTH_LIKE_PHOTOS * math.log(high_mean / low_mean):
                return False
        return True

    def _next_try(self, open_levels: list[int], rates: dict[int, float], target_bpp: float | None) -> int:
        """Index into `open_levels` of the level to try next: the highest predicted to fit, or the lowest when
        none is. First from the levels' kodak-dev means; then from this image's rate at the latest level tried (a
        neighbour of the open levels), grown with the means as this image's rate grew between its two latest
        levels: like the means for a photo, much slower for a flat or tiny image, whose fixed header outweighs
        its rate. Without a manifest figure (or a pixel count), the highest open level, as a plain highest-first
        search would."""
        if target_bpp is None or any(self._mean_bpp[q] is None for q in open_levels):
            return len(open_levels) - 1
        mean = self._mean_bpp
        tried = [q for q in rates if mean[q]][-2:]  # the latest is a neighbour of the open levels
        if not tried:
            return max((i for i, q in enumerate(open_levels) if mean[q] <= target_bpp), default=0)
        latest = tried[-1]
        growth = 1.0  # this image's rate over the mean's, between two levels in log-log: ~1 for a photo
        if len(tried) == 2 and mean[tried[0]] != mean[latest]:
            growth = math.log(rates[latest] / rates[tried[0]]) / math.log(mean[latest] / mean[tried[0]])
            growth = min(max(growth, 0.0), 2.0)
        fitting = [i for i, q in enumerate(open_levels)
                   if rates[latest] * (mean[q] / mean[latest]) ** growth <= target_bpp]
        return fitting[-1] if fitting else 0


def _mean_bpp(bundle: Path) -> float | None:
    """A bundle's mean bpp over its evaluation set, from its manifest; None where it has none."""
    from aectl.runtime.bundle import read_json

    try:
        mean = read_json(Path(bundle) / "manifest.json")["evaluation"]["mean"]["bpp"]
    except (AectlError, KeyError, TypeError):
        return None
    return float(mean) if isinstance(mean, (int, float)) and not isinstance(mean, bool) and 0 < mean < math.inf \
        else None


def _pixel_count(image) -> int | None:
    """Pixels of a Pillow image or an (H, W[, C]) array; None for anything else (the codec names the problem)."""
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return size[0] * size[1]
    shape = getattr(image, "shape", None)
    return shape[0] * shape[1] if isinstance(shape, tuple) and len(shape) >= 2 else None
