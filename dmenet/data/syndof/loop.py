"""The straightforward per-layer loop: the readable statement of the algorithm and the test
oracle of the other renderers (one full-frame blur per layer, the exact fill before every
layer of the front). One sample at a time.
"""

from __future__ import annotations

import torch

from .composite import layer_rgba, over, resolve, unpremultiply
from .fill import fill_region, regionfill
from .kernels import gaussian_blur, kernel_radius

__all__ = ["composite_loop"]


def composite_loop(image: torch.Tensor, layer_id: torch.Tensor, sigmas: list[float],
                   start: int, aperture: str, radius_px: int | None, border: str) -> torch.Tensor:
    """Composite ``image (1,3,H,W)`` far to near by ``layer_id (1,1,H,W)`` (0 = farthest),
    each layer blurred with its ``sigmas[i]`` (px); before every layer after ``start`` the
    accumulation is un-premultiplied and the occluded background filled exactly."""
    def blur(x, sigma):
        return gaussian_blur(x, sigma, radius_px, border, aperture)

    acc = torch.zeros_like(image)
    alpha = torch.zeros_like(image[:, :1])
    for i, sigma in enumerate(sigmas):
        if i > start:
            acc, alpha = unpremultiply(acc, alpha)
            if kernel_radius(sigma, aperture, radius_px) > 0:
                union = layer_id < i
                region = fill_region(union, blur(union.to(image.dtype), sigma))[0, 0]
                if bool(region.any()):
                    u = union[0].to(image.dtype)
                    known = torch.cat([acc[0] * u, u]).double().numpy()
                    filled = torch.from_numpy(regionfill(known, region.numpy())).to(image)
                    acc[0] = torch.where(region, filled[:3], acc[0])
                    alpha[0] = torch.where(region, filled[3:], alpha[0])
        m = (layer_id == i).to(image.dtype)
        acc, alpha = over(acc, alpha, layer_rgba(blur(torch.cat([image * m, m], dim=1), sigma)))
    return resolve(acc, alpha, image)
