"""Bjontegaard delta rate: the average bitrate difference between two rate-distortion curves at equal quality.

G. Bjontegaard, "Calculation of average PSNR differences between RD-curves", VCEG-M33, 2001: fit log(rate)
as a cubic polynomial of quality for each curve, integrate both over the quality interval the curves share,
and turn the mean log difference into a percentage. Negative means the test curve needs fewer bits.
"""
from __future__ import annotations

import numpy as np


def bd_rate(ref_rate, ref_quality, test_rate, test_quality) -> float:
    """Percent rate change of `test` against `ref` over their overlapping quality range.

    Each curve needs at least four points (a cubic fit); with exactly four it interpolates them.
    """
    curves = []
    for rate, quality in ((ref_rate, ref_quality), (test_rate, test_quality)):
        rate, quality = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
        if rate.shape != quality.shape or rate.size < 4:
            raise ValueError("each curve needs at least four (rate, quality) points")
        if np.any(rate <= 0) or not np.all(np.isfinite(quality)):
            raise ValueError("rates must be positive and qualities finite")
        curves.append((np.log(rate), quality))
    low = max(q.min() for _, q in curves)
    high = min(q.max() for _, q in curves)
    if low >= high:
        raise ValueError("the curves do not overlap in quality")
    means = []
    for log_rate, quality in curves:
        integral = np.polyint(np.polyfit(quality, log_rate, 3))
        means.append((np.polyval(integral, high) - np.polyval(integral, low)) / (high - low))
    return float((np.exp(means[1] - means[0]) - 1) * 100)


def quality_at_rate(rate: float, curve_rate, curve_quality) -> float | None:
    """A curve's quality at `rate`, interpolated linearly in log(rate); None outside the curve's rate range."""
    order = np.argsort(curve_rate)
    r = np.log(np.asarray(curve_rate, dtype=np.float64)[order])
    q = np.asarray(curve_quality, dtype=np.float64)[order]
    x = np.log(rate)
    if x < r[0] or x > r[-1]:
        return None
    return float(np.interp(x, r, q))
