"""The Python API: ``dmenet.load(...).predict(...)``, ``hubconf.py``, a quick ``import dmenet``."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import dmenet
from dmenet.cli import main as dmenet_cli
from dmenet.errors import DataError, DMENetError
from tests.inference.conftest import photo_folder, tiny_ckpt  # noqa: F401  (fixtures)

HEAVY = ("torch", "numpy", "lightning", "kornia", "cv2", "matplotlib", "jsonargparse")


def test_import_dmenet_loads_nothing_heavy(repo_root):
    code = (
        "import sys, dmenet; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root,
                         check=True).stdout.strip()
    assert out == "[]"
    assert "load" in dir(dmenet)


def test_predict_equals_dmenet_infer_for_every_input_kind(tiny_ckpt, photo_folder, tmp_path):  # noqa: F811
    # tiles of 32 px with 8 px overlap: the 40 x 56 photos are tiled, as infer tiles them
    out = tmp_path / "maps"
    assert dmenet_cli(["infer", str(photo_folder / "b.png"), str(photo_folder / "d.tiff"),
                       str(photo_folder / "grey16.png"), "--ckpt", str(tiny_ckpt), "--out", str(out),
                       "--tile", "32", "--overlap", "8"]) == 0
    estimator = dmenet.load(tiny_ckpt, device="cpu", tile=32, overlap=8)
    assert estimator.describe["label_space"] == "released"
    expected = np.load(out / "b_sigma_px.npy")
    bgr8 = cv2.imread(str(photo_folder / "b.png"))
    rgb8 = np.ascontiguousarray(bgr8[:, :, ::-1])
    by_path = estimator.predict(str(photo_folder / "b.png"))
    assert by_path.dtype == np.float32 and by_path.shape == bgr8.shape[:2] == expected.shape
    assert float(expected.std()) > 1e-4  # the map varies: the comparison means something
    np.testing.assert_array_equal(by_path, expected)
    np.testing.assert_array_equal(estimator.predict(photo_folder / "b.png"), expected)
    np.testing.assert_array_equal(estimator.predict(rgb8), expected)  # uint8 H x W x 3
    np.testing.assert_array_equal(estimator.predict(rgb8.astype(np.float32) / 255.0), expected)
    np.testing.assert_array_equal(estimator.predict(Image.open(photo_folder / "b.png")), expected)
    # 16 bit: uint16 array, and a 16-bit grey PNG through PIL and as a 2-D array
    bgr16 = cv2.imread(str(photo_folder / "d.tiff"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(estimator.predict(np.ascontiguousarray(bgr16[:, :, ::-1])),
                                  np.load(out / "d_sigma_px.npy"))
    grey16 = cv2.imread(str(photo_folder / "grey16.png"), cv2.IMREAD_UNCHANGED)
    assert grey16.dtype == np.uint16 and grey16.ndim == 2
    np.testing.assert_array_equal(estimator.predict(grey16), np.load(out / "grey16_sigma_px.npy"))
    np.testing.assert_array_equal(estimator.predict(Image.open(photo_folder / "grey16.png")),
                                  np.load(out / "grey16_sigma_px.npy"))
    # tensor in, tensor out: (N, 3, H, W) -> (N, 1, H, W)
    batch = torch.from_numpy(rgb8).permute(2, 0, 1).float().div(255.0)
    sigma = estimator.predict(torch.stack([batch, batch.flip(-1)]))
    assert isinstance(sigma, torch.Tensor) and sigma.shape == (2, 1, *expected.shape)
    np.testing.assert_array_equal(sigma[0, 0].numpy(), expected)
    np.testing.assert_allclose(sigma[1, 0].numpy(), estimator.predict(rgb8[:, ::-1].copy()), atol=0)
    assert estimator.predict(batch).shape == (1, *expected.shape)


def test_bad_inputs_are_one_clear_error(tiny_ckpt, tmp_path):  # noqa: F811
    estimator = dmenet.load(tiny_ckpt, device="cpu")
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        estimator.predict(np.full((8, 8, 3), 200.0, np.float32))
    with pytest.raises(DataError, match="\\(H, W, 3\\)"):
        estimator.predict(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match="no such file"):
        estimator.predict(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="cannot read an image"):
        estimator.predict([1, 2, 3])
    with pytest.raises(DMENetError, match="no such checkpoint"):
        dmenet.load(tmp_path / "missing.ckpt")


def test_zhuo_sim_needs_no_checkpoint():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((24, 32, 3)).astype(np.float32), (0, 0), 1.0)
    sigma = dmenet.load("zhuo_sim").predict(image)
    assert sigma.shape == (24, 32) and sigma.dtype == np.float32 and np.isfinite(sigma).all()


def test_torch_hub_local(repo_root, tiny_ckpt, photo_folder):  # noqa: F811
    estimator = torch.hub.load(str(repo_root), "dmenet", checkpoint=str(tiny_ckpt), source="local",
                               device="cpu")
    direct = dmenet.load(tiny_ckpt, device="cpu")
    photo = photo_folder / "a.jpg"
    np.testing.assert_array_equal(estimator.predict(photo), direct.predict(photo))
