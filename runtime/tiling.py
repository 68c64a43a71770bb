"""How an image of any size maps onto a model's inputs.

Fully convolutional models take the whole image padded (replicate) to a multiple of their stride; images
larger than MAX_TILE on a side are cut into MAX_TILE tiles so memory stays bounded. Fixed-size models are
always tiled into their input size, as the first seed article proposed. The plan is a pure function of the
image size and the tile size stored in the file, so the decoder recomputes it exactly.

Tiles of a fully convolutional model are run with a halo: HALO pixels of the image around the tile go into the
encoder (and are cropped from its latents), and HALO / stride latent rows and columns of the neighbouring tiles
go into the decoder (and are cropped from its output), in both cases clipped to the padded image. Each tile then
sees what the network sees when it runs on the whole image, up to the halo, and tile borders do not show: coded
each on its own, the bands around them lost 3 dB of PSNR on a 3000x2000 photo (4.8 dB on a 5000x300 strip). The
bitstream holds each tile's own latents only, as before; the halo is how they are computed and decoded. This
is overlap-tile inference as U-Net runs large images (Ronneberger et al. 2015, "U-Net", Fig. 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aectl.runtime.errors import AectlError

MAX_TILE = 1024  # pixels per side of one network run for big images (a multiple of every stride we use)
HALO = 64  # pixels of context on each side of a tile: the factorized encoder's receptive field reaches ~30 px
# from a latent's centre, its decoder's ~3 latents (48 px) from a pixel; 4 latents at stride 16


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int          # pixels of the image covered
    width: int
    padded_height: int   # the tile padded to the stride (or fixed size): its latents are what the file holds
    padded_width: int
    halo_top: int = 0    # pixels of context around it in the network's input (a multiple of the stride)
    halo_bottom: int = 0
    halo_left: int = 0
    halo_right: int = 0

    @property
    def input_height(self) -> int:
        """Rows of the network's input (or, divided by the stride, of the decoder's latent input)."""
        return self.halo_top + self.padded_height + self.halo_bottom

    @property
    def input_width(self) -> int:
        return self.halo_left + self.padded_width + self.halo_right

    @property
    def has_halo(self) -> bool:
        return (self.input_height, self.input_width) != (self.padded_height, self.padded_width)


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
    """Tiles in raster order; edge tiles are padded to the stride (or to the fixed size). A fully convolutional
    model's tiles, when there is more than one, carry their halo (module docstring)."""
    tiles = []
    full_h, full_w = round_up(height, stride), round_up(width, stride)
    halo = round_up(HALO, stride) if fixed_size is None and (height > tile_height or width > tile_width) else 0
    for top in range(0, height, tile_height):
        for left in range(0, width, tile_width):
            h, w = min(tile_height, height - top), min(tile_width, width - left)
            if fixed_size is not None:
                ph, pw = fixed_size, fixed_size
            else:
                ph, pw = round_up(h, stride), round_up(w, stride)
            tiles.append(Tile(top, left, h, w, ph, pw, min(halo, top), min(halo, full_h - top - ph),
                              min(halo, left), min(halo, full_w - left - pw)))
    return tiles


def cut(image: np.ndarray, tile: Tile, out: np.ndarray | None = None) -> np.ndarray:
    """HWC uint8 image -> CHW float32 network input for one tile and its halo, replicate-padded past the image,
    written into `out` (a contiguous (3, input_height, input_width) slot of the batch) or a new array, in one
    ufunc pass from the transposed view instead of converting first and copying into a contiguous batch after."""
    top, left = tile.top - tile.halo_top, tile.left - tile.halo_left
    bottom, right = top + tile.input_height, left + tile.input_width
    patch = image[top:bottom, left:right]
    pad = ((0, bottom - top - patch.shape[0]), (0, right - left - patch.shape[1]), (0, 0))
    if any(p[1] for p in pad):
        patch = np.pad(patch, pad, mode="edge")
    if out is None:
        out = np.empty((3, tile.input_height, tile.input_width), dtype=np.float32)
    return np.multiply(patch.transpose(2, 0, 1), np.float32(1 / 255), out=out)


def crop_halo(array: np.ndarray, tile: Tile, scale: int = 1) -> np.ndarray:
    """A network output over a tile's input (..., H, W) without its halo; `scale` is pixels per element (the
    stride for latents)."""
    top, left = tile.halo_top // scale, tile.halo_left // scale
    return array[..., top:top + tile.padded_height // scale, left:left + tile.padded_width // scale]


def latent_window(blocks: dict, tiles: list[Tile], index: int, stride: int) -> np.ndarray:
    """The decoder's input for tiles[index]: its block of latents (C, h, w) with its halo filled from the
    neighbouring tiles' blocks (`blocks`: tile index -> block, holding at least the neighbours)."""
    tile = tiles[index]
    top, left = (tile.top - tile.halo_top) // stride, (tile.left - tile.halo_left) // stride
    height, width = tile.input_height // stride, tile.input_width // stride
    own = blocks[index]
    window = np.empty((own.shape[0], height, width), dtype=own.dtype)
    for j in neighbours(tiles, index):
        other = tiles[j]
        r0, c0 = other.top // stride, other.left // stride
        rows = slice(max(top, r0), min(top + height, r0 + other.padded_height // stride))
        cols = slice(max(left, c0), min(left + width, c0 + other.padded_width // stride))
        window[:, rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = \
            blocks[j][:, rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]
    return window


def neighbours(tiles: list[Tile], index: int) -> list[int]:
    """Indices of the tiles whose area meets tiles[index]'s input, itself included: the tiles around it that
    its halo reaches (a halo never reaches past the next tile: HALO is below MAX_TILE, and only the last row
    and column are shorter)."""
    if not tiles[index].has_halo:
        return [index]
    per_row = columns(tiles)
    row, col = divmod(index, per_row)
    rows = len(tiles) // per_row
    return [r * per_row + c for r in range(max(0, row - 1), min(rows, row + 2))
            for c in range(max(0, col - 1), min(per_row, col + 2))]


def columns(tiles: list[Tile]) -> int:
    """Tiles per row of a plan (raster order)."""
    return sum(t.top == 0 for t in tiles)


def paste(out: np.ndarray, decoded: np.ndarray, tile: Tile) -> None:
    """CHW float32 [0, 1] network output -> its place in the HWC uint8 image, padding cropped. Scaled and
    rounded in HWC order in one buffer, then cast on assignment (fewer passes than rounding in CHW)."""
    crop = decoded[:, :tile.height, :tile.width]
    hwc = np.empty((tile.height, tile.width, 3), dtype=np.float32)
    np.multiply(crop.transpose(1, 2, 0), np.float32(255), out=hwc)
    np.rint(hwc, out=hwc)
    if not np.isfinite(hwc).all():  # latents no encoder writes (a file tampered with, its CRC repaired)
        raise AectlError("corrupted .aec file (its latents decode to undefined pixels)")
    out[tile.top:tile.top + tile.height, tile.left:tile.left + tile.width] = hwc


def runs(tiles: list[Tile], limit: int) -> list[list[Tile]]:
    """Consecutive tiles of one input size, at most `limit` per group: one network run each."""
    groups: list[list[Tile]] = []
    for t in tiles:
        if groups and len(groups[-1]) < limit and \
                (groups[-1][0].input_height, groups[-1][0].input_width) == (t.input_height, t.input_width):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups
