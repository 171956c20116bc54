"""The thin-lens defocus model, written once (SPEC section 2).

Circle of confusion (CoC) diameter, in pixels, of a point at distance ``x`` (mm) when the lens
is focused at ``S1`` (mm)::

    c(x) = alpha * |x - S1| / x

``alpha`` (px) folds the lens and sensor constants together (reference: ``m1 * m2 * A`` with
``m1 = width_px / 36 mm``, ``m2 = F / (S1 - F)``, ``A = F / N``). The Gaussian blur of a point has
``sigma = c / 4`` (paper) or ``sigma = (c - 1) / 4`` where ``c > 1`` (reference generator).
The label is ``y = sigma / SIGMA_MAX_PX`` (:mod:`dmenet.labels`).

Invalid depth (NaN, +-inf, ``<= 0``, or "sky" values ``>= SKY_DEPTH_MM``) follows ONE rule
everywhere: it is replaced by the farthest valid depth within 8 px, and deeper inside a hole
by the farthest within 16, 32, ... px of its filled rim (:func:`clean_depth_mm`). A sample without any valid depth is a :class:`DataError`.

Camera sampling (:class:`CameraSampler`):

* ``"paper"`` (default): ``S1 ~ U[x_near, x_far]``, ``alpha ~ U[0, alpha_up]`` with
  ``alpha_up = c_max / max_x(|x - S1| / x)`` so no CoC exceeds ``c_max``.
* ``"reference"``: F from {50, 70, 85} mm (weights 0.1, 0.4, 0.4), depths shifted so the
  nearest is at least 5 F, S1 drawn from the depth values favouring near depths (weight 1/x),
  N solved so the largest CoC is exactly ``c_max``; re-drawn (up to ``max_redraws`` times)
  unless the sample has 200 to 350 CoC layers of 0.1 px.
* ``"fixed"``: the given ``focus_mm``; the given ``alpha_px``, or, without one,
  ``alpha_up`` (the largest CoC in the image is exactly ``c_max``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F

from dmenet.errors import DataError
from dmenet.labels import BINARY_COC_THRESHOLD_PX, C_MAX_PX

__all__ = [
    "SKY_DEPTH_MM",
    "SENSOR_WIDTH_MM",
    "SigmaRule",
    "coc_px",
    "signed_coc_px",
    "sigma_from_coc",
    "coc_from_sigma",
    "sigma_max_px",
    "binary_from_coc",
    "clean_depth_mm",
    "max_defocus_ratio",
    "count_layers",
    "Camera",
    "CameraSampler",
]

SKY_DEPTH_MM: float = 1e9
"""Depths at or beyond this (1000 km) are "sky" markers (Sintel uses 1e11): invalid."""

SENSOR_WIDTH_MM: float = 36.0
"""Full-frame sensor width of the reference's ``m1 = width_px / 36``."""

SigmaRule = Literal["paper", "reference"]

_REFERENCE_FOCALS_MM = (50.0, 70.0, 85.0)
_REFERENCE_FOCAL_WEIGHTS = (0.1, 0.4, 0.4)  # as in the reference (renormalised)


def signed_coc_px(depth_mm: torch.Tensor, focus_mm, alpha_px) -> torch.Tensor:
    """``alpha * (x - S1) / x`` in px: negative in front of the focal plane, monotonic in depth.

    ``focus_mm`` and ``alpha_px`` broadcast against ``depth_mm`` (pass ``(B, 1, 1, 1)`` views
    for per-sample values of a ``(B, 1, H, W)`` map).
    """
    return alpha_px * (depth_mm - focus_mm) / depth_mm


def coc_px(depth_mm: torch.Tensor, focus_mm, alpha_px) -> torch.Tensor:
    """Circle-of-confusion diameter ``c = alpha * |x - S1| / x`` in pixels (broadcasting)."""
    return signed_coc_px(depth_mm, focus_mm, alpha_px).abs()


_COC_PER_SIGMA = 4.0  # c = 4 sigma: the paper's Gaussian of a CoC diameter


def sigma_from_coc(coc_px: torch.Tensor, rule: str = "paper") -> torch.Tensor:
    """Gaussian sigma (px) of a CoC diameter (px): ``c / 4`` (paper) or ``max(c - 1, 0) / 4``
    (reference generator, which blurs only where ``c > 1``)."""
    if rule == "paper":
        return coc_px / _COC_PER_SIGMA
    if rule == "reference":
        return (coc_px - 1.0).clamp(min=0.0) / _COC_PER_SIGMA
    raise ValueError(f"unknown sigma rule {rule!r}; choose 'paper' or 'reference'")


def coc_from_sigma(sigma_px):
    """CoC diameter (px) of a Gaussian sigma (px) under the paper's rule: ``c = 4 sigma``, the
    inverse of ``sigma_from_coc(c, "paper")``. Tensors or numbers."""
    return _COC_PER_SIGMA * sigma_px


def sigma_max_px(c_max_px: float = C_MAX_PX, rule: str = "paper") -> float:
    """The largest sigma (px) a render can hold: that of the CoC clip ``c_max_px``
    (``SIGMA_MAX_PX`` = 7 px for the paper's 28 px and rule)."""
    return float(sigma_from_coc(torch.tensor(float(c_max_px)), rule))


def binary_from_coc(coc_px: torch.Tensor) -> torch.Tensor:
    """Binary defocus map, 1 = blurred where ``c > BINARY_COC_THRESHOLD_PX`` (reference)."""
    return (coc_px > BINARY_COC_THRESHOLD_PX).to(torch.float32)


def _check_depth(depth_mm: torch.Tensor) -> None:
    if not torch.is_tensor(depth_mm) or depth_mm.dim() != 4 or depth_mm.shape[1] != 1:
        shape = tuple(depth_mm.shape) if torch.is_tensor(depth_mm) else type(depth_mm).__name__
        raise DataError(f"depth_mm must be a (B, 1, H, W) tensor, got {shape}")


def valid_depth_mask(depth_mm: torch.Tensor) -> torch.Tensor:
    """``True`` where a depth is usable: finite, ``> 0`` and nearer than ``SKY_DEPTH_MM``."""
    return torch.isfinite(depth_mm) & (depth_mm > 0) & (depth_mm < SKY_DEPTH_MM)


INVALID_FILL_RADIUS_PX: int = 8
"""Invalid depth takes the farthest valid depth within this many pixels (see clean_depth_mm)."""


def clean_depth_mm(depth_mm: torch.Tensor) -> torch.Tensor:
    """Apply the invalid-depth rule: an invalid pixel takes the farthest valid depth within
    ``INVALID_FILL_RADIUS_PX`` (8 px); pixels deeper inside a hole take the farthest depth
    within 16, 32, ... px of the pixels filled before them (a hole fills from its rim inwards).

    Why the farthest: invalid values are sky/far markers or missing stereo matches at
    occlusions, which lie BEHIND their neighbours (a stereo occlusion is background seen by one
    camera only); the local maximum puts a thin hole on the background it belongs to instead of
    on a distant plane (which would cut a sharp gap into a blurred foreground), and sky at
    infinity has almost the CoC of the farthest plane (``alpha * (1 - S1 / x)``).
    ``(B, 1, H, W)`` float32 in, out. Raises :class:`DataError` for a sample with no valid depth.
    """
    _check_depth(depth_mm)
    depth = depth_mm.float()
    valid = valid_depth_mask(depth)
    per_sample = valid.flatten(1).any(dim=1)
    if not bool(per_sample.all()):
        bad = [int(i) for i in torch.nonzero(~per_sample).flatten()]
        raise DataError(
            f"depth map of sample(s) {bad} has no valid depth (all values are NaN, inf, <= 0 "
            f"or sky >= {SKY_DEPTH_MM:g} mm)"
        )
    if bool(valid.all()):
        return depth
    zeroed = torch.where(valid, depth, torch.zeros_like(depth))
    far = zeroed.flatten(1).amax(dim=1).view(-1, 1, 1, 1).expand_as(depth)
    filled, todo = zeroed, ~valid
    r = INVALID_FILL_RADIUS_PX
    while bool(todo.any()) and r < 2 * max(depth.shape[-2:]):
        # the farthest depth within r px of the pixels known so far; r doubles, so a large
        # hole is filled from its rim inwards in a few steps
        local = F.max_pool2d(filled, (1, 2 * r + 1), 1, (0, r))
        local = F.max_pool2d(local, (2 * r + 1, 1), 1, (r, 0))
        take = todo & (local > 0)
        filled = torch.where(take, local, filled)
        todo = todo & ~take
        r *= 2
    return torch.where(todo, far, filled)


def _near_far(depth_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = depth_mm.flatten(1)
    return flat.amin(dim=1), flat.amax(dim=1)


def max_defocus_ratio(depth_mm: torch.Tensor, focus_mm: torch.Tensor) -> torch.Tensor:
    """``max_x |x - S1| / x`` per sample (reached at the nearest or farthest depth). ``(B,)``."""
    near, far = _near_far(depth_mm)
    f = focus_mm.to(near)
    return torch.maximum((f - near).abs() / near, (far - f).abs() / far)


def count_layers(coc_signed_px: torch.Tensor, step_px: float = 0.1) -> torch.Tensor:
    """Number of distinct CoC layers (signed CoC rounded to ``step_px``) per sample. ``(B,)``."""
    q = torch.round(coc_signed_px.flatten(1) / step_px)
    return torch.tensor([int(torch.unique(row).numel()) for row in q], dtype=torch.long)


@dataclass
class Camera:
    """Per-sample camera parameters, each a ``(B,)`` tensor.

    ``focus_mm`` is S1, ``alpha_px`` the CoC scale (px), ``depth_offset_mm`` is added to the
    depth map before the CoC (the reference shifts scenes so the nearest point is >= 5 F);
    ``focal_mm`` and ``f_number`` are known only for reference-mode cameras (NaN otherwise).
    """

    focus_mm: torch.Tensor
    alpha_px: torch.Tensor
    focal_mm: torch.Tensor | None = None
    f_number: torch.Tensor | None = None
    depth_offset_mm: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        self.focus_mm = torch.as_tensor(self.focus_mm, dtype=torch.float32).reshape(-1)
        self.alpha_px = torch.as_tensor(self.alpha_px, dtype=torch.float32).reshape(-1)
        n = self.focus_mm.numel()
        if self.alpha_px.numel() == 1 and n > 1:
            self.alpha_px = self.alpha_px.expand(n).clone()
        if self.alpha_px.numel() != n:
            raise DataError(f"camera: {n} focus distances but {self.alpha_px.numel()} alphas")
        nan = torch.full((n,), float("nan"))
        self.focal_mm = nan.clone() if self.focal_mm is None else torch.as_tensor(
            self.focal_mm, dtype=torch.float32).reshape(-1)
        self.f_number = nan.clone() if self.f_number is None else torch.as_tensor(
            self.f_number, dtype=torch.float32).reshape(-1)
        self.depth_offset_mm = torch.zeros(n) if self.depth_offset_mm is None else torch.as_tensor(
            self.depth_offset_mm, dtype=torch.float32).reshape(-1)
        if not bool(torch.isfinite(self.focus_mm).all()) or bool((self.focus_mm <= 0).any()):
            raise DataError(f"camera: focus distance must be finite and > 0 mm, got "
                            f"{self.focus_mm.tolist()}")
        if not bool(torch.isfinite(self.alpha_px).all()) or bool((self.alpha_px < 0).any()):
            raise DataError(f"camera: CoC scale alpha must be finite and >= 0 px, got "
                            f"{self.alpha_px.tolist()}")

    def __len__(self) -> int:
        return self.focus_mm.numel()

    def to(self, device) -> Camera:
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("focus_mm", "alpha_px", "focal_mm", "f_number",
                                 "depth_offset_mm")})

    def signed_coc_px(self, depth_mm: torch.Tensor, c_max_px: float | None = None) -> torch.Tensor:
        """Signed CoC (px) of a clean ``(B, 1, H, W)`` depth map under these cameras, clipped
        to ``[-c_max_px, c_max_px]`` when ``c_max_px`` is given (what every render does)."""
        dev = depth_mm.device
        view = (-1, 1, 1, 1)
        depth = depth_mm + self.depth_offset_mm.to(dev).view(view)
        signed = signed_coc_px(depth, self.focus_mm.to(dev).view(view),
                               self.alpha_px.to(dev).view(view))
        return signed if c_max_px is None else signed.clamp(-c_max_px, c_max_px)

    def sample(self, i: int) -> dict[str, float | None]:
        """Sample ``i``'s parameters as plain numbers (JSON-ready; NaN -> None)."""
        out: dict[str, float | None] = {}
        for key in ("focus_mm", "alpha_px", "focal_mm", "f_number", "depth_offset_mm"):
            v = float(getattr(self, key)[i])
            out[key] = None if v != v else v
        return out


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(n,)`` U[0, 1) on the CPU, drawn on the generator's device (CPU or CUDA generator)."""
    return torch.rand(n, generator=generator, dtype=torch.float64,
                      device=_gen_device(generator)).float().cpu()


def _choice(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(weights.to(_gen_device(generator)), 1, generator=generator))


class CameraSampler:
    """Draws a :class:`Camera` per sample of a depth batch; all randomness from ``generator``.

    ``mode``: ``"paper"`` (default), ``"reference"`` or ``"fixed"`` (see module docstring).
    ``c_max_px``: the largest CoC (px). ``focus_mm`` / ``alpha_px``: the fixed camera
    (``alpha_px=None`` means ``alpha_up``: the largest CoC in the image equals ``c_max``).
    """

    def __init__(self, mode: str = "paper", c_max_px: float = C_MAX_PX,
                 focus_mm: float | None = None, alpha_px: float | None = None,
                 min_layers: int = 200, max_layers: int = 350, max_redraws: int = 20,
                 coc_step_px: float = 0.1) -> None:
        if mode not in ("paper", "reference", "fixed"):
            raise ValueError(f"unknown camera mode {mode!r}; choose paper, reference or fixed")
        if mode == "fixed" and focus_mm is None:
            raise ValueError("a fixed camera needs focus_mm")
        if focus_mm is not None and not focus_mm > 0:
            raise DataError(f"focus distance must be > 0 mm, got {focus_mm}")
        if alpha_px is not None and not alpha_px >= 0:
            raise DataError(f"CoC scale alpha must be >= 0 px, got {alpha_px}")
        if not c_max_px > 0:
            raise DataError(f"c_max must be > 0 px, got {c_max_px}")
        self.mode = mode
        self.c_max_px = float(c_max_px)
        self.focus_mm = focus_mm
        self.alpha_px = alpha_px
        self.min_layers, self.max_layers = min_layers, max_layers
        self.max_redraws = max_redraws
        self.coc_step_px = coc_step_px

    def __repr__(self) -> str:
        return (f"CameraSampler(mode={self.mode!r}, c_max_px={self.c_max_px}, "
                f"focus_mm={self.focus_mm}, alpha_px={self.alpha_px})")

    def alpha_up(self, depth_mm: torch.Tensor, focus_mm: torch.Tensor) -> torch.Tensor:
        """``c_max / max_x(|x - S1| / x)`` per sample; 0 where the scene is flat at S1."""
        ratio = max_defocus_ratio(depth_mm, focus_mm)
        return torch.where(ratio > 1e-9, self.c_max_px / ratio.clamp(min=1e-9),
                           torch.zeros_like(ratio))

    def sample(self, depth_mm: torch.Tensor, generator: torch.Generator | None = None) -> Camera:
        """Cameras for a ``(B, 1, H, W)`` depth map (cleaned with :func:`clean_depth_mm`)."""
        depth = clean_depth_mm(depth_mm)
        b = depth.shape[0]
        if self.mode == "reference":
            depth = depth.cpu()
        if self.mode == "fixed":
            focus = torch.full((b,), float(self.focus_mm))
            alpha = (torch.full((b,), float(self.alpha_px)) if self.alpha_px is not None
                     else self.alpha_up(depth, focus.to(depth.device)).cpu())
            return Camera(focus, alpha)
        if self.mode == "paper":
            near, far = (v.cpu() for v in _near_far(depth))
            focus = near + (far - near) * _uniform(b, generator)
            if self.focus_mm is not None:
                focus = torch.full((b,), float(self.focus_mm))
            alpha = self.alpha_up(depth, focus.to(depth.device)).cpu() * _uniform(b, generator)
            if self.alpha_px is not None:
                alpha = torch.full((b,), float(self.alpha_px))
            return Camera(focus, alpha)
        cams = [self._reference_one(depth[i:i + 1], generator) for i in range(b)]
        return Camera(*(torch.cat([getattr(c, k) for c in cams]) for k in
                        ("focus_mm", "alpha_px", "focal_mm", "f_number", "depth_offset_mm")))

    def _reference_one(self, depth: torch.Tensor, generator: torch.Generator | None) -> Camera:
        width_px = depth.shape[-1]
        weights = torch.tensor(_REFERENCE_FOCAL_WEIGHTS, dtype=torch.float64)
        values = depth.flatten()
        best: tuple[int, Camera] | None = None
        for _ in range(max(1, self.max_redraws)):
            focal = _REFERENCE_FOCALS_MM[_choice(weights, generator)]
            offset = max(0.0, 5.0 * focal - float(values.min()))
            shifted = values + offset
            # S1 from the depth values, favouring near ones (weight 1/x)
            idx = _choice((1.0 / shifted).double(), generator)
            focus = float(shifted[idx])
            ratio = float(max_defocus_ratio(depth + offset, torch.tensor([focus]))[0])
            alpha = self.c_max_px / ratio if ratio > 1e-9 else 0.0
            # alpha = m1 * m2 * F / N  ->  N
            m1 = width_px / SENSOR_WIDTH_MM
            m2 = focal / max(focus - focal, 1e-6)
            f_number = m1 * m2 * focal / alpha if alpha > 0 else float("inf")
            cam = Camera([focus], [alpha], [focal], [f_number], [offset])
            n = int(count_layers(cam.signed_coc_px(depth), self.coc_step_px)[0])
            if self.min_layers <= n <= self.max_layers:
                return cam
            # keep the draw closest to the wanted range if none lands inside it
            miss = self.min_layers - n if n < self.min_layers else n - self.max_layers
            if best is None or miss < best[0]:
                best = (miss, cam)
        assert best is not None
        return best[1]
