"""Where the entropy coder's time goes, per image of a bundle (default: the shipped q4) on kodak-dev: encoding
and decoding one block with runtime/entropy_coder.py exactly as the codec does, and within that the time spent
inside constriction's own calls (through a thin timing wrapper around the coder object; it adds ~0.1 us per
call) against the numpy and Python work around them, and the class map's decoding alone. The same blocks coded
as every .aec format version (1: tables as stored; 2: group flags; 3: trimmed tables; 4: ANS streams
instead of a range coder's) take turns in every pass, for the before/after; the rows without a suffix are the
current version.

    python benchmarks/entropy_probe.py [BUNDLE] [--images DIR] [--passes 30] [--cache-passes 6] [--json OUT]

Then, in the pipeline's own setting: every block coded right after a network run (each image alone, as at
batch size 1) against all blocks coded one after another after all the runs (as a batch does, codec.py
_batches), over --cache-passes passes that take turns. The network runs evict the coder's tables and code
from the caches, which the first order pays for on every block.

Each pass codes all images once; the figures are per image, best and median over passes (this machine is
shared: the best pass says what the code costs, the median what a run sees). The network runs once, before
any timing, to get the images' symbols.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.runtime import container
from aectl.runtime.codec import Codec
from aectl.runtime.entropy_coder import BlockStreamReader, BlockStreams, finish, new_decoder, new_encoder

ROOT = Path(__file__).resolve().parents[1]


class Timed:
    """Wraps a constriction encoder or decoder and adds up the seconds spent inside its encode/decode calls, in
    itself or in `totals` (another Timed: a version 4 reader's, for all its blocks' streams)."""

    def __init__(self, coder, totals=None):
        self.coder, self.seconds, self.calls, self.symbols = coder, 0.0, 0, 0
        self.totals = totals if totals is not None else self

    def __getattr__(self, name):  # is_empty and the like: not timed
        return getattr(self.coder, name)

    def encode(self, *args):
        start = time.perf_counter()
        self.coder.encode(*args)
        self.totals.seconds += time.perf_counter() - start
        self.totals.calls += 1

    def decode(self, *args):
        start = time.perf_counter()
        out = self.coder.decode(*args)
        totals = self.totals
        totals.seconds += time.perf_counter() - start
        totals.calls += 1
        totals.symbols += out.size
        return out


class TimedBlockStreams(BlockStreams):
    """Format version 4's encoder: calls are recorded, then replayed into constriction when a stream closes."""

    seconds = calls = 0

    def _close(self) -> None:
        self.calls += len(self.open.calls)
        start = time.perf_counter()
        super()._close()
        self.seconds += time.perf_counter() - start


class TimedBlockStreamReader(BlockStreamReader):
    """Format version 4's decoder: times the decode calls on each block's ANS stream."""

    def __init__(self, words):
        super().__init__(words, None)
        self.seconds, self.calls, self.symbols = 0.0, 0, 0

    def next_block(self):
        return Timed(super().next_block(), totals=self)


def timed_encoder(version):
    return TimedBlockStreams() if isinstance(new_encoder(version), BlockStreams) else Timed(new_encoder(version))


def timed_decoder(payload, version):
    """A timed decoder of a one-block payload."""
    decoder = new_decoder(payload, version)
    if isinstance(decoder, BlockStreamReader):
        return TimedBlockStreamReader(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    return Timed(decoder)


def block_stream(payload, version):
    """The stream a one-block payload's block is read from: the range decoder, or the block's ANS stream."""
    decoder = new_decoder(payload, version)
    return decoder.next_block() if isinstance(decoder, BlockStreamReader) else decoder


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "models" / "factorized-q4")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak-dev")
    parser.add_argument("--passes", type=bench_script.at_least(1), default=30)
    parser.add_argument("--cache-passes", type=bench_script.at_least(1), default=6)
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()

    codec = Codec(args.bundle, provider="cpu", threads=2)
    coder = codec.coder
    blocks = []
    for path in sorted(args.images.glob("*.png")):
        blob = codec.compress(Image.open(path))
        header, payload, _ = container.parse(blob, container.DEFAULT_MAX_PIXELS)
        if (header.tile_width, header.tile_height) != (header.width, header.height):
            raise SystemExit(f"{path.name} is tiled; the probe takes single-block images")
        shape = (header.latent_height, header.latent_width)
        blocks.append((coder.decode_block(new_decoder(payload, header.version), shape, header.version), shape))
    symbols = sum(s.size for s, _ in blocks)
    payloads = {}  # by version: each block's payload
    for version in container.READABLE_VERSIONS:
        payloads[version] = []
        for sym, _ in blocks:
            enc = new_encoder(version)
            coder.encode_block(enc, sym, version)
            payloads[version].append(finish(enc))

    def encode_all(version):
        inside = 0.0
        for sym, _ in blocks:
            enc = timed_encoder(version)
            coder.encode_block(enc, sym, version)
            finish(enc if isinstance(enc, BlockStreams) else enc.coder)
            inside += enc.seconds
        return inside

    def decode_all(version):
        inside = 0.0
        for (_, shape), payload in zip(blocks, payloads[version]):
            dec = timed_decoder(payload, version)
            coder.decode_block(dec, shape, version)
            inside += dec.seconds
        return inside

    def map_only():  # the class map opens every classified block (none in bundles without classes)
        for (_, shape), payload in zip(blocks, payloads[container.VERSION]):
            if coder.class_count:
                coder._decode_map(block_stream(payload, container.VERSION), shape[0], shape[0] * shape[1])

    def suffix(version):
        return "" if version == container.VERSION else f"_version_{version}"

    rows: dict[str, list[float]] = {"class_map_decode": []}
    for _ in range(args.passes + 1):  # the first pass is warm-up
        for version in container.READABLE_VERSIONS:
            for task, run in (("encode", encode_all), ("decode", decode_all)):
                start = time.perf_counter()
                inside = run(version)
                rows.setdefault(f"{task}{suffix(version)}", []).append(time.perf_counter() - start)
                rows.setdefault(f"{task}{suffix(version)}_in_constriction", []).append(inside)
        start = time.perf_counter()
        map_only()
        rows["class_map_decode"].append(time.perf_counter() - start)

    n = len(blocks)
    current = payloads[container.VERSION]
    latents = [codec.network.dequantize(sym[None]) for sym, _ in blocks]
    images = [codec.network.decode(lat) for lat in latents]  # the encoder's inputs: same sizes, real content
    after_network: dict[str, list[float]] = {}
    for _ in range(args.cache_passes):
        coded = {"encode": 0.0, "decode": 0.0}
        for x, (sym, _) in zip(images, blocks):  # compress, one image at a time
            codec.network.encode(x)
            start = time.perf_counter()
            coder.encode_block(new_encoder(), sym)
            coded["encode"] += time.perf_counter() - start
        for (_, shape), payload, lat in zip(blocks, current, latents):  # decompress, one image at a time
            start = time.perf_counter()
            coder.decode_block(new_decoder(payload), shape)
            coded["decode"] += time.perf_counter() - start
            codec.network.decode(lat)
        for x in images:
            codec.network.encode(x)
        start = time.perf_counter()
        for sym, _ in blocks:
            coder.encode_block(new_encoder(), sym)
        coded["encode_batched"] = time.perf_counter() - start
        for lat in latents:
            codec.network.decode(lat)
        start = time.perf_counter()
        for (_, shape), payload in zip(blocks, current):
            coder.decode_block(new_decoder(payload), shape)
        coded["decode_batched"] = time.perf_counter() - start
        for task, seconds in coded.items():
            after_network.setdefault(task.replace("code", "code_after_network", 1), []).append(seconds)
    calls = timed_decoder(current[0], container.VERSION)
    coder.decode_block(calls, blocks[0][1])
    decoded = 0  # symbols the entropy decoder reads (group flags skip the rest), flags and class map included
    for (_, shape), payload in zip(blocks, current):
        counted = timed_decoder(payload, container.VERSION)
        coder.decode_block(counted, shape)
        decoded += counted.symbols
    name = os.path.relpath(args.bundle, ROOT)
    result = {"bundle": name, "images": n, "version": container.VERSION, "symbols_per_image": symbols // n,
              "symbols_read_per_image": decoded // n,
              "payload_bytes": {f"version_{v}": sum(map(len, p)) for v, p in payloads.items()},
              "constriction_calls_per_decoded_block": calls.calls, "passes": args.passes,
              "ms_per_image": {k: {"best": 1e3 * min(v[1:]) / n, "median": 1e3 * statistics.median(v[1:]) / n}
                               for k, v in rows.items()}}
    result["ms_per_image"].update({k: {"best": 1e3 * min(v) / n, "median": 1e3 * statistics.median(v) / n}
                                   for k, v in after_network.items()})
    ms = result["ms_per_image"]
    # Per symbol the entropy coder actually codes (the same count both ways: the encoder skips what the decoder does).
    result["ns_per_symbol_in_constriction"] = {d: 1e6 * ms[f"{d}_in_constriction"]["best"] / (decoded // n)
                                               for d in ("encode", "decode")}
    print(f"{name}: {n} images, {symbols // n} symbols per image ({decoded // n} read by the entropy decoder), "
          f"{calls.calls} constriction calls to decode one block; ms per image over {args.passes} passes; "
          "payload " + ", ".join(f"{b} B as {v.replace('_', ' ')}" for v, b in result["payload_bytes"].items()))
    print(f"{'':34s} {'best':>7s} {'median':>7s}")
    for k, v in result["ms_per_image"].items():
        print(f"{k:34s} {v['best']:7.2f} {v['median']:7.2f}")
    print("inside constriction, best pass: " + ", ".join(
        f"{d} {v:.1f} ns per symbol" for d, v in result["ns_per_symbol_in_constriction"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
