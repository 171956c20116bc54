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
* ``"fast"`` (default, :class:`_TileCompositor`): the same algorithm, the fill solved before
  every layer too, but sparse in ``TILE_PX`` x ``TILE_PX`` tiles: each layer is blurred
  (separably, over runs of tiles, with the kernel's significant taps) only on the tiles within
  its kernel radius of its own pixels, ``Acc`` / ``A`` (kept tiled) are composited and
  un-premultiplied only on the tiles that changed, the fill region is searched only on the
  tiles at the frontier of the union and solved on its own pixels (on the CPU by compiled
  loops and an exact envelope Cholesky, else SuperLU; conjugate gradients elsewhere). Equal to
  the loop up to float rounding (tested on dense-layer scenes). On the CPU it compiles its
  loops with numba on first use (cached on disk; the first render of a process pays 1-2 s
  to import numba and load them, ~7 s to compile them where no cache exists).

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

TILE_PX = 16
"""Tile side (px) of the fast renderer (measured fastest of 16 / 32 / 64 at 1 MP)."""

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


def _border_index(idx: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """The pixel of ``0 .. n-1`` that index ``idx`` (any integers) reads under ``border``."""
    if border == "replicate":
        return idx.clamp(0, n - 1)
    # symmetric: ... c b a | a b c ... c | c b a ..., any distance (period 2n)
    m = idx.remainder(2 * n)
    return torch.where(m >= n, 2 * n - 1 - m, m)


def _pad_index(n: int, r: int, border: str, device) -> torch.Tensor:
    return _border_index(torch.arange(-r, n + r, device=device), n, border)


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


def _laplace_system(ys: torch.Tensor, xs: torch.Tensor, h: int, w: int):
    """The linear system of :func:`regionfill` for the unknown pixels ``ys, xs`` (long, ``n``)
    of an ``h x w`` image: ``deg (n,)`` the number of in-image neighbours; for each of the 4
    neighbours ``nb (4, n)`` the index of an unknown neighbour (-1: none), ``known (4, n)``
    whether it is a known in-image pixel, ``ny, nx (4, n)`` its coordinates (clamped)."""
    n = ys.numel()
    index = torch.full((h, w), -1, dtype=torch.long, device=ys.device)
    index[ys, xs] = torch.arange(n, device=ys.device)
    off_y = torch.tensor([-1, 1, 0, 0], device=ys.device).view(4, 1)
    off_x = torch.tensor([0, 0, -1, 1], device=ys.device).view(4, 1)
    yy, xx = ys[None] + off_y, xs[None] + off_x
    ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    ny, nx = yy.clamp(0, h - 1), xx.clamp(0, w - 1)
    nb = torch.where(ok, index[ny, nx], torch.full_like(ny, -1))
    return ok.sum(0), nb, ok & (nb < 0), ny, nx


def _laplace_rhs(known: torch.Tensor, known_values: torch.Tensor) -> torch.Tensor:
    """``b (n, C)``: the sum of the known neighbours' ``known_values (4, n, C)``."""
    return (known_values * known[..., None].to(known_values.dtype)).sum(0)


def _laplace_factor(deg, nb):
    """SuperLU factorisation of the Laplace system of :func:`_laplace_system` (``.solve(b)``)."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    deg, nb = deg.cpu().numpy(), nb.cpu().numpy()
    n = deg.size
    src = np.broadcast_to(np.arange(n), nb.shape)[nb >= 0]
    dst = nb[nb >= 0]
    data = np.concatenate([deg.astype(np.float64), -np.ones(dst.size)])
    a = csc_matrix((data, (np.concatenate([np.arange(n), src]),
                           np.concatenate([np.arange(n), dst]))), shape=(n, n))
    # small supernodes and panels: 1.6x faster than SuperLU's defaults on these band-shaped
    # regions (measured, 20-30k unknowns)
    return splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, relax=1, panel_size=2,
                options={"SymmetricMode": True})


def _laplace_solve_lu(deg, nb, b: np.ndarray) -> np.ndarray:
    """The exact solution ``(n, C)`` float64 (sparse LU, one factorisation for all channels)."""
    return _laplace_factor(deg, nb).solve(np.asarray(b, dtype=np.float64))


def _laplace_solve_cg(deg, nb, b: torch.Tensor, init: torch.Tensor, tol: float = 1e-5,
                      max_iter: int = 2000) -> torch.Tensor:
    """The same solution by Jacobi-preconditioned conjugate gradients on the tensors' device,
    from ``init (n, C)``, every channel at once (converges to :func:`_laplace_solve_lu`)."""
    n = b.shape[0]
    d = deg.to(b.dtype)[:, None]
    idx = torch.where(nb >= 0, nb, torch.full_like(nb, n))

    def apply(v):
        vp = torch.cat([v, torch.zeros_like(v[:1])])
        return d * v - vp[idx].sum(0)

    x = init.clone()
    r = b - apply(x)
    z = r / d
    p = z.clone()
    rz = (r * z).sum(0)
    bnorm = b.abs().amax(0).clamp(min=1e-12)
    for it in range(max_iter):
        if it % 8 == 0 and bool(((r.abs().amax(0) / bnorm) < tol).all()):
            break
        ap = apply(p)
        step = rz / (p * ap).sum(0).clamp(min=1e-30)
        x = x + step * p
        r = r - step * ap
        z = r / d
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp(min=1e-30)) * p
        rz = rz_new
    return x


def regionfill(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Laplace inpainting of ``region (H, W)`` bool in ``values (C, H, W)`` (MATLAB
    ``regionfill`` semantics): each region pixel becomes the mean of its 4 neighbours, image
    border pixels counting only their in-image neighbours; the other pixels are the boundary
    values. Solved exactly (sparse LU, one factorisation for all channels). Returns a copy
    (float64)."""
    out = np.array(values, dtype=np.float64, copy=True)
    if not region.any():
        return out
    h, w = region.shape
    ys, xs = (torch.from_numpy(v) for v in np.nonzero(region))
    deg, nb, known, ny, nx = _laplace_system(ys, xs, h, w)
    vals = torch.from_numpy(out)[:, ny, nx].permute(1, 2, 0)  # (4, n, C)
    out[:, ys.numpy(), xs.numpy()] = _laplace_solve_lu(deg, nb, _laplace_rhs(known, vals)).T
    return out


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
    coc_step_px: float = 0.1
    iterative: bool | None = None  # the fill by conjugate gradients; None: fast and not CPU
    tile_px: int = TILE_PX
    opencv: bool | None = None  # OpenCV filters; None: on the CPU in float32


def _composite_sample(image: torch.Tensor, layer_id: torch.Tensor, sigmas: list[float],
                      values: list[float], start_value: float, opt: _Options) -> torch.Tensor:
    """Composite one sample far to near. ``image (1,3,H,W)`` float, ``layer_id (1,1,H,W)``
    0 = farthest, ``sigmas`` / signed CoCs ``values`` (px) per layer, the fill after the layer
    of ``start_value`` (:func:`_fill_start`). Returns ``(1,3,H,W)``."""
    if max(sigmas) <= 1e-6:
        return image.clone()
    start = _fill_start(values, start_value) if opt.fill else len(sigmas)
    if opt.fast:
        return _TileCompositor(image, layer_id, sigmas, opt).run(start)
    return _composite_loop(image, layer_id, sigmas, start, opt)


# --- the straightforward per-layer loop


def _composite_loop(image, layer_id, sigmas, start, opt: _Options) -> torch.Tensor:
    """Full-frame blur of every layer, the exact fill before every layer after ``start``."""
    acc = torch.zeros_like(image)
    alpha = torch.zeros_like(image[:, :1])
    for i, sigma in enumerate(sigmas):
        r = _kernel_radius(sigma, opt.aperture, opt.radius_px)
        if i > start:
            # un-premultiply: colour = Acc / A, A -> 1 where it was > 0
            pos = alpha > 0
            acc = torch.where(pos, acc / torch.where(pos, alpha, torch.ones_like(alpha)), acc)
            alpha = torch.where(pos, torch.ones_like(alpha), alpha)
            if r > 0:
                _fill_loop(acc, alpha, layer_id < i, sigma, opt)
        m = (layer_id == i).to(image.dtype)
        rgba = _blur(torch.cat([image * m, m], dim=1), sigma, opt.aperture, opt.radius_px,
                     opt.border)
        mb = rgba[:, 3:4]
        keep = mb >= MASK_EPS
        mb = torch.where(keep, mb, torch.zeros_like(mb))
        colour = torch.where(keep, rgba[:, :3], torch.zeros_like(rgba[:, :3]))
        acc = (1.0 - mb) * acc + colour
        alpha = (1.0 - mb) * alpha + mb
    out = acc / torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    return torch.where(alpha > 0, out, image)


def _fill_loop(acc, alpha, union, sigma, opt: _Options) -> None:
    """The fill before a layer of blur ``sigma``, in place: outside ``union (1,1,H,W)`` where
    the union blurred with the layer's kernel reaches >= FILL_REACH, colour = the Laplace fill
    of ``acc * U`` (acc un-premultiplied), alpha = the fill of ``U`` (:func:`regionfill`)."""
    reach = _blur(union.to(acc.dtype), sigma, opt.aperture, opt.radius_px, opt.border)
    region = ((reach >= FILL_REACH) & ~union)[0, 0]
    if not bool(region.any()):
        return
    u = union[0].to(acc.dtype)
    values = torch.cat([acc[0] * u, u]).cpu().double().numpy()
    filled = torch.from_numpy(regionfill(values, region.cpu().numpy())).to(acc)
    acc[0] = torch.where(region, filled[:3], acc[0])
    alpha[0] = torch.where(region, filled[3:], alpha[0])


# --- the fast renderer: the same algorithm, sparse in tiles


def _mask_reach_px(sigma_px: float, radius: int, opt: _Options) -> int:
    """How far (px, Chebyshev) from a layer its blurred mask can reach ``MASK_EPS``: at
    distance ``d`` every kernel offset has ``|dx| >= d`` or ``|dy| >= d``, so the blurred
    mask is at most twice the 1-D kernel's tail beyond ``d`` (kept below half of MASK_EPS, a
    margin for float rounding)."""
    if opt.aperture == "disc" or radius == 0:
        return radius
    k = _gaussian_kernel1d(round(float(sigma_px), 9), opt.radius_px)
    tail = 2.0 * np.cumsum(k[::-1])[::-1][radius:]  # tail[d] = mass at |u| >= d
    far = np.nonzero(2.0 * tail < 0.5 * MASK_EPS)[0]
    return int(far[0]) - 1 if far.size else radius


TAIL_MASS = 1e-10
"""The fast renderer drops the Gaussian taps beyond which both tails hold less than this
mass (the loop keeps them): a difference far below float32 rounding. It matters in reference
mode, whose 29-tap kernel is mostly zeros for small sigma."""


@lru_cache(maxsize=4096)
def _significant_kernel1d(sigma_px: float, radius_px: int | None) -> np.ndarray:
    """The taps of :func:`gaussian_kernel1d` within the smallest radius whose two tails
    together hold less than ``TAIL_MASS`` (the same values, not renormalised)."""
    k = _gaussian_kernel1d(round(float(sigma_px), 9), radius_px)
    r = len(k) // 2
    beyond = 2.0 * np.cumsum(k[::-1])[::-1][r + 1:]  # beyond[d] = mass at |u| > d
    small = np.nonzero(beyond < TAIL_MASS)[0]
    d = int(small[0]) if small.size else r
    return k[r - d:r + d + 1]


# Loops over tiles that touch every value once (NumPy semantics; compiled by numba on the CPU,
# where each replaces 3-6 passes of torch ops over the same data). Layouts as in
# :class:`_TileCompositor`.


def _k_vertical_rows(hout, hin, tile_k, vrow, out):
    """``out[j] = `` the horizontal pass's row ``vrow[j]`` (scratch row: tile ``vrow // T``,
    local row ``vrow % T``), read from the filtered runs ``hout (J, T, C)`` (tile ``k``'s
    column ``x`` at run row ``hin[k * T + x]``; ``tile_k``: a tile's ``k``, -1 = zero)."""
    t, nc = hout.shape[1], hout.shape[2]
    for j in range(vrow.shape[0]):
        tile, y = vrow[j] // t, vrow[j] % t
        k = tile_k[tile]
        for x in range(t):
            if k < 0:
                for c in range(nc):
                    out[j, x, c] = 0.0
            else:
                m = hin[k * t + x]
                for c in range(nc):
                    out[j, x, c] = hout[m, y, c]


def _k_composite(state, tiles, vout, vin, eps):
    """Composite the blurred layer ``vout[vin[k * T + y], x]`` (RGBA) over tile ``tiles[k]``
    of ``state (tiles, T * T, 4)``: ``S = (1 - m) S + rgbm`` where ``m >= eps``."""
    t = vout.shape[1]
    one = np.float32(1.0)
    for k in range(tiles.shape[0]):
        s = state[tiles[k]]
        for y in range(t):
            src = vout[vin[k * t + y]]
            for x in range(t):
                a = src[x, 3]
                if a >= eps:
                    w = one - a
                    q = y * t + x
                    for c in range(4):
                        s[q, c] = s[q, c] * w + src[x, c]


def _k_unpremultiply(state, tiles):
    """``colour = Acc / A``, ``A -> 1`` where ``A > 0``, on the tiles ``tiles`` of ``state``."""
    one = np.float32(1.0)
    for k in range(tiles.shape[0]):
        s = state[tiles[k]]
        for q in range(s.shape[0]):
            a = s[q, 3]
            if a > 0:
                for c in range(3):
                    s[q, c] = s[q, c] / a
                s[q, 3] = one


def _k_fill_system(ys, xs, index, lid_img, layer, state, p, t, gw, nb, deg, b):
    """The Laplace system of the fill before layer ``layer`` on the unknown pixels ``ys, xs``
    (image coordinates; ``index (H, W)`` all -1, restored): per unknown its in-image
    neighbour count ``deg``, its unknown neighbours ``nb (n, 4)`` (-1: none) and ``b (n, 4)``
    the sum of its known neighbours' ``(colour * u, u)``, ``u`` = in U (layers < ``layer``),
    read from the tiled ``state (tiles * T * T, 4)`` (the image at ``(p, p)``)."""
    h, w = index.shape
    n = ys.shape[0]
    for j in range(n):
        index[ys[j], xs[j]] = j
    tt = t * t
    for j in range(n):
        y0, x0 = ys[j], xs[j]
        cnt = 0
        for q in range(4):
            y = y0 + (q == 1) - (q == 0)
            x = x0 + (q == 3) - (q == 2)
            nb[j, q] = -1
            if y < 0 or y >= h or x < 0 or x >= w:
                continue
            cnt += 1
            m = index[y, x]
            if m >= 0:
                nb[j, q] = m
            elif lid_img[y, x] < layer:
                yy, xx = y + p, x + p
                s = ((yy // t) * gw + xx // t) * tt + (yy % t) * t + xx % t
                for c in range(3):
                    b[j, c] += state[s, c]
                b[j, 3] += 1.0
        deg[j] = cnt
    for j in range(n):
        index[ys[j], xs[j]] = -1


def _k_envelope_order(nb, perm, nbp, first):
    """``nbp``: the neighbours ``nb (n, 4)`` renumbered by the ordering ``perm`` (new ->
    old), in the new order; ``first[i]``: the first column of row ``i``'s envelope. Returns
    the sum over rows of the squared envelope width (~ the factorisation's work)."""
    n = perm.shape[0]
    inv = np.empty(n, np.int64)
    for i in range(n):
        inv[perm[i]] = i
    size = 0
    for i in range(n):
        f = i
        for q in range(nb.shape[1]):
            m = nb[perm[i], q]
            nbp[i, q] = -1 if m < 0 else inv[m]
            if m >= 0 and inv[m] < f:
                f = inv[m]
        first[i] = f
        size += (i - f + 1) * (i - f + 1)
    return size


def _k_envelope_solve(nbp, deg, first, b):
    """Solve the Laplace system (``deg`` on the diagonal, -1 for each neighbour in ``nbp``;
    symmetric positive definite) by Cholesky in the envelope ``first`` (fill-in stays
    inside it), for every column of ``b (n, C)`` float64, in place."""
    n = deg.shape[0]
    off = np.empty(n + 1, np.int64)
    off[0] = 0
    for i in range(n):
        off[i + 1] = off[i] + i - first[i] + 1
    lo = np.zeros(off[n])  # row i of L: columns first[i] .. i at lo[off[i] - first[i] + j]
    for i in range(n):
        fi = first[i]
        base = off[i] - fi
        lo[base + i] = deg[i]
        for q in range(nbp.shape[1]):
            j = nbp[i, q]
            if j >= 0 and j < i:
                lo[base + j] = -1.0
        for j in range(fi, i):
            fj = first[j]
            bj = off[j] - fj
            acc = lo[base + j]
            for k in range(max(fi, fj), j):
                acc -= lo[base + k] * lo[bj + k]
            lo[base + j] = acc / lo[bj + j]
        acc = lo[base + i]
        for k in range(fi, i):
            acc -= lo[base + k] * lo[base + k]
        lo[base + i] = np.sqrt(acc)
    nc = b.shape[1]
    for i in range(n):  # L y = b
        base = off[i] - first[i]
        for k in range(first[i], i):
            v = lo[base + k]
            for c in range(nc):
                b[i, c] -= v * b[k, c]
        for c in range(nc):
            b[i, c] /= lo[base + i]
    for i in range(n - 1, -1, -1):  # L^T x = y
        base = off[i] - first[i]
        for c in range(nc):
            b[i, c] /= lo[base + i]
        for k in range(first[i], i):
            v = lo[base + k]
            for c in range(nc):
                b[k, c] -= v * b[i, c]


ENVELOPE_MAX_WORK = 2000
"""The fill's Cholesky in the envelope of the reverse Cuthill-McKee order is used while the
mean squared envelope width per unknown is at most this (measured: it then beats SuperLU,
2-3x on the thin bands of 1 MP scenes, mean width 7-20); wider regions (240 px crops with
many near layers, scattered pixels of a noisy depth) use SuperLU."""


def _laplace_solve_envelope(deg: np.ndarray, nb: np.ndarray, b: np.ndarray,
                            kern) -> np.ndarray | None:
    """The exact solution ``(n, C)`` of the Laplace system of ``deg (n,)``, ``nb (n, 4)``
    (:func:`_k_fill_system`) by envelope Cholesky in reverse Cuthill-McKee order (the
    compiled ``kern``); None when the envelope is too wide (:data:`ENVELOPE_MAX_WORK`)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    n = deg.size
    valid = nb >= 0
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(valid.sum(1), out=indptr[1:])
    graph = csr_matrix((np.ones(int(indptr[-1]), dtype=np.int8), nb[valid], indptr),
                       shape=(n, n))
    perm = reverse_cuthill_mckee(graph, symmetric_mode=True).astype(np.int64)
    nbp, first = np.empty_like(nb), np.empty(n, dtype=np.int64)
    if kern["envelope_order"](nb, perm, nbp, first) > ENVELOPE_MAX_WORK * n:
        return None
    bp = np.ascontiguousarray(b[perm])
    kern["envelope_solve"](nbp, deg[perm].astype(np.float64), first, bp)
    x = np.empty_like(bp)
    x[perm] = bp
    return x


@lru_cache(maxsize=1)
def _kernels():
    """The ``_k_*`` loops compiled by numba (cached on disk), or None without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba comes with pymatting
        return None
    jit = numba.njit(cache=True, nogil=True)
    return {"vertical_rows": jit(_k_vertical_rows), "composite": jit(_k_composite),
            "unpremultiply": jit(_k_unpremultiply), "fill_system": jit(_k_fill_system),
            "envelope_order": jit(_k_envelope_order),
            # reassociating the envelope's dot products (SIMD) changes only rounding
            "envelope_solve": numba.njit(cache=True, nogil=True,
                                         fastmath={"reassoc", "contract"})(_k_envelope_solve)}


def _dilate_tiles(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``(gh, gw)`` bool dilated by ``dy`` tiles vertically and ``dx`` horizontally."""
    if dy == 0 and dx == 0:
        return t
    x = t[None, None].to(torch.float32)
    return F.max_pool2d(x, (2 * dy + 1, 2 * dx + 1), 1, (dy, dx))[0, 0] > 0


class _TileCompositor:
    """:func:`_composite_loop`'s algorithm restricted to where each step changes something.

    The frame, extended beyond the image by the blur reach (border rule), is cut into
    ``T x T`` tiles. A layer is blurred only on the tiles within its kernel radius of its own
    pixels (from the extent of its pixels in each tile), separably, with the Gaussian's
    significant taps only (:func:`_significant_kernel1d`): a horizontal pass over the runs of
    consecutive tiles of each tile row, extended by the radius at both ends (every run of the
    layer in one filter call), read from a zero frame into which the layer's own pixels are
    written (and cleared after), then a vertical pass over the runs of each tile column. The
    index plans of both passes are computed for all layers at once, up front. Compositing and
    the un-premultiply (only on the tiles whose alpha may lie strictly between 0 and 1) run on
    those tiles, with ``Acc`` and ``A`` kept tiled, ``(tiles, T, T, 4)``; the fill region is
    searched only on the tiles at the frontier of the union ``U = layers < i`` and solved on
    its own pixels, before every layer like the loop. On the CPU the per-pixel steps between
    the filters (the vertical pass's rows, compositing, un-premultiply, the fill's system) are
    compiled loops (numba, the ``_k_*`` functions) and the fill is solved exactly by Cholesky
    in the envelope of the reverse Cuthill-McKee order (SuperLU for wide regions); elsewhere
    torch ops and conjugate gradients. Equal to the loop up to float rounding (tested).
    """

    def __init__(self, image, layer_id, sigmas, opt: _Options):
        self.opt, self.sigmas = opt, sigmas
        self.dev, self.dtype = image.device, image.dtype
        _, _, h, w = image.shape
        self.h, self.w = h, w
        t = self.t = opt.tile_px
        radii = [_kernel_radius(s, opt.aperture, opt.radius_px) for s in sigmas]
        # beyond this the blurred mask is below MASK_EPS (so zeroed, with its colour):
        # compositing there changes nothing
        self.reach = [_mask_reach_px(sg, r, opt) for sg, r in zip(sigmas, radii)]
        if opt.aperture == "gaussian":
            self.kernels = [_significant_kernel1d(s, opt.radius_px) if r else None
                            for s, r in zip(sigmas, radii)]
            radii = [0 if k is None else len(k) // 2 for k in self.kernels]
            self.reach = [min(a, r) for a, r in zip(self.reach, radii)]
        self.radii = radii
        rmax = self.rmax = max(self.radii)
        p = self.p = -(-rmax // t) * t  # the image sits at (p, p) of the tiled domain
        gh, gw = self.gh, self.gw = -(-(h + 2 * p) // t), -(-(w + 2 * p) // t)
        hd, wd = gh * t, gw * t
        self.opencv = (self.dev.type == "cpu" and self.dtype == torch.float32
                       if opt.opencv is None else opt.opencv)
        self.iterative = self.dev.type != "cpu" if opt.iterative is None else opt.iterative
        # the compiled loops on the CPU (with OpenCV's filters); torch ops elsewhere
        self.kern = _kernels() if self.opencv and self.dev.type == "cpu" else None
        # source frames: the domain plus a margin of rmax; the border rule within rmax of
        # the image, nothing (layer -1) farther
        rows = torch.arange(hd + 2 * rmax, device=self.dev) - rmax - p
        cols = torch.arange(wd + 2 * rmax, device=self.dev) - rmax - p
        valid = (((rows >= -rmax) & (rows < h + rmax))[:, None]
                 & ((cols >= -rmax) & (cols < w + rmax))[None])
        ri, ci = _border_index(rows, h, opt.border), _border_index(cols, w, opt.border)
        rgb1 = torch.cat([image[0], torch.ones_like(image[0, :1])]).permute(1, 2, 0)
        self.src = (rgb1[ri][:, ci] * valid[..., None]).contiguous()  # (FH, FW, 4)
        lid = layer_id[0, 0].to(torch.int32)
        self.lid = torch.where(valid, lid[ri][:, ci], -1).contiguous()[..., None]  # (FH, FW, 1)
        self.lid_img = lid
        # per (layer, tile) pixel counts, over the domain and over the image
        lid_dom = self.lid[rmax:rmax + hd, rmax:rmax + wd, 0]
        tile = (torch.arange(hd, device=self.dev)[:, None] // t * gw
                + torch.arange(wd, device=self.dev)[None] // t)
        inimg = torch.zeros(hd, wd, dtype=torch.bool, device=self.dev)
        inimg[p:p + h, p:p + w] = True
        n, nt = len(sigmas), gh * gw
        key = lid_dom.long() * nt + tile
        occ = lid_dom >= 0
        self.count = torch.bincount(key[occ], minlength=n * nt).view(n, gh, gw)
        self.count_img = torch.bincount(key[inimg], minlength=n * nt).view(n, gh, gw)
        self.n_img = torch.bincount(tile[inimg], minlength=nt).view(gh, gw)
        self.tile_in_image = self.n_img > 0
        self.h_tiles, self.out_tiles = self._reach_tiles(lid_dom, key, occ)
        self.out_tiles &= self.tile_in_image
        self.lid_tiles = self._tiled(lid_dom)  # (nt, T, T)
        self.inimg_tiles = self._tiled(inimg)
        self.state = torch.zeros(nt, t, t, 4, dtype=self.dtype, device=self.dev)  # Acc, A
        self.scratch = {c: torch.zeros(nt, t, t, c, dtype=self.dtype, device=self.dev)
                        for c in (1, 4)}  # the horizontal pass, tiled
        # the domain's rows of the source frames, per tile row transposed: (gh * FW, T, C),
        # the T pixels of tile row ty at column x in row ty * FW + x
        self.frames = {"src": self.src, "lid": self.lid}
        self.columns = {k: f[rmax:rmax + hd].view(gh, t, *f.shape[1:]).transpose(1, 2)
                        .reshape(-1, t, f.shape[2]) for k, f in self.frames.items()}
        # per layer its pixels in that layout (flat positions), to write its premultiplied
        # source into a zero frame (and clear it) instead of masking every run it blurs
        lid_cols = self.columns["lid"].reshape(-1)
        order = torch.argsort(lid_cols, stable=True)
        bounds = torch.bincount(lid_cols.long() + 1, minlength=n + 1).cumsum(0).tolist()
        self.layer_pix = [order[bounds[i]:bounds[i + 1]] for i in range(n)]
        self.tile_k = torch.full((nt,), -1, dtype=torch.int32, device=self.dev)
        if self.kern is not None:  # the fill's unknowns' indices (all -1 between fills)
            self.index_img = np.full((h, w), -1, dtype=np.int64)
        self.masked = torch.zeros_like(self.columns["src"])  # the current layer's m * I, m
        self.union_cols = torch.zeros_like(self.columns["lid"], dtype=self.dtype)  # U
        self.plans = (self._plans(self.h_tiles, self.out_tiles, self.radii)
                      if opt.aperture == "gaussian" else None)

    def _reach_tiles(self, lid_dom, key, occ):
        """Per layer ``(n, gh, gw)`` bool: the tiles where the horizontal pass of its blur can
        be non-zero (a pixel of the layer within its radius in the same rows), and the tiles
        its blur reaches (within its radius both ways), from the extent of each layer's pixels
        in each tile."""
        t, gh, gw = self.t, self.gh, self.gw
        n, big = len(self.sigmas), 1 << 14
        small = torch.int16 if self.dev.type == "cpu" else torch.int32  # local px
        hd, wd = lid_dom.shape
        local = torch.arange(max(hd, wd), device=self.dev, dtype=small) % t
        yy = local[:hd, None].expand(hd, wd)[occ]
        xx = local[None, :wd].expand(hd, wd)[occ]
        k = key[occ]

        def extent(v, how, init):
            out = torch.full((n * gh * gw,), init, dtype=small, device=self.dev)
            return out.scatter_reduce_(0, k, v, how).view(n, gh, gw)

        radius = torch.tensor(self.radii, device=self.dev, dtype=small).view(n, 1, 1)
        reach = torch.tensor(self.reach, device=self.dev, dtype=small).view(n, 1, 1)
        d = -(-self.rmax // t)

        def grow(mask, lo, hi, vertical, carry, radius):
            """The tiles within the radius of a ``mask`` tile's pixels, whose extent along the
            direction is ``lo..hi`` (local px); and the extent ``carry`` (lo, hi) across it,
            combined over the tiles that reach each tile."""
            got = mask.clone()
            clo, chi = torch.where(mask, carry[0], big), torch.where(mask, carry[1], -big)
            for o in [o for o in range(-d, d + 1) if o]:
                # target tiles [a, b) along the direction receive from [a + o, b + o)
                a, b = max(0, -o), (gh if vertical else gw) - max(0, o)

                def sl(x, s=0, a=a, b=b):
                    return x[:, a + s:b + s] if vertical else x[:, :, a + s:b + s]

                if o > 0:
                    m = sl(mask, o) & (sl(lo, o) + (o * t - (t - 1)) <= radius)
                else:
                    m = sl(mask, o) & (-(sl(hi, o) + o * t) <= radius)
                sl(got).logical_or_(m)
                sl(clo).copy_(torch.where(m, torch.minimum(sl(clo), sl(carry[0], o)), sl(clo)))
                sl(chi).copy_(torch.where(m, torch.maximum(sl(chi), sl(carry[1], o)), sl(chi)))
            return got, (clo, chi)

        x_lo, x_hi = extent(xx, "amin", big), extent(xx, "amax", -big)
        y_ext = (extent(yy, "amin", big), extent(yy, "amax", -big))
        h_tiles = grow(x_hi >= 0, x_lo, x_hi, False, y_ext, radius)[0]
        near, (y_lo, y_hi) = grow(x_hi >= 0, x_lo, x_hi, False, y_ext, reach)
        out_tiles = grow(near, y_lo, y_hi, True, (y_lo, y_hi), reach)[0]
        # the horizontal pass is read only within the radius above and below the output
        h_tiles &= F.max_pool2d(out_tiles[:, None].float(), (2 * d + 1, 1), 1, (d, 0))[:, 0] > 0
        return h_tiles, out_tiles

    def _tiled(self, frame):
        t = self.t
        return frame.view(self.gh, t, self.gw, t).transpose(1, 2).reshape(-1, t, t)

    def _blocks(self, frame, y0, x0, th, tw):
        """``(gh, gw, th, tw, C)`` view of ``frame (FH, FW, C)``: block ``(ty, tx)`` starts at
        row ``y0 + ty * T``, column ``x0 + tx * T``."""
        fw, c = frame.shape[1], frame.shape[2]
        t = self.t
        return frame.as_strided((self.gh, self.gw, th, tw, c), (t * fw * c, t * c, fw * c, c, 1),
                                frame.storage_offset() + (y0 * fw + x0) * c)

    def _gather(self, frame, ty, tx, y0, x0, th, tw):
        """``(K, th, tw, C)``: the blocks ``(ty, tx)`` of :meth:`_blocks` (a copy)."""
        return self._blocks(frame, y0, x0, th, tw)[ty, tx]

    def _filter(self, x, k: np.ndarray, axis: int | None):
        """Filter ``x`` with the 1-D ``k`` along ``axis`` 0 of ``(J, T, C)`` (same size), or
        blocks ``(K, th, tw, C)`` with the 2-D ``k`` (``axis`` None, the valid part only)."""
        r = k.shape[0] // 2
        c = x.shape[-1]
        if axis is None:
            kk, th, tw, c = x.shape
            x2, shape = x.reshape(kk * th, tw, c), k.shape
        else:
            x2, shape = x, (-1, 1)
        if self.opencv:  # every block or run in one call: valid outputs read their own only
            import cv2

            out = torch.from_numpy(cv2.filter2D(x2.numpy(), -1, k.astype(np.float32).reshape(
                shape), borderType=cv2.BORDER_CONSTANT)).view(x2.shape)
        else:
            kt = torch.as_tensor(k, dtype=x.dtype, device=x.device).reshape(shape)
            out = F.conv2d(x2.permute(2, 0, 1)[None], kt.expand(c, 1, *kt.shape), groups=c,
                           padding=(kt.shape[0] // 2, kt.shape[1] // 2))[0].permute(1, 2, 0)
        if axis is None:
            return out.reshape(x.shape)[:, r:x.shape[1] - r, r:x.shape[2] - r]
        return out

    def _runs(self, tiles, r, line_stride: int, offset: int):
        """The runs of consecutive tiles along the rows of ``tiles (G, lines, n)`` (G groups,
        e.g. layers), each extended by ``r (G,)`` px at both ends, one after the other: per
        group, per position, its row in a frame stored line after line (``offset + line *
        line_stride + px along the line``); and the positions inside the runs (without the
        extensions) in that group's rows. Two lists of G tensors."""
        t, dev = self.t, self.dev
        g_count = tiles.shape[0]
        r = torch.as_tensor(r, device=dev).long().view(-1).expand(g_count)
        edge = torch.diff(F.pad(tiles.to(torch.int8), (1, 1)), dim=-1)
        grp, line, first = torch.nonzero(edge == 1, as_tuple=True)
        end = torch.nonzero(edge == -1, as_tuple=True)[2]  # same (row-major) order
        rg = r[grp]
        inner = (end - first) * t
        length = inner + 2 * rg
        start = length.cumsum(0) - length
        i32 = torch.int32  # (half the index traffic of int64)
        n_row = torch.zeros(g_count, dtype=torch.long, device=dev).index_add_(0, grp, length)
        n_in = torch.zeros(g_count, dtype=torch.long, device=dev).index_add_(0, grp, inner)
        g_start = n_row.cumsum(0) - n_row
        base = (offset + line * line_stride + first * t - rg - start).to(i32)
        row = torch.repeat_interleave(base, length)
        row += torch.arange(row.numel(), device=dev, dtype=i32)
        inside = torch.repeat_interleave(
            (start + rg - g_start[grp] - (inner.cumsum(0) - inner)).to(i32), inner)
        inside += torch.arange(inside.numel(), device=dev, dtype=i32)
        return row.split(n_row.tolist()), inside.split(n_in.tolist())

    def _plans(self, h_tiles, out_tiles, r):
        """Per group (``h_tiles``, ``out_tiles (G, gh, gw)``, radii ``r (G,)``) the index
        plan of :meth:`_blur_tiles`: the horizontal pass's rows and inside positions, its
        tiles' scratch indices, the vertical pass's rows and inside positions, and the output
        tiles' indices."""
        t, gh, gw = self.t, self.gh, self.gw
        fw = self.src.shape[1]
        hrow, hin = self._runs(h_tiles, r, fw, self.rmax)
        vrow, vin = self._runs(out_tiles.transpose(1, 2), r, gh * t, 0)
        g, hy, hx = torch.nonzero(h_tiles, as_tuple=True)  # the runs' order
        hidx = (hx * gh + hy).split(torch.bincount(g, minlength=len(hrow)).tolist())
        g, ox, oy = torch.nonzero(out_tiles.transpose(1, 2), as_tuple=True)
        oidx = (oy * gw + ox).split(torch.bincount(g, minlength=len(hrow)).tolist())
        return list(zip(hrow, hin, hidx, vrow, vin, oidx))

    def _blur_tiles(self, source, sigma, r, h_tiles, out_tiles, cols=None, plan=None,
                    raw=False):
        """The blur, on ``out_tiles``, of ``source(g)``: a masked source computed from
        ``g(name)``, the gathered part of the source frame ``name`` ("src", "lid"); or, for
        the Gaussian, of ``cols``, the masked source in the transposed layout of
        ``self.columns``. Separable: a horizontal pass over the runs of ``h_tiles`` (where it
        can be non-zero; elsewhere it is 0) into the scratch, then a vertical pass over the
        runs of ``out_tiles`` read back from it (``plan``: :meth:`_plans`, precomputed).
        Returns ``(K, T, T, C)`` and the tiles' indices ``(K,)``; with ``raw`` (the compiled
        loops only) the vertical pass's filtered rows ``(J, T, C)``, the rows of the tiles'
        pixel rows ``(K * T,)`` in it and the tiles' indices instead."""
        t, rm, gw = self.t, self.rmax, self.gw
        if r == 0 or self.opt.aperture == "disc":
            oy, ox = torch.nonzero(out_tiles, as_tuple=True)
            y0, th = rm - r, t + 2 * r

            def block(name):
                return self._gather(self.frames[name], oy, ox, y0, y0, th, th)

            x = source(block)
            return (x if r == 0 else self._filter(x, disc_kernel2d(sigma), None)), oy * gw + ox
        k = _significant_kernel1d(sigma, self.opt.radius_px)
        if plan is None:
            plan = self._plans(h_tiles[None], out_tiles[None], r)[0]
        hrow, hin, hidx, vrow, vin, oidx = plan
        # horizontal: per position (tile row ty, column x) the tile row's T pixels there,
        # rows of the transposed source frames (gh * FW, T, C)
        hg = cols.index_select(0, hrow)
        hout = self._filter(hg, k, 0)
        c = hout.shape[-1]
        if self.kern is not None:
            # the vertical pass's rows straight from the filtered runs (no scratch)
            tile_k = self.tile_k
            tile_k[hidx] = torch.arange(hidx.numel(), dtype=torch.int32)
            rows = torch.empty(vrow.numel(), t, c, dtype=self.dtype)
            self.kern["vertical_rows"](hout.numpy(), hin.numpy(), tile_k.numpy(), vrow.numpy(),
                                       rows.numpy())
            tile_k[hidx] = -1
            out = self._filter(rows, k, 0)
            if raw:
                return out, vin, oidx
            return out.index_select(0, vin).view(-1, t, t, c), oidx
        hout = hout.index_select(0, hin).view(-1, t, t, c).transpose(1, 2)
        # the scratch, tile column after tile column: (gw * gh * T, T, C), row tx * hd + y
        scratch = self.scratch[c]
        scratch.index_copy_(0, hidx, hout)
        # vertical: per position (tile column tx, row y) the tile's T pixels of row y
        rows = scratch.view(-1, t, c).index_select(0, vrow)
        out = self._filter(rows, k, 0).index_select(0, vin).view(-1, t, t, c)
        scratch.index_fill_(0, hidx, 0.0)
        return out, oidx

    def run(self, start: int) -> torch.Tensor:
        t, gw = self.t, self.gw
        state = self.state
        dirty = self.tile_in_image.clone()  # where A may lie strictly between 0 and 1
        any_u = torch.zeros_like(dirty)  # tiles holding a pixel of U (border extension too)
        u_img = torch.zeros_like(self.n_img)  # U's pixels per tile, in the image
        for i, (sigma, r) in enumerate(zip(self.sigmas, self.radii)):
            d = -(-r // t)
            if i > start:
                # un-premultiply: colour = Acc / A, A -> 1 where it was > 0
                idx = torch.nonzero(dirty.flatten()).flatten()
                if self.kern is not None:
                    self.kern["unpremultiply"](state.view(-1, t * t, 4).numpy(), idx.numpy())
                else:
                    st = state.index_select(0, idx)
                    a = st[..., 3:]
                    pos = a > 0
                    st = torch.where(pos, st / torch.where(pos, a, torch.ones_like(a)), st)
                    state.index_copy_(0, idx, st)
                dirty = torch.zeros_like(dirty)
                if r > 0:
                    filled = self._fill(i, sigma, r, d, any_u, u_img)
                    if filled is not None:
                        dirty |= filled
            # blur the layer's premultiplied colour and mask together, composite it
            def layer(g, i=i):
                return g("src") * (g("lid") == i)

            pix = self.layer_pix[i]
            src_flat, masked = self.columns["src"].view(-1, 4), self.masked.view(-1, 4)
            gauss = self.plans is not None and r > 0
            if gauss:
                masked.index_copy_(0, pix, src_flat.index_select(0, pix))
            fused = gauss and self.kern is not None
            res = self._blur_tiles(layer, sigma, r, self.h_tiles[i], self.out_tiles[i],
                                   self.masked, self.plans[i] if gauss else None, raw=fused)
            if gauss:
                masked.index_fill_(0, pix, 0.0)
            if fused:
                vout, vin, idx = res
                self.kern["composite"](state.view(-1, t * t, 4).numpy(), idx.numpy(),
                                       vout.numpy(), vin.numpy(), np.float32(MASK_EPS))
            else:
                rgba, idx = res
                rgba.mul_(rgba[..., 3:] >= MASK_EPS)
                st = state.index_select(0, idx)
                state.index_copy_(0, idx, st.mul_(1.0 - rgba[..., 3:]).add_(rgba))
            dirty |= self.out_tiles[i]
            any_u |= self.count[i] > 0
            u_img += self.count_img[i]
            self.union_cols.view(-1).index_fill_(0, pix, 1.0)
        out = state.view(self.gh, gw, t, t, 4).transpose(1, 2).reshape(self.gh * t, gw * t, 4)
        p = self.p
        out = out[p:p + self.h, p:p + self.w].permute(2, 0, 1)[None]
        a = out[:, 3:]
        res = out[:, :3] / torch.where(a > 0, a, torch.ones_like(a))
        return torch.where(a > 0, res, self.src[self.rmax + p:self.rmax + p + self.h,
                                                self.rmax + p:self.rmax + p + self.w, :3]
                           .permute(2, 0, 1)[None])

    def _fill(self, i, sigma, r, d, any_u, u_img):
        """The fill before layer ``i`` (U = the layers < i), in place in ``state``. Returns
        the tiles it wrote, or None when the region is empty."""
        t, gw = self.t, self.gw
        # the region: outside U where U blurred with this kernel reaches >= FILL_REACH; only
        # on image tiles not wholly in U within d tiles of U
        cand = self.tile_in_image & (u_img < self.n_img) & _dilate_tiles(any_u, d, d)
        if not bool(cand.any()):
            return None

        def union(g):
            lid = g("lid")
            return ((lid >= 0) & (lid < i)).to(self.dtype)

        h_tiles = _dilate_tiles(cand, d, 0) & _dilate_tiles(any_u, 0, d)
        reach, ct = self._blur_tiles(union, sigma, r, h_tiles, cand, self.union_cols)
        reach = reach[..., 0]
        cy, cx = ct // gw, ct % gw
        lid = self.lid_tiles[ct]
        region = (reach >= FILL_REACH) & ((lid < 0) | (lid >= i)) & self.inimg_tiles[ct]
        k, yy, xx = torch.nonzero(region, as_tuple=True)
        if k.numel() == 0:
            return None
        p = self.p
        ys, xs = cy[k] * t + yy - p, cx[k] * t + xx - p  # image coordinates
        order = torch.argsort(ys * self.w + xs)  # row-major, like the loop: the LU's fill-in
        ys, xs, k = ys[order], xs[order], k[order]  # depends on it (2x here)
        if self.kern is not None and not self.iterative:
            return self._fill_compiled(i, ys, xs, ct[k])
        deg, nb, known, ny, nx = _laplace_system(ys, xs, self.h, self.w)
        flat = self.state.view(-1, 4)
        u = (self.lid_img[ny, nx] < i).to(self.dtype)[..., None]  # (4, n, 1)
        kv = torch.cat([flat[self._state_index(ny, nx), :3] * u, u], dim=-1)  # (4, n, 4)
        b = _laplace_rhs(known, kv)
        ridx = self._state_index(ys, xs)
        if self.iterative:
            x = _laplace_solve_cg(deg, nb, b, flat[ridx])
            # keep the iterate convex: colour within [min, max] of the known colours x alpha
            a = x[:, 3:].clamp(0.0, 1.0)
            kc = kv[..., :3][known & (u[..., 0] > 0)]
            if kc.numel():
                x = torch.cat([torch.minimum(torch.maximum(x[:, :3], kc.amin(0) * a),
                                             kc.amax(0) * a), a], dim=1)
            else:
                x = torch.zeros_like(x)
        else:
            x = torch.from_numpy(_laplace_solve_lu(deg, nb, b.cpu().double().numpy())).to(b)
        flat[ridx] = x
        written = torch.zeros(self.gh * gw, dtype=torch.bool, device=self.dev)
        written[ct[k]] = True
        return written.view(self.gh, gw)

    def _state_index(self, y, x):
        """The row in ``state.view(-1, 4)`` of image pixel ``(y, x)`` (tensors or arrays; the
        compiled ``_k_fill_system`` computes the same)."""
        t, p = self.t, self.p
        y, x = y + p, x + p
        return ((y // t) * self.gw + x // t) * (t * t) + (y % t) * t + x % t

    def _fill_compiled(self, i, ys, xs, tiles):
        """:meth:`_fill`'s system, exact solve and write on the CPU with the compiled loops,
        for the region pixels ``ys, xs`` (image coordinates, row-major) in ``tiles``."""
        n, t, p = ys.numel(), self.t, self.p
        ys, xs = ys.numpy(), xs.numpy()
        nb = np.empty((n, 4), dtype=np.int64)
        deg = np.empty(n, dtype=np.int64)
        b = np.zeros((n, 4), dtype=np.float64)
        flat = self.state.view(-1, 4)
        self.kern["fill_system"](ys, xs, self.index_img, self.lid_img.numpy(), i, flat.numpy(),
                                 p, t, self.gw, nb, deg, b)
        x = _laplace_solve_envelope(deg, nb, b, self.kern)
        if x is None:
            x = _laplace_solve_lu(torch.from_numpy(deg), torch.from_numpy(nb.T), b)
        flat[torch.from_numpy(self._state_index(ys, xs))] = torch.from_numpy(x).to(self.dtype)
        written = torch.zeros(self.gh * self.gw, dtype=torch.bool)
        written[tiles] = True
        return written.view(self.gh, self.gw)


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
    return _Options(aperture, radius, _MODE_BORDER[render_mode], fill, fast, coc_step_px)


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
