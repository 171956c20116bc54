"""All-in-focus photos by spatially varying non-blind deconvolution (SPEC section 6).

:func:`deblur` removes the defocus blur of a photo given its defocus map ``sigma_px (H, W)``
(the Gaussian blur sigma in px of every pixel):

1. **Edge-safe map** (:func:`edge_safe_sigma`): each pixel's sigma is lowered to the smallest
   sigma within ``3 sigma`` px, so that pixels next to a sharper region (a depth edge, where the
   photo is not one image blurred by one Gaussian) are deblurred less instead of ringing.
2. **Sigma nodes** 0, 0.25 px, then 25 % apart up to the map's largest sigma
   (:func:`sigma_nodes`): the whole photo is deconvolved once per node with that node's
   Gaussian, and each pixel takes the linear interpolation, in sigma, of the two results whose
   nodes bracket its sigma (:func:`node_weight`). Node 0 is the photo itself: sharp pixels are
   left as they are.
3. **Isolation**: a node's deconvolution sees the real photo only near the pixels that use it;
   elsewhere it sees the photo re-blurred by the node's own Gaussian (consistent data, whose
   deconvolution is the photo again), so regions of other blur cannot ring into its pixels.

Each deconvolution is Krishnan & Fergus 2009 ("Fast image deconvolution using
hyper-Laplacian priors"): per channel, for the node's Gaussian kernel ``k``, minimise::

    lambda/2 ||k * x - y||^2 + sum_pixels |d_x x|^alpha + |d_y x|^alpha

by half-quadratic splitting: auxiliary gradients ``w`` with the penalty ``beta/2 ||d x - w||^2``,
``beta`` raised from 1 to 256 by ``x 2 sqrt 2`` (one ``w``-step and one ``x``-step per value):

* ``w``-step, per pixel: ``argmin_w |w|^alpha + beta/2 (w - v)^2`` (:func:`shrink`);
* ``x``-step, in the Fourier domain with circular boundaries::

      x = F^-1[(lambda K* F(y) + beta F(d_x^T w_x + d_y^T w_y)) / (lambda |K|^2 + beta (|D_x|^2 + |D_y|^2))]

The ``w``-step for ``alpha = 3/2`` has an exact closed form. For ``v > 0`` the minimiser lies in
``[0, v]`` and solves ``3/2 sqrt(w) + beta (w - v) = 0``; with ``s = sqrt(w)`` that is the
quadratic ``beta s^2 + 3/2 s - beta v = 0``, so ``s = 2 beta v / (3/2 + sqrt(9/4 + 4 beta^2 v))``
and ``w = sign(v) s^2`` (K&F's lookup table / polynomial roots are needed only for the
non-convex ``alpha < 1``, which is not offered). ``alpha = 1`` is soft thresholding,
``alpha = 2`` a scaling, other ``1 < alpha < 2`` are solved by bisection (the problem is convex).

The circular boundary of the FFT is handled as the reference does: the photo is padded by
replicating its border (:func:`pad_image`) and blended towards its circular blur near the seam
(:func:`edge_taper`, MATLAB's ``edgetaper``). The deconvolutions are batched tensor code on any
device (:func:`deconvolve`: ``(C, H, W)`` images, any number of Gaussians at once).

``deblur(..., reference=True)`` is the reference's own method, for comparison: 32 hard quantile
bins of the blurred pixels (sigma >= 0.3 px, :func:`reference_bins`), one deconvolution per bin
median, each pixel its bin's result, no edge-safe map, no isolation. Both are measured in
BENCHMARKS.md section 5 (``bench/bench_deblur.py``).

:func:`half_quadratic_cg` is the same objective for any linear blur given as a function and its
transpose, solved by conjugate gradients (``bench/bench_deblur_bound.py`` inverts the SYNDOF
renderer with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from dmenet.errors import DataError

__all__ = [
    "ALPHA",
    "BETA_START",
    "BETA_MAX",
    "BETA_RATE",
    "MAX_SUPPORT_PX",
    "DEFAULT_LAMBDA",
    "NODE_FIRST_PX",
    "NODE_RATIO",
    "EDGE_SAFE_REACH",
    "REFERENCE_BINS",
    "REFERENCE_MIN_SIGMA_PX",
    "beta_schedule",
    "shrink",
    "gaussian_taps",
    "gaussian_otf",
    "pad_image",
    "edge_taper",
    "deconvolve_padded",
    "deconvolve",
    "half_quadratic_cg",
    "check_sigma_map",
    "edge_safe_sigma",
    "sigma_nodes",
    "node_weight",
    "reference_bins",
    "deblur",
]

ALPHA: float = 1.5
"""Hyper-Laplacian exponent of the reference's deblurring step."""

BETA_START: float = 1.0
BETA_MAX: float = 256.0
BETA_RATE: float = 2.0 * math.sqrt(2.0)
"""Half-quadratic continuation: beta = 1, 2.83, 8, 22.6, 64, 181 (six steps below 256)."""

MAX_SUPPORT_PX: int = 101
"""Largest kernel side (px): Gaussians are cut at radius min(ceil(3 sigma), 50)."""

DEFAULT_LAMBDA: float = 1000.0
"""Data weight lambda of the K&F objective (larger = less regularisation). Chosen by
``bench/bench_deblur.py`` on 8-bit SYNDOF renders with the ground-truth map; with an estimated
(wrong in places) map or a noisy photo a smaller lambda is better (BENCHMARKS.md section 5; the
reference uses 420 for CUHK photos, 16.8 for DPDD, 4.2 for RealDOF)."""

NODE_FIRST_PX: float = 0.25
NODE_RATIO: float = 1.25
"""The deconvolution nodes of :func:`deblur`: 0, then 0.25 px (where the sampled Gaussian is
within 4e-4 of no blur) times powers of 1.25 (:func:`sigma_nodes`)."""

EDGE_SAFE_REACH: float = 3.0
""":func:`edge_safe_sigma` lowers a pixel's sigma to the smallest within ``3 sigma`` px."""

REFERENCE_BINS: int = 32
REFERENCE_MIN_SIGMA_PX: float = 0.3
"""The reference method's quantile bins, over the pixels with at least this sigma (px)."""


# ---------------------------------------------------------------------------------------------
# K&F deconvolution with Gaussian kernels


def beta_schedule(beta_start: float = BETA_START, beta_max: float = BETA_MAX,
                  beta_rate: float = BETA_RATE) -> list[float]:
    """The continuation values of beta: ``beta_start * beta_rate^i`` below ``beta_max``."""
    out, beta = [], float(beta_start)
    while beta < beta_max:
        out.append(beta)
        beta *= beta_rate
    return out


def shrink(v: torch.Tensor, beta: float, alpha: float = ALPHA) -> torch.Tensor:
    """Elementwise ``argmin_w |w|^alpha + beta/2 (w - v)^2`` for ``1 <= alpha <= 2``, ``beta > 0``."""
    if not 1.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must be in [1, 2] (convex priors), got {alpha}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    a = v.abs()
    if alpha == 1.0:
        return torch.sign(v) * (a - 1.0 / beta).clamp(min=0.0)
    if alpha == 2.0:
        return v * (beta / (beta + 2.0))
    if alpha == 1.5:
        # s = sqrt(|w|) solves beta s^2 + 1.5 s - beta |v| = 0 (written without cancellation)
        s = 2.0 * beta * a / (1.5 + torch.sqrt(2.25 + 4.0 * beta * beta * a))
        return torch.sign(v) * s * s
    # 1 < alpha < 2: g(t) = alpha t^(alpha-1) + beta (t - |v|) increases from -beta|v| to > 0 on [0, |v|]
    lo, hi = torch.zeros_like(a), a.clone()
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        g = alpha * mid.pow(alpha - 1.0) + beta * (mid - a)
        positive = g > 0
        hi = torch.where(positive, mid, hi)
        lo = torch.where(positive, lo, mid)
    return torch.sign(v) * 0.5 * (lo + hi)


def gaussian_taps(sigma_px: float) -> np.ndarray:
    """The blur model's kernel: sampled, normalised 1-D Gaussian taps of the SYNDOF renderer
    (:func:`dmenet.data.syndof.gaussian_kernel1d`), radius ``min(ceil(3 sigma), 50)`` (``[1]``
    for 0). Every blur here (the OTFs, the isolation, the edge taper) is built from these taps:
    this is the one place that says which Gaussian the photo was blurred with."""
    from dmenet.data.syndof import gaussian_kernel1d

    taps = gaussian_kernel1d(sigma_px)
    limit = MAX_SUPPORT_PX // 2
    radius = len(taps) // 2
    if radius > limit:
        taps = taps[radius - limit: radius + limit + 1]
        taps = taps / taps.sum()
    return taps


def _otf_1d(taps: np.ndarray, n: int, half: bool) -> np.ndarray:
    """DFT of the centred symmetric ``taps`` wrapped on ``n`` samples (real); ``n//2 + 1``
    frequencies when ``half`` (rfft layout)."""
    radius = len(taps) // 2
    freqs = np.arange(n // 2 + 1 if half else n, dtype=np.float64)
    lags = np.arange(-radius, radius + 1, dtype=np.float64)
    return np.cos(2.0 * np.pi * np.outer(freqs, lags) / n) @ taps


def gaussian_otf(sigmas_px: list[float], size_hw: tuple[int, int], device=None) -> torch.Tensor:
    """Real OTFs ``(N, 1, H, W//2 + 1)`` of separable Gaussians on an ``(H, W)`` periodic grid."""
    h, w = size_hw
    rows = []
    for sigma in sigmas_px:
        taps = gaussian_taps(sigma)
        rows.append(np.outer(_otf_1d(taps, h, False), _otf_1d(taps, w, True)))
    return torch.from_numpy(np.stack(rows)[:, None].astype(np.float32)).to(device)


def _fast_size(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = max(1, n)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def pad_image(image: torch.Tensor, pad_px: int) -> torch.Tensor:
    """Pad ``(..., H, W)`` by replicating its border: ``pad_px`` on every side, and more at the
    bottom / right up to a fast FFT size. The original sits at offset ``(pad_px, pad_px)``."""
    h, w = image.shape[-2:]
    hp, wp = _fast_size(h + 2 * pad_px), _fast_size(w + 2 * pad_px)
    rows = (torch.arange(hp, device=image.device) - pad_px).clamp(0, h - 1)
    cols = (torch.arange(wp, device=image.device) - pad_px).clamp(0, w - 1)
    return image[..., rows[:, None], cols[None, :]]


def _taper_weight(taps: np.ndarray, n: int) -> np.ndarray:
    """MATLAB ``edgetaper``'s 1-D weight: 1 - normalised autocorrelation of the PSF at the
    distance to the periodic seam (0 on the first and last sample, ~1 farther than the PSF)."""
    auto = np.correlate(taps, taps, mode="full")[len(taps) - 1:]
    auto = auto / auto[0]
    i = np.arange(n)
    d = np.minimum(i, n - 1 - i)
    a = np.where(d < len(auto), auto[np.minimum(d, len(auto) - 1)], 0.0)
    return 1.0 - a


def _circular_blur(x: torch.Tensor, otf: torch.Tensor) -> torch.Tensor:
    """``x (..., H, W)`` blurred on its periodic grid by the PSFs of ``otf`` (:func:`gaussian_otf`)."""
    return torch.fft.irfft2(torch.fft.rfft2(x) * otf, s=x.shape[-2:])


def edge_taper(x: torch.Tensor, sigmas_px: list[float], otf: torch.Tensor) -> torch.Tensor:
    """Blend ``x (N, C, H, W)`` towards its circular blur near the borders (MATLAB ``edgetaper``),
    each of the ``N`` with its own PSF (``otf`` from :func:`gaussian_otf`), so that the periodic
    seam of the FFT carries no step edge."""
    h, w = x.shape[-2:]
    weights = [np.outer(_taper_weight(gaussian_taps(s), h), _taper_weight(gaussian_taps(s), w))
               for s in sigmas_px]
    alpha = torch.from_numpy(np.stack(weights)[:, None].astype(np.float32)).to(x.device)
    return alpha * x + (1.0 - alpha) * _circular_blur(x, otf)


def _grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Circular forward differences ``x[i+1] - x[i]`` along W and H."""
    return torch.roll(x, -1, -1) - x, torch.roll(x, -1, -2) - x


def _grad_adjoint(wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_grad`: ``w[i-1] - w[i]`` summed over both directions."""
    return (torch.roll(wx, 1, -1) - wx) + (torch.roll(wy, 1, -2) - wy)


def _grad_spectrum(size_hw: tuple[int, int], device=None) -> torch.Tensor:
    """``|D_x|^2 + |D_y|^2`` on the rfft grid ``(1, 1, H, W//2 + 1)``."""
    h, w = size_hw
    u = torch.arange(w // 2 + 1, dtype=torch.float64, device=device)
    v = torch.arange(h, dtype=torch.float64, device=device)
    dx = 2.0 - 2.0 * torch.cos(2.0 * math.pi * u / w)
    dy = 2.0 - 2.0 * torch.cos(2.0 * math.pi * v / h)
    return (dy[:, None] + dx[None, :]).float()[None, None]


def deconvolve_padded(y: torch.Tensor, otf: torch.Tensor, lam: float, alpha: float = ALPHA,
                      betas: list[float] | None = None) -> torch.Tensor:
    """K&F half-quadratic deconvolution of ``y (N, C, H, W)`` (already padded/tapered; circular
    model) with real OTFs ``(N, 1, H, W//2 + 1)``; returns ``x (N, C, H, W)``, unclipped."""
    if not lam > 0:
        raise ValueError(f"the data weight lambda must be > 0, got {lam}")
    h, w = y.shape[-2:]
    spectrum = torch.fft.rfft2(y)
    data_num = (lam * otf) * spectrum
    data_den = lam * otf * otf
    grad_den = _grad_spectrum((h, w), y.device)
    x = y
    for beta in beta_schedule() if betas is None else betas:
        vx, vy = _grad(x)
        reg = torch.fft.rfft2(_grad_adjoint(shrink(vx, beta, alpha), shrink(vy, beta, alpha)))
        del vx, vy
        x = torch.fft.irfft2((data_num + beta * reg) / (data_den + beta * grad_den), s=(h, w))
        del reg
    return x


def deconvolve(image: torch.Tensor, sigmas_px: list[float], lam: float, alpha: float = ALPHA,
               pad_px: int | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Deconvolve ``image (C, H, W)`` with each Gaussian of ``sigmas_px``: ``(N, C, H, W)``.

    One spatially invariant deconvolution per sigma, batched (memory ~ 10 x N x C padded
    planes). The image is padded by ``pad_px`` (default: the largest kernel radius) by
    replication and edge-tapered. ``masks (N, 1, H, W)``: where 0, deconvolution ``k`` sees the
    image re-blurred by its own PSF instead of the image (isolation). Not clipped.
    """
    radius = max(len(gaussian_taps(s)) // 2 for s in sigmas_px)
    pad = max(1, radius if pad_px is None else pad_px)
    h, w = image.shape[-2:]
    padded = pad_image(image.float(), pad)
    otf = gaussian_otf(sigmas_px, padded.shape[-2:], image.device)
    y = padded[None].expand(len(sigmas_px), *padded.shape)
    if masks is not None:
        # outside its mask, node k sees the photo re-blurred with its own PSF: consistent data
        # (deconvolving it gives back the photo) instead of a source of ringing
        m = (3.0 * _circular_blur(pad_image(masks.float(), pad), otf)).clamp(0.0, 1.0)
        y = m * y + (1.0 - m) * _circular_blur(y, otf)
    y = edge_taper(y, sigmas_px, otf)
    x = deconvolve_padded(y, otf, lam, alpha)
    return x[..., pad:pad + h, pad:pad + w]


# ---------------------------------------------------------------------------------------------
# any linear blur, by conjugate gradients


def _diff(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W and H, 0 on the last column / row (no wrap)."""
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return dx, dy


def _diff_adjoint(wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`_diff`."""
    out = torch.zeros_like(wx)
    out[..., :, :-1] -= wx[..., :, :-1]
    out[..., :, 1:] += wx[..., :, :-1]
    out[..., :-1, :] -= wy[..., :-1, :]
    out[..., 1:, :] += wy[..., :-1, :]
    return out


def half_quadratic_cg(apply: Callable[[torch.Tensor], torch.Tensor],
                      adjoint: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
                      x0: torch.Tensor, lam: float, weight: torch.Tensor | None = None,
                      alpha: float = ALPHA, cg_iters: int = 8, betas: list[float] | None = None,
                      on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """K&F's objective ``lam/2 ||M (A x - y)||^2 + sum |d_x x|^alpha + |d_y x|^alpha`` for any
    linear blur ``A`` given as ``apply`` and its exact transpose ``adjoint`` on ``(C, H, W)``.

    Half-quadratic splitting as :func:`deconvolve_padded` (``beta`` over :func:`beta_schedule`,
    or ``betas``), the ``x``-step ``(lam A^T M A + beta D^T D) x = lam A^T M y + beta D^T w``
    solved by ``cg_iters`` conjugate-gradient iterations warm-started from the previous ``x``
    (from ``x0``). ``weight``: the data term's per-pixel ``M`` (broadcast over ``y``; default 1).
    ``on_step`` is called after each half-quadratic step. Returns ``x`` unclipped.
    """
    m = torch.ones_like(y[:1]) if weight is None else weight
    x = x0
    data_rhs = lam * adjoint(m * y)

    def normal(v: torch.Tensor, beta: float) -> torch.Tensor:
        return lam * adjoint(m * apply(v)) + beta * _diff_adjoint(*_diff(v))

    for beta in beta_schedule() if betas is None else betas:
        vx, vy = _diff(x)
        rhs = data_rhs + beta * _diff_adjoint(shrink(vx, beta, alpha), shrink(vy, beta, alpha))
        del vx, vy
        r = rhs - normal(x, beta)
        p = r.clone()
        rr = (r * r).sum()
        for _ in range(cg_iters):
            ap = normal(p, beta)
            step = rr / (p * ap).sum().clamp(min=1e-30)
            x = x + step * p
            r = r - step * ap
            rr_new = (r * r).sum()
            p = r + (rr_new / rr.clamp(min=1e-30)) * p
            rr = rr_new
        if on_step is not None:
            on_step()
    return x


# ---------------------------------------------------------------------------------------------
# the spatially varying method


def check_sigma_map(sigma_px: np.ndarray | torch.Tensor, size_hw: tuple[int, int],
                    where: str = "sigma map") -> torch.Tensor:
    """The map as a float32 ``(H, W)`` tensor, or a :class:`DataError` naming ``where``: wrong
    shape (``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` of the photo's size), NaN/inf, < 0."""
    sigma = torch.as_tensor(np.asarray(sigma_px) if not torch.is_tensor(sigma_px) else sigma_px)
    while sigma.dim() > 2 and sigma.shape[0] == 1:
        sigma = sigma[0]
    if sigma.dim() != 2:
        raise DataError(f"{where}: a sigma map must be one (H, W) channel, got shape "
                        f"{tuple(sigma.shape)}")
    if tuple(sigma.shape) != tuple(size_hw):
        raise DataError(f"{where}: the sigma map is {sigma.shape[0]}x{sigma.shape[1]} (HxW) but "
                        f"the photo is {size_hw[0]}x{size_hw[1]}")
    sigma = sigma.float()
    bad = int((~torch.isfinite(sigma)).sum())
    if bad:
        raise DataError(f"{where}: the sigma map holds {bad} NaN/inf value(s)")
    if sigma.numel() and float(sigma.min()) < 0:
        raise DataError(f"{where}: the sigma map has negative values (min {float(sigma.min()):.3g} px)")
    return sigma


_SAFE_RADII_PX = (1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 45)


def edge_safe_sigma(sigma_px: torch.Tensor, reach: float = EDGE_SAFE_REACH) -> torch.Tensor:
    """The map ``(H, W)`` with each pixel's sigma lowered to the smallest sigma within
    ``reach * sigma`` px (a grey erosion whose radius grows with sigma, on a few radii).

    Next to a less blurred region (a depth edge), a blurred pixel's neighbourhood is not the
    blur of one image by its own Gaussian, and deconvolving it with that Gaussian rings; with
    the smaller sigma it is only partly deblurred.
    """
    import cv2

    s = sigma_px.float().cpu().numpy()
    out = s.copy()
    for r in _SAFE_RADII_PX:
        if r > reach * float(s.max(initial=0.0)):
            break
        eroded = cv2.erode(s, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)),
                           borderType=cv2.BORDER_REPLICATE)
        out = np.where(r <= reach * s, np.minimum(out, eroded), out)
    return torch.from_numpy(out)


def sigma_nodes(sigma_max_px: float) -> list[float]:
    """The deconvolution nodes of :func:`deblur` (px, increasing): 0 (no blur), then
    :data:`NODE_FIRST_PX` times powers of :data:`NODE_RATIO` up to the first at or above
    ``sigma_max_px``. A constant spacing ratio keeps the error of interpolating between two
    deconvolutions alike at every sigma (a deconvolution with a too large sigma rings, and the
    more so the smaller the sigma)."""
    nodes = [0.0]
    while nodes[-1] < sigma_max_px - 1e-6:
        nodes.append(NODE_FIRST_PX if len(nodes) == 1 else nodes[-1] * NODE_RATIO)
    return nodes


def node_weight(sigma_px: torch.Tensor, nodes: list[float], k: int) -> torch.Tensor:
    """Each pixel's weight ``(H, W)`` on node ``k`` of ``nodes`` (:func:`sigma_nodes`): linear
    interpolation in sigma between the two nodes that bracket the pixel's sigma (1 on the last
    node beyond it). Over all nodes the weights of a pixel sum to 1 and reproduce its sigma."""
    s = sigma_px.float()
    w = torch.ones_like(s)
    if k > 0:
        w = torch.minimum(w, (s - nodes[k - 1]) / (nodes[k] - nodes[k - 1]))
    if k + 1 < len(nodes):
        w = torch.minimum(w, (nodes[k + 1] - s) / (nodes[k + 1] - nodes[k]))
    return w.clamp(min=0.0)


def _quantiles(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    step = max(1, values.numel() // 4_000_000)  # torch.quantile's size limit; quantiles of a
    return torch.quantile(values[::step].double(), q.double()).float()  # stride sample suffice


def reference_bins(sigma_px: torch.Tensor, bins: int = REFERENCE_BINS,
                   min_sigma_px: float = REFERENCE_MIN_SIGMA_PX) -> tuple[list[float], torch.Tensor]:
    """The reference method's hard bins: the pixels with ``sigma >= min_sigma_px`` split into
    ``bins`` quantile bins, each deconvolved with its median. Returns ``(nodes, index (H, W))``:
    the distinct medians (px, increasing) and each pixel's node, -1 for the pixels left as they are."""
    blurred = sigma_px >= min_sigma_px
    values = sigma_px[blurred]
    if values.numel() == 0:
        return [], torch.full(sigma_px.shape, -1, dtype=torch.long)
    edges = _quantiles(values, torch.arange(bins + 1, dtype=torch.float64) / bins)
    medians = _quantiles(values, (torch.arange(bins, dtype=torch.float64) + 0.5) / bins)
    nodes, node_of_bin = torch.unique(medians, return_inverse=True)
    bin_of = torch.bucketize(sigma_px, edges[1:-1].contiguous(), right=True)  # 0 .. bins-1
    return nodes.tolist(), torch.where(blurred, node_of_bin[bin_of], -1)


def deblur(image: torch.Tensor, sigma_px: np.ndarray | torch.Tensor, lam: float = DEFAULT_LAMBDA,
           reference: bool = False, device: torch.device | str | None = None,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """All-in-focus ``image (C, H, W)`` in ``[0, 1]`` (any C) from its defocus map
    ``sigma_px (H, W)`` (Gaussian sigma in px). Returns ``(C, H, W)`` in ``[0, 1]`` on the CPU.

    The method of this module's docstring: edge-safe map, isolated deconvolutions at the sigma
    nodes of :func:`sigma_nodes`, linear interpolation between them. ``lam``: the K&F
    data weight. ``reference``: the reference's method instead (:func:`reference_bins`).
    ``device``: where to compute (default: the image's); on a GPU all channels of a node are
    deconvolved at once, on a CPU one at a time (faster there, and the least memory).

    ``progress(done, total)``: called once with ``done = 0`` and then after every deconvolution
    (a node and channels), ending with ``done == total``: a photo of many megapixels takes
    minutes on a CPU.
    """
    if image.dim() != 3:
        raise DataError(f"image must be (C, H, W), got {tuple(image.shape)}")
    if not lam > 0:
        raise ValueError(f"the data weight lambda must be > 0, got {lam}")
    c, h, w = image.shape
    sigma = check_sigma_map(sigma_px, (h, w))
    device = torch.device(device) if device is not None else image.device
    img = image.float().to(device)
    if reference:
        nodes, index = reference_bins(sigma)
        index = index.to(device)
        out = img * (index < 0).float()
        # one padding for all bins, the largest kernel's radius (as the reference)
        pad = max((len(gaussian_taps(s)) // 2 for s in nodes), default=1)
        weight = lambda k: (index == k).float()  # noqa: E731
    else:
        safe = edge_safe_sigma(sigma).to(device)
        grid = sigma_nodes(float(safe.max()) if safe.numel() else 0.0)
        out = img * node_weight(safe, grid, 0)  # node 0: the photo itself
        used = [k for k in range(1, len(grid)) if bool((node_weight(safe, grid, k) > 0).any())]
        nodes = [grid[k] for k in used]
        pad = None  # each node's own kernel radius
        weight = lambda i: node_weight(safe, grid, used[i])  # noqa: E731
    channels = c if device.type == "cuda" else 1
    total = len(nodes) * -(-c // channels)
    if progress is not None:
        progress(0, total)
    done = 0
    for k in range(len(nodes)):
        wk = weight(k)
        masks = None if reference else (wk > 0).float()[None, None]
        for c0 in range(0, c, channels):
            x = deconvolve(img[c0:c0 + channels], [nodes[k]], lam, pad_px=pad, masks=masks)[0]
            out[c0:c0 + channels] += wk * x.clamp_(0.0, 1.0)
            done += 1
            if progress is not None:
                progress(done, total)
    return out.clamp_(0.0, 1.0).cpu()
