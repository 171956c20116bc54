"""B's forward pass for inference, rewritten for speed: the same function, fewer passes over memory.

:class:`FastBlurEstimator` takes an eval-mode :class:`~dmenet.modules.blur_estimator.BlurEstimator`
(BatchNorm folded or not, auxiliary heads present or not: they are not used) and computes its
main output ``y (N, 1, H, W)`` equal to ``model(image).y`` (within 1e-4, tested for zero and
replicate padding). What it does differently (each step's gain: ``bench/bench_inference.py
--ablation``, table in BENCHMARKS.md):

* **channels_last** (NHWC) activations: oneDNN's convolutions run faster on them, and no layout
  reorders happen between layers.
* **Fused convolutions** (CPU, float32): every conv runs as ``torch.ops.mkldnn._convolution_pointwise``
  with its activation (ReLU, LeakyReLU, sigmoid) fused, or the skip branch's addition fused, and
  with its weights reordered once into oneDNN's blocked layout (per input shape, cached).
  BatchNorm is folded into the conv. Elsewhere (GPU, other dtypes) plain ``conv2d`` in
  channels_last with in-place activations.
* **Padding without copies**: activations carry a 1-pixel halo (each map is ``(H + 2, W + 2)``).
  Before a 3x3 conv the halo is filled in place for that conv's ``padding_mode`` (zeros, or edge
  replication as the reference does), the conv runs over the haloed map, and its own halo is
  refilled later. Max pooling with ``padding=1`` maps a haloed map onto a haloed map. Only the
  halo (4 thin strips) is written, never a padded copy of the map.
* **Upsampling and concatenation without copies**: a decoder stage's first conv sees
  ``cat(up2(x), skip)``. Its weight is split in two: the skip half runs as a normal conv, the
  upsampled half is computed at *low* resolution as one 2x2 conv with four output phases
  (nearest upsampling followed by a 3x3 conv equals, per output phase, a 2x2 conv on the
  low-resolution map: 16 instead of 36 multiply-adds per input channel and 4 output pixels),
  interleaved into the full-resolution map that the skip conv adds to (fused). Neither the
  upsampled map nor the concatenation is ever built.
* **Residual adds in place**; LeakyReLU in place where it cannot be fused.

The network's structure is read from the model (encoder ``Sequential``, ``decoder3..0``,
``refine``, ``head``, skip indices, ``normalize``, ``size_multiple``), and each conv's padding
mode from the conv itself. A model with parts it does not know raises :class:`FastPathUnsupported`;
:func:`fast_blur_estimator` then returns ``None`` (callers fall back to the reference path).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dmenet.modules._parts import crop_to_scale, pad_to_multiple

__all__ = [
    "FastBlurEstimator", "FastPathUnsupported", "fast_blur_estimator", "fast_predictor", "verify_fast",
]

_PAD_MODES = ("zeros", "replicate")


class FastPathUnsupported(ValueError):
    """The model has a part the fast path does not know (use the reference path)."""


@dataclass
class _ConvSpec:
    """One conv with its BatchNorm folded and the activation that follows it."""

    weight: torch.Tensor  # (out, in, k, k)
    bias: torch.Tensor  # (out,)
    pad_mode: str  # "zeros" | "replicate" (irrelevant for 1x1)
    act: str = "none"  # "none" | "relu" | "leaky_relu" | "sigmoid"
    slope: float = 0.0


def _flatten(modules) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            out += _flatten(m)
        else:
            out.append(m)
    return out


def _parse_convs(modules, where: str) -> list[_ConvSpec]:
    """Conv (+ BatchNorm) (+ activation) sequences -> specs; anything else is unsupported."""
    specs: list[_ConvSpec] = []
    pending_pad: str | None = None
    for m in _flatten(modules):
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            continue
        if isinstance(m, (nn.ReplicationPad2d, nn.ZeroPad2d)):
            if tuple(m.padding) != (1, 1, 1, 1):
                raise FastPathUnsupported(f"{where}: padding {m.padding} (only 1 px)")
            pending_pad = "replicate" if isinstance(m, nn.ReplicationPad2d) else "zeros"
            continue
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size
            pad = tuple(p for p in m.padding) if not isinstance(m.padding, str) else None
            if (k[0] != k[1] or k[0] not in (1, 3) or m.stride != (1, 1) or m.dilation != (1, 1)
                    or m.groups != 1 or pad is None):
                raise FastPathUnsupported(f"{where}: conv {m} is not a plain 1x1 or 3x3 conv")
            if pending_pad is not None:
                if k[0] != 3 or pad != (0, 0):
                    raise FastPathUnsupported(f"{where}: explicit padding before {m}")
                mode = pending_pad
            elif k[0] == 3:
                if pad != (1, 1) or m.padding_mode not in _PAD_MODES:
                    raise FastPathUnsupported(f"{where}: conv {m} padding {pad} {m.padding_mode!r}")
                mode = m.padding_mode
            else:
                if pad != (0, 0):
                    raise FastPathUnsupported(f"{where}: padded 1x1 conv {m}")
                mode = "zeros"
            pending_pad = None
            bias = m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_channels)
            specs.append(_ConvSpec(m.weight.detach().clone(), bias.clone(), mode))
            continue
        if not specs or pending_pad is not None:
            raise FastPathUnsupported(f"{where}: {type(m).__name__} not after a conv")
        last = specs[-1]
        if isinstance(m, nn.BatchNorm2d):
            if last.act != "none" or m.training or not m.track_running_stats:
                raise FastPathUnsupported(f"{where}: BatchNorm that cannot be folded")
            scale = (m.running_var + m.eps).rsqrt()
            if m.weight is not None:
                scale = scale * m.weight.detach()
            shift = -m.running_mean * scale
            if m.bias is not None:
                shift = shift + m.bias.detach()
            last.weight = last.weight * scale.view(-1, 1, 1, 1)
            last.bias = last.bias * scale + shift
        elif last.act != "none":
            raise FastPathUnsupported(f"{where}: two activations in a row")
        elif isinstance(m, nn.LeakyReLU):
            last.act, last.slope = "leaky_relu", float(m.negative_slope)
        elif isinstance(m, nn.ReLU):
            last.act = "relu"
        elif isinstance(m, nn.Sigmoid):
            last.act = "sigmoid"
        else:
            raise FastPathUnsupported(f"{where}: unsupported layer {type(m).__name__}")
    if pending_pad is not None:
        raise FastPathUnsupported(f"{where}: padding without a conv")
    return specs


def _phase_weight(w_up: torch.Tensor) -> torch.Tensor:
    """3x3 weight ``(O, C, 3, 3)`` applied after nearest x2 upsampling -> one 2x2 conv
    ``(4 O, C, 2, 2)`` on the low-resolution map, output phases ``(p, q)`` in blocks of ``O``.

    Output row ``2m + p`` of the upsampled conv reads upsampled rows ``2m + p - 1 .. 2m + p + 1``,
    i.e. low-resolution rows ``m - 1, m`` (p = 0: taps 0 | 1 + 2) or ``m, m + 1`` (p = 1: taps
    0 + 1 | 2); the same along columns.
    """
    rows = (torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
            torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    r = [m.to(w_up) for m in rows]
    blocks = [torch.einsum("ua,ocab,vb->ocuv", r[p], w_up, r[q]) for p in (0, 1) for q in (0, 1)]
    return torch.cat(blocks, 0)


_SERIAL_CHUNK = 16384  # elements; below ATen's grain size (32768) an op runs on one thread


def _fill_halo(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Fill the 1-px border of a haloed map in place: zeros or edge replication of the interior.

    Works on the ``(N, H, W, C)`` view (on a channels_last map, writing a column through the
    ``(N, C, H)`` view is about 1000x slower, a TensorIterator ordering quirk) and in chunks
    small enough to run on one thread (starting a parallel region for a few kB costs
    milliseconds when the other cores are busy).
    """
    v = x.permute(0, 2, 3, 1)
    lines = ((v[:, :, 0], v[:, :, 1]), (v[:, :, -1], v[:, :, -2]),
             (v[:, 0], v[:, 1]), (v[:, -1], v[:, -2]))
    for dst, src in lines:  # columns first, then rows (the corners replicate the corner)
        step = max(1, _SERIAL_CHUNK // max(1, dst.shape[0] * dst.shape[-1]))
        for i in range(0, dst.shape[1], step):
            if mode == "zeros":
                dst[:, i:i + step].zero_()
            else:
                dst[:, i:i + step].copy_(src[:, i:i + step])
    return x


class _Conv(nn.Module):
    """A conv with folded BatchNorm and its activation, run on haloed channels_last maps.

    3x3 convs pad by 1 on the haloed map (its interior is the wanted output, its border is
    refilled by the next conv); 2x2 (the phase convs) and 1x1 convs do not pad.
    """

    def __init__(self, spec: _ConvSpec) -> None:
        super().__init__()
        self.register_buffer("weight", spec.weight.contiguous())
        self.register_buffer("bias", spec.bias.contiguous())
        self.k = int(spec.weight.shape[-1])
        self.pad = [1, 1] if self.k == 3 else [0, 0]
        self.pad_mode = spec.pad_mode
        self.act = spec.act
        self.slope = spec.slope
        self._packed: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def _apply(self, fn, recurse=True):  # .to() / .cuda(): packed weights are stale
        self._packed = OrderedDict()
        return super()._apply(fn, recurse)

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        w = self._packed.get(key)
        if w is None:
            w = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.pad, [1, 1], [1, 1], 1, list(x.shape))
            self._packed[key] = w
            while len(self._packed) > 1:  # one tile shape: repacking costs ~1% of a tile
                self._packed.popitem(last=False)
        else:
            self._packed.move_to_end(key)
        return w

    def forward(self, x: torch.Tensor, backend: _Backend, other: torch.Tensor | None = None) -> torch.Tensor:
        """``act(conv(x) + other)`` on a haloed map (the halo is filled here for 3x3 / 2x2)."""
        if self.k > 1:
            _fill_halo(x, self.pad_mode)
        if backend.mkldnn:
            w = self._packed_weight(x) if backend.packed else self.weight
            if other is None:
                scalars = [self.slope] if self.act == "leaky_relu" else []
                return torch.ops.mkldnn._convolution_pointwise(
                    x, w, self.bias, self.pad, [1, 1], [1, 1], 1, self.act, scalars, "")
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, w, self.bias, self.pad, [1, 1], [1, 1], 1, "add", None, None, [], "")
        else:
            y = F.conv2d(x, self.weight, self.bias, padding=self.pad)
            if other is not None:
                y.add_(other)
        return _activate_(y, self.act, self.slope)


def _activate_(y: torch.Tensor, act: str, slope: float) -> torch.Tensor:
    if act == "leaky_relu":
        return F.leaky_relu_(y, slope)
    if act == "relu":
        return y.relu_()
    if act == "sigmoid":
        return y.sigmoid_()
    return y


class _UpConcatConv(nn.Module):
    """``act(conv3x3(cat(up2(x), skip)))`` without the upsampling or the concatenation."""

    def __init__(self, spec: _ConvSpec, up_channels: int, phase: bool = True) -> None:
        super().__init__()
        if spec.weight.shape[-1] != 3:
            raise FastPathUnsupported("a decoder stage must start with a 3x3 conv")
        w_up, w_skip = spec.weight[:, :up_channels], spec.weight[:, up_channels:]
        self.skip = _Conv(_ConvSpec(w_skip, spec.bias, spec.pad_mode, spec.act, spec.slope))
        self.phase = phase
        self.out_channels = int(spec.weight.shape[0])
        if phase:
            # a 2x2 conv on the haloed low-resolution map (its halo supplies the border)
            self.up = _Conv(_ConvSpec(_phase_weight(w_up), spec.bias.new_zeros(4 * self.out_channels),
                                      spec.pad_mode))
        else:
            self.up = _Conv(_ConvSpec(w_up.clone(), spec.bias.new_zeros(self.out_channels), spec.pad_mode))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, backend: _Backend) -> torch.Tensor:
        n, _, hp, wp = skip.shape
        h, w = hp - 2, wp - 2
        if self.phase:
            o = self.up(x, backend)
            # o: (N, 4 O, h/2 + 1, w/2 + 1); phase (p, q) at rows p.., cols q..
            c = self.out_channels
            up = torch.empty((n, c, hp, wp), dtype=o.dtype, device=o.device,
                             memory_format=torch.channels_last)
            _fill_halo(up, "zeros")  # never read as data; keeps uninitialised memory out
            inner = up.permute(0, 2, 3, 1)[:, 1:-1, 1:-1]  # (N, h, w, C) views: see _fill_halo
            phases = o.permute(0, 2, 3, 1)
            hh, ww = h // 2, w // 2
            for i, (p, q) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                inner[:, p::2, q::2].copy_(phases[:, p:p + hh, q:q + ww, i * c:(i + 1) * c])
            del o
        else:
            inner = F.interpolate(x[:, :, 1:-1, 1:-1], scale_factor=2.0, mode="nearest")
            u = F.pad(inner, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
            up = self.up(u, backend)
        return self.skip(skip, backend, other=up)


@dataclass
class _Backend:
    mkldnn: bool
    packed: bool


class FastBlurEstimator(nn.Module):
    """``image (N, 3, H, W)`` in ``[0, 1]`` -> ``y (N, 1, H, W)``, equal to ``model(image).y``.

    Args:
        model: an eval-mode BlurEstimator (or a model with the same parts); its weights are
            copied (BatchNorm folded), the model itself is not changed.
        fused: on the CPU in float32, run the convs as oneDNN fused ops (default); ``False``:
            plain ``conv2d`` (what runs on a GPU).
        packed: reorder the weights once into oneDNN's layout (with ``fused``).
        phase_upsample: the decoder's upsample + concat as low-resolution phase convs
            (``False``: upsample, then the split conv; for the benchmark's ablation).
    """

    def __init__(self, model: nn.Module, fused: bool = True, packed: bool = True,
                 phase_upsample: bool = True) -> None:
        super().__init__()
        if model.training:
            raise FastPathUnsupported("the model must be in eval mode")
        for name in ("normalize", "encoder", "decoder3", "decoder2", "decoder1", "decoder0",
                     "refine", "head", "_skip_index"):
            if not hasattr(model, name):
                raise FastPathUnsupported(f"the model has no {name!r}: not B's structure")
        self.normalize = copy.deepcopy(model.normalize)  # not shared: .to(dtype) must not touch B
        self.size_multiple = int(getattr(model, "size_multiple", 16))
        self.fused = fused
        self.packed = packed
        # encoder: convs (with ReLU) and 2x2 max pools; skips after the listed layers
        self.encoder_plan: list[tuple[str, int]] = []  # ("conv", i) | ("pool", 0) | ("skip", 0)
        convs: list[_Conv] = []
        skip_index = set(int(i) for i in model._skip_index)
        group: list[nn.Module] = []

        def flush() -> None:
            if group:
                (spec,) = _parse_convs(group, "encoder")
                convs.append(_Conv(spec))
                self.encoder_plan.append(("conv", len(convs) - 1))
                group.clear()

        n_skips = 0
        for index, layer in enumerate(model.encoder):
            if isinstance(layer, nn.MaxPool2d):
                flush()
                if not (_pair(layer.kernel_size) == (2, 2) and _pair(layer.stride) == (2, 2)
                        and _pair(layer.padding) == (0, 0) and not layer.ceil_mode):
                    raise FastPathUnsupported(f"encoder: pooling {layer} is not 2x2 / 2")
                self.encoder_plan.append(("pool", 0))
            elif isinstance(layer, nn.Conv2d):
                flush()
                group.append(layer)
            else:
                group.append(layer)
            if index in skip_index:
                flush()
                self.encoder_plan.append(("skip", 0))
                n_skips += 1
        flush()
        if n_skips != 5 or self.encoder_plan[-1][0] != "skip":
            raise FastPathUnsupported("encoder: expected four skips and the bottleneck at its end")
        self.encoder_convs = nn.ModuleList(convs)
        # decoder stages: first conv on cat(up(x), skip), then plain convs
        self.decoder_up = nn.ModuleList()
        self.decoder_rest = nn.ModuleList()
        up_channels = _out_channels(convs[-1])
        for name in ("decoder3", "decoder2", "decoder1", "decoder0"):
            specs = _parse_convs(getattr(model, name), name)
            self.decoder_up.append(_UpConcatConv(specs[0], up_channels, phase_upsample))
            self.decoder_rest.append(nn.ModuleList(_Conv(s) for s in specs[1:]))
            up_channels = int(specs[-1].weight.shape[0])
        self.refine = nn.ModuleList()
        for i, block in enumerate(model.refine):
            if not (hasattr(block, "body") and hasattr(block, "shortcut")):
                raise FastPathUnsupported(f"refine.{i}: not a residual block (body + shortcut)")
            body = _parse_convs(block.body, f"refine.{i}.body")
            shortcut = _parse_convs([block.shortcut], f"refine.{i}.shortcut")
            if len(shortcut) != 1:
                raise FastPathUnsupported(f"refine.{i}: shortcut is not one conv")
            self.refine.append(nn.ModuleList([_Conv(s) for s in shortcut + body]))
        self.head = nn.ModuleList(_Conv(s) for s in _parse_convs(model.head, "head"))

    def _backend(self, x: torch.Tensor) -> _Backend:
        mkldnn = (self.fused and x.device.type == "cpu" and x.dtype == torch.float32
                  and torch.backends.mkldnn.is_available())
        return _Backend(mkldnn=mkldnn, packed=mkldnn and self.packed)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"B expects an image of shape (N, 3, H, W), got {tuple(image.shape)}")
        x, size_hw = pad_to_multiple(image, self.size_multiple)
        x = F.pad(self.normalize(x), (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
        backend = self._backend(x)
        skips: list[torch.Tensor] = []
        for kind, i in self.encoder_plan:
            if kind == "conv":
                x = self.encoder_convs[i](x, backend)
            elif kind == "pool":
                x = F.max_pool2d(x, 2, 2, padding=1)
            else:
                skips.append(x)
        x = skips.pop()  # the bottleneck
        for up, rest in zip(self.decoder_up, self.decoder_rest):
            x = up(x, skips.pop(), backend)
            for conv in rest:
                x = conv(x, backend)
        for shortcut, conv1, conv2 in self.refine:
            h = conv1(x, backend)
            s = shortcut(x, backend)
            x = conv2(h, backend)  # three full-resolution maps alive at most
            del h
            x.add_(s)
            del s
        for conv in self.head:
            x = conv(x, backend)
        return crop_to_scale(x[:, :, 1:-1, 1:-1], size_hw, 1).contiguous()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_channels(conv: _Conv) -> int:
    return int(conv.weight.shape[0])


def verify_fast(model: nn.Module, fast: nn.Module, size_hw: tuple[int, int] = (40, 72),
                atol: float = 1e-4) -> float:
    """Max |fast - reference| of ``y`` on a smooth random photo; raises if above ``atol``."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    image = F.avg_pool2d(torch.rand(1, 3, size_hw[0] + 4, size_hw[1] + 4, generator=gen), 5, 1)
    image = image.to(device=device, dtype=dtype)
    with torch.no_grad():
        ref = model(image)
        ref = ref.y if hasattr(ref, "y") else ref
        got = fast(image)
    diff = float((got.float() - ref.float()).abs().max())
    if not math.isfinite(diff) or diff > atol:
        raise FastPathUnsupported(f"fast path differs from the reference by {diff:.2e}")
    return diff


def fast_blur_estimator(model: nn.Module, check: bool = True, **kwargs) -> FastBlurEstimator | None:
    """:class:`FastBlurEstimator` of ``model``, checked against it on a small photo (``check``),
    or ``None`` when the fast path does not support the model or disagrees with it."""
    try:
        fast = FastBlurEstimator(model, **kwargs)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        fast = fast.to(device=device, dtype=dtype)
        if check:
            verify_fast(model, fast, atol=1e-4 if dtype == torch.float32 else 1e-2)
        return fast
    except FastPathUnsupported:
        return None


def fast_predictor(predictor: nn.Module) -> nn.Module:
    """A :class:`~dmenet.checkpoint.DefocusPredictor` running B on the fast path.

    Same label space and checkpoint record; ``fast_path`` says whether the fast path is used
    (``False``: the model is not supported or disagreed on the check, the reference runs).
    """
    from dmenet.checkpoint import DefocusPredictor

    fast = fast_blur_estimator(predictor.blur_estimator)
    if fast is None:
        predictor.fast_path = False  # type: ignore[attr-defined]
        return predictor
    out = DefocusPredictor(fast, predictor.label_space, predictor.sigma_max_px)
    if hasattr(predictor, "checkpoint"):
        out.checkpoint = predictor.checkpoint  # type: ignore[attr-defined]
    out.fast_path = True  # type: ignore[attr-defined]
    out.requires_grad_(False)
    return out.eval()
