"""Depth layers (SPEC section 2 step 1): pixels of equal quantised CoC form one layer, ordered
far to near; where the occlusion fill starts. Tensor operations over the whole batch (no loop
over samples) and no host round trip except reading the number of layers once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dmenet.data.thin_lens import Camera
from dmenet.labels import BINARY_COC_THRESHOLD_PX

__all__ = [
    "LayerDecomposition",
    "depth_edge_region",
    "fill_start_index",
    "fill_start_value",
    "layer_decomposition",
    "layers_from_depth",
    "order_layers",
    "reference_keys",
]


@dataclass
class LayerDecomposition:
    """``layer_id (B,1,H,W)`` long, 0 = farthest; ``layer_value (B, L)`` the layer's signed
    CoC (px) or order key; ``num_layers (B,)``. Unused entries repeat the last layer."""

    layer_id: torch.Tensor
    layer_value: torch.Tensor
    num_layers: torch.Tensor


def layer_decomposition(key: torch.Tensor, step: float, max_layers: int) -> LayerDecomposition:
    """Quantise ``key (B,1,H,W)`` (larger = farther) to ``step``; each value one layer.

    Beyond ``max_layers`` distinct values, neighbouring values are merged evenly (a merged
    layer takes the mean of its values), so every sample has at most ``max_layers`` layers.
    One sort per sample row (batched); the layer count is read once (the width ``L``).
    """
    if max_layers < 1:
        raise ValueError(f"max_layers must be >= 1, got {max_layers}")
    b = key.shape[0]
    q = torch.round(key / step).to(torch.int64).flatten(1)
    sq, order = torch.sort(q, dim=1)  # ascending key = near to far
    new = torch.ones_like(sq, dtype=torch.bool)
    new[:, 1:] = sq[:, 1:] != sq[:, :-1]
    rank = new.long().cumsum(1) - 1  # of the sorted pixels: the rank of their distinct value
    n = rank[:, -1] + 1
    merged = n > max_layers
    # beyond max_layers: distinct value r of n goes to bin floor(r * max_layers / n)
    bins = torch.where(merged[:, None],
                       torch.div(rank * max_layers, n[:, None], rounding_mode="floor"), rank)
    w = new.to(key.dtype)
    sums = torch.zeros(b, max_layers, dtype=key.dtype, device=key.device).scatter_add_(
        1, bins, sq.to(key.dtype) * step * w)
    count = torch.zeros_like(sums).scatter_add_(1, bins, w)
    value = torch.where(merged[:, None], sums / count.clamp(min=1.0), sums)  # near to far
    n = n.clamp(max=max_layers)
    layer_of_px = torch.empty_like(bins).scatter_(1, order, bins)
    layer_id = (n[:, None] - 1 - layer_of_px).view(key.shape)  # 0 = farthest
    width = int(n.max())  # the one read of the batch's layer count
    far_to_near = (n[:, None] - 1 - torch.arange(width, device=key.device)).clamp(min=0)
    return LayerDecomposition(layer_id, torch.gather(value, 1, far_to_near), n)


def reference_keys(coc_signed_px: torch.Tensor, step: float) -> torch.Tensor:
    """The generator's layer keys: ``|c|`` rounded half away from zero to ``step``, signed by
    the side of the focus, in float64; the nearest layer behind the focus and the farthest in
    front of it merge when their rounded CoCs are equal (they are adjacent in depth order).
    ``(B, 1, H, W)`` float64 of integers (larger = farther)."""
    c = coc_signed_px.double()
    q = torch.floor(c.abs() / step + 0.5) * torch.sign(c)
    flat = q.flatten(1)
    inf = torch.full_like(flat, float("inf"))
    behind = torch.where(flat > 0, flat, inf).amin(1)
    front = torch.where(flat < 0, flat, -inf).amax(1)
    merge = ~(flat == 0).any(1) & torch.isfinite(behind) & torch.isfinite(front) & (
        behind == -front)
    view = (-1, 1, 1, 1)
    return torch.where(merge.view(view) & (q == front.view(view)), -q, q)


def layers_from_depth(depth_mm: torch.Tensor, camera: Camera, render_mode: str,
                      coc_step_px: float, max_layers: int, c_max_px: float):
    """Layers of a clean ``depth_mm (B,1,H,W)``: ``(LayerDecomposition, signed layer CoC
    (B, L) px)``; reference mode keys them as the generator does (:func:`reference_keys`)."""
    if render_mode == "reference":
        coc_signed = camera.signed_coc_px(depth_mm.double(), c_max_px=c_max_px)
        layers = layer_decomposition(reference_keys(coc_signed, coc_step_px), 1.0, max_layers)
        return layers, (layers.layer_value * coc_step_px).float()
    coc_signed = camera.signed_coc_px(depth_mm, c_max_px=c_max_px)
    layers = layer_decomposition(coc_signed, coc_step_px, max_layers)
    return layers, layers.layer_value


def _valid(values: torch.Tensor, num_layers: torch.Tensor) -> torch.Tensor:
    return torch.arange(values.shape[1], device=values.device)[None] < num_layers[:, None]


def fill_start_value(values: torch.Tensor, num_layers: torch.Tensor) -> torch.Tensor:
    """``(B,)`` signed CoC (px) of the layer the fill starts after: per sample the first
    (farthest) of ``values (B, L)`` (signed layer CoCs, far to near) with ``|c| <= 1`` (the
    generator's ``coc_zero_idx``), or the sharpest when none is that sharp."""
    valid = _valid(values, num_layers)
    magnitude = values.abs()
    sharpest = torch.where(valid, magnitude, torch.full_like(magnitude, float("inf"))).amin(1)
    limit = sharpest.clamp(min=BINARY_COC_THRESHOLD_PX)
    candidate = valid & (magnitude <= (limit + 1e-9)[:, None])
    first = candidate.to(torch.uint8).argmax(1)  # the first True
    return values.gather(1, first[:, None])[:, 0]


def fill_start_index(values: torch.Tensor, num_layers: torch.Tensor,
                     start_value: torch.Tensor) -> torch.Tensor:
    """``(B,)`` index of the last layer (far to near) whose signed CoC is >= ``start_value``
    (B,): the fill runs before the layers after it (-1: before all)."""
    valid = _valid(values, num_layers)
    after = values.double() >= start_value.to(values.device).double()[:, None] - 1e-9
    return (valid & after).sum(1) - 1


def order_layers(sigma_px: torch.Tensor, order: torch.Tensor, step: float,
                 max_layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layers of a given ``sigma_px (B,1,H,W)`` map (:func:`~dmenet.data.syndof.render_from_sigma`):
    equal quantised sigma ON THE SAME SIDE of the sharpest pixels' ``order`` (so equal blur in
    front of and behind the focal plane stays apart), composited by their mean ``order``
    (larger = farther). Returns ``layer_id (B,1,H,W)`` 0 = farthest, ``layer_sigma (B, L)``
    (the layer's sigma: its pixels' value rounded to the step, the mean when merged) and
    ``num_layers (B,)``."""
    b = sigma_px.shape[0]
    flat_s = sigma_px.flatten(1)
    flat_o = order.flatten(1)
    sharp = flat_s <= flat_s.amin(dim=1, keepdim=True) + step
    focus = torch.nanmedian(torch.where(sharp, flat_o, torch.full_like(flat_o, float("nan"))),
                            dim=1).values.view(b, 1, 1, 1)
    # in front of (0), at (1) or behind (2) the sharpest pixels' median order
    side = torch.sign(order - focus).to(sigma_px.dtype) + 1.0
    # sigma steps on one side, then the other: neighbouring keys = neighbouring blur
    span = torch.round(flat_s.amax(1) / step).view(b, 1, 1, 1) + 2.0
    key = torch.round(sigma_px / step) + side * span
    layers = layer_decomposition(key, 1.0, max_layers)
    n, width = layers.num_layers, layers.layer_value.shape[1]
    flat = layers.layer_id.flatten(1)
    count = torch.zeros(b, width, dtype=torch.float64, device=order.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float64)).clamp(min=1.0)
    mean_order = torch.zeros_like(count).scatter_add_(1, flat, flat_o.double()) / count
    mean_sigma = torch.zeros_like(count).scatter_add_(1, flat, flat_s.double()) / count
    valid = _valid(mean_order, n)
    # farthest first; the unused entries last
    rank = torch.argsort(torch.where(valid, mean_order, torch.full_like(mean_order, -float("inf"))),
                         dim=1, descending=True, stable=True)
    new_of_old = torch.empty_like(rank).scatter_(
        1, rank, torch.arange(width, device=rank.device).expand(b, width).contiguous())
    layer_id = torch.gather(new_of_old, 1, flat).view_as(layers.layer_id)
    sigma = torch.where((n < max_layers)[:, None], torch.round(mean_sigma / step) * step,
                        mean_sigma)
    sigma = torch.gather(sigma, 1, rank).to(sigma_px.dtype)
    last = (n - 1)[:, None].expand(b, width)
    sigma = torch.where(valid, sigma, torch.gather(sigma, 1, last))
    return layer_id, sigma, n


def depth_edge_region(layer_value: torch.Tensor, layer_id: torch.Tensor, radius_px: int,
                      jump: float) -> torch.Tensor:
    """Pixels within ``radius_px`` of a depth edge: a 3x3 neighbourhood whose layer values
    (signed CoC, px) differ by more than ``jump``. ``(B,1,H,W)`` bool.

    Used to measure "away from depth edges" (tests, bench/bench_syndof.py).
    """
    b, _, h, w = layer_id.shape
    value = torch.gather(layer_value, 1, layer_id.flatten(1)).view(b, 1, h, w)
    spread = F.max_pool2d(value, 3, 1, 1) + F.max_pool2d(-value, 3, 1, 1)
    edge = (spread > jump).float()
    if radius_px > 0:  # separable dilation (a square max filter costs k^2 per pixel)
        size = 2 * radius_px + 1
        edge = F.max_pool2d(edge, (1, size), 1, (0, radius_px))
        edge = F.max_pool2d(edge, (size, 1), 1, (radius_px, 0))
    return edge > 0
