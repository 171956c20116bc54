"""Non-blind deconvolution with Gaussian PSFs and a hyper-Laplacian prior (SPEC section 6).

Krishnan & Fergus 2009 ("Fast image deconvolution using hyper-Laplacian priors") minimise, per
channel, for a known blur kernel ``k``::

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

Everything here is batched: ``(N, C, H, W)`` images, each of the ``N`` with its own Gaussian
``sigma_px`` (the bins of a spatially varying map, :mod:`dmenet.inference.deblur`), on any
device. The circular boundary of the FFT is handled by padding the image first
(:func:`pad_image`): ``"reflect"`` (mirror padding then edge tapering inside the padding, the
default) or ``"taper"`` (the reference: replicate padding and MATLAB-style ``edgetaper``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "ALPHA",
    "BETA_START",
    "BETA_MAX",
    "BETA_RATE",
    "MAX_SUPPORT_PX",
    "BOUNDARIES",
    "beta_schedule",
    "shrink",
    "gaussian_taps",
    "gaussian_otf",
    "pad_image",
    "edge_taper",
    "deconvolve_padded",
    "deconvolve",
    "half_quadratic_cg",
    "invert_blur",
]

ALPHA: float = 1.5
"""Hyper-Laplacian exponent of the reference's deblurring step."""

BETA_START: float = 1.0
BETA_MAX: float = 256.0
BETA_RATE: float = 2.0 * math.sqrt(2.0)
"""Half-quadratic continuation: beta = 1, 2.83, 8, 22.6, 64, 181 (six steps below 256)."""

MAX_SUPPORT_PX: int = 101
"""Largest kernel side (px): Gaussians are cut at radius min(ceil(3 sigma), 50)."""

BOUNDARIES: tuple[str, ...] = ("reflect", "taper")


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
    """Sampled, normalised 1-D Gaussian taps, radius ``min(ceil(3 sigma), 50)`` (``[1]`` for 0)."""
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


def _symmetric_index(n: int, before: int, after: int, device=None) -> torch.Tensor:
    """Indices of a half-sample symmetric extension (edge pixel repeated), any pad size."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def pad_image(image: torch.Tensor, pad_px: int, boundary: str = "reflect",
              fast: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(..., H, W)`` by ``pad_px`` on every side (more at the bottom / right up to a fast
    FFT size when ``fast``): symmetric (``"reflect"``) or replicate (``"taper"``).

    Returns the padded image and the offset ``(top, left)`` of the original in it.
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; choose one of {', '.join(BOUNDARIES)}")
    h, w = image.shape[-2:]
    hp = _fast_size(h + 2 * pad_px) if fast else h + 2 * pad_px
    wp = _fast_size(w + 2 * pad_px) if fast else w + 2 * pad_px
    if boundary == "reflect":
        rows = _symmetric_index(h, pad_px, hp - h - pad_px, image.device)
        cols = _symmetric_index(w, pad_px, wp - w - pad_px, image.device)
    else:
        rows = (torch.arange(hp, device=image.device) - pad_px).clamp(0, h - 1)
        cols = (torch.arange(wp, device=image.device) - pad_px).clamp(0, w - 1)
    return image[..., rows[:, None], cols[None, :]], (pad_px, pad_px)


def _taper_weight(taps: np.ndarray, n: int) -> np.ndarray:
    """MATLAB ``edgetaper``'s 1-D weight: 1 - normalised autocorrelation of the PSF at the
    distance to the periodic seam (0 on the first and last sample, ~1 farther than the PSF)."""
    auto = np.correlate(taps, taps, mode="full")[len(taps) - 1:]
    auto = auto / auto[0]
    i = np.arange(n)
    d = np.minimum(i, n - 1 - i)
    a = np.where(d < len(auto), auto[np.minimum(d, len(auto) - 1)], 0.0)
    return 1.0 - a


def edge_taper(x: torch.Tensor, sigmas_px: list[float], otf: torch.Tensor) -> torch.Tensor:
    """Blend ``x (N, C, H, W)`` towards its circular blur near the borders (MATLAB ``edgetaper``),
    each of the ``N`` with its own PSF (``otf`` from :func:`gaussian_otf`), so that the periodic
    seam of the FFT carries no step edge."""
    h, w = x.shape[-2:]
    blurred = torch.fft.irfft2(torch.fft.rfft2(x) * otf, s=(h, w))
    weights = [np.outer(_taper_weight(gaussian_taps(s), h), _taper_weight(gaussian_taps(s), w))
               for s in sigmas_px]
    alpha = torch.from_numpy(np.stack(weights)[:, None].astype(np.float32)).to(x.device)
    return alpha * x + (1.0 - alpha) * blurred


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
               boundary: str = "reflect", pad_px: int | None = None,
               masks: torch.Tensor | None = None) -> torch.Tensor:
    """Deconvolve ``image (C, H, W)`` with each Gaussian of ``sigmas_px``: ``(N, C, H, W)``.

    One spatially invariant deconvolution per sigma, batched (memory ~ 10 x N x C padded
    planes). ``pad_px`` defaults to twice the largest kernel radius with ``"reflect"`` (the taper
    then lies in the padding) and once the radius with ``"taper"`` (the reference). Not clipped.
    """
    radius = max(len(gaussian_taps(s)) // 2 for s in sigmas_px)
    if pad_px is None:
        pad_px = 2 * radius if boundary == "reflect" else radius
    h, w = image.shape[-2:]
    padded, (top, left) = pad_image(image.float(), max(pad_px, 1), boundary)
    hp, wp = padded.shape[-2:]
    otf = gaussian_otf(sigmas_px, (hp, wp), image.device)
    y = padded[None].expand(len(sigmas_px), *padded.shape)
    if masks is not None:
        # outside its mask, node k sees the photo re-blurred with its own PSF: consistent data
        # (deconvolving it gives back the photo) instead of a source of ringing
        m, _ = pad_image(masks.float(), max(pad_px, 1), boundary)
        m = (3.0 * torch.fft.irfft2(torch.fft.rfft2(m) * otf, s=(hp, wp))).clamp(0.0, 1.0)
        y = m * y + (1.0 - m) * torch.fft.irfft2(torch.fft.rfft2(y) * otf, s=(hp, wp))
    y = edge_taper(y, sigmas_px, otf)
    x = deconvolve_padded(y, otf, lam, alpha)
    return x[..., top:top + h, left:left + w]


# ---------------------------------------------------------------------------------------------
# inverting the spatially varying blur operator itself (``method="invert"``)

LEVEL_TOL: float = 1.0 / 255
"""Largest step-edge error of interpolating linearly between neighbouring blur levels."""


def _step_error(ka: np.ndarray, kb: np.ndarray, t: float, kt: np.ndarray) -> float:
    """Largest error on a unit step edge of ``(1 - t) ka + t kb`` against ``kt`` (1-D)."""
    n = max(len(ka), len(kb), len(kt))
    pad = lambda k: np.pad(k, ((n - len(k)) // 2,) * 2)  # noqa: E731
    return float(np.abs(np.cumsum((1 - t) * pad(ka) + t * pad(kb) - pad(kt))).max())


@functools.lru_cache(maxsize=16)
def blur_levels(sigma_max_px: float, tol: float = LEVEL_TOL,
                probe_step_px: float = 0.025) -> tuple[float, ...]:
    """Blur levels ``0 = s_0 < s_1 < ...`` covering ``[0, sigma_max_px]`` such that linear
    interpolation between neighbouring Gaussians (:func:`gaussian_taps`) errs by at most ``tol``
    on a step edge (probed every ``probe_step_px``); greedy, each next level as far as allowed.
    (The blur basis the SYNDOF renderer used before it blurred every layer exactly.)"""
    levels = [0.0]
    while levels[-1] < sigma_max_px - 1e-9:
        lo, best = levels[-1], levels[-1] + probe_step_px
        while best <= sigma_max_px + 4 * probe_step_px:
            cand = best + probe_step_px
            ka, kb = gaussian_taps(lo), gaussian_taps(cand)
            if any(_step_error(ka, kb, (s - lo) / (cand - lo), gaussian_taps(float(s))) > tol
                   for s in np.arange(lo + probe_step_px, cand, probe_step_px)):
                break
            best = cand
        levels.append(round(best, 6))
    return tuple(levels)


MODELS: tuple[str, ...] = ("gather", "scatter", "layered")
"""Spatially varying blur models: ``"gather"`` ``(K x)(p) = sum_q G_sigma(p)(p - q) x(q)`` (each
output pixel is the blur of the sharp image with its own Gaussian), ``"scatter"``, its
transpose (each sharp pixel spreads its light with its own Gaussian), and ``"layered"``: the
SYNDOF renderer's over-compositing of the blur levels as layers, most blurred first (farthest),
each layer's premultiplied colour and mask blurred together, normalised by the composited mask
(exact for depth edges behind the focal plane, where the nearer side is the sharper one)."""


def _blur_zero(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian blur of ``(C, H, W)`` with zero boundary (exactly self-adjoint): OpenCV on the
    CPU, a separable conv2d elsewhere. Kernel taps from :func:`gaussian_taps`."""
    if sigma_px <= 1e-6:
        return x
    taps = gaussian_taps(sigma_px)
    if x.device.type == "cpu":
        import cv2

        kf = taps.astype(np.float32)
        arr = x.detach().contiguous().numpy()
        out = np.empty_like(arr)
        for c in range(arr.shape[0]):
            out[c] = cv2.sepFilter2D(arr[c], -1, kf, kf, borderType=cv2.BORDER_CONSTANT)
        return torch.from_numpy(out)
    k = torch.as_tensor(taps, dtype=x.dtype, device=x.device)
    r = len(taps) // 2
    c = x.shape[0]
    y = torch.nn.functional.conv2d(x[:, None], k.view(1, 1, 1, -1), padding=(0, r))
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1), padding=(r, 0))
    return y.view(c, *x.shape[-2:])


class BlurOperator:
    """The spatially varying Gaussian blur of a ``sigma_px (H, W)`` map as a linear operator on
    ``(C, H, W)`` images with zero boundary: per pixel, linear interpolation between the blurs by
    the two bracketing levels of the SYNDOF renderer's blur basis
    (:func:`blur_levels`, step-edge error <= :data:`LEVEL_TOL`).

    ``apply`` is the ``model`` (:data:`MODELS`), ``adjoint`` its exact transpose. ``"layered"``
    cuts the map into hard layers, the pixels between two neighbouring levels (each pixel's light
    interpolated between the two blurs as above), and over-composites them as the SYNDOF renderer
    does: most blurred first, each layer's blurred light and blurred mask together, the result
    divided by the composited mask. A map holds no depth order, so the nearer of two layers is
    taken to be the sharper one (true behind the focal plane, where most of a scene lies).
    """

    def __init__(self, sigma_px: torch.Tensor, model: str = "gather"):
        if model not in MODELS:
            raise ValueError(f"unknown blur model {model!r}; choose one of {', '.join(MODELS)}")
        self.model = model
        smax = float(sigma_px.max()) if sigma_px.numel() else 0.0
        # levels up to the next whole px (a greedy prefix of those of any larger maximum): few
        # distinct cached sets
        levels = torch.tensor(blur_levels(float(max(1, math.ceil(smax - 1e-6)))), dtype=torch.float32)
        s = sigma_px.float().cpu().clamp(0.0, float(levels[-1]))
        lower = (torch.bucketize(s, levels, right=True) - 1).clamp(0, len(levels) - 2)
        t = ((s - levels[lower]) / (levels[lower + 1] - levels[lower])).clamp(0.0, 1.0)
        self.levels, self.weights = [], []
        for k in range(len(levels) if model != "layered" else 0):
            wk = (lower == k) * (1.0 - t) + (lower + 1 == k) * t
            if float(wk.max()) > 0:
                self.levels.append(float(levels[k]))
                self.weights.append(wk.to(sigma_px.device))
        if model == "layered":
            # hard layers: the pixels between two neighbouring levels (their blur interpolated
            # as in the gather model); each layer's blurred mask, and the composited mask
            self.lower, self.t = lower.to(sigma_px.device), t.to(sigma_px.device)
            self.layer_sigmas = [(float(levels[j]), float(levels[j + 1]))
                                 for j in range(len(levels) - 1) if bool((lower == j).any())]
            self.layer_ids = [j for j in range(len(levels) - 1) if bool((lower == j).any())]
            alpha = torch.zeros_like(self.t)
            self.masks = []
            for j, pair in zip(self.layer_ids, self.layer_sigmas):
                self.masks.append(self._layer_blur(self._layer(j), pair))
            for mk in reversed(self.masks):  # the farthest (most blurred) layer first
                alpha = (1.0 - mk[0]) * alpha + mk[0]
            self.alpha = alpha.clamp(min=1e-6)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for s, wk in zip(self.levels, self.weights):
            out += wk * _blur_zero(x, s)
        return out

    def _scatter(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for s, wk in zip(self.levels, self.weights):
            out += _blur_zero(wk * x, s)
        return out

    def _layer(self, j: int) -> torch.Tensor:
        return (self.lower == j).float()[None]

    def _layer_blur(self, x: torch.Tensor, pair: tuple[float, float]) -> torch.Tensor:
        """A layer's light ``x (C, H, W)``: the part ``1 - t`` blurred by the lower level, ``t``
        by the upper."""
        return _blur_zero(x * (1.0 - self.t), pair[0]) + _blur_zero(x * self.t, pair[1])

    def _layered(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.zeros_like(x)
        for j, pair, mk in reversed(list(zip(self.layer_ids, self.layer_sigmas, self.masks))):
            acc = (1.0 - mk) * acc + self._layer_blur(self._layer(j) * x, pair)
        return acc / self.alpha

    def _layered_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        g = v / self.alpha
        out = torch.zeros_like(v)
        for j, pair, mk in zip(self.layer_ids, self.layer_sigmas, self.masks):  # nearest first
            out += self._layer(j) * ((1.0 - self.t) * _blur_zero(g, pair[0])
                                     + self.t * _blur_zero(g, pair[1]))
            g = g * (1.0 - mk)
        return out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.model == "layered":
            return self._layered(x)
        return self._gather(x) if self.model == "gather" else self._scatter(x)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        if self.model == "layered":
            return self._layered_adjoint(x)
        return self._scatter(x) if self.model == "gather" else self._gather(x)


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


def invert_blur(y: torch.Tensor, sigma_px: torch.Tensor, lam: float, x0: torch.Tensor | None = None,
                alpha: float = ALPHA, model: str = "gather", cg_iters: int = 8,
                betas: list[float] | None = None, return_residual: bool = False,
                on_step: Callable[[], None] | None = None):
    """K&F hyper-Laplacian deconvolution of ``y (C, H, W)`` under the spatially varying blur of
    ``sigma_px (H, W)`` (:class:`BlurOperator`), unclipped ``(C, H, W)``.

    :func:`half_quadratic_cg` with that operator, warm-started from ``x0`` (default ``y``). The
    photo is mirror-padded by the largest kernel radius and the data term ``M`` only counts the
    photo's own pixels, so the borders need no tapering.

    With ``return_residual``: ``(x, residual)``, the residual ``K clip(x, 0, 1) - y (C, H, W)``
    of the model on the result (how well the model explains the photo, per pixel).
    ``on_step``: called after each half-quadratic step (``len(betas)`` times), for progress.
    """
    if not lam > 0:
        raise ValueError(f"the data weight lambda must be > 0, got {lam}")
    c, h, w = y.shape
    pad = max(1, len(gaussian_taps(float(sigma_px.max()))) // 2)
    yp, (top, left) = pad_image(y.float(), pad, "reflect", fast=False)
    sp, _ = pad_image(sigma_px.float()[None], pad, "reflect", fast=False)
    op = BlurOperator(sp[0], model)
    mask = torch.zeros_like(yp[:1])
    mask[:, top:top + h, left:left + w] = 1.0
    x = pad_image((y if x0 is None else x0).float(), pad, "reflect", fast=False)[0]
    x = half_quadratic_cg(op.apply, op.adjoint, yp, x, lam, weight=mask, alpha=alpha,
                          cg_iters=cg_iters, betas=betas, on_step=on_step)
    out = x[:, top:top + h, left:left + w]
    if not return_residual:
        return out
    residual = op.apply(x.clamp(0.0, 1.0)) - yp
    return out, residual[:, top:top + h, left:left + w]
