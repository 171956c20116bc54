"""``dmenet convert-official``: the public TensorLayer checkpoint ``DMENet_BDCS.npz`` -> our B.

    dmenet convert-official DMENet_BDCS.npz --out dmenet_bdcs_official.ckpt
    dmenet infer photos/ --ckpt dmenet_bdcs_official.ckpt --out maps/

The reference implementation (codeslake/DMENet, ``model.py``: ``VGG19_down`` + ``UNet_up``)
saves its variables with ``tl.files.save_npz_dict``: one array per TensorFlow variable, named
``main_net/defocus_net/{encoder,decoder}/<layer>/<var>:0``. Its B is our B with these
differences, each handled here so that the converted model computes what the reference does:

* inputs: RGB in ``[0, 1]`` is scaled to 0-255, turned into BGR and the Caffe VGG means
  ``(103.939, 116.779, 123.68)`` are subtracted. Our B normalises with the ImageNet statistics
  inside (``dmenet.modules.vgg``); conv1_1 is rewritten so that it computes exactly the
  reference's conv1_1 on our normalised input (an affine change of its input, folded into its
  weights and bias), so the converted model takes the usual ``[0, 1]`` RGB input;
* padding: every 3x3 conv pads with TensorFlow's ``SYMMETRIC`` mode, which for one pixel is edge
  replication: the converted convs use ``padding_mode="replicate"`` (recorded in the file);
* BatchNorm has no learned scale (``gamma_init=None``: gamma = 1) and follows convs that do have
  a bias: the bias is folded into the running mean;
* the auxiliary heads have conv+BN (+LReLU / sigmoid) and widths 256, 128, 64, 32, 32: they are
  rebuilt with these widths and the BN folded into their convs (the loader reads the widths
  from the weights);
* upsampling is ``resize_nearest_neighbor(align_corners=True)``, which for an exact factor 2
  picks the same pixels as our nearest x2 (``round(i * (n-1)/(2n-1)) = i // 2``).

Its output is in the released-SYNDOF label space (``sigma = max(0, (15 y - 1) / 2)``,
:mod:`dmenet.labels`); the converted file records ``label_space: "released"`` so that
``dmenet infer`` reports sigma in pixels correctly. Arrays that are not part of B at inference
(the encoder's classification head ``conv6_1`` / ``c_logits_*``, S ``binary_net``, D
``discriminator/feature``, C ``discriminator/perceptual``) are listed and skipped; any other
unknown array, or a missing or misshaped one, is an error. The file is read with
``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmenet.errors import DataError, DMENetError

__all__ = [
    "CAFFE_BGR_MEAN",
    "official_b_shapes",
    "official_to_ours",
    "convert",
    "main",
]

CAFFE_BGR_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)
"""The reference's ``VGG_MEAN`` (B, G, R order, 0-255 scale)."""

TL_BN_EPS = 1e-5  # TensorLayer BatchNormLayer's default epsilon

# VGG19 blocks: (name of block, number of convs, channels)
_VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))
# decoder layers: (reference scope, our module, out channels, in channels)
_DECODER = (
    [("u3/c1", "u3/b1", "decoder3.0", 256, 1024), ("u3/c2", "u3/b2", "decoder3.1", 256, 256),
     ("u3/c3", "u3/b3", "decoder3.2", 256, 256),
     ("u2/c1", "u2/b1", "decoder2.0", 128, 512), ("u2/c2", "u2/b2", "decoder2.1", 128, 128),
     ("u2/c3", "u2/b3", "decoder2.2", 128, 128),
     ("u1/c1", "u1/b1", "decoder1.0", 64, 256), ("u1/c2", "u1/b2", "decoder1.1", 64, 64),
     ("u1/c3", "u1/b3", "decoder1.2", 64, 64),
     ("u0/c_init", "u0/b_init", "decoder0.0", 64, 128)]
    + [item for i in range(7) for item in (
        (f"u0/c{i}_1", f"u0/b{i}_1", f"refine.{i}.body.0", 64, 64),
        (f"u0/c{i}_2", f"u0/b{i}_2", f"refine.{i}.body.1", 64, 64),
    )]
    + [("uf/c1", "uf/b1", "head.0", 64, 64), ("uf/c2", "uf/b2", "head.1", 32, 64)]
)
_REFINE_SHORTCUTS = tuple((f"u0/c_res{i}", f"u0/b_res{i}", f"refine.{i}.shortcut", 64, 64)
                          for i in range(7))
# auxiliary heads: (reference scope, our index, in channels, hidden width)
_AUX = (("u4_aux", 0, 512, 256), ("u3_aux", 1, 256, 128), ("u2_aux", 2, 128, 64),
        ("u1_aux", 3, 64, 32), ("u0_aux", 4, 64, 32))
# arrays of the reference checkpoint that are not part of B's forward pass at inference
_NOT_B = (
    (re.compile(r"(^|/)encoder/(conv6_1|c_logits_\d)/"), "the encoder's classification head"),
    (re.compile(r"(^|/)binary_net/"), "S (sharpness calibration)"),
    (re.compile(r"(^|/)discriminator/feature/"), "D (domain discriminator)"),
    (re.compile(r"(^|/)discriminator/perceptual/"), "C (perceptual VGG19)"),
)


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


def official_b_shapes() -> dict[str, tuple[int, ...]]:
    """Every array of the reference's B with its TensorFlow shape (convs: kh, kw, in, out).

    Names as ``tl.files.save_npz_dict`` writes them
    (``main_net/defocus_net/encoder/conv1_1/W_conv2d:0`` ...).
    """
    enc, dec = "main_net/defocus_net/encoder/", "main_net/defocus_net/decoder/"
    shapes: dict[str, tuple[int, ...]] = {}
    for name, _, out_ch, in_ch in _encoder_layers():
        shapes[f"{enc}{name}/W_conv2d:0"] = (3, 3, in_ch, out_ch)
        shapes[f"{enc}{name}/b_conv2d:0"] = (out_ch,)

    def conv_bn(conv: str, bn: str, out_ch: int, in_ch: int, k: int = 3) -> None:
        shapes[f"{dec}{conv}/W_conv2d:0"] = (k, k, in_ch, out_ch)
        shapes[f"{dec}{conv}/b_conv2d:0"] = (out_ch,)
        for var in ("beta", "moving_mean", "moving_variance"):
            shapes[f"{dec}{bn}/{var}:0"] = (out_ch,)

    for conv, bn, _, out_ch, in_ch in _DECODER:
        conv_bn(conv, bn, out_ch, in_ch)
    for conv, bn, _, out_ch, in_ch in _REFINE_SHORTCUTS:
        conv_bn(conv, bn, out_ch, in_ch, k=1)
    for scope, _, in_ch, hidden in _AUX:
        conv_bn(f"{scope}/c1", f"{scope}/b1", hidden, in_ch)
        conv_bn(f"{scope}/c2", f"{scope}/b2", 1, hidden)
    shapes[f"{dec}uf/c3/W_conv2d:0"] = (3, 3, 32, 1)
    shapes[f"{dec}uf/c3/b_conv2d:0"] = (1,)
    return shapes


def _short(name: str) -> str:
    """``.../defocus_net/decoder/u3/c1/W_conv2d:0`` -> ``decoder/u3/c1/W_conv2d``."""
    name = name.split(":")[0]
    m = re.search(r"(encoder|decoder)/.*$", name)
    return m.group(0) if m else name


def _conv_weight(w: np.ndarray) -> torch.Tensor:
    """TensorFlow ``(kh, kw, in, out)`` -> PyTorch ``(out, in, kh, kw)``."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(w, dtype=np.float32).transpose(3, 2, 0, 1)))


def official_to_ours(arrays: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map the reference's arrays onto our B's state_dict.

    Returns ``(state_dict, used names, skipped names)``; raises :class:`DataError` for
    missing, misshaped or unknown arrays.
    """
    from dmenet.modules.vgg import IMAGENET_MEAN, IMAGENET_STD

    by_short: dict[str, str] = {}
    skipped: list[str] = []
    unknown: list[str] = []
    for name in arrays:
        if any(p.search(name) for p, _ in _NOT_B):
            skipped.append(name)
            continue
        short = _short(name)
        if not short.startswith(("encoder/", "decoder/")):
            unknown.append(name)
            continue
        by_short[short] = name
    expected = {_short(k): v for k, v in official_b_shapes().items()}
    unknown += [by_short[s] for s in by_short if s not in expected]
    if unknown:
        raise DataError(f"arrays that are not part of the reference's model: {sorted(unknown)[:5]}"
                        f"{' ...' if len(unknown) > 5 else ''}")
    missing = [s for s in expected if s not in by_short]
    if missing:
        raise DataError(f"{len(missing)} arrays of B are missing, e.g. {missing[:4]}")
    for short, shape in expected.items():
        got = tuple(np.shape(arrays[by_short[short]]))
        if got != shape:
            raise DataError(f"{by_short[short]}: shape {got}, expected {shape}")

    used: list[str] = []

    def get(short: str) -> np.ndarray:
        used.append(by_short[short])
        return np.asarray(arrays[by_short[short]], dtype=np.float64)

    state: dict[str, torch.Tensor] = {}
    # encoder; conv1_1 also absorbs the reference's input convention
    for name, index, _, _ in _encoder_layers():
        w = _conv_weight(get(f"encoder/{name}/W_conv2d"))
        b = torch.from_numpy(get(f"encoder/{name}/b_conv2d")).float()
        if index == 0:
            w, b = _fold_caffe_input(w.double(), b.double(), IMAGENET_MEAN, IMAGENET_STD)
        state[f"encoder.{index}.weight"] = w.float()
        state[f"encoder.{index}.bias"] = b.float()

    def bn_stats(bn: str, conv_bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        beta = get(f"decoder/{bn}/beta")
        mean = get(f"decoder/{bn}/moving_mean")
        var = get(f"decoder/{bn}/moving_variance")
        # BN(Wx + b) = (Wx - (mean - b)) / sqrt(var + eps) + beta, gamma = 1
        return mean - conv_bias, var, beta

    for conv, bn, ours, _, _ in [*_DECODER, *_REFINE_SHORTCUTS]:
        state[f"{ours}.conv.weight"] = _conv_weight(get(f"decoder/{conv}/W_conv2d"))
        mean, var, beta = bn_stats(bn, get(f"decoder/{conv}/b_conv2d"))
        state[f"{ours}.bn.weight"] = torch.ones(len(beta))
        state[f"{ours}.bn.bias"] = torch.from_numpy(beta).float()
        state[f"{ours}.bn.running_mean"] = torch.from_numpy(mean).float()
        state[f"{ours}.bn.running_var"] = torch.from_numpy(var).float()
        state[f"{ours}.bn.num_batches_tracked"] = torch.tensor(0)
    for scope, index, _, _ in _AUX:
        for j in (1, 2):
            w = _conv_weight(get(f"decoder/{scope}/c{j}/W_conv2d")).double()
            mean, var, beta = bn_stats(f"{scope}/b{j}", get(f"decoder/{scope}/c{j}/b_conv2d"))
            scale = torch.from_numpy(1.0 / np.sqrt(var + TL_BN_EPS))
            state[f"aux_heads.{index}.conv{j}.weight"] = (w * scale.view(-1, 1, 1, 1)).float()
            state[f"aux_heads.{index}.conv{j}.bias"] = (
                -torch.from_numpy(mean) * scale + torch.from_numpy(beta)).float()
    state["head.2.weight"] = _conv_weight(get("decoder/uf/c3/W_conv2d"))
    state["head.2.bias"] = torch.from_numpy(get("decoder/uf/c3/b_conv2d")).float()
    return state, used, skipped


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


def build_official_b() -> nn.Module:
    """Our B shaped like the reference (aux heads of widths 256..32, replicate padding).

    Uninitialised: load the converted state_dict (strictly) before use.
    """
    from dmenet.inference.checkpoint import set_padding_mode, skip_weight_init
    from dmenet.modules.blur_estimator import AuxHead, BlurEstimator

    with skip_weight_init():  # every tensor is set from the reference's arrays next
        model = BlurEstimator(weights=None, aux_heads=True, n_refine_blocks=7)
        model.aux_heads = nn.ModuleList(AuxHead(in_ch, hidden) for _, _, in_ch, hidden in _AUX)
    set_padding_mode(model, "replicate")
    return model


def convert(npz_path: str | Path, out_path: str | Path, overwrite: bool = False) -> dict:
    """Convert ``npz_path`` and write the inference checkpoint ``out_path``; returns a summary."""
    from dmenet.data.io import check_output_file
    from dmenet.inference.checkpoint import save_inference_checkpoint

    check_output_file(out_path, overwrite)
    arrays = load_npz(npz_path)
    try:
        state, used, skipped = official_to_ours(arrays)
    except DataError as exc:
        raise DataError(f"{npz_path}: {exc}") from exc
    model = build_official_b()
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():  # a quick check that the converted model runs
        y = model(torch.full((1, 3, 32, 32), 0.5)).y
    if not torch.isfinite(y).all():
        raise DMENetError(f"{npz_path}: the converted model produces non-finite values")
    save_inference_checkpoint(
        out_path, model, label_space="released", padding_mode="replicate",
        source=Path(npz_path).name,
        notes="converted from the reference TensorLayer checkpoint by dmenet convert-official: "
              "Caffe BGR input convention folded into encoder.0, BN without gamma, conv biases "
              "folded into running means, aux-head BN folded into their convs",
    )
    return {"used": len(used), "skipped": len(skipped), "skipped_names": skipped,
            "total": len(arrays), "out": str(out_path)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dmenet convert-official",
        description="Convert the public TensorLayer checkpoint of the reference DMENet "
        "(DMENet_BDCS.npz) into a dmenet inference checkpoint (label space 'released').",
    )
    parser.add_argument("npz", metavar="DMENet_BDCS.npz", help="the reference checkpoint")
    parser.add_argument("--out", required=True, metavar="FILE.ckpt", help="the dmenet checkpoint to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    summary = convert(args.npz, args.out, args.overwrite)
    groups: dict[str, int] = {}
    for name in summary["skipped_names"]:
        what = next(w for p, w in _NOT_B if p.search(name))
        groups[what] = groups.get(what, 0) + 1
    print(f"dmenet convert-official: {summary['used']} of {summary['total']} arrays mapped onto B; "
          f"wrote {summary['out']} (label space 'released')", file=sys.stderr)
    for what, n in groups.items():
        print(f"  skipped {n} arrays of {what} (not needed for inference)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
