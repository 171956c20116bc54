"""B's forward pass for inference, rewritten for speed: the same function, fewer passes over memory.

:class:`FastBlurEstimator` takes B (:class:`~dmenet.modules.blur_estimator.BlurEstimator`) as
:func:`~dmenet.checkpoint.prepare_for_inference` leaves it (eval mode, BatchNorm folded
into the convs; auxiliary heads dropped or not: they are not used) and computes its main output
``y (N, 1, H, W)`` equal to ``model(image).y`` (within 1e-4, tested for zero and replicate
padding). What it does differently (each step's gain: ``bench/bench_inference.py --ablation``,
table in BENCHMARKS.md):

* **channels_last** (NHWC) activations: oneDNN's convolutions run faster on them, and no layout
  reorders happen between layers.
* **Fused convolutions** (CPU, float32): every conv runs as oneDNN's fused convolution
  (``torch.ops.mkldnn._convolution_pointwise``, the op ``torch.compile`` emits for frozen CPU
  convs) with its activation (ReLU, LeakyReLU, sigmoid) or the skip branch's addition fused, and
  with its weights reordered once into oneDNN's blocked layout. These ops are PyTorch internals,
  not public API: :func:`onednn_fused_conv_problem` checks them on a small conv against
  ``conv2d`` when the fast path is built; if they are missing or disagree, one warning line is
  logged and the convs run as plain ``conv2d`` (same result, slower), as they do elsewhere (GPU,
  other dtypes).
  ``tests/inference/test_fast.py`` fails when that happens, so a PyTorch upgrade that changes
  them is caught by the tests, not by users.
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
* **Residual adds in place**, and at most three full-resolution maps alive at once.

The network's structure is read from the model (encoder ``Sequential``, ``decoder3..0``,
``refine``, ``head``, ``skip_indices``, ``normalize``, ``size_multiple``), and each conv's padding
mode from the conv itself. A model with parts it does not know raises :class:`FastPathUnsupported`;
:func:`fast_predictor` then keeps the reference forward (and says so when the model is B).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dmenet.modules.blocks import crop_to_scale, pad_to_multiple

__all__ = [
    "FastBlurEstimator", "FastPathUnsupported", "fast_blur_estimator", "fast_predictor",
    "onednn_fused_conv_problem",
]

logger = logging.getLogger(__name__)

_PAD_MODES = ("zeros", "replicate")


class FastPathUnsupported(ValueError):
    """The model has a part the fast path does not know (use the reference path)."""


def onednn_fused_conv_problem() -> str | None:
    """Why this PyTorch's oneDNN fused convolution cannot run B's convs, or ``None`` when it can.

    Checks on a small conv that the ops exist and compute what ``conv2d`` does, with the weight
    prepacked and a LeakyReLU or an addition fused (a few milliseconds).
    """
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch has no oneDNN"
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 8, 7, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    other = torch.rand(1, 6, 7, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 8, 3, 3, generator=gen), torch.randn(6, generator=gen)
    conv = _Conv(_ConvSpec(weight, bias, "zeros", "leaky_relu", 0.2))
    with torch.inference_mode():
        plain = F.conv2d(x, weight, bias, padding=1)
        try:
            packed = conv.packed_weight()
            got = _fused_conv(x, packed, conv)
            got_add = _fused_conv(x, packed, conv, other)
        except (AttributeError, RuntimeError, TypeError, ValueError) as exc:
            return f"oneDNN's fused convolution ops are missing or changed ({type(exc).__name__})"
        if not (torch.allclose(got, F.leaky_relu(plain, 0.2), atol=1e-4)
                and torch.allclose(got_add, plain + other, atol=1e-4)):
            return "oneDNN's fused convolution disagrees with conv2d"
    return None


@dataclass
class _ConvSpec:
    """One conv (BatchNorm already folded into it) and the activation that follows it."""

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
    """Conv (+ activation) sequences -> specs; anything else (BatchNorm included) is unsupported."""
    specs: list[_ConvSpec] = []
    for m in _flatten(modules):
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            continue
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size
            pad = tuple(m.padding) if not isinstance(m.padding, str) else None
            if (k[0] != k[1] or k[0] not in (1, 3) or m.stride != (1, 1) or m.dilation != (1, 1)
                    or m.groups != 1 or pad is None):
                raise FastPathUnsupported(f"{where}: conv {m} is not a plain 1x1 or 3x3 conv")
            if k[0] == 3 and (pad != (1, 1) or m.padding_mode not in _PAD_MODES):
                raise FastPathUnsupported(f"{where}: conv {m} padding {pad} {m.padding_mode!r}")
            if k[0] == 1 and pad != (0, 0):
                raise FastPathUnsupported(f"{where}: padded 1x1 conv {m}")
            bias = m.bias if m.bias is not None else m.weight.new_zeros(m.out_channels)
            mode = m.padding_mode if k[0] == 3 else "zeros"
            specs.append(_ConvSpec(m.weight.detach(), bias.detach(), mode))
            continue
        if isinstance(m, nn.BatchNorm2d):
            raise FastPathUnsupported(f"{where}: BatchNorm not folded (prepare_for_inference first)")
        if not specs or specs[-1].act != "none":
            raise FastPathUnsupported(f"{where}: {type(m).__name__} not right after a conv")
        last = specs[-1]
        if isinstance(m, nn.LeakyReLU):
            last.act, last.slope = "leaky_relu", float(m.negative_slope)
        elif isinstance(m, nn.ReLU):
            last.act = "relu"
        elif isinstance(m, nn.Sigmoid):
            last.act = "sigmoid"
        else:
            raise FastPathUnsupported(f"{where}: unsupported layer {type(m).__name__}")
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


def _fused_conv(x: torch.Tensor, weight: torch.Tensor, conv: _Conv,
                other: torch.Tensor | None = None) -> torch.Tensor:
    """oneDNN's fused ``act(conv(x))`` or ``conv(x) + other`` (activation then not applied)."""
    if other is None:
        scalars = [conv.slope] if conv.act == "leaky_relu" else []
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, conv.bias, conv.pad, [1, 1], [1, 1], 1, conv.act, scalars, "")
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, weight, conv.bias, conv.pad, [1, 1], [1, 1], 1, "add", None, None, [], "")


class _Conv(nn.Module):
    """A conv (BatchNorm folded) and its activation, run on haloed channels_last maps.

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
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight, packed)

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, reordered once per weight tensor (``.to()``
        replaces the tensor, and it is packed again; the layout does not depend on the input's
        size: measured equally fast on every map size B meets)."""
        if self._packed is None or self._packed[0] is not self.weight:
            self._packed = (self.weight, torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.pad, [1, 1], [1, 1], 1, []))
        return self._packed[1]

    def forward(self, x: torch.Tensor, fused: bool, other: torch.Tensor | None = None) -> torch.Tensor:
        """``act(conv(x) + other)`` on a haloed map (the halo is filled here for 3x3 / 2x2)."""
        if self.k > 1:
            _fill_halo(x, self.pad_mode)
        if fused:
            y = _fused_conv(x, self.packed_weight(), self, other)
            if other is None:
                return y
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

    def __init__(self, spec: _ConvSpec, up_channels: int) -> None:
        super().__init__()
        if spec.weight.shape[-1] != 3:
            raise FastPathUnsupported("a decoder stage must start with a 3x3 conv")
        w_up, w_skip = spec.weight[:, :up_channels], spec.weight[:, up_channels:]
        self.skip = _Conv(_ConvSpec(w_skip, spec.bias, spec.pad_mode, spec.act, spec.slope))
        self.out_channels = int(spec.weight.shape[0])
        # a 2x2 conv on the haloed low-resolution map (its halo supplies the border)
        self.up = _Conv(_ConvSpec(_phase_weight(w_up), spec.bias.new_zeros(4 * self.out_channels),
                                  spec.pad_mode))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, fused: bool) -> torch.Tensor:
        n, _, hp, wp = skip.shape
        h, w = hp - 2, wp - 2
        o = self.up(x, fused)
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
        del o, phases
        return self.skip(skip, fused, other=up)


class FastBlurEstimator(nn.Module):
    """``image (N, 3, H, W)`` in ``[0, 1]`` -> ``y (N, 1, H, W)``, equal to ``model(image).y``.

    Args:
        model: an eval-mode B with its BatchNorm folded
            (:func:`~dmenet.checkpoint.prepare_for_inference`); its weights are
            shared, not copied, and the model itself is not changed.
        fused: on the CPU in float32, run the convs as oneDNN fused ops (default; when
            :func:`onednn_fused_conv_problem` finds a problem, one warning line and plain
            ``conv2d``); ``False``: plain ``conv2d`` (what runs on a GPU).
    """

    def __init__(self, model: nn.Module, fused: bool = True) -> None:
        super().__init__()
        if model.training:
            raise FastPathUnsupported("the model must be in eval mode")
        for name in ("normalize", "encoder", "decoder3", "decoder2", "decoder1", "decoder0",
                     "refine", "head", "skip_indices"):
            if not hasattr(model, name):
                raise FastPathUnsupported(f"the model has no {name!r}: not B's structure")
        self.normalize = copy.deepcopy(model.normalize)  # not shared: .to(dtype) must not touch B
        self.size_multiple = int(getattr(model, "size_multiple", 16))
        problem = onednn_fused_conv_problem() if fused else None
        if problem is not None:
            logger.warning("dmenet: %s (torch %s); B's fast inference path runs plain conv2d "
                           "instead: same maps, slower", problem, torch.__version__)
        self.fused = fused and problem is None
        # encoder: convs (with ReLU) and 2x2 max pools; skips after the listed layers
        self.encoder_plan: list[tuple[str, int]] = []  # ("conv", i) | ("pool", 0) | ("skip", 0)
        convs: list[_Conv] = []
        skip_indices = {int(i) for i in model.skip_indices}
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
            if index in skip_indices:
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
        up_channels = int(convs[-1].weight.shape[0])
        for name in ("decoder3", "decoder2", "decoder1", "decoder0"):
            specs = _parse_convs(getattr(model, name), name)
            self.decoder_up.append(_UpConcatConv(specs[0], up_channels))
            self.decoder_rest.append(nn.ModuleList(_Conv(s) for s in specs[1:]))
            up_channels = int(specs[-1].weight.shape[0])
        self.refine = nn.ModuleList()
        for i, block in enumerate(model.refine):
            if not (hasattr(block, "body") and hasattr(block, "shortcut")):
                raise FastPathUnsupported(f"refine.{i}: not a residual block (body + shortcut)")
            body = _parse_convs(block.body, f"refine.{i}.body")
            shortcut = _parse_convs([block.shortcut], f"refine.{i}.shortcut")
            if len(shortcut) != 1 or len(body) != 2:
                raise FastPathUnsupported(f"refine.{i}: not two convs plus a one-conv shortcut")
            self.refine.append(nn.ModuleList([_Conv(s) for s in shortcut + body]))
        self.head = nn.ModuleList(_Conv(s) for s in _parse_convs(model.head, "head"))

    def uses_fused_convs(self, image: torch.Tensor) -> bool:
        """Whether the convs run as oneDNN fused ops for this input (``fused``, on the CPU, in
        float32)."""
        return self.fused and image.device.type == "cpu" and image.dtype == torch.float32

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"B expects an image of shape (N, 3, H, W), got {tuple(image.shape)}")
        fused = self.uses_fused_convs(image)
        x, size_hw = pad_to_multiple(image, self.size_multiple)
        x = F.pad(self.normalize(x), (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
        skips: list[torch.Tensor] = []
        for kind, i in self.encoder_plan:
            if kind == "conv":
                x = self.encoder_convs[i](x, fused)
            elif kind == "pool":
                x = F.max_pool2d(x, 2, 2, padding=1)
            else:
                skips.append(x)
        x = skips.pop()  # the bottleneck
        for up, rest in zip(self.decoder_up, self.decoder_rest):
            x = up(x, skips.pop(), fused)
            for conv in rest:
                x = conv(x, fused)
        for shortcut, conv1, conv2 in self.refine:
            s = shortcut(x, fused)
            h = conv1(x, fused)
            del x  # three full-resolution maps alive at most: s, h and the block's output
            x = conv2(h, fused)
            del h
            x.add_(s)
            del s
        for conv in self.head:
            x = conv(x, fused)
        return crop_to_scale(x[:, :, 1:-1, 1:-1], size_hw, 1).contiguous()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def fast_blur_estimator(model: nn.Module) -> FastBlurEstimator:
    """:class:`FastBlurEstimator` of ``model`` on its device and dtype.

    Raises:
        FastPathUnsupported: the model is not B as :func:`prepare_for_inference` leaves it.
    """
    parameter = next(model.parameters())
    return FastBlurEstimator(model).to(device=parameter.device, dtype=parameter.dtype)


def fast_predictor(predictor: nn.Module) -> nn.Module:
    """A :class:`~dmenet.checkpoint.DefocusPredictor` running B on the fast path.

    Same label space and checkpoint record; ``fast_path`` says whether the fast path is used.
    A blur estimator that is not B keeps its own forward; B that the fast path cannot run (e.g.
    BatchNorm not folded) keeps its reference forward, with one warning line saying why.
    """
    from dmenet.checkpoint import DefocusPredictor
    from dmenet.modules.blur_estimator import BlurEstimator

    model = predictor.blur_estimator
    try:
        fast = fast_blur_estimator(model)
    except FastPathUnsupported as exc:
        if isinstance(model, BlurEstimator):
            logger.warning("dmenet: B's fast inference path does not support this model (%s); "
                           "B's reference forward runs instead: same maps, slower", exc)
        predictor.fast_path = False  # type: ignore[attr-defined]
        return predictor
    out = DefocusPredictor(fast, predictor.label_space, predictor.sigma_max_px)
    if hasattr(predictor, "checkpoint"):
        out.checkpoint = predictor.checkpoint  # type: ignore[attr-defined]
    out.fast_path = True  # type: ignore[attr-defined]
    out.requires_grad_(False)
    return out.eval()
