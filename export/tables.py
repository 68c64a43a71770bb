"""Integer CDF tables for the range coder, made once at export from the learned density.

Each channel's table covers the symbols [offset, offset + L) and one extra *escape* bin for anything outside.
Probabilities are quantised to integers summing to 2**precision with every bin at least 1, so every symbol is
codable. Only these integers travel in the bundle: encoder and decoder build identical models from them on any
machine or provider, which is what makes .aec files portable (Balle et al., "Integer networks for data
compression with latent-variable models", ICLR 2019, make the same point about floats).
"""
from __future__ import annotations

import numpy as np

PRECISION = 16          # bits of probability resolution in the stored tables
MAX_TABLE = 1 << 12     # symbols per channel table; wider supports are cut and the rest escapes


def quantize_pmf(pmf: np.ndarray, tail_mass: float, precision: int = PRECISION) -> np.ndarray:
    """float pmf over L symbols -> integer CDF of length L + 2 (L symbols, then the escape bin)."""
    total = 1 << precision
    pmf = np.clip(np.asarray(pmf, dtype=np.float64), 0, None)
    if not np.isfinite(pmf).all() or pmf.sum() <= 0:
        pmf = np.ones_like(pmf)
    escape = max(1, int(round(tail_mass * total)))
    free = total - escape - len(pmf)  # one count per bin is guaranteed up front
    if free < 0:
        raise ValueError(f"table of {len(pmf)} symbols does not fit {precision}-bit precision")
    counts = 1 + np.floor(pmf / pmf.sum() * free).astype(np.int64)
    counts[np.argmax(pmf)] += total - escape - counts.sum()
    counts = np.append(counts, escape)
    assert counts.sum() == total and counts.min() >= 1
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def build_tables(pmf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, medians: np.ndarray,
                 step: float, tail_mass: float) -> dict:
    """Manifest section 'entropy': per-channel offset and CDF, the medians and the quantisation step."""
    cdfs, offs = [], []
    for c in range(len(offsets)):
        length, offset = int(lengths[c]), int(offsets[c])
        row = pmf[c, :length]
        if length > MAX_TABLE:  # keep the most probable window; the rest goes through the escape path
            start = int(np.clip(np.argmax(row) - MAX_TABLE // 2, 0, length - MAX_TABLE))
            row, offset = row[start:start + MAX_TABLE], offset + start
        cdfs.append(quantize_pmf(row, tail_mass).tolist())
        offs.append(offset)
    return {"precision": PRECISION, "tail_mass": tail_mass, "step": float(step),
            "medians": [float(np.float32(m)) for m in medians], "offsets": offs, "cdfs": cdfs}
