"""The classical baseline: Zhuo & Sim 2011, "Defocus map estimation from a single image".

1. Edges: scikit-image's Canny on the grey image.
2. Blur at edges: a step edge of blur sigma has gradient magnitude ``A / (sqrt(2 pi) sigma)``.
   Re-blurring with a known ``sigma0`` gives ``A / (sqrt(2 pi) sqrt(sigma^2 + sigma0^2))``, so
   the ratio ``R = |grad I| / |grad I_reblurred|`` gives ``sigma = sigma0 / sqrt(R^2 - 1)``.
   Gradients here are Gaussian derivatives of scale ``gradient_sigma_px`` (robust to noise and
   to the pixel grid), which widens both edges by that scale; it is subtracted in quadrature:
   ``sigma = sqrt(sigma0^2 / (R^2 - 1) - gradient_sigma_px^2)`` (the paper's formula is the
   ``gradient_sigma_px = 0`` case).
3. Propagation: the sparse edge map ``d^`` is spread to every pixel by minimising
   ``d' L d + lambda (d - d^)' D (d - d^)`` with the matting Laplacian ``L`` of the image
   (pymatting's ``cf_laplacian``) and ``D`` the diagonal edge indicator, i.e. solving
   ``(L + lambda D) d = lambda D d^`` with scipy's sparse direct solver. Large images are
   propagated at a reduced size (``max_side_px``): the edge estimates are made at full
   resolution (so sigma stays in full-resolution pixels), averaged into the coarse grid,
   and the dense result is upsampled back.

:func:`estimate_sigma_px` is the function (``dmenet infer --estimator zhuo_sim`` calls it);
:class:`ZhuoSimEstimator` wraps it as a B (registered as ``"zhuo_sim"`` among the classical estimators), so ``dmenet test``
evaluates it like a trained network.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from scipy import ndimage as ndi

from dmenet.labels import SIGMA_MAX_PX, from_sigma_px
from dmenet.modules.contracts import BlurEstimate
from dmenet.modules.spec import Part
from dmenet.registry import CLASSICAL_ESTIMATORS

__all__ = ["ZhuoSimEstimator", "edge_sigma_px", "estimate_sigma_px", "propagate"]


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        from skimage.color import rgb2gray

        return rgb2gray(image)
    raise ValueError(f"expected an image (H, W, 3) or (H, W), got shape {image.shape}")


def edge_sigma_px(
    image: np.ndarray,
    sigma0_px: float = 1.0,
    gradient_sigma_px: float = 1.0,
    canny_sigma_px: float = 1.0,
    canny_low: float = 0.02,
    canny_high: float = 0.06,
    max_sigma_px: float = SIGMA_MAX_PX,
) -> tuple[np.ndarray, np.ndarray]:
    """Blur sigma at edge pixels.

    Args:
        image: float RGB ``(H, W, 3)`` (or grey ``(H, W)``) in ``[0, 1]``.
        sigma0_px: sigma of the re-blur.
        gradient_sigma_px: scale of the Gaussian-derivative gradients (0 = central differences).
        canny_sigma_px, canny_low, canny_high: scikit-image Canny parameters.
        max_sigma_px: estimates are clipped to ``[0, max_sigma_px]``.

    Returns ``(sigma_px (H, W) float64, edges (H, W) bool)``; sigma is 0 off the edges. Edge
    pixels whose ratio is not above 1 (no measurable blur change) are dropped from ``edges``.
    """
    from skimage.feature import canny

    gray = _gray(image)
    edges = canny(gray, sigma=canny_sigma_px, low_threshold=canny_low, high_threshold=canny_high)
    reblurred = ndi.gaussian_filter(gray, sigma0_px, mode="nearest")
    if gradient_sigma_px > 0:
        grad = ndi.gaussian_gradient_magnitude(gray, gradient_sigma_px, mode="nearest")
        grad_re = ndi.gaussian_gradient_magnitude(reblurred, gradient_sigma_px, mode="nearest")
    else:
        grad = np.hypot(*np.gradient(gray))
        grad_re = np.hypot(*np.gradient(reblurred))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = grad / grad_re
        valid = edges & np.isfinite(ratio) & (ratio > 1.0 + 1e-6) & (grad_re > 0)
        sigma2 = sigma0_px**2 / (ratio**2 - 1.0) - gradient_sigma_px**2
    sigma = np.zeros_like(gray)
    sigma[valid] = np.sqrt(np.clip(sigma2[valid], 0.0, max_sigma_px**2))
    return sigma, valid


def propagate(
    image: np.ndarray,
    sparse_sigma_px: np.ndarray,
    known: np.ndarray,
    lam: float = 0.005,
    epsilon: float = 1e-5,
    max_side_px: int = 200,
) -> np.ndarray:
    """Spread sparse sigma values (at ``known`` pixels) over the image with the matting Laplacian.

    Solves ``(L + lam D) d = lam D d^`` at a size whose longer side is at most ``max_side_px``
    and returns ``d`` at the input size ``(H, W)``. ``epsilon`` is the matting Laplacian's
    regulariser (larger = smoother across colour changes).
    """
    from pymatting import cf_laplacian

    h, w = sparse_sigma_px.shape
    known = known.astype(np.float64)
    if not known.any():
        return np.zeros((h, w))
    scale = min(1.0, max_side_px / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2: (width, height)
        # area averages: the coarse value is the mean of the edge estimates falling in the cell
        weight = cv2.resize(known, size, interpolation=cv2.INTER_AREA)
        total = cv2.resize(sparse_sigma_px * known, size, interpolation=cv2.INTER_AREA)
        small_image = cv2.resize(np.asarray(image, dtype=np.float64), size, interpolation=cv2.INTER_AREA)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(weight > 0, total / weight, 0.0)
        data = (weight > 0).astype(np.float64)
    else:
        small_image, values, data = np.asarray(image, dtype=np.float64), sparse_sigma_px, known
    if small_image.ndim == 2:
        small_image = np.repeat(small_image[:, :, None], 3, axis=2)
    laplacian = cf_laplacian(np.ascontiguousarray(small_image), epsilon=epsilon)
    d = sp.diags(data.ravel())
    system = (laplacian + lam * d).tocsc()
    dense = spla.spsolve(system, lam * (data * values).ravel()).reshape(data.shape)
    if scale < 1.0:
        dense = cv2.resize(dense, (w, h), interpolation=cv2.INTER_LINEAR)
    return dense


def estimate_sigma_px(
    image: np.ndarray,
    sigma0_px: float = 1.0,
    gradient_sigma_px: float = 1.0,
    lam: float = 0.005,
    max_side_px: int = 200,
    max_sigma_px: float = SIGMA_MAX_PX,
) -> np.ndarray:
    """Zhuo & Sim defocus map of one photo: Gaussian blur sigma in pixels, ``(H, W)`` float32.

    Args:
        image: float RGB ``(H, W, 3)`` in ``[0, 1]``.
        sigma0_px: re-blur sigma. gradient_sigma_px: gradient scale (see the module docstring).
        lam: weight of the edge estimates against the Laplacian smoothness.
        max_side_px: longest side at which the propagation is solved (speed).
        max_sigma_px: the result is clipped to ``[0, max_sigma_px]``.

    An image without measurable edges gets an all-zero map (nothing to propagate).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    sparse, known = edge_sigma_px(
        image, sigma0_px=sigma0_px, gradient_sigma_px=gradient_sigma_px, max_sigma_px=max_sigma_px
    )
    dense = propagate(image, sparse, known, lam=lam, max_side_px=max_side_px)
    return np.clip(dense, 0.0, max_sigma_px).astype(np.float32)


@CLASSICAL_ESTIMATORS.register("zhuo_sim")
class ZhuoSimEstimator(Part):
    """Zhuo & Sim 2011 as a B: ``forward(image (N, 3, H, W)) -> BlurEstimate``.

    ``y = sigma_px / SIGMA_MAX_PX`` clipped to ``[0, 1]``; ``aux = []``; ``feature`` is a
    zero ``(N, 64, H, W)`` view (no memory; D has nothing to see). No trainable parameters:
    evaluate it with ``dmenet test --config configs/zhuo_sim.yaml`` (no checkpoint). The
    arguments are those of :func:`estimate_sigma_px`, read back from ``self.init_args``.
    """

    def __init__(
        self, sigma0_px: float = 1.0, gradient_sigma_px: float = 1.0, lam: float = 0.005,
        max_side_px: int = 200,
    ) -> None:
        super().__init__()
        # a buffer so .to(device) / the Trainer know where the module lives
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> BlurEstimate:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an image batch (N, 3, H, W), got {tuple(image.shape)}")
        maps = []
        for one in image.detach().float().cpu():
            sigma = estimate_sigma_px(one.permute(1, 2, 0).clamp(0, 1).numpy(), **self.init_args)
            maps.append(torch.from_numpy(sigma))
        sigma_px = torch.stack(maps)[:, None].to(image.device)
        y = from_sigma_px(sigma_px, "ours").clamp(0.0, 1.0)
        n, _, h, w = image.shape
        feature = torch.zeros(n, 64, 1, 1, device=image.device, dtype=y.dtype).expand(n, 64, h, w)
        return BlurEstimate(y=y, aux=[], feature=feature)
