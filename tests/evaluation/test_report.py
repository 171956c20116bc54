"""Report writers: table formatting, CSV blanks, the PR plot."""

from __future__ import annotations

import csv

import numpy as np

from dmenet.evaluation import report


def test_markdown_table_columns_and_missing_values():
    rows = [
        {"set": "syndof", "images": 4, "mse": 0.0123456, "mae": 0.1},
        {"set": "cuhk", "images": 2, "accuracy": 0.875, "ap": 0.9},
    ]
    text = report.markdown_table(rows)
    lines = text.strip().splitlines()
    assert lines[0] == "| set | images | MSE | MAE | accuracy | AP |"
    assert lines[2] == "| syndof | 4 | 0.0123 | 0.1000 | – | – |"
    assert lines[3] == "| cuhk | 2 | – | – | 0.8750 | 0.9000 |"


def test_per_image_csv_leaves_unknown_metrics_blank(tmp_path):
    path = report.write_per_image_csv(
        tmp_path / "p.csv", [{"name": "a", "mse": 0.5}, {"name": "b", "accuracy": 1.0}]
    )
    with open(path) as handle:
        rows = list(csv.reader(handle))
    assert rows == [["name", "mse", "accuracy"], ["a", "0.5", ""], ["b", "", "1.0"]]


def test_pr_plot_with_several_curves(tmp_path):
    curve = {"precision": np.array([0.5, 0.8, 1.0]), "recall": np.array([1.0, 0.6, 0.0]),
             "thresholds": np.array([0.0, 0.3]), "ap": 0.78}
    path = report.plot_pr_curves(tmp_path / "pr.png", {"B": curve, "zhuo_sim": curve})
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
