"""How an image of any size maps onto a model's inputs.

Fully convolutional models take the whole image padded (replicate) to a multiple of their stride; images
larger than MAX_TILE on a side are cut into MAX_TILE tiles so memory stays bounded. Fixed-size models are
always tiled into their input size, as the first seed article proposed. The plan is a pure function of the
image size and the tile size stored in the file, so the decoder recomputes it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TILE = 1024  # pixels per side of one network run for big images (a multiple of every stride we use)


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int          # pixels of the image covered
    width: int
    padded_height: int   # network input size
    padded_width: int


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def choose_tile_size(height: int, width: int, stride: int, fixed_size: int | None) -> tuple[int, int]:
    if fixed_size is not None:
        return fixed_size, fixed_size
    ph, pw = round_up(height, stride), round_up(width, stride)
    if ph <= MAX_TILE and pw <= MAX_TILE:
        return ph, pw
    return min(ph, MAX_TILE), min(pw, MAX_TILE)


def plan(height: int, width: int, tile_height: int, tile_width: int, stride: int,
         fixed_size: int | None) -> list[Tile]:
    """Tiles in raster order; edge tiles are padded to the stride (or to the fixed size)."""
    tiles = []
    for top in range(0, height, tile_height):
        for left in range(0, width, tile_width):
            h, w = min(tile_height, height - top), min(tile_width, width - left)
            if fixed_size is not None:
                ph, pw = fixed_size, fixed_size
            else:
                ph, pw = round_up(h, stride), round_up(w, stride)
            tiles.append(Tile(top, left, h, w, ph, pw))
    return tiles


def cut(image: np.ndarray, tile: Tile, out: np.ndarray | None = None) -> np.ndarray:
    """HWC uint8 image -> CHW float32 network input for one tile, replicate-padded, written into `out` (a
    contiguous (3, padded_height, padded_width) slot of the batch) or a new array, in one ufunc pass from the
    transposed view instead of converting first and copying into a contiguous batch after."""
    patch = image[tile.top:tile.top + tile.height, tile.left:tile.left + tile.width]
    pad = ((0, tile.padded_height - tile.height), (0, tile.padded_width - tile.width), (0, 0))
    if any(p[1] for p in pad):
        patch = np.pad(patch, pad, mode="edge")
    if out is None:
        out = np.empty((3, tile.padded_height, tile.padded_width), dtype=np.float32)
    return np.multiply(patch.transpose(2, 0, 1), np.float32(1 / 255), out=out)


def paste(out: np.ndarray, decoded: np.ndarray, tile: Tile) -> None:
    """CHW float32 [0, 1] network output -> its place in the HWC uint8 image, padding cropped. Scaled and
    rounded in HWC order in one buffer, then cast on assignment (fewer passes than rounding in CHW)."""
    crop = decoded[:, :tile.height, :tile.width]
    hwc = np.empty((tile.height, tile.width, 3), dtype=np.float32)
    np.multiply(crop.transpose(1, 2, 0), np.float32(255), out=hwc)
    np.rint(hwc, out=hwc)
    out[tile.top:tile.top + tile.height, tile.left:tile.left + tile.width] = hwc


def runs(tiles: list[Tile], limit: int) -> list[list[Tile]]:
    """Consecutive tiles of one padded size, at most `limit` per group: one network run each."""
    groups: list[list[Tile]] = []
    for t in tiles:
        if groups and len(groups[-1]) < limit and \
                (groups[-1][0].padded_height, groups[-1][0].padded_width) == (t.padded_height, t.padded_width):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups
