"""`dmenet test` end to end, in-process, on fixture datasets this test writes itself.

The Zhuo & Sim baseline (configs/zhuo_sim.yaml) needs no checkpoint, so the whole evaluation
path (DataModule reader -> DMENet.test_step -> Evaluator -> report files -> logger) runs fast.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from dmenet.cli import main


def _textured(rng, h=48, w=64):
    tex = (rng.random((h // 4, w // 4, 3)) > 0.5).astype(float)
    return np.kron(tex, np.ones((4, 4, 1)))


def _write_cuhk(root, n=3):
    """CUHK layout: image/out_of_focusNNNN.jpg + gt/out_of_focusNNNN.png (255 = sharp)."""
    rng = np.random.default_rng(0)
    (root / "image").mkdir(parents=True)
    (root / "gt").mkdir()
    for i in range(1, n + 1):
        tex = _textured(rng)
        sharp = np.zeros(tex.shape[:2], bool)
        sharp[10:38, 12 + 4 * i : 40 + 4 * i] = True
        image = np.where(sharp[..., None], tex, ndi.gaussian_filter(tex, (2.5, 2.5, 0)))
        cv2.imwrite(str(root / "image" / f"out_of_focus{i:04d}.jpg"), (image * 255).astype(np.uint8))
        cv2.imwrite(str(root / "gt" / f"out_of_focus{i:04d}.png"), sharp.astype(np.uint8) * 255)


def _write_rtf(root, n=2):
    """RTF layout: image/0/NAME.png + gt/NAME.npy (Gaussian sigma in px)."""
    rng = np.random.default_rng(1)
    (root / "image" / "0").mkdir(parents=True)
    (root / "gt").mkdir()
    for i in range(n):
        tex = _textured(rng)
        sigma = np.where(np.arange(64)[None, :] < 32, 0.3, 2.2) * np.ones((48, 1))
        image = np.where(sigma[..., None] < 1, tex, ndi.gaussian_filter(tex, (2.2, 2.2, 0)))
        cv2.imwrite(str(root / "image" / "0" / f"scene{i}.png"), (image * 255).astype(np.uint8))
        np.save(root / "gt" / f"scene{i}.npy", sigma.astype(np.float32))


BASE_CONFIG = """
trainer:
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  default_root_dir: runs
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {save_dir: runs, name: eval}
data:
  num_workers: 0
"""


@pytest.mark.parametrize(
    ("set_name", "writer", "data_args", "result_name", "metrics"),
    [
        ("cuhk", _write_cuhk, ["--data.cuhk_test_split", "all"], "cuhk",
         {"accuracy", "ap", "f_measure"}),
        # the RTF reader names the set by noise level; the name starts with "rtf": RTF rules
        ("rtf", _write_rtf, ["--data.rtf_noise", "0"], "rtf_0",
         {"mse", "mae", "mse_px", "mae_px"}),
    ],
)
def test_dmenet_test_writes_report_for_zhuo_sim(
    tmp_path, monkeypatch, repo_root, set_name, writer, data_args, result_name, metrics
):
    monkeypatch.chdir(tmp_path)
    writer(tmp_path / set_name)
    (tmp_path / "base.yaml").write_text(BASE_CONFIG)
    argv = [
        "test", "--config", "base.yaml", "--config", str(repo_root / "configs" / "zhuo_sim.yaml"),
        "--data.test_set", set_name, f"--data.{set_name}_root", str(tmp_path / set_name),
        *data_args, "--model.results_dir", "results",
    ]
    assert main(argv) == 0
    out = tmp_path / "results" / result_name
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["metrics"]) == metrics
    assert data["images"] == (3 if set_name == "cuhk" else 2)
    assert "| set | images |" in (out / "table.md").read_text()
    assert set(data["units"]) == metrics  # every metric says what it measures
    if set_name == "rtf":
        assert "MAE (px)" in (out / "table.md").read_text() and data["units"]["mae_px"].endswith("px")
    with open(out / "per_image.csv") as handle:
        assert len(list(csv.DictReader(handle))) == data["images"]
    assert (out / "pr_curve.png").is_file() == (set_name == "cuhk")
    if set_name == "cuhk":
        assert data["metrics"]["accuracy"] > 0.7  # the baseline finds the sharp region
    else:
        assert data["metrics"]["mae"] < 0.35
    # the active logger received the metrics
    logged = list((tmp_path / "runs" / "eval").rglob("metrics.csv"))
    assert logged and f"test/{result_name}/" in logged[0].read_text()
    # a second run refuses to overwrite the report unless asked
    assert main(argv) == 2
    assert main([*argv, "--model.overwrite_results", "true"]) == 0
