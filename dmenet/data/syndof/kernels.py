"""Blur kernels, image borders and the package's one blur (SPEC section 2 step 2).

Every blur of the renderers, of ``dmenet magnify`` and of ``dmenet deblur``'s blur model is
:func:`blur_stack` (Kornia's separable or 2-D filter, one kernel per item of the batch) on a
frame extended by the border rule (:func:`pad_border`); :func:`gaussian_blur` is its one-kernel
form. On the CPU in float32, :func:`gaussian_blur` runs OpenCV's filters instead (the same
arithmetic, tested equal; measured 6-9x faster there, BENCHMARKS.md section 1).

Kernels: a sampled, normalised Gaussian of radius ``ceil(3 sigma)`` (paper) or the official
generator's 29 x 29 (radius 14, reference mode) for every sigma; renderers that skip
negligible work keep only its significant taps (:func:`significant_kernel1d`, the same values,
tails below :data:`TAIL_MASS` dropped). ``aperture="disc"``: an anti-aliased pillbox of
diameter ``4 sigma`` (the CoC).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "BORDERS",
    "REFERENCE_KERNEL_RADIUS_PX",
    "TAIL_MASS",
    "blur_reach_px",
    "blur_stack",
    "border_index",
    "disc_kernel2d",
    "gaussian_blur",
    "gaussian_kernel1d",
    "kernel_radius",
    "pad_border",
    "pad_like_border",
    "significant_kernel1d",
]

REFERENCE_KERNEL_RADIUS_PX = 14
"""The generator's kernel: ``fspecial('gaussian', [29 29], sigma)`` for every sigma."""

BORDERS: dict[str, str] = {"paper": "symmetric", "reference": "symmetric"}
"""Image border rule of each render mode (``symmetric``: mirrored including the edge pixel; the
generator's). Paper mode too: a training crop at the image's edge is rendered in a window that
the border rule extends beyond the image, and the fill, which stops at the image's edge in the
whole render (MATLAB's rule: only in-image neighbours count), takes that extension as image
pixels. Mirrored, the fill on the window is the fill stopped at the edge, and the crop equals the
crop of the whole render; replicated, paper-mode crops there missed it by up to 1.36 levels (2
of 192, exact fill included)."""

TAIL_MASS = 1e-10
"""Taps beyond which both tails of a Gaussian hold less than this mass are dropped by
:func:`significant_kernel1d` (a difference far below float32 rounding; it matters in reference
mode, whose 29-tap kernel is mostly zeros for small sigma)."""


def check_render_mode(render_mode: str) -> None:
    if render_mode not in BORDERS:
        raise ValueError(f"unknown render mode {render_mode!r}; choose 'paper' or 'reference'")


def gaussian_kernel1d(sigma_px: float, radius_px: int | None = None) -> np.ndarray:
    """Sampled, normalised 1-D Gaussian of radius ``radius_px`` (default ``ceil(3 sigma)``);
    ``[1]`` for sigma <= 0. float64."""
    return _gaussian_kernel1d(round(float(sigma_px), 9), radius_px).copy()


@lru_cache(maxsize=4096)
def _gaussian_kernel1d(sigma_px: float, radius_px: int | None) -> np.ndarray:
    if sigma_px <= 1e-6:
        return np.ones(1, dtype=np.float64)
    radius = max(1, int(math.ceil(3.0 * sigma_px))) if radius_px is None else int(radius_px)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def significant_kernel1d(sigma_px: float, radius_px: int | None = None) -> np.ndarray:
    """The taps of :func:`gaussian_kernel1d` within the smallest radius whose two tails
    together hold less than :data:`TAIL_MASS` (the same values, not renormalised)."""
    return _significant_kernel1d(round(float(sigma_px), 9), radius_px)


@lru_cache(maxsize=4096)
def _significant_kernel1d(sigma_px: float, radius_px: int | None) -> np.ndarray:
    k = _gaussian_kernel1d(sigma_px, radius_px)
    r = len(k) // 2
    beyond = 2.0 * np.cumsum(k[::-1])[::-1][r + 1:]  # beyond[d] = mass at |u| > d
    small = np.nonzero(beyond < TAIL_MASS)[0]
    d = int(small[0]) if small.size else r
    return k[r - d:r + d + 1]


def disc_kernel2d(sigma_px: float) -> np.ndarray:
    """Anti-aliased pillbox of diameter = CoC = ``4 sigma`` px (pixel coverage), normalised."""
    radius = 2.0 * sigma_px
    if radius < 0.5:
        return np.ones((1, 1), dtype=np.float64)
    r = int(math.ceil(radius + 0.5))
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    k = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0)
    return k / k.sum()


def kernel_radius(sigma_px: float, aperture: str = "gaussian",
                  radius_px: int | None = None) -> int:
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
    check_render_mode(render_mode)
    radius = REFERENCE_KERNEL_RADIUS_PX if render_mode == "reference" else None
    return kernel_radius(sigma_max_px, aperture, radius)


def border_index(idx: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """The pixel of ``0 .. n-1`` that index ``idx`` (any integers) reads under ``border``
    (``replicate`` or ``symmetric``)."""
    if border == "replicate":
        return idx.clamp(0, n - 1)
    # symmetric: ... c b a | a b c ... c | c b a ..., any distance (period 2n)
    m = idx.remainder(2 * n)
    return torch.where(m >= n, 2 * n - 1 - m, m)


def pad_border(x: torch.Tensor, pad_px: int, border: str) -> torch.Tensor:
    """Extend ``(..., H, W)`` by ``pad_px`` on every side by the ``border`` rule: blurring the
    extension (valid part) equals blurring with that border rule."""
    if pad_px == 0:
        return x
    h, w = x.shape[-2:]
    rows = border_index(torch.arange(-pad_px, h + pad_px, device=x.device), h, border)
    cols = border_index(torch.arange(-pad_px, w + pad_px, device=x.device), w, border)
    return x.index_select(-2, rows).index_select(-1, cols)


def pad_like_border(x: torch.Tensor, pad_px: int, render_mode: str = "paper") -> torch.Tensor:
    """:func:`pad_border` with the border rule of ``render_mode`` (``replicate`` for paper,
    ``symmetric`` for reference)."""
    check_render_mode(render_mode)
    return pad_border(x, pad_px, BORDERS[render_mode])


def blur_stack(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur each item of ``x (N, C, H + 2r, W + 2r)`` (already extended by its border rule)
    with its own kernel, by Kornia: ``kernels (N, 2r + 1)`` separable (the same 1-D kernel
    along both axes) or ``(N, 2r + 1, 2r + 1)`` 2-D; a first axis of 1: one kernel for every
    item. Returns the valid part ``(N, C, H, W)``."""
    from kornia.filters import filter2d, filter2d_separable

    kernels = kernels.to(x.dtype)
    if kernels.dim() == 2:
        return filter2d_separable(x, kernels, kernels, padding="valid")
    return filter2d(x, kernels, padding="valid")


def gaussian_blur(x: torch.Tensor, sigma_px: float, radius_px: int | None = None,
                  border: str = "replicate", aperture: str = "gaussian") -> torch.Tensor:
    """Blur ``(N, C, H, W)`` with one kernel (:func:`gaussian_kernel1d` of radius
    ``radius_px``, default ``ceil(3 sigma)``; or the disc), ``border`` ``replicate`` or
    ``symmetric``: :func:`blur_stack` on the extended frame; OpenCV on the CPU in float32."""
    if sigma_px <= 1e-6:
        return x
    if aperture == "disc":
        k = disc_kernel2d(sigma_px)
    else:
        k = _gaussian_kernel1d(round(float(sigma_px), 9), radius_px)
    r = k.shape[0] // 2
    if r == 0:
        return x
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return _opencv_blur(x, k, border)
    n = x.shape[0]
    kernels = torch.as_tensor(k, dtype=x.dtype, device=x.device).expand(n, *k.shape)
    return blur_stack(pad_border(x, r, border), kernels)


def _opencv_blur(x: torch.Tensor, k: np.ndarray, border: str) -> torch.Tensor:
    """:func:`gaussian_blur`'s arithmetic by OpenCV's SIMD filters (CPU, float32)."""
    import cv2

    n, c, h, w = x.shape
    cv_border = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_REFLECT
    arr = x.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(arr)
    kf = k.astype(np.float32)
    for i in range(n):
        for c0 in range(0, c, 4):  # OpenCV filters take at most 4 channels
            src = np.ascontiguousarray(arr[i, :, :, c0:c0 + 4])
            if kf.ndim == 2:
                res = cv2.filter2D(src, -1, kf, borderType=cv_border)
            else:
                res = cv2.sepFilter2D(src, -1, kf, kf, borderType=cv_border)
            out[i, :, :, c0:c0 + 4] = res.reshape(h, w, -1)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
