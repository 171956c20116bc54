"""SYNDOF layered defocus rendering on batched tensors (SPEC section 2), any device.

The model (:mod:`dmenet.data.thin_lens`): every pixel gets a signed circle of confusion
``c = alpha * (x - S1) / x``; pixels with equal ``c`` rounded to ``coc_step_px`` (0.1 px) form
one layer (at most ``max_layers``, neighbouring layers merged only beyond that). Layers are
composited far to near, each layer's premultiplied colour ``m * I`` and mask ``m`` blurred
together with the layer's Gaussian::

    Acc = (1 - m~) * Acc + blur(m * I);   A = (1 - m~) * A + m~;   image = Acc / A

Occlusion fill (the official generator's, SPEC section 2 step 4): before each layer nearer than
the first layer with ``c <= 1`` (the in-focus layer), the accumulation is un-premultiplied
(``Acc / A``, ``A -> 1`` where it was > 0), and the pixels outside the union ``U`` of the layers
composited so far that ``U`` blurred with the CURRENT layer's kernel reaches (>= 0.001) are
filled by Laplace inpainting (:func:`regionfill`): colour = the fill of ``Acc`` (0 outside
``U``), alpha = the fill of ``U``. Every step is a convex combination of source colours, so a
constant photo renders constant under any depth map (tested property).

Render modes (``render_mode``):

* ``"paper"`` (default): Gaussian of radius ``ceil(3 sigma)``, image border ``replicate``.
* ``"reference"``: the official generator's kernel and border: a 29 x 29 Gaussian (radius 14)
  for every sigma, border ``symmetric`` (mirror including the edge pixel), layers from the
  CoC rounded half away from zero in float64, equal CoCs on both sides of the focus merged
  when they are adjacent in depth (as its ``adjacent_unique``).

Renderers (``renderer``):

* ``"loop"`` (:func:`render_defocus_loop`): the straightforward per-layer loop, a full-frame
  blur of every layer and the fill solved exactly (sparse LU, scipy) before every layer.
* ``"fast"`` (default): the same per-layer compositing, but every blur, composite,
  un-premultiply and fill restricted to the boxes where it changes something, and the fill
  solved once per *fill group* (layers whose signed CoC steps agree after ``//
  FAST_FILL_EVERY``; inside a group the last fill's background stays premultiplied); on the
  CPU exactly, elsewhere by conjugate gradients warm-started from the last fill.

Known, deliberate differences from the generator: a blurred mask below ``1e-4`` is zeroed
together with its colour (the generator keeps the colour, which breaks convexity by up to
``1e-4`` per layer); with no layer of ``c <= 1`` the fill starts after the sharpest layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmenet.data.thin_lens import (
    Camera,
    CameraSampler,
    binary_from_coc,
    clean_depth_mm,
    coc_from_sigma,
    sigma_from_coc,
    sigma_max_px,
)
from dmenet.errors import DataError
from dmenet.labels import BINARY_COC_THRESHOLD_PX, C_MAX_PX, sigma_to_y

__all__ = [
    "RENDER_MODES",
    "RENDERERS",
    "SyndofOutput",
    "render_defocus",
    "render_from_sigma",
    "render_defocus_loop",
    "SyndofRenderer",
    "gaussian_kernel1d",
    "disc_kernel2d",
    "regionfill",
    "layer_decomposition",
    "blur_reach_px",
    "fill_start_coc_px",
    "pad_like_border",
]

RENDER_MODES: tuple[str, ...] = ("paper", "reference")
RENDERERS: tuple[str, ...] = ("fast", "loop")

MASK_EPS = 1e-4
"""Blurred-mask values below this are set to 0, with their colour (SPEC section 2 step 2)."""

FILL_REACH = 1e-3
"""The fill region: outside ``U``, where ``U`` blurred with the layer's kernel is >= this."""

FAST_FILL_EVERY = 2
"""The fast renderer solves the fill before every 2nd layer (a fill group of 2 layers); in
between, the last fill's background stays premultiplied in its region. 3 breaks the 4-level
99th percentile against the generator (measured: 5.9 levels on middlebury_far)."""

REFERENCE_KERNEL_RADIUS_PX = 14
"""The generator's kernel: ``fspecial('gaussian', [29 29], sigma)`` for every sigma."""

_MODE_BORDER = {"paper": "replicate", "reference": "symmetric"}


# ---------------------------------------------------------------------------------------------
# kernels and blur


def gaussian_kernel1d(sigma_px: float, radius_px: int | None = None) -> np.ndarray:
    """Sampled, normalised 1-D Gaussian of radius ``radius_px`` (default ``ceil(3 sigma)``);
    ``[1]`` for sigma <= 0."""
    return _gaussian_kernel1d(round(float(sigma_px), 9), radius_px).copy()


@lru_cache(maxsize=4096)
def _gaussian_kernel1d(sigma_px: float, radius_px: int | None) -> np.ndarray:
    if sigma_px <= 1e-6:
        return np.ones(1, dtype=np.float64)
    radius = max(1, int(math.ceil(3.0 * sigma_px))) if radius_px is None else int(radius_px)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def disc_kernel2d(sigma_px: float) -> np.ndarray:
    """Anti-aliased pillbox of diameter = CoC = ``4 sigma`` px (pixel coverage), normalised."""
    radius = 2.0 * sigma_px
    if radius < 0.5:
        return np.ones((1, 1), dtype=np.float64)
    r = int(math.ceil(radius + 0.5))
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    k = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0)
    return k / k.sum()


def _kernel_radius(sigma_px: float, aperture: str, radius_px: int | None) -> int:
    """Radius (px) of the kernel of ``sigma_px``: 0 for no blur."""
    if sigma_px <= 1e-6:
        return 0
    if aperture == "disc":
        return disc_kernel2d(sigma_px).shape[0] // 2
    return len(_gaussian_kernel1d(round(float(sigma_px), 9), radius_px)) // 2


def blur_reach_px(sigma_max_px: float, render_mode: str = "paper",
                  aperture: str = "gaussian") -> int:
    """How far (px) the blur of a pixel reaches: the kernel radius of ``sigma_max_px``. A crop
    rendered with this margin around it equals the crop of the whole-image render."""
    _check_mode(render_mode)
    radius = REFERENCE_KERNEL_RADIUS_PX if render_mode == "reference" else None
    return _kernel_radius(sigma_max_px, aperture, radius)


def _pad_index(n: int, r: int, border: str, device) -> torch.Tensor:
    idx = torch.arange(-r, n + r, device=device)
    if border == "replicate":
        return idx.clamp(0, n - 1)
    # symmetric: ... c b a | a b c ... c | c b a ..., any r (period 2n)
    m = idx.remainder(2 * n)
    return torch.where(m >= n, 2 * n - 1 - m, m)


def pad_like_border(x: torch.Tensor, pad_px: int, render_mode: str = "paper") -> torch.Tensor:
    """Extend ``(..., H, W)`` by ``pad_px`` on every side the way the render mode's blur
    treats the image border (``replicate`` / ``symmetric``): blurring the extension equals
    blurring with that border rule."""
    _check_mode(render_mode)
    border = _MODE_BORDER[render_mode]
    h, w = x.shape[-2:]
    rows = _pad_index(h, pad_px, border, x.device)
    cols = _pad_index(w, pad_px, border, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _blur(x: torch.Tensor, sigma_px: float, aperture: str = "gaussian",
          radius_px: int | None = None, border: str = "replicate") -> torch.Tensor:
    """Blur ``(N, C, H, W)`` with one kernel (Gaussian of radius ``radius_px``, default
    ``ceil(3 sigma)``, or the disc); ``border`` ``replicate`` or ``symmetric``.

    On the CPU (float32) OpenCV's SIMD filters (~20x faster than PyTorch's single-channel conv2d
    there, measured); elsewhere a depthwise conv2d on the tensor's device.
    """
    if sigma_px <= 1e-6:
        return x
    n, c, h, w = x.shape
    if aperture == "disc":
        k2 = disc_kernel2d(sigma_px)
        if k2.shape[0] == 1:
            return x
        r = k2.shape[0] // 2
    else:
        k1 = _gaussian_kernel1d(round(float(sigma_px), 9), radius_px)
        r = len(k1) // 2
    if x.device.type == "cpu" and x.dtype == torch.float32:
        import cv2

        cv_border = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_REFLECT
        arr = x.permute(0, 2, 3, 1).contiguous().numpy()
        out = np.empty_like(arr)
        for i in range(n):
            for c0 in range(0, c, 4):  # OpenCV filters take at most 4 channels
                src = np.ascontiguousarray(arr[i, :, :, c0:c0 + 4])
                if aperture == "disc":
                    res = cv2.filter2D(src, -1, k2.astype(np.float32), borderType=cv_border)
                else:
                    kf = k1.astype(np.float32)
                    res = cv2.sepFilter2D(src, -1, kf, kf, borderType=cv_border)
                out[i, :, :, c0:c0 + 4] = res.reshape(h, w, -1)
        return torch.from_numpy(out).permute(0, 3, 1, 2)
    rows = _pad_index(h, r, border, x.device)
    cols = _pad_index(w, r, border, x.device)
    xp = x.index_select(2, rows).index_select(3, cols).reshape(1, n * c, h + 2 * r, w + 2 * r)
    if aperture == "disc":
        weight = torch.as_tensor(k2, dtype=x.dtype, device=x.device)
        out = F.conv2d(xp, weight.expand(n * c, 1, *weight.shape), groups=n * c)
    else:
        kt = torch.as_tensor(k1, dtype=x.dtype, device=x.device)
        out = F.conv2d(xp, kt.view(1, 1, -1, 1).expand(n * c, 1, -1, 1), groups=n * c)
        out = F.conv2d(out, kt.view(1, 1, 1, -1).expand(n * c, 1, 1, -1), groups=n * c)
    return out.view(n, c, h, w)


# ---------------------------------------------------------------------------------------------
# Laplace fill


def regionfill(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Laplace inpainting of ``region (H, W)`` bool in ``values (C, H, W)`` (MATLAB
    ``regionfill`` semantics): each region pixel becomes the mean of its 4 neighbours, image
    border pixels counting only their in-image neighbours; the other pixels are the boundary
    values. Solved exactly (sparse LU, one factorisation for all channels). Returns a copy
    (float64)."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    out = np.array(values, dtype=np.float64, copy=True)
    if not region.any():
        return out
    h, w = region.shape
    ys, xs = np.nonzero(region)
    n = ys.size
    index = np.full((h, w), -1, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    deg = np.zeros(n)
    b = np.zeros((n, out.shape[0]))
    rows, cols = [np.arange(n)], [np.arange(n)]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        yy, xx = ys + dy, xs + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        deg += ok
        yy, xx, src = yy[ok], xx[ok], np.flatnonzero(ok)
        nb = index[yy, xx]
        unknown = nb >= 0
        rows.append(src[unknown])
        cols.append(nb[unknown])
        known = ~unknown
        b[src[known]] += out[:, yy[known], xx[known]].T  # src is unique per offset
    data = np.concatenate([deg, -np.ones(sum(len(r) for r in rows[1:]))])
    a = csc_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
              options={"SymmetricMode": True})
    out[:, ys, xs] = lu.solve(b).T
    return out


def _regionfill_cg(values: torch.Tensor, region: torch.Tensor, init: torch.Tensor,
                   tol: float = 1e-5, max_iter: int = 2000) -> torch.Tensor:
    """:func:`regionfill` by Jacobi-preconditioned conjugate gradients on the tensor's device,
    from ``init``. ``values``, ``init`` ``(C, h, w)``, ``region (h, w)`` bool; the window must
    hold every region pixel's in-image neighbours. Converges to the sparse solve's result."""
    c, h, w = values.shape
    rm = region.to(values.dtype)[None]

    def nsum(x):  # sum of the 4 in-window neighbours; zero padding = out of image
        p = F.pad(x[None], (1, 1, 1, 1))[0]
        return p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]

    deg = nsum(torch.ones(1, h, w, dtype=values.dtype, device=values.device))
    known = values * (1.0 - rm)
    b = nsum(known) * rm
    x = init * rm

    def apply(v):
        return (deg * v - nsum(v)) * rm

    r = b - apply(x)
    z = r / deg
    p = z.clone()
    rz = (r * z).flatten(1).sum(1)
    bnorm = b.abs().flatten(1).amax(1).clamp(min=1e-12)
    for _ in range(max_iter):
        if bool(((r.abs().flatten(1).amax(1) / bnorm) < tol).all()):
            break
        ap = apply(p)
        alpha = rz / (p * ap).flatten(1).sum(1).clamp(min=1e-30)
        x = x + alpha.view(-1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1) * ap
        z = r / deg
        rz_new = (r * z).flatten(1).sum(1)
        p = z + (rz_new / rz.clamp(min=1e-30)).view(-1, 1, 1) * p
        rz = rz_new
    return torch.where(region[None], x, values)


# ---------------------------------------------------------------------------------------------
# layers


@dataclass
class LayerDecomposition:
    """``layer_id (B,1,H,W)`` long, 0 = farthest; ``layer_value (B, L)`` the layer's signed
    CoC (px) or order key; ``num_layers (B,)``. Unused entries repeat the last layer."""

    layer_id: torch.Tensor
    layer_value: torch.Tensor
    num_layers: torch.Tensor


def layer_decomposition(key: torch.Tensor, step: float, max_layers: int) -> LayerDecomposition:
    """Quantise ``key (B,1,H,W)`` (larger = farther) to ``step``; each value one layer.

    Beyond ``max_layers`` distinct values, neighbouring values are merged evenly (a merged
    layer takes the mean of its values), so every sample has at most ``max_layers`` layers.
    """
    if max_layers < 1:
        raise ValueError(f"max_layers must be >= 1, got {max_layers}")
    b = key.shape[0]
    q = torch.round(key / step).to(torch.int64)
    ids, values, counts = [], [], []
    for i in range(b):
        qi = q[i].flatten()
        lo, hi = int(qi.min()), int(qi.max())
        if hi - lo < 4_000_000:  # bincount is O(N); torch.unique sorts (10x slower here)
            present = torch.bincount(qi - lo, minlength=hi - lo + 1) > 0
            rank = present.long().cumsum(0) - 1
            vals = torch.nonzero(present).flatten() + lo
            inverse = rank[qi - lo].view(q[i].shape)
        else:
            vals, inverse = torch.unique(q[i], sorted=True, return_inverse=True)
        n = vals.numel()
        v = vals.to(key.dtype) * step
        if n > max_layers:
            bins = torch.div(torch.arange(n, device=key.device) * max_layers, n,
                             rounding_mode="floor")
            sums = torch.zeros(max_layers, dtype=key.dtype, device=key.device).index_add_(
                0, bins, v)
            cnt = torch.bincount(bins, minlength=max_layers).to(key.dtype)
            v = sums / cnt
            inverse = bins[inverse]
            n = max_layers
        # ascending key = near to far; we want 0 = farthest
        ids.append((n - 1) - inverse)
        values.append(v.flip(0))
        counts.append(n)
    lmax = max(counts)
    layer_value = torch.stack([torch.cat([v, v[-1:].expand(lmax - v.numel())]) for v in values])
    return LayerDecomposition(torch.stack(ids), layer_value,
                              torch.tensor(counts, device=key.device))


def depth_edge_region(layer_value: torch.Tensor, layer_id: torch.Tensor, radius_px: int,
                      jump: float) -> torch.Tensor:
    """Pixels within ``radius_px`` of a depth edge: a 3x3 neighbourhood whose layer values
    (signed CoC, px) differ by more than ``jump``. ``(B,1,H,W)`` bool.

    Used to measure "away from depth edges" (tests, bench/bench_syndof.py).
    """
    b, _, h, w = layer_id.shape
    value = torch.gather(layer_value, 1, layer_id.flatten(1)).view(b, 1, h, w)
    spread = F.max_pool2d(value, 3, 1, 1) + F.max_pool2d(-value, 3, 1, 1)
    edge = (spread > jump).float()
    if radius_px > 0:  # separable dilation (a square max filter costs k^2 per pixel)
        size = 2 * radius_px + 1
        edge = F.max_pool2d(edge, (1, size), 1, (0, radius_px))
        edge = F.max_pool2d(edge, (size, 1), 1, (radius_px, 0))
    return edge > 0


def _reference_keys(coc_signed_px: torch.Tensor, step: float) -> torch.Tensor:
    """The generator's layer keys: ``|c|`` rounded half away from zero to ``step``, signed by
    the side of the focus, in float64; the nearest layer behind the focus and the farthest in
    front of it merge when their rounded CoCs are equal (they are adjacent in depth order).
    ``(B, 1, H, W)`` float64 of integers (larger = farther)."""
    c = coc_signed_px.double()
    q = torch.floor(c.abs() / step + 0.5) * torch.sign(c)
    for i in range(q.shape[0]):
        qi = q[i]
        if bool((qi == 0).any()):
            continue
        behind, front = qi[qi > 0], qi[qi < 0]
        if behind.numel() and front.numel() and float(behind.min()) == -float(front.max()):
            q[i] = torch.where(qi == front.max(), -qi, qi)
    return q


def _layer_boxes(layer_id: torch.Tensor, n: int) -> np.ndarray:
    """``(n, 4)`` int: each layer's bounding box ``y0, y1, x0, x1`` (end exclusive)."""
    h, w = layer_id.shape[-2:]
    flat = layer_id.flatten().cpu()
    ys = torch.arange(h).repeat_interleave(w)
    xs = torch.arange(w).repeat(h)
    big = torch.full((n,), h + w, dtype=torch.long)
    small = torch.full((n,), -1, dtype=torch.long)
    y0 = big.scatter_reduce(0, flat, ys, "amin")
    y1 = small.scatter_reduce(0, flat, ys, "amax") + 1
    x0 = big.scatter_reduce(0, flat, xs, "amin")
    x1 = small.scatter_reduce(0, flat, xs, "amax") + 1
    return torch.stack([y0, y1, x0, x1], 1).numpy()


def _box_union(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _box_grow(box, r, h, w):
    return (max(0, box[0] - r), min(h, box[1] + r), max(0, box[2] - r), min(w, box[3] + r))


def _box_meet(a, b):
    box = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return box if box[0] < box[1] and box[2] < box[3] else None


def _fill_start_value(values: torch.Tensor) -> float:
    """Signed CoC (px) of the layer the fill starts after: the first (farthest) of ``values``
    (signed layer CoCs, far to near) with ``|c| <= 1`` (the generator's ``coc_zero_idx``), or
    the sharpest when none is that sharp."""
    limit = max(BINARY_COC_THRESHOLD_PX, float(values.abs().min()))
    return float(values[values.abs() <= limit + 1e-9][0])


def _fill_start(values: list[float], start_value: float) -> int:
    """Index of the last layer (far to near) whose signed CoC is >= ``start_value``: the fill
    runs before the layers after it (-1: before all)."""
    return sum(v >= start_value - 1e-9 for v in values) - 1


@dataclass(frozen=True)
class _Options:
    aperture: str
    radius_px: int | None
    border: str
    fill: bool
    fast: bool
    fill_every: int = 1
    coc_step_px: float = 0.1
    iterative: bool | None = None  # the fill by conjugate gradients; None: fast and not CPU


def _composite_sample(image: torch.Tensor, layer_id: torch.Tensor, sigmas: list[float],
                      values: list[float], start_value: float, opt: _Options) -> torch.Tensor:
    """Composite one sample far to near. ``image (1,3,H,W)`` float32, ``layer_id (1,1,H,W)``
    0 = farthest, ``sigmas`` / signed CoCs ``values`` (px) per layer, the fill after the layer
    of ``start_value`` (:func:`_fill_start`). Returns ``(1,3,H,W)``."""
    _, _, h, w = image.shape
    n = len(sigmas)
    if max(sigmas) <= 1e-6:
        return image.clone()
    full = (0, h, 0, w)
    acc = torch.zeros_like(image)
    alpha = torch.zeros_like(image[:, :1])
    union = torch.zeros_like(layer_id, dtype=torch.bool)
    start = _fill_start(values, start_value) if opt.fill else n
    boxes = _layer_boxes(layer_id, n) if opt.fast else None
    union_box = None  # bounding box of the union of the layers composited so far
    rest_box = [None] * (n + 1)  # bounding box of the layers >= i
    if opt.fast:
        for i in range(n - 1, -1, -1):
            rest_box[i] = _box_union(rest_box[i + 1], tuple(int(v) for v in boxes[i]))
    dirty = full  # where alpha may lie strictly between 0 and 1
    last_group = None
    for i in range(n):
        sigma = sigmas[i]
        r = _kernel_radius(sigma, opt.aperture, opt.radius_px)
        if i > start:
            region = None  # the fill region (bool, full frame) and its bounding box
            if r > 0 and (union_box is not None or not opt.fast):
                # (nothing composited yet: a crop whose whole image starts the fill farther
                # than any of the crop's own layers has nothing to fill behind them)
                box = full if not opt.fast else _box_meet(_box_grow(union_box, r, h, w),
                                                          _box_grow(rest_box[i], r, h, w))
                if box is not None:
                    region = _fill_region(union, sigma, box, opt)
            # a fill group: layers whose CoC steps (signed) agree after // fill_every; the
            # fill is solved before the first layer of each group (by value, not index, so
            # that a crop fills like its whole image)
            group = math.floor(round(values[i] / opt.coc_step_px) / opt.fill_every)
            solve = region is not None and group != last_group
            last_group = group
            # un-premultiply: colour = Acc / A, A -> 1 where it was > 0; a skipped fill keeps
            # the last fill's (premultiplied) background in its region
            if dirty is not None:
                y0, y1, x0, x1 = dirty
                a = alpha[..., y0:y1, x0:x1]
                pos = a > 0
                if region is not None and not solve:
                    pos = pos & ~region[0][..., y0:y1, x0:x1]
                acc[..., y0:y1, x0:x1] = torch.where(pos, acc[..., y0:y1, x0:x1] / torch.where(
                    pos, a, torch.ones_like(a)), acc[..., y0:y1, x0:x1])
                alpha[..., y0:y1, x0:x1] = torch.where(pos, torch.ones_like(a), a)
            dirty = None
            if solve:
                dirty = _solve_fill(acc, alpha, union, region, opt)
            elif region is not None:
                dirty = region[1]
        # blur the layer's premultiplied colour and mask together, composite it
        box = full if not opt.fast else _box_grow(tuple(int(v) for v in boxes[i]), r, h, w)
        y0, y1, x0, x1 = box
        m = (layer_id[..., y0:y1, x0:x1] == i).to(image.dtype)
        rgba = _blur(torch.cat([image[..., y0:y1, x0:x1] * m, m], dim=1), sigma, opt.aperture,
                     opt.radius_px, opt.border)
        mb = rgba[:, 3:4]
        keep = mb >= MASK_EPS
        mb = torch.where(keep, mb, torch.zeros_like(mb))
        colour = torch.where(keep, rgba[:, :3], torch.zeros_like(rgba[:, :3]))
        acc[..., y0:y1, x0:x1] = (1.0 - mb) * acc[..., y0:y1, x0:x1] + colour
        alpha[..., y0:y1, x0:x1] = (1.0 - mb) * alpha[..., y0:y1, x0:x1] + mb
        union[..., y0:y1, x0:x1] |= m > 0
        dirty = _box_union(dirty, box)
        if opt.fast:
            union_box = _box_union(union_box, tuple(int(v) for v in boxes[i]))
    out = acc / torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    return torch.where(alpha > 0, out, image)


def _fill_region(union, sigma, box, opt: _Options):
    """The fill region before a layer of blur ``sigma``: outside ``union (1,1,H,W)`` where the
    union blurred with the layer's kernel reaches >= FILL_REACH, searched inside ``box``.
    Returns ``(region (1,1,H,W) bool, its bounding box)`` or None when it is empty."""
    h, w = union.shape[-2:]
    r = _kernel_radius(sigma, opt.aperture, opt.radius_px)
    # U blurred with the current kernel, exact inside box (computed on box + r)
    oy0, oy1, ox0, ox1 = _box_grow(box, r, h, w)
    reach = _blur(union[..., oy0:oy1, ox0:ox1].float(), sigma, opt.aperture, opt.radius_px,
                  opt.border)
    y0, y1, x0, x1 = box
    reach = reach[..., y0 - oy0:y1 - oy0, x0 - ox0:x1 - ox0]
    inside = (reach >= FILL_REACH) & ~union[..., y0:y1, x0:x1]
    if not bool(inside.any()):
        return None
    rows = torch.nonzero(inside[0, 0].any(dim=1)).flatten()
    cols = torch.nonzero(inside[0, 0].any(dim=0)).flatten()
    region = torch.zeros_like(union)
    region[..., y0:y1, x0:x1] = inside
    return region, (y0 + int(rows[0]), y0 + int(rows[-1]) + 1,
                    x0 + int(cols[0]), x0 + int(cols[-1]) + 1)


def _solve_fill(acc, alpha, union, region, opt: _Options):
    """Laplace-fill ``region`` (from :func:`_fill_region`) in place: colour = the fill of
    ``acc * U`` (acc un-premultiplied), alpha = the fill of ``U``. Returns the filled box."""
    h, w = acc.shape[-2:]
    region, (fy0, fy1, fx0, fx1) = region
    sy0, sy1, sx0, sx1 = _box_grow((fy0, fy1, fx0, fx1), 1, h, w)  # + the boundary ring
    reg = region[0, 0, sy0:sy1, sx0:sx1]
    u = union[0, :, sy0:sy1, sx0:sx1].to(acc.dtype)
    values = torch.cat([acc[0, :, sy0:sy1, sx0:sx1] * u, u], dim=0)
    iterative = (opt.fast and acc.device.type != "cpu") if opt.iterative is None \
        else opt.iterative
    if iterative:
        init = torch.cat([acc[0, :, sy0:sy1, sx0:sx1], alpha[0, :, sy0:sy1, sx0:sx1]], dim=0)
        filled = _regionfill_cg(values, reg, init)
        # keep the iterate convex: colour within [min, max] of the known colours x alpha
        a = filled[3:].clamp(0.0, 1.0)
        known = u > 0
        inf = torch.full_like(values[:3], float("inf"))
        lo = torch.where(known, values[:3], inf).flatten(1).amin(1).view(3, 1, 1)
        hi = torch.where(known, values[:3], -inf).flatten(1).amax(1).view(3, 1, 1)
        filled = torch.cat([torch.minimum(torch.maximum(filled[:3], lo * a), hi * a), a])
    else:
        filled = torch.from_numpy(regionfill(values.cpu().double().numpy(), reg.cpu().numpy())
                                  ).to(acc)
    acc[0, :, sy0:sy1, sx0:sx1] = torch.where(reg, filled[:3], acc[0, :, sy0:sy1, sx0:sx1])
    alpha[0, :, sy0:sy1, sx0:sx1] = torch.where(reg, filled[3:], alpha[0, :, sy0:sy1, sx0:sx1])
    return (fy0, fy1, fx0, fx1)


# ---------------------------------------------------------------------------------------------
# public API


@dataclass
class SyndofOutput:
    """A rendered batch: ``image (B,3,H,W)`` defocused; ``sigma_px (B,1,H,W)`` the Gaussian
    sigma of each pixel's own layer (px); ``label (B,1,H,W)`` ``y = sigma_px / SIGMA_MAX_PX``;
    ``binary (B,1,H,W)`` 1 = blurred (CoC > 1 px); ``coc_px (B,1,H,W)`` the layer's CoC;
    ``layer_id (B,1,H,W)`` 0 = farthest; ``num_layers (B,)``; ``camera`` per sample."""

    image: torch.Tensor
    sigma_px: torch.Tensor
    label: torch.Tensor
    binary: torch.Tensor
    camera: Camera
    coc_px: torch.Tensor
    layer_id: torch.Tensor
    num_layers: torch.Tensor

    @property
    def y(self) -> torch.Tensor:
        return self.label


def _check_image(image: torch.Tensor, name: str = "image") -> None:
    if not torch.is_tensor(image) or image.dim() != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise DataError(f"{name} must be a (B, 3, H, W) tensor, got {shape}")
    if not image.is_floating_point():
        raise DataError(f"{name} must be a float tensor in [0, 1], got {image.dtype}")


def _check_map(x: torch.Tensor, image: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise DataError(f"{name} must be a (B, 1, H, W) tensor, got {shape}")
    if x.shape[0] != image.shape[0] or x.shape[-2:] != image.shape[-2:]:
        raise DataError(f"shape mismatch: image is {tuple(image.shape)} but {name} is "
                        f"{tuple(x.shape)} (need the same batch size, height and width)")


def _linear(image: torch.Tensor, gamma: float | None) -> torch.Tensor:
    return image if gamma is None else image.clamp(0.0, 1.0) ** gamma


def _delinear(image: torch.Tensor, gamma: float | None) -> torch.Tensor:
    return image.clamp(0.0, 1.0) if gamma is None else image.clamp(0.0, 1.0) ** (1.0 / gamma)


def _check_aperture(aperture: str) -> None:
    if aperture not in ("gaussian", "disc"):
        raise ValueError(f"unknown aperture {aperture!r}; choose 'gaussian' or 'disc'")


def _check_mode(render_mode: str) -> None:
    if render_mode not in RENDER_MODES:
        raise ValueError(f"unknown render mode {render_mode!r}; choose 'paper' or 'reference'")


def _check_renderer(renderer: str) -> None:
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; choose 'fast' or 'loop'")


def _options(render_mode: str, renderer: str, aperture: str, fill: bool,
             coc_step_px: float = 0.1) -> _Options:
    _check_mode(render_mode)
    _check_renderer(renderer)
    _check_aperture(aperture)
    radius = REFERENCE_KERNEL_RADIUS_PX if render_mode == "reference" else None
    fast = renderer == "fast"
    return _Options(aperture, radius, _MODE_BORDER[render_mode], fill, fast,
                    FAST_FILL_EVERY if fast else 1, coc_step_px)


def _composite(image, layer_id, layer_sigma, layer_value, num_layers, opt,
               fill_from_coc_px=None) -> torch.Tensor:
    outs = []
    for i in range(image.shape[0]):
        n = int(num_layers[i])
        values = layer_value[i, :n].cpu()
        start = (_fill_start_value(values) if fill_from_coc_px is None
                 else float(fill_from_coc_px[i]))
        outs.append(_composite_sample(image[i:i + 1], layer_id[i:i + 1],
                                      [float(v) for v in layer_sigma[i, :n].cpu()],
                                      [float(v) for v in values], start, opt))
    return torch.cat(outs)


def _layers(depth: torch.Tensor, camera: Camera, render_mode: str, coc_step_px: float,
            max_layers: int, c_max_px: float):
    """Layers of a clean depth map: ``(LayerDecomposition, signed layer CoC (B, L) px)``."""
    if render_mode == "reference":
        coc_signed = camera.signed_coc_px(depth.double(), c_max_px=c_max_px)
        keys = _reference_keys(coc_signed, coc_step_px)
        layers = layer_decomposition(keys, 1.0, max_layers)
        return layers, (layers.layer_value * coc_step_px).float()
    coc_signed = camera.signed_coc_px(depth, c_max_px=c_max_px)
    layers = layer_decomposition(coc_signed, coc_step_px, max_layers)
    return layers, layers.layer_value


def fill_start_coc_px(depth_mm: torch.Tensor, camera: Camera, *, render_mode: str = "paper",
                      coc_step_px: float = 0.1, max_layers: int = 350,
                      c_max_px: float = C_MAX_PX) -> torch.Tensor:
    """``(B,)`` signed CoC (px) of the layer of ``depth_mm (B,1,H,W)`` after which the fill
    starts (the first with ``c <= 1``). Give it, computed on the WHOLE image, to
    :func:`render_defocus` when rendering a crop of it, so that the crop fills like the whole."""
    _check_mode(render_mode)
    layers, values = _layers(clean_depth_mm(depth_mm), camera, render_mode, coc_step_px,
                             max_layers, c_max_px)
    return torch.tensor([_fill_start_value(values[i, :int(layers.num_layers[i])].cpu())
                         for i in range(values.shape[0])])


def render_defocus(image: torch.Tensor, depth_mm: torch.Tensor, camera: Camera, *,
                   sigma_rule: str = "paper", render_mode: str = "paper",
                   renderer: str = "fast", max_layers: int = 350, coc_step_px: float = 0.1,
                   aperture: str = "gaussian", gamma: float | None = None,
                   c_max_px: float = C_MAX_PX, fill: bool = True,
                   fill_from_coc_px: torch.Tensor | None = None) -> SyndofOutput:
    """Defocus ``image (B,3,H,W)`` in [0, 1] by the thin-lens model with ``depth_mm (B,1,H,W)``.

    ``camera``: one focus distance and CoC scale per sample (:class:`CameraSampler`).
    CoCs are clipped to ``c_max_px`` (so ``sigma <= sigma_max``), quantised to ``coc_step_px``
    into at most ``max_layers`` layers. ``render_mode``: ``"paper"`` or ``"reference"`` (the
    official generator's kernel, border and layering; see the module docstring);
    ``renderer``: ``"fast"`` or ``"loop"`` (the straightforward per-layer loop with the exact
    fill). ``aperture="disc"`` uses a pillbox of diameter = CoC. ``gamma``: blur in linear
    intensity ``image ** gamma`` (None: on the sRGB values, like the reference). Invalid depth
    follows :func:`dmenet.data.thin_lens.clean_depth_mm`. ``fill``: the occlusion fill;
    ``fill_from_coc_px (B,)``: where it starts (:func:`fill_start_coc_px` of the whole image
    when ``image`` is a crop of it; default: this image's own). Half-precision inputs are rendered in float32 and returned in their dtype.
    """
    _check_image(image)
    _check_map(depth_mm, image, "depth_mm")
    opt = _options(render_mode, renderer, aperture, fill, coc_step_px)
    if len(camera) != image.shape[0]:
        raise DataError(f"camera has {len(camera)} samples but the batch has {image.shape[0]}")
    dtype = image.dtype
    img = _linear(image.float(), gamma)
    depth = clean_depth_mm(depth_mm.to(img.device))
    layers, layer_value = _layers(depth, camera, render_mode, coc_step_px, max_layers, c_max_px)
    layer_coc = layer_value.abs()
    layer_sigma = sigma_from_coc(layer_coc, sigma_rule)
    out = _composite(img, layers.layer_id, layer_sigma, layer_value, layers.num_layers, opt,
                     fill_from_coc_px)
    b, _, h, w = image.shape
    flat = layers.layer_id.flatten(1)
    coc_map = torch.gather(layer_coc, 1, flat).view(b, 1, h, w)
    sigma_map = torch.gather(layer_sigma, 1, flat).view(b, 1, h, w)
    return SyndofOutput(
        image=_delinear(out, gamma).to(dtype), sigma_px=sigma_map, label=sigma_to_y(sigma_map),
        binary=binary_from_coc(coc_map), camera=camera, coc_px=coc_map,
        layer_id=layers.layer_id, num_layers=layers.num_layers,
    )


def render_defocus_loop(image: torch.Tensor, depth_mm: torch.Tensor, camera: Camera,
                        **kwargs) -> torch.Tensor:
    """The straightforward per-layer loop (``render_defocus(..., renderer="loop")``): one
    full-frame blur per layer, the fill solved exactly before every layer. The reference the
    tests and the benchmark compare the fast renderer with. Returns ``(B,3,H,W)``."""
    return render_defocus(image, depth_mm, camera, renderer="loop", **kwargs).image


def _order_layers(sigma_px: torch.Tensor, order: torch.Tensor, step: float,
                  max_layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layers of equal quantised sigma ON THE SAME SIDE of the sharpest pixels' ``order``
    (so equal blur in front of and behind the focal plane stays apart), composited by their
    mean ``order`` (larger = farther). Returns ``layer_id (B,1,H,W)`` 0 = farthest,
    ``layer_sigma (B, L)`` (the layer's mean sigma) and ``num_layers (B,)``."""
    b, _, h, w = sigma_px.shape
    flat_s = sigma_px.flatten(1)
    flat_o = order.flatten(1)
    sharp = flat_s <= flat_s.amin(dim=1, keepdim=True) + step
    focus = torch.stack([flat_o[i][sharp[i]].median() for i in range(b)]).view(b, 1, 1, 1)
    # in front of (0), at (1) or behind (2) the sharpest pixels' median order
    side = torch.sign(order - focus).to(sigma_px.dtype) + 1.0
    # sigma steps on one side, then the other: neighbouring keys = neighbouring blur
    span = float(torch.round(sigma_px.max() / step)) + 2.0
    key = torch.round(sigma_px / step) + side * span
    layers = layer_decomposition(key, 1.0, max_layers)
    lmax = layers.layer_value.shape[1]
    ids, sigmas = [], []
    for i in range(b):
        flat = layers.layer_id[i].flatten()
        n = int(layers.num_layers[i])
        count = torch.bincount(flat, minlength=n).clamp(min=1).double()
        mean_order = torch.zeros(n, dtype=torch.float64, device=order.device).index_add_(
            0, flat, flat_o[i].double()) / count
        mean_sigma = torch.zeros(n, dtype=torch.float64, device=order.device).index_add_(
            0, flat, flat_s[i].double()) / count
        rank = torch.argsort(mean_order, descending=True, stable=True)  # farthest first
        new_of_old = torch.empty_like(rank)
        new_of_old[rank] = torch.arange(n, device=rank.device)
        ids.append(new_of_old[layers.layer_id[i]])
        # the layer's sigma: its pixels' value rounded to the step (mean when merged)
        sig = (torch.round(mean_sigma / step) * step if n < max_layers else mean_sigma)
        sig = sig[rank].to(sigma_px.dtype)
        sigmas.append(torch.cat([sig, sig[-1:].expand(lmax - n)]))
    return torch.stack(ids), torch.stack(sigmas), layers.num_layers


def _signed_sigma_order(sigma: torch.Tensor, n: int) -> torch.Tensor:
    """Signed CoC ``4 sigma`` of layers sorted far to near: positive down to the sharpest
    layer, negative after it (so the fill starts after the sharpest layer)."""
    c = coc_from_sigma(sigma.clone())
    sharp = int(torch.argmin(c[:n]))
    c[sharp + 1:] = -c[sharp + 1:]
    return c


def render_from_sigma(image: torch.Tensor, sigma_px: torch.Tensor, order: torch.Tensor, *,
                      aperture: str = "gaussian", gamma: float | None = None,
                      max_layers: int = 350, sigma_step_px: float = 0.025,
                      fill: bool = True, render_mode: str = "paper",
                      renderer: str = "fast") -> torch.Tensor:
    """Layered blur of ``image (B,3,H,W)`` with a given ``sigma_px (B,1,H,W)`` map.

    Layers are pixels of equal ``sigma_px`` rounded to ``sigma_step_px`` (default 0.025 px =
    a 0.1 px CoC) on the same side (in ``order``) of the sharpest pixels; they are composited
    far to near by their mean ``order (B,1,H,W)`` (larger = farther), with the same
    compositing and occlusion fill as :func:`render_defocus` (a layer's CoC is ``4 sigma``).
    ``aperture="disc"``: pillbox of diameter ``4 sigma`` (= the CoC). Used for defocus
    magnification (``k * sigma``) and the proxy real domain (``aperture="disc", gamma=2.2``).
    Returns ``(B,3,H,W)``.
    """
    _check_image(image)
    _check_map(sigma_px, image, "sigma_px")
    _check_map(order, image, "order")
    opt = _options(render_mode, renderer, aperture, fill, coc_from_sigma(sigma_step_px))
    if not bool(torch.isfinite(sigma_px).all()) or bool((sigma_px < 0).any()):
        raise DataError("sigma_px must be finite and >= 0")
    dtype = image.dtype
    img = _linear(image.float(), gamma)
    order = torch.nan_to_num(order.float().to(img.device), nan=0.0, posinf=1e30, neginf=-1e30)
    layer_id, layer_sigma, num = _order_layers(sigma_px.float().to(img.device), order,
                                               sigma_step_px, max_layers)
    # signed "CoC" 4 sigma, negative in front of the sharpest pixels (ids: 0 = farthest)
    value = torch.stack([_signed_sigma_order(layer_sigma[i], int(num[i]))
                         for i in range(layer_sigma.shape[0])])
    out = _composite(img, layer_id, layer_sigma, value, num, opt)
    return _delinear(out, gamma).to(dtype)


class SyndofRenderer(nn.Module):
    """Draws a camera per sample and renders (function/Module pair with :func:`render_defocus`).

    Holds the :class:`CameraSampler` settings (``mode``: camera sampling) and the rendering
    options; ``forward(image, depth_mm, generator=None, camera=None)`` runs on the batch's
    device without gradients (it makes training data), e.g. inside
    ``LightningDataModule.on_after_batch_transfer``. A given ``camera`` (e.g. drawn from the
    whole source image, :meth:`sample_camera`) replaces the draw.
    """

    def __init__(self, mode: str = "paper", c_max_px: float = C_MAX_PX,
                 focus_mm: float | None = None, alpha_px: float | None = None,
                 sigma_rule: str = "paper", max_layers: int = 350, coc_step_px: float = 0.1,
                 aperture: str = "gaussian", gamma: float | None = None,
                 render_mode: str = "paper", renderer: str = "fast") -> None:
        super().__init__()
        _options(render_mode, renderer, aperture, True)  # validates early
        sigma_from_coc(torch.zeros(1), sigma_rule)  # validates the rule name early
        self.sampler = CameraSampler(mode=mode, c_max_px=c_max_px, focus_mm=focus_mm,
                                     alpha_px=alpha_px, max_layers=max_layers,
                                     coc_step_px=coc_step_px)
        self.c_max_px = c_max_px
        self.sigma_rule = sigma_rule
        self.max_layers = max_layers
        self.coc_step_px = coc_step_px
        self.aperture = aperture
        self.gamma = gamma
        self.render_mode = render_mode
        self.renderer = renderer

    def extra_repr(self) -> str:
        return (f"sampler={self.sampler}, sigma_rule={self.sigma_rule!r}, "
                f"max_layers={self.max_layers}, aperture={self.aperture!r}, gamma={self.gamma}, "
                f"render_mode={self.render_mode!r}, renderer={self.renderer!r}")

    def sample_camera(self, depth_mm: torch.Tensor,
                      generator: torch.Generator | None = None) -> Camera:
        """The cameras this renderer would draw for ``depth_mm (B,1,H,W)``."""
        return self.sampler.sample(depth_mm, generator)

    def blur_reach_px(self) -> int:
        """The margin (px) a crop needs to render like the same crop of the whole image."""
        return blur_reach_px(sigma_max_px(self.c_max_px, self.sigma_rule), self.render_mode,
                             self.aperture)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, depth_mm: torch.Tensor,
                generator: torch.Generator | None = None, camera: Camera | None = None,
                fill_from_coc_px: torch.Tensor | None = None) -> SyndofOutput:
        _check_image(image)
        _check_map(depth_mm, image, "depth_mm")
        if camera is None:
            camera = self.sampler.sample(depth_mm, generator)
        return render_defocus(image, depth_mm, camera, sigma_rule=self.sigma_rule,
                              render_mode=self.render_mode, renderer=self.renderer,
                              max_layers=self.max_layers, coc_step_px=self.coc_step_px,
                              aperture=self.aperture, gamma=self.gamma, c_max_px=self.c_max_px,
                              fill_from_coc_px=fill_from_coc_px)

    def fill_start_coc_px(self, depth_mm: torch.Tensor, camera: Camera) -> torch.Tensor:
        """:func:`fill_start_coc_px` with this renderer's settings (give it the whole image)."""
        return fill_start_coc_px(depth_mm, camera, render_mode=self.render_mode,
                                 coc_step_px=self.coc_step_px, max_layers=self.max_layers,
                                 c_max_px=self.c_max_px)
