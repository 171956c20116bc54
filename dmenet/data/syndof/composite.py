"""Compositing (SPEC section 2 steps 2-3): layers far to near, premultiplied colour and mask.

A layer's blurred premultiplied colour and mask ``(C, M)`` (:func:`layer_rgba`: both zeroed
where ``M < MASK_EPS``) go over the accumulation ``(Acc, A)``::

    Acc = (1 - M) Acc + C;   A = (1 - M) A + M;   image = Acc / A      (:func:`over`)

Before each layer nearer than the in-focus one (the "front"), the official generator
un-premultiplies the accumulation (:func:`unpremultiply`: colour = ``Acc / A``, ``A -> 1``
where ``A > 0``) and fills the occluded background (:mod:`.fill`). Behind the in-focus layer,
where neither happens, a run of layers has a closed form over the layer axis
(:func:`composite_run`). Every step is a convex combination of source colours: a constant photo renders constant.
"""

from __future__ import annotations

import torch

__all__ = ["MASK_EPS", "composite_run", "layer_rgba", "over", "resolve", "unpremultiply"]

MASK_EPS = 1e-4
"""Blurred-mask values below this are set to 0, with their colour (SPEC section 2 step 2; the
generator keeps the colour, which breaks convexity by up to 1e-4 per layer)."""


def _safe(alpha: torch.Tensor) -> torch.Tensor:
    return torch.where(alpha > 0, alpha, torch.ones_like(alpha))


def layer_rgba(blurred: torch.Tensor) -> torch.Tensor:
    """``(..., 4, H, W)`` blurred ``(m I, m)``, colour and mask zeroed where the mask is below
    :data:`MASK_EPS`."""
    return blurred * (blurred[..., 3:, :, :] >= MASK_EPS)


def over(acc: torch.Tensor, alpha: torch.Tensor, rgba: torch.Tensor):
    """One layer ``rgba (B,4,H,W)`` over ``acc (B,3,H,W)``, ``alpha (B,1,H,W)``."""
    m = rgba[:, 3:]
    through = 1.0 - m
    return torch.addcmul(rgba[:, :3], acc, through), torch.addcmul(m, alpha, through)


def unpremultiply(acc: torch.Tensor, alpha: torch.Tensor):
    """colour = ``Acc / A`` and ``A -> 1`` where ``A > 0`` (where ``A = 0``, ``Acc = 0``: every
    colour comes with its mask)."""
    return acc / alpha.clamp(min=torch.finfo(alpha.dtype).tiny), (alpha > 0).to(alpha.dtype)


def composite_run(acc: torch.Tensor, alpha: torch.Tensor, blurred: torch.Tensor):
    """Layers ``blurred (B, K, 4, H, W)`` (far to near, blurred ``(m I, m)``; as
    :func:`layer_rgba` makes them, which is applied here) over ``(acc, alpha)`` at once, with
    no un-premultiply or fill between them: equal to :func:`over` layer by layer.
    ``T_k = prod_{j > k} (1 - M_j)`` (a reverse cumulative product over the layers),
    ``Acc = Acc_0 T_{-1} + sum_k C_k T_k`` and the same for ``A``."""
    keep = blurred[:, :, 3:] >= MASK_EPS  # layer_rgba's mask, applied to one channel
    m = blurred[:, :, 3:] * keep
    through = torch.cumprod((1.0 - m).flip(1), dim=1).flip(1)  # prod_{j >= k} (1 - M_j)
    after = torch.cat([through[:, 1:], torch.ones_like(through[:, :1])], dim=1)  # j > k
    total = (blurred * (after * keep)).sum(1)  # sum_k (C_k, M_k) T_k
    return acc * through[:, 0] + total[:, :3], alpha * through[:, 0] + total[:, 3:]


def resolve(acc: torch.Tensor, alpha: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The rendered image: ``Acc / A``; the source ``image`` where nothing was composited."""
    return torch.where(alpha > 0, acc / _safe(alpha), image)
