"""``dmenet convert-official``: the published TensorLayer checkpoint ``DMENet_BDCS.npz`` -> B, D, S.

    dmenet convert-official DMENet_BDCS.npz --out dmenet_bdcs_official.ckpt
    dmenet infer photos/ --ckpt dmenet_bdcs_official.ckpt --out maps/
    dmenet fit --config configs/ablation/bdcs.yaml --model.init_from dmenet_bdcs_official.ckpt

The reference implementation (codeslake/DMENet) saves its variables with TensorLayer 1.11.1's
``tl.files.save_npz_dict``: one array per TensorFlow variable, conv weights
``<scope>/kernel:0`` ``(kh, kw, in, out)`` and ``<scope>/bias:0``, BatchNorm ``beta:0``,
``moving_mean:0``, ``moving_variance:0`` and no ``gamma`` (SPEC section 3;
../shared/data/official/dmenet_bdcs_npz_layout.json lists the 321 arrays of the published file).
Older TensorLayer names the conv variables ``W_conv2d:0`` / ``b_conv2d:0``; both namings are read.

* B, ``main_net/defocus_net/`` (249 arrays) -> the default :class:`BlurEstimator` (its layers
  and widths are the reference's, its convs pad by edge replication like the reference's 1-px
  ``SYMMETRIC`` padding, so the converted weights load strictly);
* S, ``main_net/binary_net/`` (47) -> :class:`SharpnessCalibrator`;
* D, ``discriminator/feature/`` (17, no biases) -> :class:`DomainDiscriminator`;
* the encoder's classification head (``encoder/conv6_1``, ``encoder/c_logits_*``, 8 arrays),
  which the reference's forward pass never uses, is skipped and reported.

A file without S or without D converts what it has (B is required); a part is all or nothing.
A missing, misshaped or unknown array is an error that names it.

The numerics (checked against the reference's TensorFlow graph to 1e-5):

* input: the reference feeds RGB in ``[0, 1]`` x 255 as BGR minus the Caffe VGG means
  ``(103.939, 116.779, 123.68)``; our B normalises with the ImageNet statistics inside
  (``dmenet.modules.vgg``), so conv1_1 is rewritten to compute exactly the reference's conv1_1
  on our normalised input (an affine change of its input folded into weights and bias; exact
  with edge-replication padding). The converted B takes the usual ``[0, 1]`` RGB input;
* BatchNorm has no learned scale (gamma = 1, epsilon 1e-5) and follows convs that have a bias:
  the bias is folded into the running mean (``BN(Wx + b) = BN'(Wx)`` with ``mean' = mean - b``);
* upsampling is ``resize_nearest_neighbor(align_corners=True)``, which for an exact factor 2
  picks the same pixels as our nearest x2 (``round(i * (n-1)/(2n-1)) = i // 2``).

B's output is in the released-SYNDOF label space (``sigma = max(0, (15 y - 1) / 2)``,
:mod:`dmenet.labels`): the file records ``label_space: "released"`` (``dmenet infer`` reports
sigma in pixels through it; a fine-tune trains in it) and what was converted. The npz is read
with ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmenet.errors import DataError, DMENetError

__all__ = [
    "CAFFE_BGR_MEAN",
    "OLD_NAMING",
    "PART_SCOPES",
    "convert",
    "main",
    "official_parts",
    "official_shapes",
    "official_to_ours",
]

CAFFE_BGR_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)
"""The reference's ``VGG_MEAN`` (B, G, R order, 0-255 scale)."""

TL_BN_EPS = 1e-5  # TensorLayer BatchNormLayer's default epsilon (= torch's BatchNorm2d default)

OLD_NAMING: dict[str, str] = {"kernel:0": "W_conv2d:0", "bias:0": "b_conv2d:0"}
"""TensorLayer 1.11.1 conv variable names -> those of older TensorLayer (also accepted)."""

_B = "main_net/defocus_net/"
_S = "main_net/binary_net/"
_D = "discriminator/feature/"
PART_SCOPES: dict[str, str] = {"blur_estimator": _B, "sharpness_calibrator": _S, "domain_discriminator": _D}
"""Where each part's arrays live in the reference's file."""

_UNUSED_WHY = "the encoder's classification head (unused by the reference's forward pass)"

# VGG19 blocks: (block, number of convs, channels)
_VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))
# B's conv + BN layers: (reference conv scope, BN scope, our conv, our BN, out ch, in ch, kernel)
def _cbl(conv: str, bn: str, ours: str, out_ch: int, in_ch: int, k: int = 3) -> tuple:
    """A ConvBNLReLU of ours (``<ours>.conv``, ``<ours>.bn``)."""
    return (conv, bn, f"{ours}.conv", f"{ours}.bn", out_ch, in_ch, k)


_B_CONV_BN = (
    [_cbl("u3/c1", "u3/b1", "decoder3.0", 256, 1024), _cbl("u3/c2", "u3/b2", "decoder3.1", 256, 256),
     _cbl("u3/c3", "u3/b3", "decoder3.2", 256, 256),
     _cbl("u2/c1", "u2/b1", "decoder2.0", 128, 512), _cbl("u2/c2", "u2/b2", "decoder2.1", 128, 128),
     _cbl("u2/c3", "u2/b3", "decoder2.2", 128, 128),
     _cbl("u1/c1", "u1/b1", "decoder1.0", 64, 256), _cbl("u1/c2", "u1/b2", "decoder1.1", 64, 64),
     _cbl("u1/c3", "u1/b3", "decoder1.2", 64, 64),
     _cbl("u0/c_init", "u0/b_init", "decoder0.0", 64, 128)]
    + [item for i in range(7) for item in (
        _cbl(f"u0/c_res{i}", f"u0/b_res{i}", f"refine.{i}.shortcut", 64, 64, 1),
        _cbl(f"u0/c{i}_1", f"u0/b{i}_1", f"refine.{i}.body.0", 64, 64),
        _cbl(f"u0/c{i}_2", f"u0/b{i}_2", f"refine.{i}.body.1", 64, 64),
    )]
    + [_cbl("uf/c1", "uf/b1", "head.0", 64, 64), _cbl("uf/c2", "uf/b2", "head.1", 32, 64)]
    # auxiliary heads on the bottleneck, decoder3 .. decoder0: conv1 + bn1, conv2 (to 1) + bn2
    + [item for scope, i, in_ch, hidden in (("u4_aux", 0, 512, 256), ("u3_aux", 1, 256, 128),
                                             ("u2_aux", 2, 128, 64), ("u1_aux", 3, 64, 32),
                                             ("u0_aux", 4, 64, 32))
       for item in ((f"{scope}/c1", f"{scope}/b1", f"aux_heads.{i}.conv1", f"aux_heads.{i}.bn1",
                     hidden, in_ch, 3),
                    (f"{scope}/c2", f"{scope}/b2", f"aux_heads.{i}.conv2", f"aux_heads.{i}.bn2",
                     1, hidden, 3))]
)
# S: l1..l3 with c1..c3 / b1..b3 (1x1), widths 64, 32, 16, then l4/c1 to one logit
_S_WIDTHS = (64, 32, 16)
# D: h0..h3 4x4 conv (no bias) + BN, widths 64, 128, 256, 512, then h4 to one logit
_D_WIDTHS = (64, 128, 256, 512)
_UNUSED = {
    f"{_B}encoder/conv6_1/kernel:0": (3, 3, 512, 64), f"{_B}encoder/conv6_1/bias:0": (64,),
    f"{_B}encoder/c_logits_1/kernel:0": (15, 15, 64, 512), f"{_B}encoder/c_logits_1/bias:0": (512,),
    f"{_B}encoder/c_logits_1/W:0": (512, 512), f"{_B}encoder/c_logits_1/b:0": (512,),
    f"{_B}encoder/c_logits_2/W:0": (512, 1), f"{_B}encoder/c_logits_2/b:0": (1,),
}


def _encoder_layers() -> list[tuple[str, int, int, int]]:
    """(reference name, torchvision index, out ch, in ch) of the 16 VGG19 convs."""
    layers, index, in_ch = [], 0, 3
    for block, n, ch in _VGG_BLOCKS:
        for j in range(1, n + 1):
            layers.append((f"conv{block}_{j}", index, ch, in_ch))
            index += 2  # conv, relu
            in_ch = ch
        index += 1  # pool (the index after block 5 is never used)
    return layers


def _s_layers() -> list[tuple[str, str, int, int]]:
    """(conv scope, BN scope, out ch, in ch) of S's nine 1x1 conv + BN layers."""
    layers, in_ch = [], 1
    for level, width in enumerate(_S_WIDTHS, start=1):
        for j in (1, 2, 3):
            layers.append((f"l{level}/c{j}", f"l{level}/b{j}", width, in_ch))
            in_ch = width
    return layers


def official_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """Every array of the published file, per part (plus ``"unused"``), with its TensorFlow
    shape (convs ``kh, kw, in, out``), named as TensorLayer 1.11.1 names them."""
    b: dict[str, tuple[int, ...]] = {}
    for name, _, out_ch, in_ch in _encoder_layers():
        b[f"{_B}encoder/{name}/kernel:0"] = (3, 3, in_ch, out_ch)
        b[f"{_B}encoder/{name}/bias:0"] = (out_ch,)

    def conv_bn(into: dict, scope: str, conv: str, bn: str, out_ch: int, in_ch: int, k: int,
                bias: bool = True) -> None:
        into[f"{scope}{conv}/kernel:0"] = (k, k, in_ch, out_ch)
        if bias:
            into[f"{scope}{conv}/bias:0"] = (out_ch,)
        for var in ("beta", "moving_mean", "moving_variance"):
            into[f"{scope}{bn}/{var}:0"] = (out_ch,)

    for conv, bn, _, _, out_ch, in_ch, k in _B_CONV_BN:
        conv_bn(b, f"{_B}decoder/", conv, bn, out_ch, in_ch, k)
    b[f"{_B}decoder/uf/c3/kernel:0"] = (3, 3, 32, 1)
    b[f"{_B}decoder/uf/c3/bias:0"] = (1,)
    s: dict[str, tuple[int, ...]] = {}
    for conv, bn, out_ch, in_ch in _s_layers():
        conv_bn(s, _S, conv, bn, out_ch, in_ch, 1)
    s[f"{_S}l4/c1/kernel:0"] = (1, 1, _S_WIDTHS[-1], 1)
    s[f"{_S}l4/c1/bias:0"] = (1,)
    d: dict[str, tuple[int, ...]] = {}
    in_ch = 64
    for i, width in enumerate(_D_WIDTHS):
        conv_bn(d, _D, f"h{i}/c1", f"h{i}/b1", width, in_ch, 4, bias=False)
        in_ch = width
    d[f"{_D}h4/c1/kernel:0"] = (4, 4, in_ch, 1)
    return {"blur_estimator": b, "sharpness_calibrator": s, "domain_discriminator": d,
            "unused": dict(_UNUSED)}


def official_parts() -> dict[str, dict]:
    """``{"class_path", "init_args"}`` of the parts the converted weights load into: each part
    with its defaults, which are the reference's layers (B with its aux heads and edge padding),
    described from the module itself (built on the meta device: no memory, no download)."""
    from dmenet.modules import BlurEstimator, DomainDiscriminator, SharpnessCalibrator
    from dmenet.modules.spec import describe

    with torch.device("meta"):
        parts = {"blur_estimator": BlurEstimator(weights=None),
                 "sharpness_calibrator": SharpnessCalibrator(),
                 "domain_discriminator": DomainDiscriminator()}
    return {name: describe(part) for name, part in parts.items()}


def _canonical(name: str) -> str:
    """An older TensorLayer name (``W_conv2d:0`` / ``b_conv2d:0``) -> the 1.11.1 one."""
    for new, old in OLD_NAMING.items():
        if name.endswith("/" + old):
            return name[: -len(old)] + new
    return name


def _conv_weight(w: np.ndarray) -> torch.Tensor:
    """TensorFlow ``(kh, kw, in, out)`` -> PyTorch ``(out, in, kh, kw)``."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(w, dtype=np.float64).transpose(3, 2, 0, 1)))


def _listed(names: Sequence[str], limit: int = 6) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def official_to_ours(
    arrays: dict[str, np.ndarray],
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[str]]]:
    """Map the reference's arrays onto our parts' state_dicts.

    Returns ``(states, names)``: ``states[part]`` is the state_dict of each part the file has
    (``"blur_estimator"`` always, ``"sharpness_calibrator"`` / ``"domain_discriminator"`` when
    present); ``names[part]`` the file's array names each part used, exactly once each, and
    ``names["unused"]`` those skipped.

    Raises:
        DataError: an array that is unknown, misshaped, given in both namings, or missing from
            a part the file has; the message names them.
    """
    from dmenet.modules.vgg import IMAGENET_MEAN, IMAGENET_STD

    expected = official_shapes()
    part_of = {name: part for part, shapes in expected.items() for name in shapes}
    by_canonical: dict[str, str] = {}
    twice, unknown = [], []
    for name in arrays:
        canonical = _canonical(name)
        if canonical in by_canonical:
            twice.append(f"{by_canonical[canonical]} / {name}")
        elif canonical not in part_of:
            unknown.append(name)
        by_canonical[canonical] = name
    if unknown:
        raise DataError(f"{len(unknown)} arrays are not part of the reference's model: {_listed(unknown)}")
    if twice:
        raise DataError(f"arrays given in both namings: {_listed(twice)}")
    misshaped = [f"{by_canonical[c]} {tuple(np.shape(arrays[by_canonical[c]]))} (expected {expected[part_of[c]][c]})"
                 for c in by_canonical if tuple(np.shape(arrays[by_canonical[c]])) != expected[part_of[c]][c]]
    if misshaped:
        raise DataError(f"misshaped arrays: {_listed(misshaped, 3)}")
    present = {part_of[c] for c in by_canonical}
    for part in ("blur_estimator", "sharpness_calibrator", "domain_discriminator"):
        missing = [c for c in expected[part] if c not in by_canonical]
        if missing and (part == "blur_estimator" or part in present):
            raise DataError(f"{len(missing)} arrays of {part} are missing: {_listed(missing)}")

    used: dict[str, list[str]] = {part: [] for part in present}

    def get(canonical: str) -> np.ndarray:
        name = by_canonical[canonical]
        used[part_of[canonical]].append(name)
        return np.asarray(arrays[name], dtype=np.float64)

    def conv_bn(state: dict, scope: str, conv: str, bn: str, conv_name: str, bn_name: str,
                bias: bool = True) -> None:
        """conv (+ bias) + BN without gamma -> our conv without bias + BN (bias in the mean)."""
        state[f"{conv_name}.weight"] = _conv_weight(get(f"{scope}{conv}/kernel:0"))
        mean = get(f"{scope}{bn}/moving_mean:0")
        if bias:  # BN(Wx + b) = (Wx - (mean - b)) / sqrt(var + eps) + beta, gamma = 1
            mean = mean - get(f"{scope}{conv}/bias:0")
        beta = get(f"{scope}{bn}/beta:0")
        state[f"{bn_name}.weight"] = torch.ones(len(beta), dtype=torch.float64)
        state[f"{bn_name}.bias"] = torch.from_numpy(beta)
        state[f"{bn_name}.running_mean"] = torch.from_numpy(mean)
        state[f"{bn_name}.running_var"] = torch.from_numpy(get(f"{scope}{bn}/moving_variance:0"))
        state[f"{bn_name}.num_batches_tracked"] = torch.tensor(0)

    states: dict[str, dict[str, torch.Tensor]] = {}
    b: dict[str, torch.Tensor] = {}
    for name, index, _, _ in _encoder_layers():  # conv1_1 also absorbs the input convention
        w = _conv_weight(get(f"{_B}encoder/{name}/kernel:0"))
        bias = torch.from_numpy(get(f"{_B}encoder/{name}/bias:0"))
        if index == 0:
            w, bias = _fold_caffe_input(w, bias, IMAGENET_MEAN, IMAGENET_STD)
        b[f"encoder.{index}.weight"], b[f"encoder.{index}.bias"] = w, bias
    for conv, bn, conv_name, bn_name, *_ in _B_CONV_BN:
        conv_bn(b, f"{_B}decoder/", conv, bn, conv_name, bn_name)
    b["head.2.weight"] = _conv_weight(get(f"{_B}decoder/uf/c3/kernel:0"))
    b["head.2.bias"] = torch.from_numpy(get(f"{_B}decoder/uf/c3/bias:0"))
    states["blur_estimator"] = b
    if "sharpness_calibrator" in present:
        s: dict[str, torch.Tensor] = {}
        for k, (conv, bn, _, _) in enumerate(_s_layers()):
            conv_bn(s, _S, conv, bn, f"layers.{k}.conv", f"layers.{k}.bn")
        s["logit.weight"] = _conv_weight(get(f"{_S}l4/c1/kernel:0"))
        s["logit.bias"] = torch.from_numpy(get(f"{_S}l4/c1/bias:0"))
        states["sharpness_calibrator"] = s
    if "domain_discriminator" in present:
        d: dict[str, torch.Tensor] = {}
        for k in range(len(_D_WIDTHS)):
            conv_bn(d, _D, f"h{k}/c1", f"h{k}/b1", f"layers.{k}.conv", f"layers.{k}.bn", bias=False)
        d[f"layers.{len(_D_WIDTHS)}.conv.weight"] = _conv_weight(get(f"{_D}h4/c1/kernel:0"))
        states["domain_discriminator"] = d
    if "unused" in present:
        used["unused"] = [by_canonical[c] for c in expected["unused"] if c in by_canonical]
    for state in states.values():
        for key, value in state.items():
            if value.is_floating_point():
                state[key] = value.float()
    return states, used


def _fold_caffe_input(
    w: torch.Tensor, b: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1_1 of the reference, re-expressed on our ImageNet-normalised RGB input.

    The reference feeds ``u_bgr = 255 * x_bgr - CAFFE_BGR_MEAN``; our B feeds
    ``z = (x - mean) / std`` (RGB). Per RGB channel ``c``: ``u_c = 255 std_c z_c + (255 mean_c -
    caffe_c)``. With edge-replication padding the constant term stays constant at the borders,
    so it folds exactly into the bias.
    """
    w_rgb = w.flip(1)  # the reference's input channels are B, G, R
    caffe_rgb = torch.tensor(CAFFE_BGR_MEAN[::-1], dtype=w.dtype)
    std_t = torch.tensor(std, dtype=w.dtype)
    mean_t = torch.tensor(mean, dtype=w.dtype)
    w_new = w_rgb * (255.0 * std_t).view(1, 3, 1, 1)
    offset = 255.0 * mean_t - caffe_rgb
    b_new = b + (w_rgb * offset.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return w_new, b_new


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (no pickled objects)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        raise DataError(f"{path}: the file holds pickled objects; only plain arrays are read "
                        f"(tl.files.save_npz_dict writes those) ({exc})") from exc
    except Exception as exc:  # noqa: BLE001  (zipfile / format errors)
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc


def build_converted(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, nn.Module]:
    """Our parts with the converted weights (built on the meta device, loaded strictly)."""
    from dmenet.modules.spec import build

    specs = official_parts()
    return {part: build(specs[part], part, state).eval() for part, state in states.items()}


def convert(npz_path: str | Path, out_path: str | Path, overwrite: bool = False) -> dict:
    """Convert ``npz_path`` and write the dmenet checkpoint ``out_path``; returns a summary."""
    from dmenet.checkpoint import save_checkpoint
    from dmenet.data.io import check_output_file

    check_output_file(out_path, overwrite)
    arrays = load_npz(npz_path)
    try:
        states, used = official_to_ours(arrays)
        parts = build_converted(states)
    except DMENetError as exc:
        raise DataError(f"{npz_path}: {exc}") from exc
    with torch.no_grad():  # a quick check that the converted model runs
        y = parts["blur_estimator"](torch.full((1, 3, 32, 32), 0.5)).y
    if not torch.isfinite(y).all():
        raise DMENetError(f"{npz_path}: the converted model produces non-finite values")
    converted = {part: {"arrays": len(used[part]), "scope": PART_SCOPES[part]} for part in states}
    converted["skipped"] = {"arrays": sorted(used.get("unused", [])), "why": _UNUSED_WHY}
    save_checkpoint(
        out_path, parts, label_space="released", source=Path(npz_path).name, converted=converted,
        notes="converted from the reference's TensorLayer checkpoint by dmenet convert-official: "
              "Caffe BGR input convention folded into encoder.0, BN without gamma (weight = 1), "
              "conv biases folded into the running means",
    )
    return {"converted": converted, "total": len(arrays), "out": str(out_path)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dmenet convert-official",
        description="Convert the published TensorLayer checkpoint of the reference DMENet "
        "(DMENet_BDCS.npz: B, S and D) into a dmenet checkpoint (label space 'released') for "
        "dmenet infer / test, or for dmenet fit --model.init_from.",
    )
    parser.add_argument("npz", metavar="DMENet_BDCS.npz", help="the reference checkpoint")
    parser.add_argument("--out", required=True, metavar="FILE.ckpt", help="the dmenet checkpoint to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    summary = convert(args.npz, args.out, args.overwrite)
    conv = summary["converted"]
    parts = ", ".join(f"{part} {info['arrays']}" for part, info in conv.items() if part != "skipped")
    n_used = sum(info["arrays"] for part, info in conv.items() if part != "skipped")
    print(f"dmenet convert-official: {n_used} of {summary['total']} arrays converted ({parts}); "
          f"wrote {summary['out']} (label space 'released')", file=sys.stderr)
    if conv["skipped"]["arrays"]:
        print(f"  skipped {len(conv['skipped']['arrays'])} arrays of {_UNUSED_WHY}", file=sys.stderr)
    for part in ("sharpness_calibrator", "domain_discriminator"):
        if part not in conv:
            print(f"  the file has no {part} ({PART_SCOPES[part]}); not converted", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
