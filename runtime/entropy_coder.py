"""Range coding of latent symbols with constriction, driven only by the bundle's integer CDF tables.

Per channel c the table covers symbols [offset_c, offset_c + L_c) plus an escape bin at index L_c. A symbol
outside the table is coded as the escape index, and its value follows after all channels of that block as
two 16-bit halves of its zigzag code under a uniform model. So every int32 symbol round-trips exactly and
out-of-range values are never clamped. The stream is a queue (range coder): blocks are decoded in the order
they were encoded, which lets big images be decoded tile by tile with bounded memory.
"""
from __future__ import annotations

import numpy as np
import constriction

from aectl.runtime.errors import AectlError

_HALF = np.int64(1 << 16)


class EntropyCoder:
    def __init__(self, tables: dict):
        self.offsets = np.asarray(tables["offsets"], dtype=np.int64)
        cdfs = [np.asarray(cdf, dtype=np.int64) for cdf in tables["cdfs"]]
        self.escape_index = np.array([len(cdf) - 2 for cdf in cdfs], dtype=np.int64)
        # Exact integers as float64: constriction rescales them deterministically on every machine.
        self.models = [constriction.stream.model.Categorical(np.diff(cdf).astype(np.float64), perfect=False)
                       for cdf in cdfs]
        self.uniform = constriction.stream.model.Uniform(1 << 16)
        # The cheapest any symbol of channel c can be: -log2 of its most probable bin. A valid payload for
        # n symbols per channel needs at least sum(n * min_bits) bits, which bounds decoding work per byte.
        total = float(1 << int(tables["precision"]))
        self.min_bits = np.array([-np.log2(np.diff(cdf).max() / total) for cdf in cdfs])

    @property
    def channels(self) -> int:
        return len(self.models)

    def min_payload_bits(self, symbols_per_channel: int) -> float:
        """A lower bound on the payload of a block (with a margin for the coder's own rounding)."""
        return 0.9 * symbols_per_channel * float(self.min_bits.sum())

    def encode_block(self, encoder, symbols: np.ndarray) -> None:
        """Append one block, symbols of shape (C, K) int32, to a constriction RangeEncoder."""
        escapes = []
        for c, model in enumerate(self.models):
            index = symbols[c].astype(np.int64) - self.offsets[c]
            outside = (index < 0) | (index >= self.escape_index[c])
            index[outside] = self.escape_index[c]
            encoder.encode(index.astype(np.int32), model)
            escapes.append(symbols[c][outside])
        values = np.concatenate(escapes).astype(np.int64)
        if values.size:
            zigzag = np.where(values >= 0, 2 * values, -2 * values - 1)
            halves = np.stack([zigzag >> 16, zigzag & (_HALF - 1)], axis=1).reshape(-1)
            encoder.encode(halves.astype(np.int32), self.uniform)

    def decode_block(self, decoder, count: int) -> np.ndarray:
        """Read one block of `count` symbols per channel back, as (C, count) int32."""
        out = np.empty((self.channels, count), dtype=np.int64)
        try:
            for c, model in enumerate(self.models):
                out[c] = decoder.decode(model, count)
            outside = out == self.escape_index[:, None]
            n = int(outside.sum())
            if n:
                halves = decoder.decode(self.uniform, 2 * n).astype(np.int64).reshape(n, 2)
                zigzag = (halves[:, 0] << 16) | halves[:, 1]
                values = np.where(zigzag & 1, -(zigzag + 1) // 2, zigzag // 2)
                out[outside] = values  # row-major order matches the encoder's per-channel concatenation
        except Exception as exc:  # constriction raises AssertionError, ValueError... on invalid data
            raise AectlError(f"corrupted payload: entropy decoding failed ({exc})") from None
        out[~outside] += np.broadcast_to(self.offsets[:, None], out.shape)[~outside]
        return out.astype(np.int32)


def new_encoder():
    return constriction.stream.queue.RangeEncoder()


def finish(encoder) -> bytes:
    return encoder.get_compressed().astype("<u4").tobytes()


def new_decoder(payload: bytes):
    if len(payload) % 4:
        raise AectlError("corrupted payload: length is not a whole number of 32-bit words")
    return constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
