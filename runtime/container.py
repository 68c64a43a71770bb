"""The .aec file: a fixed little-endian header, the entropy-coded payload, an optional zlib alpha plane and a
CRC-32 over everything before it. docs/aec-format.md gives the layout byte by byte.

`parse` validates every field (and the checksum) before anything is allocated from the declared sizes.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from aectl.runtime.errors import AectlError, PixelLimitError, option

MAGIC = b"\x89AEC"
VERSION = 4  # written; 2 added the payload's group flags, 3 its trimmed tables, 4 its ANS block streams
READABLE_VERSIONS = (1, 2, 3, 4)  # (runtime/entropy_coder.py)
FLAG_ALPHA = 0x01
PAD_REPLICATE = 1
# magic, version, flags, model id, width, height, channels, bit depth, padding, reserved,
# tile width, tile height, latent channels, latent tile height, latent tile width, payload length, alpha length
_HEADER = struct.Struct("<4sBB16sIIBBBBIIHHHII")
HEADER_SIZE = _HEADER.size
CRC_SIZE = 4
HEAD_BYTES = HEADER_SIZE + CRC_SIZE  # the smallest file (header and checksum): what check_size reads
MAX_SIDE = 1 << 20
DEFAULT_MAX_PIXELS = 1 << 28  # 268 Mpx; like Pillow's decompression-bomb guard, raise it explicitly if needed


@dataclass
class Header:
    model_id: str            # 32 hex characters
    width: int
    height: int
    channels: int            # of the original image: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    bit_depth: int           # 8 or 16
    tile_width: int          # nominal tile size in pixels (the whole padded image when not tiled)
    tile_height: int
    latent_channels: int
    latent_height: int       # latent size of a nominal tile
    latent_width: int
    payload_length: int = 0
    alpha_length: int = 0
    padding: int = PAD_REPLICATE
    version: int = VERSION   # new files are written at VERSION; a parsed header keeps its file's version

    @property
    def has_alpha(self) -> bool:
        return self.alpha_length > 0

    @property
    def tiled(self) -> bool:
        return self.tile_width < self.width or self.tile_height < self.height


def pack(header: Header, payload: bytes, alpha: bytes = b"") -> bytes:
    header.payload_length, header.alpha_length = len(payload), len(alpha)
    if header.version not in READABLE_VERSIONS:
        raise ValueError(f"cannot write .aec format version {header.version}")
    head = _HEADER.pack(MAGIC, header.version, FLAG_ALPHA if alpha else 0, bytes.fromhex(header.model_id),
                        header.width, header.height, header.channels, header.bit_depth, header.padding, 0,
                        header.tile_width, header.tile_height, header.latent_channels, header.latent_height,
                        header.latent_width, len(payload), len(alpha))
    body = head + payload + alpha
    return body + struct.pack("<I", zlib.crc32(body))


def check_magic(head: bytes) -> None:
    """Refuse data that does not start like an .aec file (the first 4 bytes are enough)."""
    if not head:
        raise AectlError("empty file, not an .aec file")
    if head[:len(MAGIC)] != MAGIC:
        raise AectlError("not an .aec file (bad magic bytes)")


def check_size(head: bytes, size: int) -> int:
    """The size an .aec file declares (bytes), refusing one of another size: from its first HEAD_BYTES and its
    size alone, so that a file of gigabytes is refused before it is read."""
    check_magic(head)
    if size < 5:
        raise AectlError("truncated .aec file (no version)")
    if head[4] not in READABLE_VERSIONS:
        raise AectlError(f".aec format version {head[4]} is not supported (this aectl reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    if size < HEAD_BYTES:
        raise AectlError(f"truncated .aec file ({size} bytes, the header alone needs {HEAD_BYTES})")
    payload_len, alpha_len = _HEADER.unpack_from(head)[-2:]
    expected = HEADER_SIZE + payload_len + alpha_len + CRC_SIZE
    if size < expected:
        raise AectlError(f"truncated .aec file ({size} of {expected} bytes)")
    if size > expected:
        extra = size - expected
        raise AectlError(f"corrupted .aec file ({extra} unexpected byte{'s' if extra > 1 else ''} after the end)")
    return expected


def parse(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Header, bytes, bytes]:
    """(header, payload, alpha) of an .aec file, or AectlError naming the first problem found."""
    expected = check_size(data[:HEAD_BYTES], len(data))
    (_, version, flags, model_id, width, height, channels, depth, padding, reserved, tile_w, tile_h, lat_c, lat_h,
     lat_w, payload_len, alpha_len) = _HEADER.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, expected - CRC_SIZE)
    if zlib.crc32(memoryview(data)[:expected - CRC_SIZE]) != crc:
        raise AectlError("corrupted .aec file (checksum mismatch)")
    if flags & ~FLAG_ALPHA:
        raise AectlError(f"corrupted .aec file (unknown flags {flags:#x})")
    if reserved:  # said "unknown flags 0x0", naming the flags byte
        raise AectlError(f"corrupted .aec file (reserved byte {reserved:#x}, must be 0)")
    if bool(flags & FLAG_ALPHA) != (alpha_len > 0):
        raise AectlError("corrupted .aec file (alpha flag and alpha length disagree)")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise AectlError(f"corrupted .aec file (image size {width}x{height})")
    if width * height > max_pixels:
        raise PixelLimitError(f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
                              f" (raise {option('max_pixels')} if you trust this file)")
    # 16 bits are gray's alone: the writer codes every other 16-bit image as 8-bit (Pillow reads them so)
    if channels not in (1, 2, 3, 4) or depth not in (8, 16) or (depth == 16 and channels != 1) or \
            padding != PAD_REPLICATE:
        raise AectlError(f"corrupted .aec file (channels {channels}, bit depth {depth}, padding {padding})")
    if (alpha_len > 0) != (channels in (2, 4)):
        raise AectlError("corrupted .aec file (alpha plane does not match the channel count)")
    if not (1 <= tile_w <= MAX_SIDE and 1 <= tile_h <= MAX_SIDE and lat_c >= 1 and lat_h >= 1 and lat_w >= 1):
        raise AectlError("corrupted .aec file (tile or latent shape)")
    if payload_len % 4:
        raise AectlError("corrupted .aec file (payload is not whole 32-bit words)")
    header = Header(model_id.hex(), width, height, channels, depth, tile_w, tile_h, lat_c, lat_h, lat_w,
                    payload_len, alpha_len, padding, version)
    payload = bytes(data[HEADER_SIZE:HEADER_SIZE + payload_len])
    alpha = bytes(data[HEADER_SIZE + payload_len:HEADER_SIZE + payload_len + alpha_len])
    return header, payload, alpha


def describe(header: Header) -> dict:
    """Header fields for `aectl info FILE.aec` and --json output."""
    return {"format_version": header.version, "model_id": header.model_id, "width": header.width,
            "height": header.height, "channels": header.channels, "bit_depth": header.bit_depth, "padding": "replicate",
            "tiled": header.tiled, "tile": [header.tile_width, header.tile_height],
            "latent_tile_shape": [header.latent_channels, header.latent_height, header.latent_width],
            "payload_bytes": header.payload_length, "alpha_bytes": header.alpha_length}
