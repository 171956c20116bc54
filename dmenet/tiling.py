"""Tiled inference: photos of any size in bounded memory, equal to untiled inference.

A photo with more pixels than one tile (``tile**2``, 1024 x 1024 by default) is tiled; smaller
ones run whole, since memory grows with the pixel count.

B is fully convolutional, so a big photo can be cut into overlapping tiles. Two things keep the
stitched result equal to running B on the whole photo (within 1e-3, tested):

* Tiles start on multiples of ``align`` (B's total stride, 16) and the last tile of a row or
  column ends on the photo's edge. B's pooling grid therefore sits where it would for the whole
  photo, and the last tile needs exactly the bottom/right padding the whole photo gets.
* A tile's output is trusted only away from its cut edges (where B sees padding instead of the
  neighbouring pixels): the blending weight is 0 within ``margin`` pixels of a cut edge and
  rises smoothly (raised cosine) over the next ``blend`` pixels, with
  ``blend = min(32, overlap // 4)`` and ``margin = (overlap - blend) // 2``. Edges that are the
  photo's own edges get full weight, as in untiled inference; the weights are normalised by
  their sum (a product of 1-D sums, since the tiles form a grid).

B's receptive field is large: measured on a randomly initialised B with calibrated BatchNorm
(``python bench/bench_inference.py --reach``, both padding modes), the output changes by 1e-2
at 128 px from a cut edge, 2e-3 at 144 px, below 1e-4 from 160 px and not at all beyond 192 px.
The default overlap of 352 px (margin 160 px, blend 32 px) therefore keeps tiled within 1e-3 of
untiled (the blend is narrow: both tiles agree there within 1e-4, so a wider one buys nothing);
raise it for more safety, lower it for speed. ``--tile auto`` (:func:`auto_tile_px`) picks the
biggest tile a memory budget allows, so fewer pixels are recomputed.

In eval mode BatchNorm is a per-channel affine map, so it does not couple tiles.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Callable

import torch

__all__ = [
    "tile_starts", "tile_spans", "auto_tile_px", "blend_ramp", "blend_geometry", "needs_tiling", "predict_tiled", "predict_image",
    "return_freed_maps_to_os",
]

DEFAULT_TILE_PX = 1024
DEFAULT_OVERLAP_PX = 352
DEFAULT_ALIGN_PX = 16
DEFAULT_MEMORY_GB = 4.0
"""Peak-memory budget (GiB) from which ``--tile auto`` chooses the tile."""
# measured on the CPU (peak RSS of `dmenet infer` on a 64 px photo and on a 1 MP photo with
# --tile 0, with return_freed_maps_to_os): the process with torch and B loaded (1.03 GiB), what
# each photo pixel costs, and what each pixel of one tile costs while B runs on it (fast path
# 0.79 kB, reference path 2.2 kB; a margin added)
# (PHOTO: the float32 photo and the blended output while the tiles run; the sigma map and the
# writer's copies come after the tiles' activations are gone)
BASE_GB = 1.05
PHOTO_BYTES_PER_PX = 16
TILE_BYTES_PER_PX = {"fast": 850, "reference": 2300}
MIN_AUTO_TILE_PX = 512


MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_maps_to_os() -> bool:
    """Make freed feature maps of 1 MiB and more go back to the operating system at once.

    glibc's ``malloc`` raises its mmap threshold (up to 32 MiB) whenever a big block is freed;
    after that B's mid-sized maps (its coarse levels: tens of MB per megapixel) come from the
    heap, which keeps them resident, fragmented, after they are freed: about 230 bytes per tile
    pixel of extra peak memory (measured at 1 MP: 1030 -> 800 B/px). A fixed threshold
    (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, process-wide) keeps them out of the heap, at no
    measured cost in speed. ``TILE_BYTES_PER_PX`` is measured with it. Returns whether it was set
    (glibc only; elsewhere nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def tile_starts(length: int, tile: int, overlap: int, align: int = DEFAULT_ALIGN_PX) -> list[int]:
    """Start offsets (pixels) of the tiles of :func:`tile_spans`."""
    return [start for start, _ in tile_spans(length, tile, overlap, align)]


def tile_spans(length: int, tile: int, overlap: int, align: int = DEFAULT_ALIGN_PX) -> list[tuple[int, int]]:
    """``(start, end)`` pixels of the fewest tiles of at most ``tile`` pixels covering ``[0, length)``.

    Every start is a multiple of ``align``; the last tile ends at ``length`` (so it may be up
    to ``align - 1`` pixels longer than the others). Neighbouring tiles overlap by at least
    ``overlap`` pixels. The tiles are balanced: for ``n`` tiles each is about
    ``(length + (n - 1) * overlap) / n`` long, so no pixels are recomputed beyond the overlaps
    (a photo 10% longer than a tile gets two tiles of about 55%, not one full tile and a thin
    one).
    """
    if tile <= 0 or length <= tile:
        return [(0, length)]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap} px) must be smaller than the tile ({tile} px)")
    for n in range(2, length // align + 2):
        # every tile but the last: a multiple of align; starts are rounded down to it
        side = _side_for(length, n, overlap, align)
        if side > tile:
            continue
        starts = [((i * (length - side)) // (n - 1)) // align * align for i in range(n)]
        if all(b > a for a, b in zip(starts, starts[1:])):
            return [(a, a + side) for a in starts[:-1]] + [(starts[-1], length)]
    starts = _tile_starts_greedy(length, tile, overlap, align)
    return [(a, a + tile) for a in starts[:-1]] + [(starts[-1], length)]


def _tile_starts_greedy(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Tiles of exactly ``tile`` advancing by ``tile - overlap`` (the last one ends on the edge)."""
    step = max(align, ((tile - overlap) // align) * align)
    starts = [0]
    while starts[-1] + tile < length:
        nxt = starts[-1] + step
        if nxt + tile >= length:  # the last tile: ends on the edge, start aligned down
            nxt = ((length - tile) // align) * align
            if nxt <= starts[-1]:
                break
            starts.append(nxt)
            break
        starts.append(nxt)
    return starts


def blend_ramp(size: int, ramp_start: bool, ramp_end: bool, overlap: int) -> torch.Tensor:
    """1-D blending weight ``(size,)`` of one tile along one axis.

    At a cut edge (``ramp_start`` / ``ramp_end``) the weight is 0 for the first ``margin``
    pixels, then rises as a raised cosine over ``blend`` pixels to 1 (see the module docs).
    """
    blend, margin = blend_geometry(overlap)
    w = torch.ones(size, dtype=torch.float64)
    d = torch.arange(size, dtype=torch.float64)
    r = ((d - margin + 0.5) / blend).clamp(0.0, 1.0)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * r)
    if ramp_start:
        w = w * ramp
    if ramp_end:
        w = w * ramp.flip(0)
    return w


def blend_geometry(overlap: int) -> tuple[int, int]:
    """``(blend, margin)`` in pixels for a tile overlap: the ramp width and the discarded border."""
    blend = max(1, min(32, overlap // 4))
    return blend, (overlap - blend) // 2


def auto_tile_px(height: int, width: int, memory_gb: float = DEFAULT_MEMORY_GB,
                 path: str = "fast", overlap: int = DEFAULT_OVERLAP_PX,
                 align: int = DEFAULT_ALIGN_PX) -> int | tuple[int, int]:
    """The tile for a photo within a peak-memory budget: ``0`` (no tiling) when the whole photo
    fits, else ``(tile_h, tile_w)`` in px, the tile grid that recomputes the fewest pixels among
    those whose tile fits beside the process and the photo (``BASE_GB``,
    ``PHOTO_BYTES_PER_PX``, ``TILE_BYTES_PER_PX[path]``, measured). Tiles are not square:
    a 4000 x 6000 photo with 4 GB gets 3 x 4 tiles of about 1580 x 1780 px."""
    free = memory_gb * 2**30 - BASE_GB * 2**30 - PHOTO_BYTES_PER_PX * height * width
    per_px = TILE_BYTES_PER_PX[path]
    if free >= per_px * height * width:
        return 0
    budget_px = max(free / per_px, float(MIN_AUTO_TILE_PX**2))

    def options(length: int) -> list[tuple[int, int]]:  # (longest tile, computed px) per count
        out = []
        for n in range(1, length // max(align, overlap // 2) + 2):
            side = length if n == 1 else max(
                e - s for s, e in tile_spans(length, _side_for(length, n, overlap, align), overlap, align))
            out.append((side, n, sum(e - s for s, e in tile_spans(length, side, overlap, align))))
            if side <= MIN_AUTO_TILE_PX:
                break
        return [(side, px) for side, _, px in out]

    best = None
    for th, py in options(height):
        for tw, px in options(width):
            if th * tw <= budget_px and (best is None or py * px < best[0]):
                best = (py * px, th, tw)
    if best is None:
        side = max(MIN_AUTO_TILE_PX, int(math.sqrt(budget_px)) // align * align)
        return (side, side)
    return (best[1], best[2])


def _side_for(length: int, n: int, overlap: int, align: int) -> int:
    """The tile length :func:`tile_spans` needs to cover ``length`` with ``n`` balanced tiles."""
    slack = overlap + align - 1
    side = -(-(length + (n - 1) * slack) // n)
    return -(-side // align) * align


def _pair(tile: int | tuple[int, int]) -> tuple[int, int]:
    return (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))


def needs_tiling(height: int, width: int, tile: int | tuple[int, int],
                 max_untiled_px: int | None = None) -> bool:
    """Whether a photo is tiled: it has more than ``max_untiled_px`` pixels (default
    ``tile_h * tile_w``: memory grows with the pixel count, so a photo no bigger than one tile
    runs whole, whatever its shape). ``tile <= 0`` never tiles."""
    th, tw = _pair(tile)
    if th <= 0 or tw <= 0:
        return False
    limit = th * tw if max_untiled_px is None else max_untiled_px
    return height * width > limit


def _tile_slices(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int]]:
    return tile_spans(length, tile, overlap, align)


@torch.no_grad()
def predict_tiled(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int | tuple[int, int] = DEFAULT_TILE_PX,
    overlap: int = DEFAULT_OVERLAP_PX,
    align: int = DEFAULT_ALIGN_PX,
    device: torch.device | str | None = None,
    progress: bool = False,
    max_untiled_px: int | None = None,
) -> torch.Tensor:
    """Run ``predict`` on overlapping tiles of ``image`` and blend the results.

    Args:
        predict: maps ``(1, 3, h, w)`` -> ``(1, C, h, w)`` (e.g. B's ``y``) on ``device``.
        image: ``(1, 3, H, W)`` photo in ``[0, 1]``; may stay on the CPU while tiles go to
            ``device`` one at a time, so only one tile's activations are alive at once.
        tile, overlap: tile side (or ``(height, width)``) and minimum overlap in pixels
            (``tile <= 0``: no tiling).
        align: tile starts are multiples of this (B's total stride).
        max_untiled_px: photos with at most this many pixels run whole (default ``tile**2``).

    Returns:
        ``(1, C, H, W)`` float32 on the image's device.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, H, W), got {tuple(image.shape)}")
    _, _, height, width = image.shape
    device = torch.device(device) if device is not None else image.device
    if not needs_tiling(height, width, tile, max_untiled_px):
        return predict(image.to(device)).float().to(image.device)
    if overlap < 4:
        raise ValueError("overlap must be at least 4 px for tiled inference")
    tile_h, tile_w = _pair(tile)
    rows = _tile_slices(height, tile_h, overlap, align)
    cols = _tile_slices(width, tile_w, overlap, align)
    ramps_y = [blend_ramp(y1 - y0, i > 0, i < len(rows) - 1, overlap) for i, (y0, y1) in enumerate(rows)]
    ramps_x = [blend_ramp(x1 - x0, j > 0, j < len(cols) - 1, overlap) for j, (x0, x1) in enumerate(cols)]
    # the tiles form a grid and each weight is a product of 1-D ramps, so the summed weight is
    # the product of the 1-D sums: no full-size weight map (4 bytes per photo pixel saved)
    sum_y = torch.zeros(height, dtype=torch.float64)
    sum_x = torch.zeros(width, dtype=torch.float64)
    for (y0, y1), wy in zip(rows, ramps_y):
        sum_y[y0:y1] += wy
    for (x0, x1), wx in zip(cols, ramps_x):
        sum_x[x0:x1] += wx
    out: torch.Tensor | None = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows) * len(cols), desc="tiles", unit="tile", leave=False)
    for (y0, y1), wy in zip(rows, ramps_y):
        for (x0, x1), wx in zip(cols, ramps_x):
            # weights normalised here, so the blended sum needs no division afterwards
            w2 = ((wy / sum_y[y0:y1])[:, None] * (wx / sum_x[x0:x1])[None, :]).to(
                torch.float32).to(image.device)
            pred = predict(image[:, :, y0:y1, x0:x1].to(device)).float().to(image.device)
            if out is None:
                out = torch.zeros(1, pred.shape[1], height, width, dtype=torch.float32,
                                  device=image.device)
            out[:, :, y0:y1, x0:x1].addcmul_(pred, w2)
            del pred
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    assert out is not None
    # every pixel has weight > 0: each lies in some tile's fully-trusted core
    return out


def predict_image(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int | tuple[int, int] = DEFAULT_TILE_PX,
    overlap: int = DEFAULT_OVERLAP_PX,
    align: int = DEFAULT_ALIGN_PX,
    device: torch.device | str | None = None,
    progress: bool = False,
    max_untiled_px: int | None = None,
) -> torch.Tensor:
    """:func:`predict_tiled` for ``(3, H, W)`` or ``(1, 3, H, W)``; returns ``(1, C, H, W)``."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    return predict_tiled(predict, image, tile, overlap, align, device, progress, max_untiled_px)
