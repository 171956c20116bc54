"""The batched renderer: a whole batch of samples, each with its own layers and camera, as
tensor operations over the batch and the layer axes, on the batch's device.

The layers far to near fall into two phases:

* the back (the in-focus layer and everything behind it, where the generator never fills):
  chunks of layers, every chunk blurred in one Kornia call (:func:`~.kernels.blur_stack`, one
  kernel per sample and layer) and composited at once (:func:`~.composite.composite_run`, a
  reverse cumulative product over the layer axis);
* the front (every layer nearer than the in-focus one): chunks blurred at once the same way
  (with the union ``U`` of the farther layers as a fifth channel, whose blur gives the fill
  region), then layer after layer: un-premultiply, the fill by :func:`~.fill.relax_fill` (fixed
  sweeps, warm-started from the previous layer's solution) and compositing. A ramp in front of
  the focus needs a fill before every layer: one fill for a group of layers misses the
  generator by up to 6 levels there (measured, BENCHMARKS.md section 1).

All samples step through the same chunks and front positions (a sample with fewer layers gets
empty ones), so the number of host round trips does not depend on the batch or the layers:
the layer count is read once (:func:`~.layers.layer_decomposition`) and the layer table once
(:func:`plan`); every other decision is a tensor operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .composite import composite_run, layer_rgba, over, resolve, unpremultiply
from .fill import RELAX_SWEEPS, checkerboard, fill_region, relax_fill
from .kernels import blur_stack, disc_kernel2d, pad_border, significant_kernel1d

__all__ = ["CHUNK_ELEMENTS", "COMPILE_FILL_ON", "BatchPlan", "composite_batched", "plan",
           "read_to_host"]

CHUNK_ELEMENTS = 1 << 27
"""The layers blurred in one call hold at most about this many values (512 MB in float32)."""

COMPILE_FILL_ON = ("cuda",)
"""Device types on which the fill's sweeps run compiled by ``torch.compile`` (one kernel per
half-sweep instead of seven; compiling takes seconds once per process, which the CPU, with its
own tiled renderer, does not repay)."""


def read_to_host(x: torch.Tensor) -> np.ndarray:
    """A device tensor's values on the host: the renderer's one explicit host round trip per
    batch (a copy to the CPU, visible to dispatch counters as ``aten._to_copy`` to ``cpu``)."""
    return x.to("cpu", copy=True).numpy()


@dataclass
class BatchPlan:
    """What the host decides once per batch, the samples ordered by their number of front
    layers (most first, ``order``: the batch's indices in that order; None: as given): per chunk
    of layers ``(B, K)`` layer indices (-1: none) and its kernel radius; per front chunk, per
    position, how many samples (the first ones) still have a layer there and whether one of them
    fills before it."""

    order: torch.Tensor | None
    back: list[tuple[torch.Tensor, int]]
    front: list[tuple[torch.Tensor, int, list[int], list[bool]]]
    kernels: torch.Tensor  # (B, L, 2R + 1) or (B, L, 2R + 1, 2R + 1): centred, zero-padded
    radius: int  # R


def _kernel(sigma: float, aperture: str, radius_px: int | None) -> np.ndarray:
    if sigma <= 1e-6:
        return np.ones((1, 1) if aperture == "disc" else 1)
    if aperture == "disc":
        return disc_kernel2d(sigma)
    return significant_kernel1d(sigma, radius_px)


def plan(layer_sigma: torch.Tensor, num_layers: torch.Tensor, start: torch.Tensor | None,
         shape: tuple[int, ...], aperture: str, radius_px: int | None) -> BatchPlan:
    """The chunks of :func:`composite_batched` from the layer table (one host read).

    ``layer_sigma (B, L)`` px, ``num_layers (B,)``, ``start (B,)``: the fill runs before every
    layer after ``start`` (None: no fill). ``shape``: the batch's ``(B, C, H, W)``."""
    b, big_l = layer_sigma.shape
    dev = layer_sigma.device
    starts = start if start is not None else num_layers
    table = read_to_host(torch.cat([layer_sigma.double(), num_layers[:, None].double(),
                                    starts[:, None].double()], dim=1))
    sigma, n = table[:, :big_l], table[:, big_l].astype(np.int64)
    back = n if start is None else np.clip(table[:, big_l + 1].astype(np.int64) + 1, 0, n)
    # front layers go one at a time: with the samples that have most of them first, the work of
    # each position is done on the prefix of the batch that still has a layer there
    order = np.argsort(-(n - back), kind="stable")
    permuted = not np.array_equal(order, np.arange(b))
    sigma, n, back = sigma[order], n[order], back[order]
    kernels = {s: _kernel(s, aperture, radius_px) for s in np.unique(sigma)}
    radius = np.vectorize(lambda s: kernels[s].shape[0] // 2)(sigma)  # (B, L)
    big_r = int(radius.max())
    width = 2 * big_r + 1
    taps = np.zeros((b, big_l) + ((width,) if aperture != "disc" else (width, width)))
    for s, k in kernels.items():
        taps[sigma == s] = np.pad(k, big_r - k.shape[0] // 2)  # centred
    h, w = shape[-2:]
    per_layer = b * 5 * (h + 2 * big_r) * (w + 2 * big_r)
    k_max = max(1, CHUNK_ELEMENTS // per_layer)
    layer_index = np.arange(big_l)[None]

    def chunks(first, count):
        """Chunks of up to k_max layers ``first + j`` for ``j < count`` per sample."""
        out = []
        for c0 in range(0, int(count.max(initial=0)), k_max):
            j = np.arange(c0, c0 + k_max)[None]
            idx = np.where(j < count[:, None], first[:, None] + j, -1)
            idx = idx[:, : max(1, int((j < count[:, None]).sum(1).max()))]
            r = int(np.where(idx >= 0, radius[np.arange(b)[:, None], idx.clip(0)], 0).max())
            out.append((idx, r))
        return out

    back_chunks = chunks(np.zeros(b, np.int64), back)
    front_chunks = chunks(back, n - back)
    fills = (layer_index > (back - 1)[:, None]) & (layer_index < n[:, None]) & (radius > 0)
    # every chunk's layer indices in one copy to the device (a copy per chunk would wait for
    # the device once per chunk)
    every = back_chunks + front_chunks
    stacked = np.full((len(every), b, max((i.shape[1] for i, _ in every), default=1)), -1)
    for c, (idx, _) in enumerate(every):
        stacked[c, :, :idx.shape[1]] = idx
    on_device = torch.as_tensor(stacked, device=dev)
    ids = [on_device[c, :, :idx.shape[1]] for c, (idx, _) in enumerate(every)]
    back_plan = [(ids[c], r) for c, (_, r) in enumerate(back_chunks)]
    front_plan = []
    for c, (idx, r) in enumerate(front_chunks, start=len(back_chunks)):
        active = [int((col >= 0).sum()) for col in idx.T]  # a prefix: the samples are sorted
        fill_at = [bool(fills[np.arange(b), col.clip(0)][col >= 0].any()) for col in idx.T]
        front_plan.append((ids[c], r, active, fill_at))
    return BatchPlan(torch.as_tensor(order, device=dev) if permuted else None, back_plan,
                     front_plan, torch.as_tensor(taps, dtype=torch.float32, device=dev), big_r)


def composite_batched(image: torch.Tensor, layer_id: torch.Tensor, layer_sigma: torch.Tensor,
                      num_layers: torch.Tensor, start: torch.Tensor | None, aperture: str,
                      radius_px: int | None, border: str) -> torch.Tensor:
    """Composite ``image (B,3,H,W)`` far to near by ``layer_id (B,1,H,W)`` (0 = farthest), each
    layer blurred with its ``layer_sigma (B, L)`` (px); the fill before every layer after
    ``start (B,)`` (None: no fill), by :data:`~.fill.RELAX_SWEEPS` relaxation sweeps (compiled
    on the devices of :data:`COMPILE_FILL_ON`).
    Returns ``(B,3,H,W)``."""
    b, _, h, w = image.shape
    p = plan(layer_sigma, num_layers, start, image.shape, aperture, radius_px)
    if p.order is not None:
        image, layer_id = image.index_select(0, p.order), layer_id.index_select(0, p.order)
    big_r = p.radius
    img = pad_border(image, big_r, border)
    lid = pad_border(layer_id, big_r, border)
    # what a layer's pixels contribute: (I, 1), and 1 to the union channel
    source = torch.cat([img, torch.ones_like(img[:, :2])], dim=1)[:, None]  # (B, 1, 5, Hp, Wp)

    def blur_chunk(idx: torch.Tensor, r: int, with_union: bool) -> torch.Tensor:
        """``(N, K, C, H, W)``: the chunk's layers ``(m I, m)`` (and ``U``) blurred, for the
        first ``N`` samples (``idx (N, K)``)."""
        n, k = idx.shape
        crop = (slice(0, n), slice(None), slice(big_r - r, big_r + r + h),
                slice(big_r - r, big_r + r + w))
        ids = lid[crop][:, None]  # (N, 1, 1, Hp, Wp)
        layer = idx[:, :, None, None, None]
        own = ids == layer  # (N, K, 1, Hp, Wp)
        take = own  # (m I, m): the source where the layer is
        if with_union:  # and U: 1 where a farther layer is
            take = torch.cat([own.expand(-1, -1, 4, -1, -1), ids < layer], dim=2)
        src = source[:n, :, :5 if with_union else 4, crop[2], crop[3]]
        x = torch.where(take, src, 0.0).flatten(0, 1)
        samples = torch.arange(n, device=image.device)[:, None].expand(n, k)
        taps = p.kernels[samples, idx.clamp(min=0)].flatten(0, 1)
        taps = taps[..., big_r - r:big_r + r + 1]
        if taps.dim() == 3:
            taps = taps[:, big_r - r:big_r + r + 1]
        return blur_stack(x, taps).view(n, k, -1, h, w)

    acc = torch.zeros_like(image)
    alpha = torch.zeros_like(image[:, :1])
    for idx, r in p.back:
        acc, alpha = composite_run(acc, alpha, blur_chunk(idx, r, False))
    solution = torch.zeros(b, 4, h, w, dtype=image.dtype, device=image.device)  # warm start
    halves = checkerboard(h, w, image.device)
    compile_fill = image.device.type in COMPILE_FILL_ON
    for idx, r, active, fill_at in p.front:
        stack = blur_chunk(idx[:active[0]], r, any(fill_at))
        rgba = layer_rgba(stack[:, :, :4])
        for j, n in enumerate(active):
            # the first n samples still have a layer here: work on them alone
            a, al = unpremultiply(acc[:n], alpha[:n])
            if fill_at[j]:
                # (a layer without blur, or none, has reach = U: an empty region)
                union = layer_id[:n] < idx[:n, j].view(n, 1, 1, 1)
                region = fill_region(union, stack[:n, j, 4:])
                u = union.to(image.dtype)
                filled = relax_fill(torch.cat([a * u, u], dim=1), region, solution[:n],
                                    RELAX_SWEEPS, halves=halves, compiled=compile_fill)
                a = torch.where(region, filled[:, :3], a)
                al = torch.where(region, filled[:, 3:], al)
                if n == b:
                    solution = filled
                else:
                    solution[:n] = filled
            a, al = over(a, al, rgba[:n, j])
            if n == b:
                acc, alpha = a, al
            else:
                acc[:n], alpha[:n] = a, al
    out = resolve(acc, alpha, image)
    if p.order is None:
        return out
    return torch.empty_like(out).index_copy_(0, p.order, out)  # back in the batch's order
