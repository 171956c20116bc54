"""``dmenet magnify`` and ``dmenet depth`` end to end, and their formulas."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dmenet.cli import main as dmenet
from dmenet.data.io import read_image_tensor
from dmenet.errors import DMENetError
from dmenet.inference.depth import depth_rel, inverse_depth_rel
from dmenet.inference.magnify import magnify, reblur_sigma_px
from dmenet.labels import C_MAX_PX


def test_depth_inverts_the_thin_lens():
    """c = alpha |x - S1| / x and sigma = c / 4 (thin_lens), inverted for each focus side."""
    from dmenet.data.thin_lens import coc_px, sigma_from_coc

    alpha, focus = 20.0, 1000.0
    behind = torch.tensor([1000.0, 1500.0, 3000.0, 1e9])
    sigma = sigma_from_coc(coc_px(behind, focus, alpha), "paper").numpy()
    assert np.allclose(depth_rel(sigma, "near", alpha)[:3], behind[:3].numpy() / focus, rtol=1e-4)
    assert depth_rel(sigma, "near", alpha)[3] > 1e4
    in_front = torch.tensor([1000.0, 800.0, 500.0])
    sigma = sigma_from_coc(coc_px(in_front, focus, alpha), "paper").numpy()
    assert np.allclose(depth_rel(sigma, "far", alpha), in_front.numpy() / focus, rtol=1e-4)
    # more blur: farther with near focus, nearer with far focus
    s = np.array([0.0, 1.0, 3.0])
    assert np.all(np.diff(inverse_depth_rel(s, "near")) < 0)
    assert np.all(np.diff(inverse_depth_rel(s, "far")) > 0)
    assert inverse_depth_rel(np.array([C_MAX_PX]), "near")[0] == 0.0  # beyond alpha: infinity
    with pytest.raises(DMENetError):
        inverse_depth_rel(s, "sideways")


def test_reblur_sigma():
    s = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    assert np.allclose(reblur_sigma_px(s, 3.0), 3.0 * s)
    assert np.allclose(reblur_sigma_px(s, 3.0, total=True), np.sqrt(8.0) * s)
    with pytest.raises(DMENetError):
        reblur_sigma_px(s, 0.5, total=True)
    with pytest.raises(DMENetError):
        reblur_sigma_px(s, 0.0)


def test_magnify_blurs_only_where_the_map_says():
    """Sharp left half (sigma 0), defocused right half (sigma 1.5): after magnification the
    left half is unchanged and the right half has lost contrast."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 40, 64)).astype(np.float32))
    sigma = np.zeros((40, 64), np.float32)
    sigma[:, 32:] = 1.5
    out = magnify(image, sigma, factor=2.0)
    assert out.shape == image.shape
    assert torch.allclose(out[:, :, :24], image[:, :, :24], atol=1e-4)
    assert float(out[:, :, 40:].std()) < 0.6 * float(image[:, :, 40:].std())


def test_magnify_cli(tiny_ckpt, photo_folder, tmp_path, capsys):
    out = tmp_path / "big_bokeh.png"
    args = ["magnify", str(photo_folder / "a.jpg"), "--ckpt", str(tiny_ckpt), "--factor", "2",
            "--out", str(out)]
    assert dmenet(args) == 0, capsys.readouterr().err
    result = cv2.imread(str(out))
    assert result.shape == (40, 56, 3)
    meta = json.loads((tmp_path / "big_bokeh_magnify.json").read_text())
    assert meta["factor"] == 2.0 and meta["label_space"] == "released" and meta["focus_side"] == "near"
    # re-blurring only removes detail
    original = read_image_tensor(photo_folder / "a.jpg")
    lap = lambda a: np.abs(cv2.Laplacian(a.astype(np.float32), cv2.CV_32F)).mean()  # noqa: E731
    assert lap(result[..., ::-1] / 255.0) <= lap(original.permute(1, 2, 0).numpy()) + 1e-3
    capsys.readouterr()
    assert dmenet(args) == 2  # no overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_depth_cli(tiny_ckpt, photo_folder, tmp_path):
    out = tmp_path / "depth.png"
    assert dmenet(["depth", str(photo_folder / "d.tiff"), "--ckpt", str(tiny_ckpt), "--out", str(out),
                   "--focus", "far", "--focus-mm", "2000"]) == 0
    picture = cv2.imread(str(out))
    assert picture.shape == (40, 56, 3)
    rel = np.load(tmp_path / "depth_rel.npy")
    mm = np.load(tmp_path / "depth_mm.npy")
    assert rel.shape == (40, 56) and np.allclose(mm, 2000.0 * rel)
    assert np.all(rel <= 1.0 + 1e-6)  # far focus: everything at or in front of the focal plane
    meta = json.loads((tmp_path / "depth.json").read_text())
    assert meta["focus_side"] == "far" and "caveat" in meta
    # the depth follows the defocus map the way the thin lens says
    from dmenet.checkpoint import load_predictor

    predictor = load_predictor(tiny_ckpt)
    with torch.no_grad():
        sigma = predictor.sigma_px(predictor(read_image_tensor(photo_folder / "d.tiff")[None]))
    assert np.allclose(rel, depth_rel(sigma[0, 0].numpy(), "far"), rtol=1e-4)


@pytest.mark.parametrize(("out", "names"), [
    ("photo_depth.png", ["photo_depth.png", "photo_depth_rel.npy", "photo_depth.json"]),
    ("photo.png", ["photo.png", "photo_depth_rel.npy", "photo_depth.json"]),
])
def test_depth_file_names(tiny_ckpt, photo_folder, tmp_path, out, names):
    assert dmenet(["depth", str(photo_folder / "a.jpg"), "--ckpt", str(tiny_ckpt),
                   "--out", str(tmp_path / out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(names)


@pytest.mark.parametrize("tool", ["magnify", "depth"])
def test_unreadable_photo_creates_nothing(tool, tiny_ckpt, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out_dir = tmp_path / "out"
    extra = ["--factor", "2"] if tool == "magnify" else []
    code = dmenet([tool, str(broken), "--ckpt", str(tiny_ckpt), "--out", str(out_dir / "x.png"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "broken.jpg" in err and "Traceback" not in err
    assert not out_dir.exists()
