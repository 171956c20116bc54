"""RGB-D sources: every format on files the test writes itself, and on the real samples."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dmenet.data.io import write_image, write_png16
from dmenet.data.rgbd import (
    MOTORCYCLE_CALIB,
    EmbeddedRGBD,
    FolderRGBD,
    MiddleburyRGBD,
    SintelRGBD,
    SynthiaRGBD,
    disparity_to_depth_mm,
    drop_near_duplicates,
    make_rgbd_source,
    read_dpt,
    read_middlebury_calib,
    read_pfm,
    write_dpt,
    write_pfm,
)
from dmenet.errors import DataError

H, W = 12, 20


def rgb(seed=0):
    return np.random.default_rng(seed).random((H, W, 3)).astype(np.float32)


def depth_m(seed=0):
    return np.random.default_rng(seed).uniform(1.0, 9.0, (H, W)).astype(np.float32)


def check_item(item, name=None):
    assert item["image"].shape[0] == 3 and item["image"].dtype == torch.float32
    assert item["depth_mm"].shape == (1, *item["image"].shape[1:])
    assert item["depth_mm"].dtype == torch.float32
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
    if name is not None:
        assert item["name"] == name


class TestFormats:
    def test_dpt_round_trip_and_errors(self, tmp_path):
        d = depth_m()
        write_dpt(tmp_path / "a.dpt", d)
        assert np.array_equal(read_dpt(tmp_path / "a.dpt"), d)
        (tmp_path / "bad.dpt").write_bytes(b"\x00" * 40)
        with pytest.raises(DataError, match=r"bad\.dpt: not a Sintel \.dpt"):
            read_dpt(tmp_path / "bad.dpt")
        raw = (tmp_path / "a.dpt").read_bytes()
        (tmp_path / "short.dpt").write_bytes(raw[:50])
        with pytest.raises(DataError, match="truncated"):
            read_dpt(tmp_path / "short.dpt")

    def test_pfm_round_trip_bottom_up(self, tmp_path):
        d = depth_m()
        write_pfm(tmp_path / "d.pfm", d)
        assert np.array_equal(read_pfm(tmp_path / "d.pfm"), d)
        # rows are stored bottom to top: the first stored row is the image's last
        payload = (tmp_path / "d.pfm").read_bytes().split(b"\n", 3)[3]
        assert np.array_equal(np.frombuffer(payload, "<f4", count=W), d[-1])
        (tmp_path / "x.pfm").write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
        with pytest.raises(DataError, match=r"x\.pfm: not a PFM"):
            read_pfm(tmp_path / "x.pfm")

    def test_calib_and_disparity(self, tmp_path):
        (tmp_path / "calib.txt").write_text(
            "cam0=[1000.5 0 10; 0 1000.5 6; 0 0 1]\ncam1=[1000.5 0 10; 0 1000.5 6; 0 0 1]\n"
            "doffs=2.0\nbaseline=100.0\nwidth=20\nheight=12\n")
        calib = read_middlebury_calib(tmp_path / "calib.txt")
        assert calib == {"f_px": 1000.5, "baseline_mm": 100.0, "doffs_px": 2.0}
        depth = disparity_to_depth_mm(np.array([48.0, np.inf, np.nan, -2.0]), **calib)
        assert depth[0] == pytest.approx(100.0 * 1000.5 / 50.0)
        assert np.isnan(depth[1:]).all()
        (tmp_path / "bad.txt").write_text("hello\n")
        with pytest.raises(DataError, match=r"bad\.txt: not a Middlebury calib"):
            read_middlebury_calib(tmp_path / "bad.txt")


class TestGeneratedSources:
    def test_sintel(self, tmp_path):
        root = tmp_path / "training"
        for i in range(2):
            write_image(root / "clean" / "alley_1" / f"frame_{i:04d}.png", rgb(i))
            (root / "depth" / "alley_1").mkdir(parents=True, exist_ok=True)
            d = depth_m(i)
            d[0, 0] = 1e11  # sky
            write_dpt(root / "depth" / "alley_1" / f"frame_{i:04d}.dpt", d)
        src = SintelRGBD(tmp_path)  # the parent of training/ works too
        assert len(src) == 2
        item = src[1]
        check_item(item, "alley_1_frame_0001")
        expect = depth_m(1) * 1000.0
        assert np.allclose(item["depth_mm"][0, 1:].numpy(), expect[1:], rtol=1e-6)
        assert float(item["depth_mm"][0, 0, 0]) >= 1e9  # sky stays invalid for the renderer
        assert np.allclose(item["image"].permute(1, 2, 0).numpy(), rgb(1), atol=1 / 255)

    def test_synthia(self, tmp_path):
        root = tmp_path / "SYNTHIA-SEQS-05-SPRING"
        cm = np.random.default_rng(0).integers(100, 5000, (H, W)).astype(np.uint16)
        cm[0, :3] = 65535
        write_image(root / "RGB" / "Stereo_Left" / "Omni_B" / "000003.png", rgb())
        write_png16(root / "Depth" / "Stereo_Left" / "Omni_B" / "000003.png", cm, channels=3)
        src = SynthiaRGBD(tmp_path)
        item = src[0]
        check_item(item, "SYNTHIA-SEQS-05-SPRING_Stereo_Left_Omni_B_000003")
        d = item["depth_mm"][0].numpy()
        assert np.isinf(d[0, :3]).all()
        assert np.array_equal(d[1:], cm[1:].astype(np.float32) * 10.0)
        # an 8-bit depth PNG is refused with the file named
        cv2.imwrite(str(root / "Depth" / "Stereo_Left" / "Omni_B" / "000003.png"),
                    np.zeros((H, W, 3), np.uint8))
        with pytest.raises(DataError, match=r"000003\.png: SYNTHIA depth must be a 16-bit"):
            src[0]

    def test_middlebury(self, tmp_path):
        scene = tmp_path / "Toy-perfect"
        write_image(scene / "im0.png", rgb())
        disp = np.random.default_rng(0).uniform(20, 80, (H, W)).astype(np.float32)
        disp[2, 3] = np.inf
        write_pfm(scene / "disp0.pfm", disp)
        (scene / "calib.txt").write_text("cam0=[500 0 10; 0 500 6; 0 0 1]\ndoffs=5\n"
                                         "baseline=150\n")
        for root in (tmp_path, scene):  # a folder of scenes, or one scene
            item = MiddleburyRGBD(root)[0]
            check_item(item, "Toy-perfect")
            d = item["depth_mm"][0].numpy()
            assert np.isnan(d[2, 3])
            assert d[0, 0] == pytest.approx(150 * 500 / (disp[0, 0] + 5), rel=1e-5)

    @pytest.mark.parametrize("ext", ["npy", "png", "pfm"])
    def test_folder(self, tmp_path, ext):
        write_image(tmp_path / "image" / "a.jpg", rgb())
        d_cm = np.random.default_rng(0).integers(50, 900, (H, W)).astype(np.float32)
        (tmp_path / "depth").mkdir()
        if ext == "npy":
            np.save(tmp_path / "depth" / "a.npy", d_cm)
        elif ext == "png":
            write_png16(tmp_path / "depth" / "a.png", d_cm)
        else:
            write_pfm(tmp_path / "depth" / "a.pfm", d_cm)
        item = FolderRGBD(tmp_path, depth_scale_to_mm=10.0)[0]
        check_item(item, "a")
        assert np.allclose(item["depth_mm"][0].numpy(), d_cm * 10.0)

    def test_embedded(self):
        src = EmbeddedRGBD(num_scenes=2, size=(24, 32), seed=4)
        assert [src.name(i) for i in range(3)] == ["motorcycle", "scene_00004", "scene_00005"]
        moto = src[0]
        check_item(moto, "motorcycle")
        d = moto["depth_mm"]
        valid = torch.isfinite(d)
        assert 0.5 < float(valid.float().mean()) < 1.0  # NaN where the disparity is missing
        assert 1000 < float(d[valid].min()) and float(d[valid].max()) < 20000
        a, b = src[1], EmbeddedRGBD(num_scenes=2, size=(24, 32), seed=4)[1]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth_mm"], b["depth_mm"])
        assert a["image"].shape == (3, 24, 32)
        assert not torch.equal(a["depth_mm"], src[2]["depth_mm"])
        assert MOTORCYCLE_CALIB["f_px"] == pytest.approx(994.978)


class TestErrors:
    @pytest.mark.parametrize("kind", ["sintel", "synthia", "middlebury"])
    def test_empty_source_folder(self, tmp_path, kind):
        with pytest.raises(DataError, match=rf"{tmp_path}: no .* found \(empty {kind} source\)"):
            make_rgbd_source(f"{kind}:{tmp_path}")

    def test_folder_errors(self, tmp_path):
        with pytest.raises(DataError, match="needs image/ and depth/"):
            FolderRGBD(tmp_path)
        (tmp_path / "image").mkdir()
        (tmp_path / "depth").mkdir()
        with pytest.raises(DataError, match="no image/NAME"):
            FolderRGBD(tmp_path)
        (tmp_path / "image" / "a.png").write_bytes(b"not a png")
        np.save(tmp_path / "depth" / "a.npy", np.ones((H, W), np.float32))
        with pytest.raises(DataError, match=r"a\.png: not a readable image"):
            FolderRGBD(tmp_path)[0]
        write_image(tmp_path / "image" / "a.png", rgb())
        np.save(tmp_path / "depth" / "a.npy", np.ones((H + 1, W), np.float32))
        with pytest.raises(DataError, match=r"image is \(12, 20\) but depth is \(13, 20\)"):
            FolderRGBD(tmp_path)[0]

    def test_spec_errors(self, tmp_path):
        with pytest.raises(DataError, match="unknown source kind 'kinect'"):
            make_rgbd_source("kinect:/x")
        with pytest.raises(DataError, match="needs a path"):
            make_rgbd_source("sintel")
        with pytest.raises(DataError, match="no such folder"):
            make_rgbd_source(f"folder:{tmp_path / 'missing'}")
        assert len(make_rgbd_source("embedded:3", size=(8, 8))) == 4


class TestNearDuplicates:
    @pytest.mark.parametrize("method", ["phash", "ssim"])
    def test_consecutive_duplicates_dropped(self, method):
        frames = EmbeddedRGBD(num_scenes=3, size=(48, 64), include_motorcycle=False)
        base = [frames[i] for i in range(3)]
        noisy = dict(base[0], image=(base[0]["image"] + 0.01).clamp(0, 1))
        seq = [base[0], noisy, base[1], base[1], base[2]]
        kept = drop_near_duplicates(seq, method=method)
        assert list(kept.indices) == [0, 2, 4]


class TestRealSamples:
    def test_sintel(self, rgbd_samples):
        item = SintelRGBD(rgbd_samples / "sintel" / "training")[0]
        check_item(item, "market_2_frame_0001")
        d = item["depth_mm"]
        assert item["image"].shape == (3, 436, 1024)
        assert float(d[torch.isfinite(d) & (d < 1e9)].min()) > 100

    def test_synthia(self, rgbd_samples):
        item = SynthiaRGBD(rgbd_samples / "synthia")[0]
        check_item(item)
        assert item["image"].shape == (3, 760, 1280)
        assert torch.isinf(item["depth_mm"]).any()  # 65535 = far

    def test_middlebury(self, rgbd_samples):
        root = rgbd_samples / "middlebury2014"
        item = MiddleburyRGBD(root)[0]
        check_item(item, "Adirondack-perfect")
        d = item["depth_mm"][0].numpy()
        # the PNG in cm beside it holds the same scene: depth from disparity agrees
        cm = cv2.imread(str(root / "Adirondack-perfect" / "depth_cm16.png"),
                        cv2.IMREAD_UNCHANGED)[:, :, 0].astype(np.float32)
        ok = np.isfinite(d) & (cm > 0)
        assert np.median(np.abs(d[ok] - cm[ok] * 10.0) / (cm[ok] * 10.0)) < 0.01
