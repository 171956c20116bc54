"""``dmenet convert-official`` on a generated .npz with the reference's names and shapes.

The converted model is checked against a direct re-implementation of the reference forward pass
(codeslake/DMENet ``model.py``: ``VGG19_down`` + ``UNet_up`` at test time), written here with
plain PyTorch functional ops on the npz arrays: Caffe BGR input, SYMMETRIC 1-px padding, BN
without gamma, TensorFlow's nearest-neighbour upsampling with ``align_corners=True``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmenet.cli import main as dmenet
from dmenet.errors import DataError
from dmenet.inference.checkpoint import load_checkpoint, load_predictor
from dmenet.inference.convert_official import (
    CAFFE_BGR_MEAN,
    build_official_b,
    official_b_shapes,
    official_to_ours,
)

ENC = "main_net/defocus_net/encoder/"
DEC = "main_net/defocus_net/decoder/"
# arrays of a full training checkpoint that are not B (skipped, reported)
NOT_B = {
    f"{ENC}conv6_1/W_conv2d:0": (3, 3, 512, 64),
    "main_net/binary_net/l1/c1/W_conv2d:0": (1, 1, 1, 64),
    "discriminator/feature/h0/c1/W_conv2d:0": (4, 4, 64, 64),
}


def make_npz_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays with the reference's names and shapes, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in {**official_b_shapes(), **NOT_B}.items():
        if name.endswith("W_conv2d:0"):
            fan_in = shape[0] * shape[1] * shape[2]
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            if "conv1_1" in name:
                value /= 60.0  # the reference feeds 0-255 values
        elif name.endswith("moving_variance:0"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # biases, beta, moving_mean
            value = rng.normal(0, 0.1, shape)
        arrays[name] = value.astype(np.float32)
    return arrays


def test_names_and_shapes_match_the_reference_model_py():
    shapes = official_b_shapes()
    # hand-counted from model.py: 16 encoder convs (W, b); 44 decoder convs (W, b), 43 of them
    # followed by a BatchNorm without gamma (beta, moving_mean, moving_variance)
    assert len(shapes) == 16 * 2 + 44 * 2 + 43 * 3 == 249
    assert shapes[f"{ENC}conv1_1/W_conv2d:0"] == (3, 3, 3, 64)
    assert shapes[f"{ENC}conv5_4/W_conv2d:0"] == (3, 3, 512, 512)
    assert shapes[f"{DEC}u3/c1/W_conv2d:0"] == (3, 3, 1024, 256)
    assert shapes[f"{DEC}u4_aux/c1/W_conv2d:0"] == (3, 3, 512, 256)
    assert shapes[f"{DEC}u1_aux/c1/W_conv2d:0"] == (3, 3, 64, 32)
    assert shapes[f"{DEC}u0/c_init/W_conv2d:0"] == (3, 3, 128, 64)
    assert shapes[f"{DEC}u0/c_res6/W_conv2d:0"] == (1, 1, 64, 64)
    assert shapes[f"{DEC}u0/b3_2/moving_variance:0"] == (64,)
    assert shapes[f"{DEC}uf/c3/W_conv2d:0"] == (3, 3, 32, 1)
    assert not any("gamma" in k for k in shapes)


# ------------------------------------------------------------------ the reference, re-implemented
def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _conv(arr, x, scope):
    w = _t(arr[f"{scope}/W_conv2d:0"]).permute(3, 2, 0, 1)
    if w.shape[-1] == 3:  # PadLayer "Symmetric" 1 px, then a VALID conv
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(x, w, _t(arr[f"{scope}/b_conv2d:0"]))


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


def reference_forward(arr, rgb01, calibrate=False):
    """(y, [aux u4, u3, u2, u1, u0], conv1_1 output) of the reference at test time.

    ``calibrate``: first set every BatchNorm's moving statistics from this input, so that the
    random network's activations stay O(1) and its output varies.
    """
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
    auxes.append(aux(n, "u0_aux"))
    for i in range(7):
        res = conv_bn(n, f"u0/c_res{i}", f"u0/b_res{i}")
        n = conv_bn(conv_bn(n, f"u0/c{i}_1", f"u0/b{i}_1"), f"u0/c{i}_2", f"u0/b{i}_2") + res
    n = conv_bn(conv_bn(n, "uf/c1", "uf/b1"), "uf/c2", "uf/b2")
    return torch.sigmoid(_conv(arr, n, DEC + "uf/c3")), auxes, first


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "DMENet_BDCS.npz"
    arrays = make_npz_arrays()
    generator = torch.Generator().manual_seed(1)
    reference_forward(arrays, F.avg_pool2d(torch.rand(2, 3, 32, 48, generator=generator), 3, 1, 1),
                      calibrate=True)
    np.savez(path, **arrays)  # what tl.files.save_npz_dict writes
    return path


def test_every_array_is_used_or_reported():
    arrays = make_npz_arrays()
    state, used, skipped = official_to_ours(arrays)
    assert sorted(used) == sorted(official_b_shapes())  # every array of B, each exactly once
    assert len(used) == len(set(used))
    assert sorted(skipped) == sorted(NOT_B)
    model = build_official_b()
    assert set(state) == set(model.state_dict())  # and every tensor of our B is set


def test_converted_model_matches_the_reference(npz_file, tmp_path, capsys):
    out = tmp_path / "official.ckpt"
    assert dmenet(["convert-official", str(npz_file), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "249 of 252 arrays" in err and "D (domain discriminator)" in err
    ckpt = load_checkpoint(out)  # weights_only=True
    assert ckpt.label_space == "released" and ckpt.padding_mode == "replicate"

    arrays = dict(np.load(npz_file, allow_pickle=False))
    torch.manual_seed(0)
    image = F.avg_pool2d(torch.rand(1, 3, 32, 48), 3, 1, 1)
    ref_y, ref_aux, ref_first = reference_forward(arrays, image)
    assert float(ref_y.std()) > 1e-3  # a meaningful comparison

    exact = load_predictor(out, fast=False)
    b = exact.blur_estimator
    with torch.no_grad():
        first = b.encoder[:2](b.normalize(image))  # conv1_1 + ReLU on our normalised input
        assert torch.allclose(first.double(), ref_first, atol=1e-4 * float(ref_first.abs().max()))
        estimate = b(image)
        assert torch.allclose(estimate.y.double(), ref_y, atol=1e-4)
        for ours, ref in zip(estimate.aux, ref_aux):
            assert ours.shape == ref.shape
            assert torch.allclose(ours.double(), ref, atol=1e-4)
        fast = load_predictor(out)  # as infer runs it
        assert torch.allclose(fast(image).double(), ref_y, atol=1e-4)
    # sigma in pixels through the released label space: max(0, (15 y - 1) / 2)
    sigma = exact.sigma_px(ref_y.float())
    assert torch.allclose(sigma, ((15 * ref_y.float() - 1) / 2).clamp(min=0))


def test_refuses_to_overwrite(npz_file, tmp_path, capsys):
    out = tmp_path / "x.ckpt"
    out.write_bytes(b"keep")
    assert dmenet(["convert-official", str(npz_file), "--out", str(out)]) == 2
    assert out.read_bytes() == b"keep"
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    ("drop", "missing"),
    ("reshape", "shape"),
    ("unknown", "not part of"),
])
def test_bad_npz_is_explained(tmp_path, change, message):
    arrays = make_npz_arrays()
    key = f"{DEC}u2/c2/W_conv2d:0"
    if change == "drop":
        del arrays[key]
    elif change == "reshape":
        arrays[key] = arrays[key][..., :10]
    else:
        arrays[f"{DEC}u9/c1/W_conv2d:0"] = np.zeros((3, 3, 1, 1), np.float32)
    with pytest.raises(DataError, match=message):
        official_to_ours(arrays)


def test_pickled_npz_is_refused(tmp_path, capsys):
    path = tmp_path / "pickled.npz"
    np.savez(path, params=np.array([{"a": 1}], dtype=object))
    assert dmenet(["convert-official", str(path), "--out", str(tmp_path / "o.ckpt")]) == 2
    assert "pickled" in capsys.readouterr().err
