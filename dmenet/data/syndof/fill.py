"""The occlusion fill (SPEC section 2 step 4): its definition and its solvers.

Before each layer nearer than the in-focus layer, the pixels outside the union ``U`` of the
layers composited so far that ``U`` blurred with the CURRENT layer's kernel reaches
(>= :data:`FILL_REACH`) form the fill region (:func:`fill_region`). There colour = the Laplace
fill (MATLAB ``regionfill``: each region pixel the mean of its in-image 4-neighbours) of the
un-premultiplied accumulation times ``U``, and alpha = the fill of ``U``: each region pixel
becomes a convex combination of the colours of ``U``, with the same weights for colour and
alpha, so a constant photo stays constant.

Solvers of the same equations:

* exact, sparse LU (:func:`regionfill`, :func:`laplace_factor`; the per-layer loop and the
  tiled renderer, which also has an envelope Cholesky of the same system);
* :func:`relax_fill`: a fixed number of red-black SOR sweeps on the whole frame with a region
  mask, started from the normalised convolution of the known values (:func:`smooth_start`):
  fixed work, no host round trip, batched, and each fill from its own layer alone (the batched
  renderer, on any device; on CUDA compiled by ``torch.compile`` with the rest of each front
  layer's step, one kernel per half-sweep).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .kernels import blur_stack, gaussian_kernel1d, pad_border

__all__ = [
    "FILL_REACH",
    "FILL_START_SIGMA_PX",
    "RELAX_OMEGA",
    "RELAX_SWEEPS",
    "checkerboard",
    "fill_region",
    "laplace_factor",
    "laplace_rhs",
    "laplace_system",
    "regionfill",
    "relax_fill",
    "smooth_start",
    "start_kernel",
]

FILL_REACH = 1e-3
"""The fill region: outside ``U``, where ``U`` blurred with the layer's kernel is >= this."""

RELAX_SWEEPS = 12
"""Red-black SOR sweeps of :func:`relax_fill` per fill. Measured on 384 training crops of 48
procedural 96 x 128 scenes (reference and paper mode) against the same crop of the whole-image
render, started from :func:`smooth_start`: with 12 sweeps all within 0.50 levels (the fill's
half-precision rounding: in float32 the worst three are within 0.44); with 8, 1 of 64 crops
missed by 1.36 levels. (Started from the previous layer's fill instead, 12 sweeps missed by 2.06
levels, 40 by 0.71: how far a layer's fill had converged depended on how many layers came
before it, and a whole image has layers that a crop lacks.) BENCHMARKS.md section 1 gives the
fidelity against the official generator."""

FILL_START_SIGMA_PX = 4.0
"""The Gaussian (px) of :func:`smooth_start` (4-6 measured alike on the crops of
:data:`RELAX_SWEEPS`; 2 too local: 1.29 levels; 8: 0.50)."""

RELAX_OMEGA = 1.7
"""Over-relaxation of :func:`relax_fill` (1.6-1.8 measured alike; 1.0, Gauss-Seidel, needs
twice the sweeps)."""


def fill_region(union: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """The fill region: not in ``union`` (bool) where ``reach`` (the union blurred with the
    layer's kernel) is >= :data:`FILL_REACH`."""
    return (reach >= FILL_REACH) & ~union


# --------------------------------------------------------------------------- exact (sparse)


def laplace_system(ys: torch.Tensor, xs: torch.Tensor, h: int, w: int):
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


def laplace_rhs(known: torch.Tensor, known_values: torch.Tensor) -> torch.Tensor:
    """``b (n, C)``: the sum of the known neighbours' ``known_values (4, n, C)``."""
    return (known_values * known[..., None].to(known_values.dtype)).sum(0)


def laplace_factor(deg, nb):
    """SuperLU factorisation of the Laplace system of :func:`laplace_system` (``deg (n,)``,
    ``nb (4, n)``, tensors or arrays); solve with ``.solve(b (n, C) float64)``."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    deg = deg.cpu().numpy() if torch.is_tensor(deg) else np.asarray(deg)
    nb = nb.cpu().numpy() if torch.is_tensor(nb) else np.asarray(nb)
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
    deg, nb, known, ny, nx = laplace_system(ys, xs, h, w)
    vals = torch.from_numpy(out)[:, ny, nx].permute(1, 2, 0)  # (4, n, C)
    b = laplace_rhs(known, vals).numpy()
    out[:, ys.numpy(), xs.numpy()] = laplace_factor(deg, nb).solve(b).T
    return out


# -------------------------------------------------------------- fixed work, any device


def checkerboard(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves ``(1, 1, H, W)`` bool of red-black ordering (red: ``y + x`` even), which
    :func:`relax_fill` updates in turn. Build once per frame, pass to every call."""
    yy = torch.arange(h, device=device)[:, None]
    xx = torch.arange(w, device=device)[None]
    red = ((yy + xx) % 2 == 0)[None, None]
    return red, ~red


def start_kernel(device=None) -> torch.Tensor:
    """The Gaussian of :func:`smooth_start`, ``(2r + 1,)`` float32 on ``device``: build once per
    frame, pass to every call."""
    # (made float32 on the host: a conversion on the way would count as a host round trip)
    return torch.from_numpy(gaussian_kernel1d(FILL_START_SIGMA_PX).astype(np.float32)).to(device)


def smooth_start(known: torch.Tensor, region: torch.Tensor,
                 kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Where :func:`relax_fill` starts: in ``region (B,1,H,W)`` bool, the known values of
    ``known (B,C,H,W)`` (those outside the region) averaged by the Gaussian ``kernel``
    (:func:`start_kernel`, built when None; normalised convolution: ``blur(known (1 - region)) /
    blur(1 - region)``, by :func:`~.kernels.blur_stack`, the image border replicated as the
    fill's rule has it; 0 where no known pixel is within its reach); ``known`` elsewhere. Local
    and the same at every position, and from this layer's fill alone: what the sweeps make of it
    does not depend on the frame (a crop or the whole image) or on the layers before."""
    kernel = start_kernel(known.device) if kernel is None else kernel
    outside = (~region).to(known.dtype)
    # one kernel for every sample: expanded to them, inductor specialised on their number
    both = blur_stack(pad_border(torch.cat([known * outside, outside], 1), kernel.shape[0] // 2,
                                 "replicate"), kernel[None])
    weight = both[:, -1:]
    mean = both[:, :-1] / torch.where(weight > 0, weight, 1.0)
    return torch.where(region, mean, known)


def relax_fill(known: torch.Tensor, region: torch.Tensor, sweeps: int = RELAX_SWEEPS,
               omega: float = RELAX_OMEGA,
               halves: tuple[torch.Tensor, torch.Tensor] | None = None,
               kernel: torch.Tensor | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """The Laplace fill of ``region (B,1,H,W)`` bool in ``known (B,C,H,W)`` (boundary values
    outside the region) by ``sweeps`` red-black SOR sweeps over the whole frame, from
    :func:`smooth_start`.

    Image border pixels count only their in-image neighbours (MATLAB ``regionfill``). Every
    channel takes the same linear steps, so colour / alpha of a constant photo stays exact;
    the result is clamped to alpha in [0, 1], colour in [0, alpha] (over-relaxation can
    overshoot before it converges), scaling colour with alpha so that the ratio is kept.
    ``halves``: :func:`checkerboard` of this frame, ``kernel``: :func:`start_kernel` (built
    when None). ``dtype``: what the iterate is stored in (None: ``known``'s; the start is
    computed in ``known``'s: Kornia's depthwise convolutions in half precision are slow on the
    CPU). The batched renderer runs it compiled on CUDA devices, with the rest of each front
    layer's step (:func:`~.batched.front_step`).
    Returns ``(B, C, H, W)`` in ``dtype``: the fill in the region, ``known`` elsewhere.
    """
    red, black = halves if halves is not None else checkerboard(*known.shape[-2:], known.device)
    x = smooth_start(known, region, kernel).to(dtype or known.dtype)
    masks = (region & red, region & black)
    for _ in range(sweeps):
        for mask in masks:
            # the 4 neighbours; a missing one (image border) reads as the pixel itself: the same
            # fixed point as counting only in-image neighbours, MATLAB's rule
            p = F.pad(x, (1, 1, 1, 1), mode="replicate")
            around = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
            x = torch.where(mask, torch.lerp(x, 0.25 * around, omega), x)
    # (known values pass the guard unchanged: alpha 0 or 1, colour in [0, alpha])
    alpha = x[:, -1:]
    kept = alpha.clamp(0.0, 1.0)
    shrink = alpha.clamp(min=1.0).reciprocal()  # colour with alpha where alpha overshot 1
    return torch.cat([torch.minimum((x[:, :-1] * shrink).clamp(min=0.0), kept), kept], 1)
