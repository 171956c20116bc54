"""The ablation report: its table and figure writers, and (slow) a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmenet.errors import DMENetError
from dmenet.evaluation import ablation


def _row(model, batches=40, time_s=12.3, value=0.1):
    row = {"model": model, "train_batches": batches, "train_time_s": time_s}
    for column in ablation.EVAL_SETS:
        for metric in ablation.TABLE_METRICS:
            row[f"{column}/{metric}"] = value
    return row


def test_comparison_table():
    text = ablation.comparison_table([_row("B"), _row("Zhuo & Sim", None, None, 0.5)])
    lines = text.strip().splitlines()
    assert lines[0] == (
        "| model | train batches | train time (s) | synthetic MSE | synthetic MAE | synthetic acc. "
        "| synthetic AP | proxy MSE | proxy MAE | proxy acc. | proxy AP |"
    )
    assert lines[2] == "| B | 40 | 12 | " + " | ".join(["0.1000"] * 8) + " |"
    assert lines[3].startswith("| Zhuo & Sim | – | – | 0.5000 |")


def test_side_by_side_figure(tmp_path):
    rng = np.random.default_rng(0)
    truth = {c: [(rng.random((8, 10, 3)), rng.random((8, 10)) * 7)] for c in ablation.EVAL_SETS}
    preds = {m: {c: [rng.random((8, 10)) * 7] for c in ablation.EVAL_SETS} for m in ("B", "BD")}
    path = ablation.plot_side_by_side(tmp_path / "a.png", truth, preds)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_unknown_variant_is_a_user_error(tmp_path):
    with pytest.raises(DMENetError, match="unknown ablation variant"):
        ablation.run_ablation(tmp_path / "out", variants=["BDX"])


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)  # the configs are found relative to the working folder
    tiny = [
        "--data.embedded_size=32", "--data.embedded_train_scenes=2", "--data.embedded_eval_scenes=1",
        "--data.proxy_images=2", "--data.crop_size=32", "--data.short_side_range=[32,40]",
        "--data.samples_per_epoch=2", "--data.batch_size_synthetic=1", "--data.batch_size_real=1",
        "--data.batch_size_blur=1", "--model.log_images_every_n_steps=0",
    ]
    out = tmp_path / "abl"
    rows = ablation.run_ablation(
        out, variants=["BD"], epochs=1, cli_args=tiny, figure_images=1,
        progress=False,
    )
    assert [r["model"] for r in rows] == ["BD", "Zhuo & Sim"]
    assert rows[0]["train_batches"] == 2  # the fixed budget: epochs x batches per epoch
    for row in rows:
        for column in ablation.EVAL_SETS:
            assert {f"{column}/{m}" for m in ablation.TABLE_METRICS} <= set(row)
    assert json.loads((out / "ablation.json").read_text())[1]["model"] == "Zhuo & Sim"
    assert "| BD | 2 |" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").is_file() and (out / "BD" / "final.ckpt").is_file()
    assert (out / "BD" / "proxy" / "pr_curve.png").is_file()
    with pytest.raises(DMENetError, match="not empty"):
        ablation.run_ablation(out, variants=["B"], epochs=1, cli_args=tiny)
