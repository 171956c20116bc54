"""SYNDOF: defocused images with dense defocus labels from RGB-D images (SPEC section 2).

The thin-lens model (:mod:`dmenet.data.thin_lens`) gives every pixel a signed circle of
confusion ``c = alpha * (x - S1) / x``; pixels with equal ``c`` rounded to ``coc_step_px`` form
one layer (:mod:`.layers`); each layer's premultiplied colour and mask are blurred with the
layer's kernel (:mod:`.kernels`) and composited far to near (:mod:`.composite`); before every
layer nearer than the in-focus one, the background it hides is filled in (:mod:`.fill`).

Files, in the order of the algorithm:

* :mod:`.kernels`: kernels, image borders, the package's one blur (Kornia);
* :mod:`.layers`: depth layers (batched), where the fill starts;
* :mod:`.fill`: the fill region and its solvers (exact; fixed-work relaxation);
* :mod:`.composite`: over-compositing, un-premultiplying, runs of layers at once;
* :mod:`.batched`, :mod:`.tiled`, :mod:`.loop`: the three executions of the algorithm;
* :mod:`.render`: :func:`render_defocus` / :class:`SyndofRenderer`, :func:`render_from_sigma`.

Render modes: ``"paper"`` (Gaussian of radius ``ceil(3 sigma)``, border ``symmetric``) and
``"reference"`` (the official generator's 29 x 29 kernel for every sigma, border ``symmetric``,
layers from the CoC rounded half away from zero in float64, equal CoCs on both sides of the
focus merged when adjacent in depth). Known, deliberate differences from the generator: a
blurred mask below ``1e-4`` is zeroed together with its colour (the generator keeps the colour,
which breaks convexity by up to ``1e-4`` per layer); with no layer of ``c <= 1`` the fill starts
after the sharpest layer.
"""

from .composite import MASK_EPS
from .fill import FILL_REACH, regionfill, relax_fill
from .kernels import (
    REFERENCE_KERNEL_RADIUS_PX,
    blur_reach_px,
    blur_stack,
    disc_kernel2d,
    gaussian_blur,
    gaussian_kernel1d,
    pad_like_border,
)
from .layers import LayerDecomposition, depth_edge_region, layer_decomposition
from .render import (
    RENDER_MODES,
    RENDERERS,
    SyndofOutput,
    SyndofRenderer,
    fill_start_coc_px,
    render_defocus,
    render_defocus_loop,
    render_from_sigma,
)

__all__ = [
    "FILL_REACH",
    "MASK_EPS",
    "REFERENCE_KERNEL_RADIUS_PX",
    "RENDERERS",
    "RENDER_MODES",
    "LayerDecomposition",
    "SyndofOutput",
    "SyndofRenderer",
    "blur_reach_px",
    "blur_stack",
    "depth_edge_region",
    "disc_kernel2d",
    "fill_start_coc_px",
    "gaussian_blur",
    "gaussian_kernel1d",
    "layer_decomposition",
    "pad_like_border",
    "regionfill",
    "relax_fill",
    "render_defocus",
    "render_defocus_loop",
    "render_from_sigma",
]
