"""The public renderer: :func:`render_defocus` (thin-lens camera, depth layers, composite) and
:class:`SyndofRenderer` (its Module, drawing cameras), :func:`render_from_sigma` (a given
sigma map and depth order).

Renderers (``renderer``), one algorithm in three executions, tested against each other:

* ``"batched"`` (:mod:`.batched`): the whole batch as tensor operations over the batch and
  layer axes, on the batch's device, the fill by a fixed number of relaxation sweeps;
* ``"tiled"`` (:mod:`.tiled`): one sample at a time on the CPU, only where each layer
  changes something, the fill solved exactly before every layer;
* ``"loop"`` (:mod:`.loop`): the straightforward per-layer loop with the exact fill, the
  readable statement of the algorithm and the test oracle.

``"auto"`` (default): ``"tiled"`` on the CPU, ``"batched"`` elsewhere (measured fastest on
each, BENCHMARKS.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
from dmenet.errors import ConfigError, DataError
from dmenet.labels import C_MAX_PX, sigma_to_y

from .batched import composite_batched, read_to_host
from .kernels import BORDERS, REFERENCE_KERNEL_RADIUS_PX, blur_reach_px, check_render_mode
from .layers import fill_start_index, fill_start_value, layers_from_depth, order_layers
from .loop import composite_loop
from .tiled import TileCompositor

__all__ = [
    "RENDERERS",
    "RENDER_MODES",
    "SyndofOutput",
    "SyndofRenderer",
    "fill_start_coc_px",
    "render_defocus",
    "render_defocus_loop",
    "render_from_sigma",
]

RENDER_MODES: tuple[str, ...] = tuple(BORDERS)
RENDERERS: tuple[str, ...] = ("auto", "batched", "tiled", "loop")


@dataclass
class SyndofOutput:
    """A rendered batch: ``image (B,3,H,W)`` defocused; ``sigma_px (B,1,H,W)`` the Gaussian
    sigma of each pixel's own layer (px); ``label (B,1,H,W)`` ``y = sigma_px / SIGMA_MAX_PX``;
    ``binary (B,1,H,W)`` 1 = blurred (``c > 1``); ``coc_px (B,1,H,W)`` the layer's CoC (px);
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


@dataclass(frozen=True)
class _Options:
    aperture: str
    radius_px: int | None
    border: str
    fill: bool
    renderer: str


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


def _options(render_mode: str, renderer: str, aperture: str, fill: bool) -> _Options:
    check_render_mode(render_mode)
    if renderer not in RENDERERS:
        raise ConfigError(f"unknown renderer {renderer!r}; choose {', '.join(RENDERERS)}")
    if aperture not in ("gaussian", "disc"):
        raise ConfigError(f"unknown aperture {aperture!r}; choose 'gaussian' or 'disc'")
    radius = REFERENCE_KERNEL_RADIUS_PX if render_mode == "reference" else None
    return _Options(aperture, radius, BORDERS[render_mode], fill, renderer)


def _linear(image: torch.Tensor, gamma: float | None) -> torch.Tensor:
    return image if gamma is None else image.clamp(0.0, 1.0) ** gamma


def _delinear(image: torch.Tensor, gamma: float | None) -> torch.Tensor:
    return image.clamp(0.0, 1.0) if gamma is None else image.clamp(0.0, 1.0) ** (1.0 / gamma)


def _composite(image, layer_id, layer_sigma, layer_value, num_layers, opt: _Options,
               fill_from_coc_px: torch.Tensor | None = None) -> torch.Tensor:
    """Composite ``image (B,3,H,W)`` (linear, float32) by its layers with the chosen renderer;
    the fill after the layer of ``fill_from_coc_px (B,)`` (default: the in-focus layer)."""
    start = None
    if opt.fill:
        value = (fill_start_value(layer_value, num_layers) if fill_from_coc_px is None
                 else fill_from_coc_px.to(layer_value.device))
        start = fill_start_index(layer_value, num_layers, value)
    renderer = opt.renderer
    if renderer == "auto":
        renderer = "tiled" if image.device.type == "cpu" else "batched"
    if renderer == "batched":
        return composite_batched(image, layer_id, layer_sigma, num_layers, start, opt.aperture,
                                 opt.radius_px, opt.border)
    if image.device.type != "cpu":
        raise ConfigError(f"the {renderer} renderer runs on the CPU; render tensors on "
                          f"{image.device.type} with renderer='batched' (or 'auto')")
    n = read_to_host(num_layers)
    sigmas = read_to_host(layer_sigma)
    starts = n if start is None else read_to_host(start)
    outs = []
    for i in range(image.shape[0]):  # the per-sample executions (CPU)
        s = [float(v) for v in sigmas[i, :n[i]]]
        if max(s) <= 1e-6:
            outs.append(image[i:i + 1].clone())
        elif renderer == "tiled":
            outs.append(TileCompositor(image[i:i + 1], layer_id[i:i + 1], s, opt.aperture,
                                       opt.radius_px, opt.border).run(int(starts[i])))
        else:
            outs.append(composite_loop(image[i:i + 1], layer_id[i:i + 1], s, int(starts[i]),
                                       opt.aperture, opt.radius_px, opt.border))
    return torch.cat(outs)


def fill_start_coc_px(depth_mm: torch.Tensor, camera: Camera, *, render_mode: str = "paper",
                      coc_step_px: float = 0.1, max_layers: int = 350,
                      c_max_px: float = C_MAX_PX) -> torch.Tensor:
    """``(B,)`` signed CoC (px) of the layer of ``depth_mm (B,1,H,W)`` after which the fill
    starts (the first with ``c <= 1``). Give it, computed on the WHOLE image, to
    :func:`render_defocus` when rendering a crop of it, so that the crop fills like the whole."""
    check_render_mode(render_mode)
    layers, values = layers_from_depth(clean_depth_mm(depth_mm), camera, render_mode,
                                       coc_step_px, max_layers, c_max_px)
    return fill_start_value(values, layers.num_layers).cpu()


def render_defocus(image: torch.Tensor, depth_mm: torch.Tensor, camera: Camera, *,
                   sigma_rule: str = "paper", render_mode: str = "paper",
                   renderer: str = "auto", max_layers: int = 350, coc_step_px: float = 0.1,
                   aperture: str = "gaussian", gamma: float | None = None,
                   c_max_px: float = C_MAX_PX, fill: bool = True,
                   fill_from_coc_px: torch.Tensor | None = None) -> SyndofOutput:
    """Defocus ``image (B,3,H,W)`` in [0, 1] by the thin-lens model with ``depth_mm (B,1,H,W)``.

    ``camera``: one focus distance and CoC scale per sample (:class:`CameraSampler`).
    CoCs are clipped to ``c_max_px`` (so ``sigma <= sigma_max``), quantised to ``coc_step_px``
    into at most ``max_layers`` layers. ``render_mode``: ``"paper"`` (Gaussian of radius
    ``ceil(3 sigma)``, border ``symmetric``) or ``"reference"`` (the official generator's
    29 x 29 kernel, ``symmetric`` border and layering). ``renderer``: ``"auto"``,
    ``"batched"``, ``"tiled"`` or ``"loop"`` (module docstring). ``aperture="disc"`` uses a
    pillbox of diameter = CoC. ``gamma``: blur in linear intensity ``image ** gamma`` (None: on
    the sRGB values, like the reference). Invalid depth follows
    :func:`dmenet.data.thin_lens.clean_depth_mm`. ``fill``: the occlusion fill;
    ``fill_from_coc_px (B,)``: where it starts (:func:`fill_start_coc_px` of the whole image
    when ``image`` is a crop of it; default: this image's own). Half-precision inputs are
    rendered in float32 and returned in their dtype.
    """
    _check_image(image)
    _check_map(depth_mm, image, "depth_mm")
    opt = _options(render_mode, renderer, aperture, fill)
    if len(camera) != image.shape[0]:
        raise DataError(f"camera has {len(camera)} samples but the batch has {image.shape[0]}")
    dtype = image.dtype
    img = _linear(image.float(), gamma)
    depth = clean_depth_mm(depth_mm.to(img.device))
    layers, layer_value = layers_from_depth(depth, camera, render_mode, coc_step_px,
                                            max_layers, c_max_px)
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
    tests and the benchmark compare the other renderers with. Returns ``(B,3,H,W)``."""
    return render_defocus(image, depth_mm, camera, renderer="loop", **kwargs).image


def render_from_sigma(image: torch.Tensor, sigma_px: torch.Tensor, order: torch.Tensor, *,
                      aperture: str = "gaussian", gamma: float | None = None,
                      max_layers: int = 350, sigma_step_px: float = 0.025,
                      fill: bool = True, render_mode: str = "paper",
                      renderer: str = "auto") -> torch.Tensor:
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
    opt = _options(render_mode, renderer, aperture, fill)
    if not bool(torch.isfinite(sigma_px).all()) or bool((sigma_px < 0).any()):
        raise DataError("sigma_px must be finite and >= 0")
    dtype = image.dtype
    img = _linear(image.float(), gamma)
    order = torch.nan_to_num(order.float().to(img.device), nan=0.0, posinf=1e30, neginf=-1e30)
    layer_id, layer_sigma, num = order_layers(sigma_px.float().to(img.device), order,
                                              sigma_step_px, max_layers)
    # signed "CoC" 4 sigma, negative in front of the sharpest layer (ids: 0 = farthest), so
    # that the fill starts after the sharpest layer
    coc = coc_from_sigma(layer_sigma)
    valid = torch.arange(coc.shape[1], device=coc.device)[None] < num[:, None]
    sharpest = torch.where(valid, coc, torch.full_like(coc, float("inf"))).argmin(1)
    value = torch.where(torch.arange(coc.shape[1], device=coc.device)[None] > sharpest[:, None],
                        -coc, coc)
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
                 render_mode: str = "paper", renderer: str = "auto") -> None:
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
        """How far (px) the blur of a pixel reaches at this renderer's largest sigma."""
        return blur_reach_px(sigma_max_px(self.c_max_px, self.sigma_rule), self.render_mode,
                             self.aperture)

    def crop_margin_px(self) -> int:
        """The margin (px) a crop is rendered with to equal the same crop of the whole-image
        render: the blur's reach and the fill's. The fill region extends up to one blur reach
        beyond the layers composited so far, and its Laplace solution there depends on the
        region around it: with one blur reach as the margin, crops missed the whole render by up
        to 9.8 levels at their edge (the exact fill, 1 of 32 crops); with two, by 0.34 at most
        (the batched renderer's relaxed fill: 0.50, :data:`~.fill.RELAX_SWEEPS`; at the image's
        edge, :data:`~.kernels.BORDERS`)."""
        return 2 * self.blur_reach_px()

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
