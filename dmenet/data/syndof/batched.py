"""The batched renderer: a whole batch of samples, each with its own layers and camera, as
tensor operations over the batch and the layer axes, on the batch's device.

The layers far to near fall into two phases:

* the back (the in-focus layer and everything behind it, where the generator never fills):
  chunks of layers, every chunk blurred in one Kornia call (:func:`~.kernels.blur_stack`, one
  kernel per sample and layer) and composited at once (:func:`back_step`, compiled on CUDA:
  :func:`~.composite.composite_run`, a reverse cumulative product over the layer axis);
* the front (every layer nearer than the in-focus one): chunks blurred at once the same way
  (with the union ``U`` of the farther layers as a fifth channel, whose blur gives the fill
  region), then layer after layer (:func:`front_step`, compiled on CUDA): un-premultiply, the
  fill by :func:`~.fill.relax_fill` (fixed sweeps from a local smoothing of the known values)
  and compositing. A ramp in front of the focus needs a fill before every layer: one
  fill for a group of layers misses the generator by up to 6 levels there (measured,
  BENCHMARKS.md section 1).

All samples step through the same chunks and front positions (a sample with fewer layers gets
empty ones), so the number of host round trips does not depend on the batch or the layers:
the layer count is read once (:func:`~.layers.layer_decomposition`) and the layer table once
(:func:`plan`); every other decision is a tensor operation.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .composite import composite_run, layer_rgba, over, resolve, unpremultiply
from .fill import RELAX_SWEEPS, checkerboard, fill_region, relax_fill, start_kernel
from .kernels import blur_stack, disc_kernel2d, pad_border, significant_kernel1d

__all__ = ["CHUNK_ELEMENTS", "COMPILE_ON", "FILL_DTYPE", "BatchPlan", "composite_batched",
           "back_step", "compiled_kernels", "front_step", "plan", "read_to_host"]

CHUNK_ELEMENTS = 1 << 27
"""The layers blurred in one call hold at most about this many values (512 MB in float32)."""

FILL_DTYPE = torch.float16
"""What the fill's iterate is stored in. The sweeps move 33-46% of the renderer's bytes at
batch 16; half precision halves theirs (compiled, their arithmetic runs in float32; the fill's
start and compositing stay in the image's precision). The colour is filled relative to the
photo's darkest colour (per channel), so that a constant photo fills with colour exactly 0 and
stays constant whatever the rounding of alpha. Measured on the training windows of
BENCHMARKS.md section 1 at batch 16: 24-30% fewer bytes per crop than float32 storage, within
0.76 levels of its images."""

COMPILE_ON = ("cuda",)
"""Device types on which the batched renderer's steps run compiled by ``torch.compile``: each
front layer's (:func:`front_step`: un-premultiply, the fill, compositing; one kernel per
half-sweep of the fill and a few around them, each reading and writing the frame once, instead
of seven ops per half-sweep and about twenty around them uncompiled) and each chunk's behind
the focus (:func:`back_step`: a few kernels instead of about twenty). Compiling takes seconds
once per process, which the CPU, with its own tiled renderer, does not repay."""

_COMPILE_FAILED: list[str] = []


def compiled_kernels(step: Callable, fill: bool = False, sweeps: int = RELAX_SWEEPS) -> int:
    """The kernels of one compiled :func:`front_step` or :func:`back_step`, as inductor
    schedules them on the CPU (loop nests and extern calls, counted in its generated code). The
    front step with a fill: one per half-sweep and 12 around them (un-premultiply and the known
    values, the half-sweeps' masks, the fill's start: its frame extended, two convolutions and
    the quotient, the guard, compositing); without, 2. The back step: 7 (the cumulative product
    one of them). ``bench/gpu.sh`` counts the CUDA kernels."""
    if step is back_step:
        return 7
    return 2 * sweeps + 12 if fill else 2


def read_to_host(x: torch.Tensor) -> np.ndarray:
    """A device tensor's values on the host: the renderer's one explicit host round trip per
    batch (a copy to the CPU, visible to dispatch counters as ``aten._to_copy`` to ``cpu``)."""
    return x.to("cpu", copy=True).numpy()


@dataclass
class BatchPlan:
    """What the host decides once per batch. Each phase takes the samples in its own order,
    most layers of that phase first (``back_rows``, ``front_rows``: the batch's indices in that
    order; None: as given), so that every chunk and every front position works on a prefix of
    the samples, those that still have a layer there. Per chunk of layers ``(N, K)`` layer
    indices of the phase's first ``N`` samples (-1: none) and its kernel radius; per front
    chunk, per position, how many samples (the first ones) still have a layer there and whether
    one of them fills before it. ``back_to_front``: the back order's rows in the front order
    (None: the same order)."""

    back_rows: torch.Tensor | None
    front_rows: torch.Tensor | None
    back_to_front: torch.Tensor | None
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
    kernels = {s: _kernel(s, aperture, radius_px) for s in np.unique(sigma)}
    radius = np.vectorize(lambda s: kernels[s].shape[0] // 2)(sigma)  # (B, L)
    big_r = int(radius.max())
    width = 2 * big_r + 1
    taps = np.zeros((b, big_l) + ((width,) if aperture != "disc" else (width, width)))
    for s, k in kernels.items():
        taps[sigma == s] = np.pad(k, big_r - k.shape[0] // 2)  # centred
    h, w = shape[-2:]
    k_max = max(1, CHUNK_ELEMENTS // (b * 5 * (h + 2 * big_r) * (w + 2 * big_r)))

    def chunks(rows, first, count):
        """Chunks of up to ``k_max`` layers ``first + j`` for ``j < count`` of the samples in
        the order ``rows``, each on the prefix of samples that still have one."""
        first, count = first[rows], count[rows]
        out = []
        for c0 in range(0, int(count.max(initial=0)), k_max):
            live = int((count > c0).sum())  # a prefix: the samples are sorted by count
            j = np.arange(c0, c0 + k_max)[None]
            has = j < count[:live, None]
            idx = np.where(has, first[:live, None] + j, -1)[:, :int(has.sum(1).max())]
            r = int(np.where(idx >= 0, radius[rows[:live, None], idx.clip(0)], 0).max())
            out.append((idx, r))
        return out

    # each phase's samples, most of its layers first (stable)
    back_rows = np.argsort(-back, kind="stable")
    front_rows = np.argsort(-(n - back), kind="stable")
    back_chunks = chunks(back_rows, np.zeros(b, np.int64), back)
    front_chunks = chunks(front_rows, back, n - back)
    layer_index = np.arange(big_l)[None]
    fills = (layer_index > (back - 1)[:, None]) & (layer_index < n[:, None]) & (radius > 0)
    fills = fills[front_rows]
    # every chunk's layer indices and the orders in one copy to the device (a copy each would
    # wait for the device once per chunk)
    every = back_chunks + front_chunks
    width_k = max((i.shape[1] for i, _ in every), default=1)
    stacked = np.full((len(every) + 1, b, max(width_k, 3)), -1)
    for c, (idx, _) in enumerate(every):
        stacked[c, :idx.shape[0], :idx.shape[1]] = idx
    identity = np.arange(b)
    position = np.empty(b, np.int64)
    position[back_rows] = identity  # where each sample is in the back order
    back_to_front = position[front_rows]
    stacked[-1, :, :3] = np.stack([back_rows, front_rows, back_to_front], axis=1)
    on_device = torch.as_tensor(stacked, device=dev)
    ids = [on_device[c, :idx.shape[0], :idx.shape[1]] for c, (idx, _) in enumerate(every)]
    back_plan = [(ids[c], r) for c, (_, r) in enumerate(back_chunks)]
    front_plan = []
    for c, (idx, r) in enumerate(front_chunks, start=len(back_chunks)):
        active = [int((col >= 0).sum()) for col in idx.T]  # a prefix: the samples are sorted
        fill_at = [bool(fills[np.arange(idx.shape[0]), col.clip(0)][col >= 0].any())
                   for col in idx.T]
        front_plan.append((ids[c], r, active, fill_at))
    orders = [None if np.array_equal(order, identity) else on_device[-1, :, col]
              for col, order in enumerate((back_rows, front_rows, back_to_front))]
    return BatchPlan(*orders, back_plan, front_plan,
                     torch.as_tensor(taps, dtype=torch.float32, device=dev), big_r)


def front_step(acc: torch.Tensor, alpha: torch.Tensor, stack: torch.Tensor, index: torch.Tensor,
               at: torch.Tensor, layer_id: torch.Tensor, darkest: torch.Tensor, red: torch.Tensor,
               black: torch.Tensor, kernel: torch.Tensor, fill: bool) -> None:
    """The front layer at position ``at`` (``(1,)`` long) of a chunk over the accumulation of
    the first ``n`` samples, in place: un-premultiply, the fill (when ``fill``), over.

    The accumulation ``acc (n, 3, H, W)``, ``alpha (n, 1, H, W)``. The chunk: ``stack (n, K,
    5, H, W)``, its layers blurred (``m I``, ``m`` and the union ``U`` of the farther layers),
    ``index (n, K)`` their layer ids. ``layer_id (n, 1, H, W)``; ``darkest (n, 3, 1, 1)``: the
    photo's darkest colour, above which the colour is filled; ``red``, ``black``:
    :func:`~.fill.checkerboard`; ``kernel``: :func:`~.fill.start_kernel`. The chunk comes whole
    and the layer's place in it as a value: compiled, every input is a prefix of a tensor, never
    a view whose offset and strides change with the layer (on which ``torch.compile`` would
    recompile)."""
    layer = stack.index_select(1, at)[:, 0]
    a, al = unpremultiply(acc, alpha)
    if fill:
        # (a layer without blur, or none, has reach = U: an empty region)
        union = layer_id < index.index_select(1, at).view(-1, 1, 1, 1)
        region = fill_region(union, layer[:, 4:])
        # ((a - darkest) U, U): a constant photo fills with colour 0, which no rounding of
        # alpha can move
        known = torch.cat([(a - darkest) * union, union.to(a.dtype)], 1)
        filled = relax_fill(known, region, RELAX_SWEEPS, halves=(red, black), kernel=kernel,
                            dtype=FILL_DTYPE).to(a.dtype)
        fill_alpha = filled[:, 3:]
        colour = torch.minimum(torch.addcmul(filled[:, :3], darkest, fill_alpha),
                               fill_alpha)  # within [0, alpha], as relax_fill's guard
        a = torch.where(region, colour, a)
        al = torch.where(region, fill_alpha, al)
    a, al = over(a, al, layer_rgba(layer[:, :4]))
    acc.copy_(a)
    alpha.copy_(al)


def back_step(acc: torch.Tensor, alpha: torch.Tensor, blurred: torch.Tensor) -> None:
    """A chunk of layers behind the in-focus one, ``blurred (n, K, 4, H, W)`` (``m I``, ``m``),
    over the accumulation of the first ``n`` samples ``acc (n, 3, H, W)``, ``alpha (n, 1, H,
    W)``, in place (:func:`~.composite.composite_run`)."""
    a, al = composite_run(acc, alpha, blurred)
    acc.copy_(a)
    alpha.copy_(al)


def _sources(**dims: tuple[int, ...]) -> str:
    """``torch.compiler.config.dynamic_sources`` for these dimensions of these arguments."""
    return ",".join(f"L['{name}']:{dim}" for name, axes in dims.items() for dim in axes)


_DYNAMIC = {
    front_step: _sources(acc=(0,), alpha=(0,), stack=(0, 1), index=(0, 1),
                         layer_id=(0,), darkest=(0,)),
    back_step: _sources(acc=(0,), alpha=(0,), blurred=(0, 1)),
}
"""The sizes that vary between the calls of each compiled step in a run, which
``torch.compile`` takes as dynamic: the samples ``n`` and the chunk's layers ``K``; every other
size is static (a frame of a new size compiles anew). Dynamo compiles a function at most 8
times, then runs it uncompiled: measured (inductor, on the CPU), :func:`front_step` compiled 4
graphs over eight batches of 1-9 training windows of the four sources of BENCHMARKS.md section
1 (with a fill and without, one sample and more), :func:`back_step` 2; with every size dynamic,
7 (with the warm-started fill of an earlier version)."""


@functools.cache
def _compiled(step: Callable) -> Callable:
    """``step`` compiled: one graph (a :func:`front_step` with a fill and one without) serves
    every prefix of samples and every chunk, but ``n = 1``, which has its own."""
    return torch.compile(step)


def _run(step: Callable, compiled: bool, *args) -> None:
    """``step(*args)`` (:func:`front_step`, :func:`back_step`), compiled when ``compiled``, with
    only the sizes of :data:`_DYNAMIC` dynamic (where compilation fails, a warning says why once
    and the steps run uncompiled)."""
    if compiled and not _COMPILE_FAILED:
        try:
            with torch.compiler.config.patch(dynamic_sources=_DYNAMIC[step]):
                return _compiled(step)(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # a missing compiler or backend: the same steps, uncompiled
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            reason = f"{type(error).__name__}: {first_line}"
            _COMPILE_FAILED.append(reason)
            warnings.warn(f"SYNDOF renderer: torch.compile failed ({reason}); its steps run "
                          "uncompiled", RuntimeWarning, stacklevel=2)
    return step(*args)


def composite_batched(image: torch.Tensor, layer_id: torch.Tensor, layer_sigma: torch.Tensor,
                      num_layers: torch.Tensor, start: torch.Tensor | None, aperture: str,
                      radius_px: int | None, border: str) -> torch.Tensor:
    """Composite ``image (B,3,H,W)`` far to near by ``layer_id (B,1,H,W)`` (0 = farthest), each
    layer blurred with its ``layer_sigma (B, L)`` (px); the fill before every layer after
    ``start (B,)`` (None: no fill), by :data:`~.fill.RELAX_SWEEPS` relaxation sweeps
    (:func:`back_step` and :func:`front_step` compiled on the devices of :data:`COMPILE_ON`).
    Returns ``(B,3,H,W)``."""
    b, _, h, w = image.shape
    p = plan(layer_sigma, num_layers, start, image.shape, aperture, radius_px)
    big_r = p.radius
    img = pad_border(image, big_r, border)
    lid_padded = pad_border(layer_id, big_r, border)
    # what a layer's pixels contribute: (I, 1), and 1 to the union channel
    source_padded = torch.cat([img, torch.ones_like(img[:, :2])], dim=1)[:, None]

    def in_order(rows: torch.Tensor | None, *tensors: torch.Tensor):
        return tensors if rows is None else tuple(t.index_select(0, rows) for t in tensors)

    def blur_chunk(idx: torch.Tensor, r: int, with_union: bool, rows: torch.Tensor | None,
                   lid: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``(N, K, C, H, W)``: the chunk's layers ``(m I, m)`` (and ``U``) blurred, for the
        phase's first ``N`` samples (``idx (N, K)``; ``rows``: the phase's order, ``lid`` and
        ``source`` in it)."""
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
        samples = (torch.arange(n, device=image.device) if rows is None else rows[:n])[:, None]
        taps = p.kernels[samples.expand(n, k), idx.clamp(min=0)].flatten(0, 1)
        taps = taps[..., big_r - r:big_r + r + 1]
        if taps.dim() == 3:
            taps = taps[:, big_r - r:big_r + r + 1]
        return blur_stack(x, taps).view(n, k, -1, h, w)

    # the back, in its order: each chunk on the samples that still have a layer there
    rows = p.back_rows
    phase = (rows, *in_order(rows, lid_padded, source_padded))
    acc = torch.zeros_like(image)
    # (contiguous: zeros_like of a one-sample batch's channel view keeps its stride, 3 H W,
    # and the compiled steps would compile again for it)
    alpha = image.new_zeros(b, 1, h, w)
    compiled = image.device.type in COMPILE_ON
    for idx, r in p.back:
        n = idx.shape[0]
        _run(back_step, compiled, acc[:n], alpha[:n], blur_chunk(idx, r, False, *phase))
    # the front, in its order
    acc, alpha = in_order(p.back_to_front, acc, alpha)
    rows = p.front_rows
    lid, source, image, layer_id = in_order(rows, lid_padded, source_padded, image, layer_id)
    phase = (rows, lid, source)
    darkest = image.amin((2, 3), keepdim=True)  # (B, 3, 1, 1): the colour is filled above it
    halves = checkerboard(h, w, image.device)
    kernel = start_kernel(image.device)
    for idx, r, active, fill_at in p.front:
        stack = blur_chunk(idx, r, True, *phase)  # idx: the samples active first
        idx = idx.clone(memory_format=torch.contiguous_format)  # not a view of the plan's
        for j, n in enumerate(active):
            # the first n samples still have a layer here: work on them alone
            at = torch.full((1,), j, device=image.device)
            _run(front_step, compiled, acc[:n], alpha[:n], stack[:n], idx[:n], at,
                 layer_id[:n], darkest[:n], *halves, kernel, fill_at[j])
    out = resolve(acc, alpha, image)
    if rows is None:
        return out
    return torch.empty_like(out).index_copy_(0, rows, out)  # back in the batch's order
