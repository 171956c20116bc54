"""The reference's checkpoint layout, written out independently of dmenet's converter, and a
re-implementation of the reference's forward pass (B, S, D) on those arrays.

``reference_layout`` follows codeslake/DMENet ``model.py`` (TensorLayer 1.11.1 variable names:
``<scope>/kernel:0``, ``<scope>/bias:0``; BatchNorm ``beta``, ``moving_mean``,
``moving_variance``, no gamma); ``naming="old"`` gives older TensorLayer's ``W_conv2d`` /
``b_conv2d``. The forward pass uses plain PyTorch functional ops in float64: Caffe BGR input,
SYMMETRIC 1-px padding, BN with epsilon 1e-5 and no gamma, TensorFlow's nearest-neighbour
upsampling with ``align_corners=True``, TF ``SAME`` padding in D.

``python -m tests.inference.official_npz`` rewrites the stored regression output
(tests/inference/data/official_converted_output.npz) from the converted model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

B = "main_net/defocus_net/"
ENC, DEC = B + "encoder/", B + "decoder/"
S = "main_net/binary_net/"
D = "discriminator/feature/"
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
REFERENCE_OUTPUT = Path(__file__).parent / "data" / "official_converted_output.npz"
REGRESSION_SEED = 7


def reference_layout(naming: str = "tl1.11") -> dict[str, tuple[int, ...]]:
    """Every array of the published DMENet_BDCS.npz with its shape (321 arrays)."""
    kernel, bias = ("kernel:0", "bias:0") if naming == "tl1.11" else ("W_conv2d:0", "b_conv2d:0")
    out: dict[str, tuple[int, ...]] = {}

    def conv(scope, k, c_in, c_out, with_bias=True):
        out[f"{scope}/{kernel}"] = (k, k, c_in, c_out)
        if with_bias:
            out[f"{scope}/{bias}"] = (c_out,)

    def bn(scope, c):
        for var in ("beta", "moving_mean", "moving_variance"):
            out[f"{scope}/{var}:0"] = (c,)

    c_in = 3
    for block, n, c in ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512)):
        for j in range(1, n + 1):
            conv(f"{ENC}conv{block}_{j}", 3, c_in, c)
            c_in = c
    conv(f"{ENC}conv6_1", 3, 512, 64)  # the encoder's classification head (unused)
    conv(f"{ENC}c_logits_1", 15, 64, 512)
    out.update({f"{ENC}c_logits_1/W:0": (512, 512), f"{ENC}c_logits_1/b:0": (512,),
                f"{ENC}c_logits_2/W:0": (512, 1), f"{ENC}c_logits_2/b:0": (1,)})

    def aux(scope, c, hidden):
        conv(f"{scope}/c1", 3, c, hidden)
        bn(f"{scope}/b1", hidden)
        conv(f"{scope}/c2", 3, hidden, 1)
        bn(f"{scope}/b2", 1)

    aux(f"{DEC}u4_aux", 512, 256)
    for stage, c_in, c, hidden in (("u3", 1024, 256, 128), ("u2", 512, 128, 64), ("u1", 256, 64, 32)):
        for j in (1, 2, 3):
            conv(f"{DEC}{stage}/c{j}", 3, c_in if j == 1 else c, c)
            bn(f"{DEC}{stage}/b{j}", c)
        aux(f"{DEC}{stage}_aux", c, hidden)
    conv(f"{DEC}u0/c_init", 3, 128, 64)
    bn(f"{DEC}u0/b_init", 64)
    aux(f"{DEC}u0_aux", 64, 32)
    for i in range(7):
        conv(f"{DEC}u0/c_res{i}", 1, 64, 64)
        bn(f"{DEC}u0/b_res{i}", 64)
        for j in (1, 2):
            conv(f"{DEC}u0/c{i}_{j}", 3, 64, 64)
            bn(f"{DEC}u0/b{i}_{j}", 64)
    for j, (c_in, c) in enumerate(((64, 64), (64, 32)), start=1):
        conv(f"{DEC}uf/c{j}", 3, c_in, c)
        bn(f"{DEC}uf/b{j}", c)
    conv(f"{DEC}uf/c3", 3, 32, 1)
    c_in = 1
    for level, c in enumerate((64, 32, 16), start=1):
        for j in (1, 2, 3):
            conv(f"{S}l{level}/c{j}", 1, c_in, c)
            bn(f"{S}l{level}/b{j}", c)
            c_in = c
    conv(f"{S}l4/c1", 1, 16, 1)
    c_in = 64
    for h, c in enumerate((64, 128, 256, 512)):
        conv(f"{D}h{h}/c1", 4, c_in, c, with_bias=False)
        bn(f"{D}h{h}/b1", c)
        c_in = c
    conv(f"{D}h4/c1", 4, 512, 1, with_bias=False)
    return out


def random_arrays(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """float32 arrays of ``layout``'s shapes, scaled so that activations stay O(1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in sorted(layout):  # the same arrays whatever order the layout lists them in
        shape = tuple(layout[name])
        if len(shape) == 4 or name.endswith("/W:0"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            if "conv1_1" in name:
                value /= 60.0  # the reference feeds 0-255 values
        elif name.endswith("moving_variance:0"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # biases, beta, moving_mean
            value = rng.normal(0, 0.1, shape)
        arrays[name] = value.astype(np.float32)
    return arrays


def to_old_naming(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same arrays under older TensorLayer's conv names."""
    rename = {"/kernel:0": "/W_conv2d:0", "/bias:0": "/b_conv2d:0"}
    out = {}
    for name, value in arrays.items():
        for new, old in rename.items():
            if name.endswith(new):
                name = name[: -len(new)] + old
        out[name] = value
    return out


# ------------------------------------------------------------------ the reference's forward pass
def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _conv(arr, x, scope, stride=1, same=False):
    w = _t(arr[f"{scope}/kernel:0"]).permute(3, 2, 0, 1)
    k = w.shape[-1]
    if same:  # TF 'SAME': output ceil(n / stride), the odd pixel of padding at the end
        pads = []
        for n in (x.shape[3], x.shape[2]):
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
    elif k == 3:  # PadLayer "SYMMETRIC" 1 px, then a VALID conv
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    b = arr.get(f"{scope}/bias:0")
    return F.conv2d(x, w, None if b is None else _t(b), stride=stride)


def _bn(arr, x, scope, calibrate=False):
    if calibrate:  # moving statistics = this batch's statistics (kept as float32 arrays)
        arr[f"{scope}/moving_mean:0"] = x.mean(dim=(0, 2, 3)).numpy().astype(np.float32)
        arr[f"{scope}/moving_variance:0"] = x.var(dim=(0, 2, 3)).numpy().astype(np.float32) + 0.01
    mean, var = _t(arr[f"{scope}/moving_mean:0"]), _t(arr[f"{scope}/moving_variance:0"])
    beta = _t(arr[f"{scope}/beta:0"])
    return (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) + beta.view(1, -1, 1, 1)


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


def _up_tf_align_corners(x):
    """tf.image.resize_nearest_neighbor(size=2x, align_corners=True), by its index formula."""
    def index(n_in):
        n_out = 2 * n_in
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return torch.tensor([min(int(np.floor(i * scale + 0.5)), n_in - 1) for i in range(n_out)])
    return x[:, :, index(x.shape[2])][:, :, :, index(x.shape[3])]


def reference_b(arr, rgb01, calibrate=False):
    """``(y, [aux u4, u3, u2, u1, u0], stage-0 feature, conv1_1 output)`` of the reference's B at
    test time. ``calibrate``: first set the BN moving statistics from this input, so that the
    random network's activations stay O(1) and its output varies."""
    x = rgb01.double() * 255.0
    x = x.flip(1) - torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    feats, first = [], None
    for block, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)):
        for j in range(1, n + 1):
            x = F.relu(_conv(arr, x, f"{ENC}conv{block}_{j}"))
            first = x if first is None else first
        feats.append(x)
        if block < 5:
            x = F.max_pool2d(x, 2)

    def conv_bn(n, c, b, act=_lrelu):
        return act(_bn(arr, _conv(arr, n, DEC + c), DEC + b, calibrate))

    def aux(n, s):
        return conv_bn(conv_bn(n, f"{s}/c1", f"{s}/b1"), f"{s}/c2", f"{s}/b2", torch.sigmoid)

    d0, d1, d2, d3, d4 = feats
    auxes = [aux(d4, "u4_aux")]
    n = d4
    for stage, skip in (("u3", d3), ("u2", d2), ("u1", d1)):
        n = torch.cat([_up_tf_align_corners(n), skip], 1)
        for j in (1, 2, 3):
            n = conv_bn(n, f"{stage}/c{j}", f"{stage}/b{j}")
        auxes.append(aux(n, f"{stage}_aux"))
    n = conv_bn(torch.cat([_up_tf_align_corners(n), d0], 1), "u0/c_init", "u0/b_init")
    feature = n
    auxes.append(aux(n, "u0_aux"))
    for i in range(7):
        res = conv_bn(n, f"u0/c_res{i}", f"u0/b_res{i}")
        n = conv_bn(conv_bn(n, f"u0/c{i}_1", f"u0/b{i}_1"), f"u0/c{i}_2", f"u0/b{i}_2") + res
    n = conv_bn(conv_bn(n, "uf/c1", "uf/b1"), "uf/c2", "uf/b2")
    return torch.sigmoid(_conv(arr, n, DEC + "uf/c3")), auxes, feature, first


def reference_s(arr, y, calibrate=False):
    """S's logits on a defocus map ``y (N, 1, H, W)``: nine 1x1 conv + BN + LReLU, then l4."""
    x = y.double()
    for level in (1, 2, 3):
        for j in (1, 2, 3):
            x = _lrelu(_bn(arr, _conv(arr, x, f"{S}l{level}/c{j}"), f"{S}l{level}/b{j}", calibrate))
    return _conv(arr, x, f"{S}l4/c1")


def reference_d(arr, feature, calibrate=False):
    """D's logits on B's stage-0 feature: four 4x4/2 SAME conv + BN + LReLU, then h4."""
    x = feature.double()
    for h in range(4):
        x = _lrelu(_bn(arr, _conv(arr, x, f"{D}h{h}/c1", 2, True), f"{D}h{h}/b1", calibrate))
    return _conv(arr, x, f"{D}h4/c1", 2, True)


def regression_input() -> torch.Tensor:
    """The fixed, smooth (1, 3, 32, 48) input of the regression test."""
    generator = torch.Generator().manual_seed(REGRESSION_SEED)
    return F.avg_pool2d(torch.rand(1, 3, 32, 48, generator=generator), 3, 1, 1)


def calibrated_arrays(layout: dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random arrays of ``layout`` (default: :func:`reference_layout`), BN
    statistics calibrated on a smooth random image (so that the outputs vary)."""
    arrays = random_arrays(reference_layout() if layout is None else layout, seed)
    generator = torch.Generator().manual_seed(1)
    images = F.avg_pool2d(torch.rand(1, 3, 32, 48, generator=generator), 3, 1, 1)
    y, _, feature, _ = reference_b(arrays, images, calibrate=True)
    reference_s(arrays, y, calibrate=True)
    reference_d(arrays, feature, calibrate=True)
    return arrays


def converted_outputs(parts) -> dict[str, np.ndarray]:
    """What the regression test compares: y, aux maps, S and D logits on the fixed input,
    computed in float64 (float32 rounding through the random network is about 1e-4)."""
    parts = {name: copy.deepcopy(part).double().eval() for name, part in parts.items()}
    image = regression_input().double()
    with torch.no_grad():
        out = parts["blur_estimator"](image)
        result = {"image": image, "y": out.y, "s_logits": parts["sharpness_calibrator"](out.y),
                  "d_logits": parts["domain_discriminator"](out.feature)}
        result.update({f"aux{k}": a for k, a in enumerate(out.aux)})
    return {k: v.numpy().astype(np.float32) for k, v in result.items()}


if __name__ == "__main__":
    from dmenet.official import build_converted, official_to_ours

    states, _ = official_to_ours(calibrated_arrays())
    REFERENCE_OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE_OUTPUT, **converted_outputs(build_converted(states)))
    print(f"wrote {REFERENCE_OUTPUT}")
