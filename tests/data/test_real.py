"""Readers of CUHK, Flickr-style folders and RTF on tiny generated datasets (and the makers of
those datasets, released SYNDOF's included, that other data tests use)."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.io import savemat

from dmenet.data.io import write_png16
from dmenet.data.real import (
    RTF,
    CUHKBlurDetection,
    ImageFolder,
    cuhk_split_names,
    detect_mask_polarity,
    rtf_disc_to_gauss,
)
from dmenet.errors import DataError
from dmenet.labels import SIGMA_MAX_PX

H, W = 24, 32


def _textured(rng: np.random.Generator, height: int = H, width: int = W) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def make_cuhk(root: Path, n: int = 6, white_is_sharp: bool = True, motion: int = 2) -> Path:
    """A CUHK-like folder: the left half of each photo is sharp noise, the right half blurred."""
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        image = _textured(rng)
        blurred = cv2.GaussianBlur(image, (0, 0), 3.0)
        image[:, W // 2 :] = blurred[:, W // 2 :]
        sharp = np.zeros((H, W), np.uint8)
        sharp[:, : W // 2] = 255
        mask = sharp if white_is_sharp else 255 - sharp
        _write(root / "image" / f"out_of_focus{i:04d}.jpg", image)
        _write(root / "gt" / f"out_of_focus{i:04d}.png", mask)
    for i in range(1, motion + 1):  # motion-blur images are skipped
        _write(root / "image" / f"motion{i:04d}.jpg", _textured(rng))
        _write(root / "gt" / f"motion{i:04d}.png", np.zeros((H, W), np.uint8))
    return root


class TestCUHK:
    @pytest.mark.parametrize("white_is_sharp", [True, False])
    def test_polarity_detected_and_target_is_sharp_one(self, tmp_path, white_is_sharp):
        ds = CUHKBlurDetection(make_cuhk(tmp_path, white_is_sharp=white_is_sharp))
        assert len(ds) == 6
        assert ds.mask_polarity == ("white_is_sharp" if white_is_sharp else "white_is_blurred")
        item = ds[0]
        assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
        assert item["sharp_mask"].shape == (1, H, W)
        # the sharp (left) half is 1 whatever the file's polarity
        assert item["sharp_mask"][0, :, : W // 2].min() == 1
        assert item["sharp_mask"][0, :, W // 2 :].max() == 0
        assert item["set"] == "cuhk" and item["name"] == "out_of_focus0001"

    def test_polarity_set_explicitly(self, tmp_path):
        ds = CUHKBlurDetection(make_cuhk(tmp_path), mask_polarity="white_is_blurred")
        assert ds[0]["sharp_mask"][0, :, : W // 2].max() == 0

    def test_splits(self, tmp_path):
        stems = [f"out_of_focus{i:04d}" for i in range(1, 705)]
        for split, n in [("dmenet_train", 504), ("dmenet_test", 200),
                         ("common_train", 604), ("common_test", 100), ("all", 704)]:
            assert len(cuhk_split_names(stems, split)) == n
        assert not set(cuhk_split_names(stems, "dmenet_train")) & set(
            cuhk_split_names(stems, "dmenet_test")
        )
        root = make_cuhk(tmp_path / "c")
        with pytest.raises(DataError, match="needs more than 200"):
            CUHKBlurDetection(root, split="dmenet_test")
        list_file = tmp_path / "mine.txt"
        list_file.write_text("# my split\nout_of_focus0002.jpg\nout_of_focus0005\n")
        ds = CUHKBlurDetection(root, split=str(list_file))
        assert [s[0] for s in ds.samples] == ["out_of_focus0002", "out_of_focus0005"]
        assert len(CUHKBlurDetection(root, split=["out_of_focus0003"])) == 1
        with pytest.raises(DataError, match="motion0001.*not a defocus image"):
            CUHKBlurDetection(root, split=["motion0001"])
        with pytest.raises(DataError, match="neither a split name"):
            CUHKBlurDetection(root, split="nonsense")

    def test_bad_layouts(self, tmp_path):
        with pytest.raises(DataError, match="does not exist.*image/out_of_focus"):
            CUHKBlurDetection(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        with pytest.raises(DataError, match="image folder does not exist"):
            CUHKBlurDetection(tmp_path / "empty")
        (tmp_path / "hollow" / "image").mkdir(parents=True)
        (tmp_path / "hollow" / "gt").mkdir()
        with pytest.raises(DataError, match="hollow/image: no defocus images found"):
            CUHKBlurDetection(tmp_path / "hollow")
        root = make_cuhk(tmp_path / "nomask")
        (root / "gt" / "out_of_focus0003.png").unlink()
        with pytest.raises(DataError, match="out_of_focus0003.jpg: no mask"):
            CUHKBlurDetection(root, mask_polarity="white_is_sharp")
        with pytest.raises(DataError, match="mask_polarity"):
            CUHKBlurDetection(root, mask_polarity="up")

    def test_size_mismatch_and_truncated_image(self, tmp_path):
        root = make_cuhk(tmp_path)
        _write(root / "gt" / "out_of_focus0002.png", np.zeros((H + 2, W), np.uint8))
        ds = CUHKBlurDetection(root, mask_polarity="white_is_sharp")
        with pytest.raises(DataError, match=r"out_of_focus0002.png: size 32x26.*differs"):
            ds[1]
        path = root / "image" / "out_of_focus0003.jpg"
        path.write_bytes(path.read_bytes()[:40])
        with pytest.raises(DataError, match="out_of_focus0003.jpg"):
            ds[2]

    def test_grey_rgba_16bit_images_converted(self, tmp_path):
        root = make_cuhk(tmp_path, n=3)
        rng = np.random.default_rng(1)
        (root / "image" / "out_of_focus0001.jpg").unlink()
        _write(root / "image" / "out_of_focus0001.png", rng.integers(0, 256, (H, W), np.uint8))
        (root / "image" / "out_of_focus0002.jpg").unlink()
        _write(root / "image" / "out_of_focus0002.png",
               rng.integers(0, 256, (H, W, 4), np.uint8))
        (root / "image" / "out_of_focus0003.jpg").unlink()
        _write(root / "image" / "out_of_focus0003.png",
               rng.integers(0, 65536, (H, W, 3), np.uint16))
        ds = CUHKBlurDetection(root, mask_polarity="white_is_sharp")
        for i in range(3):
            image = ds[i]["image"]
            assert image.shape == (3, H, W) and 0 <= image.min() and image.max() <= 1
        grey = ds[0]["image"]
        assert torch.equal(grey[0], grey[1])
        # 16 bits kept: values that are not multiples of 1/255
        assert not torch.allclose(ds[2]["image"] * 255, (ds[2]["image"] * 255).round())

    def test_detect_polarity_uniform_mask(self):
        image = np.random.default_rng(0).random((H, W, 3)).astype(np.float32)
        assert detect_mask_polarity(image, np.ones((H, W), bool)) is None


class TestImageFolder:
    def test_recursive_images_only_one_warning(self, tmp_path):
        rng = np.random.default_rng(0)
        _write(tmp_path / "a.jpg", _textured(rng))
        _write(tmp_path / "sub" / "deeper" / "b.PNG", _textured(rng, 20, 20))
        (tmp_path / "notes.txt").write_text("hi")
        (tmp_path / "sub" / "data.csv").write_text("1,2")
        with pytest.warns(UserWarning, match=r"skipped 2 non-image.*notes.txt") as record:
            ds = ImageFolder(tmp_path)
        assert len([w for w in record if "non-image" in str(w.message)]) == 1
        assert len(ds) == 2
        names = sorted(ds[i]["name"] for i in range(2))
        assert names == ["a", "sub/deeper/b"]
        assert ds[1]["image"].shape in {(3, H, W), (3, 20, 20)}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flat = ImageFolder(tmp_path / "sub" / "deeper", recursive=False)
        assert len(flat) == 1

    def test_empty_and_missing(self, tmp_path):
        with pytest.raises(DataError, match="does not exist"):
            ImageFolder(tmp_path / "nope")
        (tmp_path / "only.txt").write_text("x")
        with pytest.warns(UserWarning), pytest.raises(DataError, match="no images found"):
            ImageFolder(tmp_path)

    def test_corrupt_image_named(self, tmp_path):
        (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
        ds = ImageFolder(tmp_path)
        with pytest.raises(DataError, match="broken.jpg: not a readable image"):
            ds[0]


def make_rtf(root: Path, gt_format: str = "mat", n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"img{i:02d}"
        for noise in ("0", "1", "1.6"):
            _write(root / "image" / noise / f"{name}.png", _textured(rng))
        radius = np.full((H, W), 3.0, np.float32)
        radius[:, : W // 2] = 0.0
        (root / "gt").mkdir(parents=True, exist_ok=True)
        if gt_format == "mat":
            savemat(str(root / "gt" / f"{name}.mat"), {"blurMap": radius.astype(np.float64)})
        else:
            np.save(root / "gt" / f"{name}.npy", rtf_disc_to_gauss(radius).astype(np.float32))
    return root


class TestRTF:
    @pytest.mark.parametrize("gt_format", ["mat", "npy"])
    def test_read(self, tmp_path, gt_format):
        ds = RTF(make_rtf(tmp_path, gt_format), noise=1.6)
        assert ds.noise == "1.6" and len(ds) == 2
        item = ds[0]
        assert item["image"].shape == (3, H, W)
        assert item["sigma_px"].shape == (1, H, W)
        # disc radius 3.0 -> sigma 1.65 (RTF table), in focus (0) -> the nearest entry, 0.3
        assert item["sigma_px"][0, 0, -1].item() == pytest.approx(1.65)
        assert item["sigma_px"][0, 0, 0].item() == pytest.approx(0.3)
        assert torch.allclose(item["label"], item["sigma_px"] / SIGMA_MAX_PX)
        assert item["set"] == "rtf_1.6"

    def test_bad_input(self, tmp_path):
        root = make_rtf(tmp_path)
        with pytest.raises(DataError, match="noise level '2'"):
            RTF(root, noise="2")
        savemat(str(root / "gt" / "img01.mat"), {"other": np.zeros((2, 2))})
        with pytest.raises(DataError, match=r"img01.mat: no variable 'blurMap' \(found: other\)"):
            RTF(root)[1]
        (root / "gt" / "img00.mat").write_bytes(b"not a mat file at all")
        with pytest.raises(DataError, match="img00.mat: not a readable .mat"):
            RTF(root)[0]
        (root / "gt" / "img00.mat").unlink()
        with pytest.raises(DataError, match="img00.png: no ground truth"):
            RTF(root)
        with pytest.raises(DataError, match="RTF root does not exist"):
            RTF(tmp_path / "x")
        (tmp_path / "y" / "image").mkdir(parents=True)
        with pytest.raises(DataError, match="noise-0 image folder does not exist"):
            RTF(tmp_path / "y")


def make_syndof(root: Path, label_dir: str = "blur_map", n: int = 3, value: float = 3.5) -> Path:
    """Released-SYNDOF-like files: 8-bit images, 16-bit 3-channel labels storing 10 * value."""
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(root / "image" / f"{i:05d}.png", _textured(rng))
        stored = np.full((H, W), 10 * value)
        stored[: H // 2] = 10.0  # released x = 1 -> sigma 0
        write_png16(root / label_dir / f"{i:05d}.png", stored, channels=3)
    return root
