"""`dmenet syndof export`: layout, 16-bit labels, cameras, refusal, real samples."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dmenet.cli import main as dmenet_main
from dmenet.data.export import SUBFOLDERS
from dmenet.data.export import main as export_main
from dmenet.data.io import write_image
from dmenet.labels import SIGMA_MAX_PX, stored_png_to_y


@pytest.fixture()
def folder_source(tmp_path):
    """A tiny generic-folder source: two procedural scenes, depth in cm (.npy)."""
    from dmenet.data.procedural import make_scene

    root = tmp_path / "src"
    (root / "depth").mkdir(parents=True)
    for i in range(2):
        image, depth = make_scene((36, 52), seed=i)
        write_image(root / "image" / f"s{i}.png", image.permute(1, 2, 0).numpy())
        np.save(root / "depth" / f"s{i}.npy", depth[0].numpy() / 10.0)
    return root


def read16(path):
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw is not None and raw.dtype == np.uint16 and raw.ndim == 3 and raw.shape[2] == 3
    assert np.array_equal(raw[:, :, 0], raw[:, :, 1]) and np.array_equal(raw[:, :, 0], raw[:, :, 2])
    return raw[:, :, 0]


def test_export_layout_and_values(folder_source, tmp_path):
    out = tmp_path / "out"
    rc = export_main(["export", "--source", f"folder:{folder_source}", "--depth-scale", "10",
                      "--out", str(out), "--num", "3", "--seed", "2"])
    assert rc == 0
    for sub in SUBFOLDERS:
        assert len(list((out / sub).iterdir())) == 3, sub
    names = sorted(p.stem for p in (out / "image").iterdir())
    assert names == ["00000_s0", "00001_s1", "00002_s0"]  # cycles the source, new camera
    for name in names:
        image = cv2.imread(str(out / "image" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (36, 52, 3) and image.dtype == np.uint8
        value = read16(out / "blur_map" / f"{name}.png")
        meta = json.loads((out / "camera" / f"{name}.json").read_text())
        assert meta["blur_map"]["label_space"] == "ours"
        assert meta["focus_mm"] > 0 and meta["alpha_px"] >= 0
        assert 0 <= value.max() <= round(10 * SIGMA_MAX_PX)
        assert abs(value.max() / 10.0 - meta["sigma_px_max_in_image"]) <= 0.05 + 1e-6
        y = stored_png_to_y(value.astype(np.float32), "ours")
        assert float(y.max()) <= 1.0
        binary = cv2.imread(str(out / "blur_map_binary" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(binary)) <= {0, 255}
        # binary = CoC > 1 px = sigma > 0.25 px (paper rule)
        assert np.array_equal(binary == 255, value / 10.0 > 0.25)
    # a new camera for the repeated source image: the two renderings differ
    a = json.loads((out / "camera" / "00000_s0.json").read_text())
    b = json.loads((out / "camera" / "00002_s0.json").read_text())
    assert a["focus_mm"] != b["focus_mm"]


def test_same_seed_same_files(folder_source, tmp_path):
    for run in ("a", "b"):
        export_main(["export", "--source", f"folder:{folder_source}", "--depth-scale", "10",
                     "--out", str(tmp_path / run), "--seed", "5"])
    for sub in ("image", "blur_map"):
        for p in (tmp_path / "a" / sub).iterdir():
            assert p.read_bytes() == (tmp_path / "b" / sub / p.name).read_bytes()


def test_fixed_focus_reaches_c_max(folder_source, tmp_path):
    out = tmp_path / "out"
    export_main(["export", "--source", f"folder:{folder_source}", "--depth-scale", "10",
                 "--out", str(out), "--focus-mm", "3000", "--mode", "reference"])
    for p in (out / "blur_map").iterdir():
        assert read16(p).max() == 70  # largest CoC exactly c_max = 28 px: sigma 7 px
        meta = json.loads((out / "camera" / f"{p.stem}.json").read_text())
        assert meta["focus_mm"] == 3000 and meta["camera_mode"] == "fixed"
    out2 = tmp_path / "out2"
    export_main(["export", "--source", f"folder:{folder_source}", "--depth-scale", "10",
                 "--out", str(out2), "--focus-mm", "3000", "--coc-scale", "8",
                 "--max-coc", "20"])
    meta = json.loads(next((out2 / "camera").iterdir()).read_text())
    assert meta["alpha_px"] == 8 and meta["c_max_px"] == 20


def test_refuses_non_empty_out_and_bad_source(folder_source, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["syndof", "export", "--source", f"folder:{folder_source}", "--depth-scale", "10",
            "--out", str(out)]
    assert dmenet_main(args) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert dmenet_main(args + ["--overwrite"]) == 0
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert dmenet_main(["syndof", "export", "--source", f"sintel:{empty}", "--out",
                        str(tmp_path / "o2")]) == 2
    assert "empty sintel source" in capsys.readouterr().err


def test_readable_by_released_syndof_reader(folder_source, tmp_path):
    from dmenet.data.syndof_files import ReleasedSyndof

    out = tmp_path / "out"
    export_main(["export", "--source", f"folder:{folder_source}", "--depth-scale", "10",
                 "--out", str(out)])
    ds = ReleasedSyndof(out, label_space="ours")
    assert len(ds) == 2
    item = ds[0]
    value = read16(out / "blur_map" / "00000_s0.png")
    assert np.allclose(item["label"][0].numpy(), value / 10.0 / SIGMA_MAX_PX, atol=1e-6)


@pytest.mark.slow
def test_export_embedded_with_motorcycle(tmp_path):
    out = tmp_path / "out"
    assert export_main(["export", "--source", "embedded:1", "--size", "32", "40",
                        "--out", str(out), "--seed", "1", "--max-layers", "16"]) == 0
    value = read16(out / "blur_map" / "00000_motorcycle.png")
    assert value.shape == (500, 741)  # at the source's size
    assert (out / "image" / "00001_scene_00001.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind,sub", [("sintel", "sintel"), ("synthia", "synthia"),
                                      ("middlebury", "middlebury2014")])
def test_export_real_samples(rgbd_samples, tmp_path, kind, sub):
    out = tmp_path / kind
    assert export_main(["export", "--source", f"{kind}:{rgbd_samples / sub}",
                        "--out", str(out), "--seed", "0", "--max-layers", "16"]) == 0
    (name,) = [p.stem for p in (out / "image").iterdir()]
    image = cv2.imread(str(out / "image" / f"{name}.png"))
    value = read16(out / "blur_map" / f"{name}.png")
    assert image.shape[:2] == value.shape
    meta = json.loads((out / "camera" / f"{name}.json").read_text())
    assert meta["num_layers"] <= 16 and value.max() <= 70
