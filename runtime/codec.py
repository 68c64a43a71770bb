"""The public API.

Decoder(bundle, provider) needs only decoder.onnx (edge clients):
    decode(latents)                        latents -> NCHW float32 images in [0, 1]
    decompress(bytes) -> PIL.Image         an .aec file back to pixels, in the original's mode
    decompress_batch                       same, grouping same-size files into shared session runs and
                                           entropy decoding a batch's blocks together
Codec(bundle, provider) adds the encoder:
    encode(x)                              NCHW float32 batches in [0, 1] -> continuous latents
    compress(image) -> bytes               a complete .aec file: quantised, entropy-coded latents
    compress_batch                         same, grouping same-size images into shared session runs and
                                           entropy coding a batch's blocks together
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from aectl.runtime import container, entropy_coder, image_io, tiling
from aectl.runtime.bundle import Bundle, load_bundle
from aectl.runtime.errors import AectlError, PixelLimitError, is_whole_number, on_command_line, option
from aectl.runtime.network import Network
from aectl.runtime.profile import Stages, stage


def check_max_pixels(max_pixels: int | None) -> None:
    """None (no limit but the format's) or a positive count: 0 or -5 refused every file, one by one."""
    if max_pixels is not None and (not is_whole_number(max_pixels) or max_pixels < 1):
        raise AectlError(f"{option('max_pixels', max_pixels)}: give a positive pixel count")


def pixel_limit(max_pixels: int | None) -> int:
    """The pixel count a codec reads up to: None means no limit but the format's own (Pillow's
    MAX_IMAGE_PIXELS = None reads the same way)."""
    check_max_pixels(max_pixels)
    return container.MAX_SIDE * container.MAX_SIDE if max_pixels is None else int(max_pixels)


def _check_network(network: Network, bundle: Bundle, provider: str, threads: int | None) -> None:
    """A network given to a codec is the codec's model on the codec's provider: another model's graphs coded
    files stamped with this model's id (17.6 dB instead of 29.5), and `provider`/`threads` were ignored."""
    if network.bundle.model_id != bundle.model_id:
        raise AectlError(f"network= runs model {network.bundle.model_id}, not this bundle's {bundle.model_id}")
    if (provider != "auto" and provider != network.provider) or (threads is not None and threads != network.threads):
        raise AectlError(f"provider={provider!r}, threads={threads!r}: a given network= runs on its own "
                         f"({network.provider!r}, {network.threads!r}); set them on the Network")


def _as_list(items, single: tuple, message: str) -> list:
    """A batch as a list; one item (which iterates as rows, characters or bytes), None or a number refused."""
    if isinstance(items, single) or items is None:
        raise AectlError(message)
    try:
        return list(items)
    except TypeError:
        raise AectlError(message) from None


def _each(read, items: list, kind: str) -> list:
    """`read` of every item; in a batch of several, an error names the item (which file of 12 was bad?)."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(read(item))
        except AectlError as exc:
            if len(items) == 1:
                raise
            raise AectlError(f"{kind} {i} of the batch: {exc}") from None
    return out


class Decoder:
    """A loaded bundle that turns .aec files back into images. Sessions start lazily on the chosen provider
    (cpu, cuda or auto), so a decoder-only client never needs the encoder."""

    def __init__(self, bundle: str | Path | Bundle, provider: str = "auto", threads: int | None = None,
                 max_pixels: int | None = container.DEFAULT_MAX_PIXELS, batch_size: int | None = 8,
                 network: Network | None = None):
        if not isinstance(bundle, (str, os.PathLike, Bundle)):  # None or 3 was a TypeError from pathlib
            raise AectlError(f"bundle={bundle!r}: give a bundle folder's path")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        # `network` lets another implementation of the same two graphs (aectl.train.torch_ref, for the
        # benchmark) run inside the unchanged pipeline, or sessions tuned otherwise (Tuning) serve it.
        if network is not None:
            _check_network(network, self.bundle, provider, threads)
        self.network = network if network is not None else Network(self.bundle, provider, threads)
        self.stages: Stages | None = None  # set to a profile.Stages() to account time per stage
        self.coder = entropy_coder.EntropyCoder(self.bundle.entropy)
        self.max_pixels = pixel_limit(max_pixels)
        if batch_size is not None and (not is_whole_number(batch_size) or batch_size < 1):  # 0 was taken as 1
            raise AectlError(f"{option('batch_size', batch_size)}: give a whole number, 1 or more")
        self.batch_size = 8 if batch_size is None else int(batch_size)
        rule = self.bundle.input_rule
        self.stride, self.fixed_size = rule["stride"], rule["fixed_size"]

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> images (N, 3, H, W) float32 in [0, 1]."""
        return self.network.decode(latents)

    def decompress(self, data: bytes) -> Image.Image:
        return self.decompress_batch([data])[0]

    def decompress_batch(self, blobs: list[bytes]) -> list[Image.Image]:
        blobs = _as_list(blobs, (bytes, bytearray, memoryview, str, os.PathLike),  # iterated bytes, characters
                         "decompress_batch takes a list of .aec files' bytes; use decompress for one")
        with stage(self.stages, "container"):
            parsed = _each(self._parse, blobs, "file")
        with stage(self.stages, "entropy"):
            # Each file's entropy decoder, and its format version (how its blocks are coded).
            streams = [(entropy_coder.new_decoder(payload, h.version, [self._block_symbols(t) for t in tiles]),
                        h.version) for h, payload, _, tiles in parsed]
        with stage(self.stages, "io"):
            outputs = [np.empty((h.height, h.width, 3), dtype=np.uint8) for h, *_ in parsed]
        plans = [tiles for *_, tiles in parsed]
        index = {(i, t): k for i, tiles in enumerate(plans) for k, t in enumerate(tiles)}
        blocks = [_DecodedBlocks() for _ in parsed]
        for batch in self._batches(self._network_runs(plans, "decoder")):
            with stage(self.stages, "entropy"):
                symbols = [np.stack([self._latent_input(streams[i], plans[i], index[i, t], blocks[i])
                                     for i, t in run]) for run in batch]
            for run, run_symbols in zip(batch, symbols):
                self._decode_run(run, run_symbols, outputs)
        images = []
        for (h, _, alpha, _), rgb in zip(parsed, outputs):
            with stage(self.stages, "container"):
                plane = image_io.unpack_alpha(alpha, h.height, h.width) if h.has_alpha else None
            with stage(self.stages, "io"):
                images.append(image_io.from_pixels(rgb, plane, h.channels, h.bit_depth))
        return images

    # -- internals ------------------------------------------------------------------------------------------
    def _latent_input(self, stream, tiles: list[tiling.Tile], k: int, decoded: "_DecodedBlocks") -> np.ndarray:
        """The decoder's input symbols for tiles[k]: its own block, with its halo from its neighbours' blocks
        (tiling's docstring). Blocks are entropy-decoded in the file's order, as far as the neighbours reach,
        and dropped once no later tile reaches back to them: at most three rows of tiles are held."""
        decoder, version = stream
        blocks = decoded.blocks
        while decoded.next <= max(tiling.neighbours(tiles, k)):
            blocks[decoded.next] = self.coder.decode_block(decoder, self._symbol_shape(tiles[decoded.next]), version)
            decoded.next += 1
        if not tiles[k].has_halo:
            return blocks.pop(k)
        window = tiling.latent_window(blocks, tiles, k, self.stride)
        oldest_needed = k - tiling.columns(tiles) - 1  # k's top-left neighbour: no later tile reaches further back
        for j in [j for j in blocks if j < oldest_needed]:
            del blocks[j]
        return window

    def _network_runs(self, plans: list[list[tiling.Tile]], role: str) -> Iterator[list[tuple[int, tiling.Tile]]]:
        """Session runs as lists of (image index, tile). A tiled image runs its tiles in raster order (the
        order of its bitstream); single-tile images of one padded size share runs, which is what batches
        same-size images together, up to batch_size images and the network's pixels per run. Each image's
        blocks still come in its own order."""
        budget = self.network.run_pixels(role)
        single: dict[tuple[int, int], list] = {}
        for i, tiles in enumerate(plans):
            if len(tiles) == 1:
                single.setdefault((tiles[0].input_height, tiles[0].input_width), []).append((i, tiles[0]))
                continue
            for run in tiling.runs(tiles, self._run_limit(tiles[0], budget)):
                yield [(i, t) for t in run]
        for items in single.values():
            limit = self._run_limit(items[0][1], budget)
            for start in range(0, len(items), limit):
                yield items[start:start + limit]

    def _batches(self, runs: Iterator[list]) -> Iterator[list[list]]:
        """Session runs gathered until they hold batch_size blocks. A batch's blocks are entropy coded one after
        another (after its encoder runs, before its decoder runs) rather than each between two network runs,
        which evict the coder's tables and code from the caches: per 768x512 block, encoding took 1.90 instead
        of 2.57 ms and decoding 2.76 instead of 3.33 (benchmarks/entropy_probe.py, medians). Memory stays
        bounded by the batch: at most batch_size blocks, plus the rest of the last run, wait for coding."""
        batch: list[list] = []
        for run in runs:
            batch.append(run)
            if sum(map(len, batch)) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _run_limit(self, tile: tiling.Tile, budget: int) -> int:
        return max(1, min(self.batch_size, budget // (tile.input_height * tile.input_width)))

    def _latent_tile_shape(self, th: int, tw: int) -> tuple[int, int, int]:
        lat = self.bundle.latent_rule
        if lat["layout"] == "NC":
            return lat["channels"], 1, 1
        return lat["channels"], th // self.stride, tw // self.stride

    def _symbol_shape(self, tile: tiling.Tile) -> tuple[int, ...]:
        """The spatial shape of a tile's block of symbols: (h, w), or () for dense latents."""
        return self.network.latent_shape(1, tile.padded_height, tile.padded_width)[2:]

    def _block_symbols(self, tile: tiling.Tile) -> int:
        """How many symbols a tile's block holds: channels x latent positions."""
        return self.coder.channels * int(np.prod(self._symbol_shape(tile), dtype=np.int64))

    def _decode_run(self, items, symbols, outputs) -> None:
        with stage(self.stages, "quantize"):
            latents = self.network.dequantize(symbols)
        with stage(self.stages, "network"):
            decoded = self.network.decode(latents)
        with stage(self.stages, "io"):
            for (i, t), img in zip(items, decoded):
                tiling.paste(outputs[i], tiling.crop_halo(img, t), t)

    def _parse(self, data: bytes):
        """(header, payload, alpha plane, tile plan) of an .aec file, checked against this bundle."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise AectlError(f"decompress takes the bytes of an .aec file, not a {type(data).__name__}")
        header, payload, alpha = container.parse(bytes(data), self.max_pixels)
        if header.model_id != self.model_id:
            advice = "pass the matching bundle with -m" if on_command_line() else "open the matching bundle"
            raise AectlError(f"file was made by model {header.model_id}, but the bundle {self.bundle.path} is model "
                             f"{self.model_id}; {advice}")
        expected_tile = tiling.choose_tile_size(header.height, header.width, self.stride, self.fixed_size)
        if (header.tile_height, header.tile_width) != expected_tile or \
                (header.latent_channels, header.latent_height, header.latent_width) != \
                self._latent_tile_shape(*expected_tile):
            self.network.session("decoder")  # raises first when the bundle's manifest does not fit its own decoder
            raise AectlError("corrupted .aec file (tile or latent shape does not fit the model)")
        tiles = tiling.plan(header.height, header.width, *expected_tile, self.stride, self.fixed_size)
        self._check_payload_size(header, payload, tiles)
        return header, payload, alpha, tiles

    def _check_payload_size(self, header, payload: bytes, tiles: list) -> None:
        """Refuse a payload too small for its blocks' entropy-coded minimum before any decoding, which bounds the
        work a file makes per byte: constriction decodes zeros past the end of its data without a word. Versions
        1-3 code one range stream, which never comes out shorter than its content (64 bits: its final rounding;
        with the 32 bits a tile once allowed here, a 60-byte file declaring a 1048576x16 image decoded). Version
        4 has no such bound: an ANS stream starts from state 0, where symbols at the start of their tables cost
        nothing (a real 2x2 block of a bundle without classes coded to 0 bits, and was refused), so there
        `max_pixels` alone bounds the work, as it does for a real file of a flat image."""
        if entropy_coder.has_block_streams(header.version):
            return
        positions = [int(np.prod(self._symbol_shape(t), dtype=np.int64)) for t in tiles]
        if 8 * len(payload) + 64 < self.coder.min_payload_bits(positions, header.version):
            raise AectlError(f"corrupted .aec file (a payload of {len(payload)} bytes cannot hold a "
                             f"{header.width}x{header.height} image)")


@dataclass
class _DecodedBlocks:
    """One file's entropy-decoded blocks that a tile still needs (tile index -> symbols), and the next block
    its stream holds."""
    next: int = 0
    blocks: dict = field(default_factory=dict)


class Codec(Decoder):
    """A full bundle: compresses images to .aec bytes and decompresses them. `format_version` is the .aec
    version written (docs/aec-format.md): the current one (None), or 3, 2 or 1 for decoders of older aectl
    releases (sizes within 0.3%, entropy decoding ~1.2x, ~1.45x or ~1.8x as long)."""

    def __init__(self, bundle: str | Path | Bundle, provider: str = "auto", threads: int | None = None,
                 max_pixels: int | None = container.DEFAULT_MAX_PIXELS, batch_size: int | None = 8,
                 network: Network | None = None, format_version: int | None = None):
        format_version = container.VERSION if format_version is None else format_version
        versions = ", ".join(map(str, container.READABLE_VERSIONS))
        if not is_whole_number(format_version):  # "4" was refused naming 4 among the versions, 4.0 failed in struct
            raise AectlError(f"{option('format_version', format_version)}: give an int, one of {versions}")
        if format_version not in container.READABLE_VERSIONS:
            raise AectlError(f"{option('format_version', format_version)}: this aectl writes versions {versions}")
        super().__init__(bundle, provider, threads, max_pixels, batch_size, network)
        self.format_version = int(format_version)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Images (N, 3, H, W) float32 in [0, 1] -> continuous latents."""
        if not self.bundle.has_encoder:
            raise AectlError(f"bundle {self.bundle.path} is decoder-only and cannot encode or compress")
        return self.network.encode(x)

    def compress(self, image: Image.Image | np.ndarray | str | os.PathLike) -> bytes:
        """An image (a path, a PIL image: its current frame, or a uint8 array) -> the bytes of an .aec file."""
        return self.compress_batch([image])[0]

    def compress_batch(self, images: list) -> list[bytes]:
        stacked = isinstance(images, np.ndarray) and images.ndim == 4
        images = _as_list(images, (np.ndarray, Image.Image, str, os.PathLike, bytes, bytearray, memoryview),
                          "compress_batch takes a list of images; " + ("for an NxHxWxC array, pass list(array)"
                                                                       if stacked else "use compress for one"))
        if not self.bundle.has_encoder:
            raise AectlError(f"bundle {self.bundle.path} is decoder-only and cannot encode or compress")
        with stage(self.stages, "io"):
            pixels = _each(self._pixels, images, "image")
        encoders = [entropy_coder.new_encoder(self.format_version) for _ in pixels]
        tile_sizes = [tiling.choose_tile_size(*px.rgb.shape[:2], self.stride, self.fixed_size) for px in pixels]
        plans = [tiling.plan(*px.rgb.shape[:2], th, tw, self.stride, self.fixed_size)
                 for px, (th, tw) in zip(pixels, tile_sizes)]
        for batch in self._batches(self._network_runs(plans, "encoder")):
            coded = [(i, block) for run in batch for i, block in self._encode_run(run, pixels)]
            with stage(self.stages, "entropy"):
                for i, block in coded:
                    self.coder.encode_block(encoders[i], block, self.format_version)
        out = []
        for px, enc, (th, tw) in zip(pixels, encoders, tile_sizes):
            lat = self._latent_tile_shape(th, tw)
            header = container.Header(self.model_id, px.rgb.shape[1], px.rgb.shape[0], px.channels, px.bit_depth,
                                       tw, th, *lat, version=self.format_version)
            with stage(self.stages, "entropy"):
                payload = entropy_coder.finish(enc)
            with stage(self.stages, "container"):
                out.append(container.pack(header, payload, image_io.pack_alpha(px.alpha)))
        return out

    def _pixels(self, image) -> image_io.Pixels:
        if isinstance(image, (str, os.PathLike)):  # Path, PurePath, any __fspath__ object
            # closed at once: Pillow keeps the file of a multi-frame format (PSD, MPO, TIFF) open after loading
            with image_io.open_image(os.fspath(image), self.max_pixels) as opened:
                return self._pixels(opened)
        if isinstance(image, np.ndarray):
            px = image_io.array_to_pixels(image)
        elif isinstance(image, Image.Image):
            px = image_io.to_pixels(image)
        else:
            raise AectlError(f"cannot compress a {type(image).__name__}; give a path, a PIL image or a uint8 array")
        h, w = px.rgb.shape[:2]
        if h == 0 or w == 0:
            raise AectlError(f"{w}x{h}: an image needs at least one pixel")
        if h * w > self.max_pixels:
            raise PixelLimitError(f"{w}x{h} exceeds the limit of {self.max_pixels} pixels",
                                  f" (raise {option('max_pixels')} if you trust this image)")
        if max(h, w) > container.MAX_SIDE:  # the file could not be read back (docs/aec-format.md)
            raise AectlError(f"{w}x{h}: a side exceeds the .aec limit of {container.MAX_SIDE} pixels")
        return px

    def _encode_run(self, items, pixels) -> list[tuple[int, np.ndarray]]:
        """Network and quantisation of one session run: (image index, block of symbols) per tile, in order."""
        with stage(self.stages, "io"):
            first = items[0][1]
            x = np.empty((len(items), 3, first.input_height, first.input_width), dtype=np.float32)
            for slot, (i, t) in zip(x, items):
                tiling.cut(pixels[i].rgb, t, out=slot)
        with stage(self.stages, "network"):
            y = self.network.encode(x)
        with stage(self.stages, "quantize"):
            symbols = self.network.quantize(y)
            if not first.has_halo:
                return [(i, block) for (i, _), block in zip(items, symbols)]
            # Each tile's own latents (the halos of one run's tiles may lie on different sides).
            return [(i, np.ascontiguousarray(tiling.crop_halo(block, t, self.stride)))
                    for (i, t), block in zip(items, symbols)]
