"""Evaluation reports: ``metrics.json``, ``table.md``, ``per_image.csv``, ``pr_curve.png``/``.csv``.

Plots use matplotlib's Agg backend (no display needed). :func:`log_report` hands the same
results to a Lightning logger: a ``WandbLogger`` gets a ``wandb.Table`` of the per-image
metrics and the PR plot as a ``wandb.Image``; every other logger gets ``log_metrics``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "METRIC_COLUMNS",
    "format_value",
    "log_report",
    "markdown_table",
    "metric_units",
    "plot_pr_curves",
    "units_note",
    "write_json",
    "write_markdown",
    "write_per_image_csv",
    "write_pr_csv",
]

METRIC_COLUMNS: dict[str, str] = {
    "mse": "MSE",
    "mae": "MAE",
    "mse_px": "MSE (px²)",
    "mae_px": "MAE (px)",
    "accuracy": "accuracy",
    "ap": "AP",
    "f_measure": "F-measure",
}
"""Metric keys in table order, with their column titles."""


def metric_units(rtf: bool = False) -> dict[str, str]:
    """What each metric measures; ``rtf``: the RTF protocol's sets."""
    if rtf:
        scale = "y = min(sigma_px, 3.275) / 3.275 (the RTF protocol's units)"
    else:
        scale = "y = sigma_px / 7 (the network's output; 7 px = the largest label)"
    return {
        "mse": f"mean squared error of {scale}",
        "mae": f"mean absolute error of {scale}",
        "mse_px": "mean squared error of sigma, px^2",
        "mae_px": "mean absolute error of sigma, px",
        "accuracy": "fraction of pixels classified right (blurred vs sharp), 0..1",
        "ap": "average precision of the blurred-pixel precision-recall curve, 0..1",
        "f_measure": "F-measure (beta^2 = 0.3) of the blurred-pixel map, 0..1",
    }


def units_note(units: Mapping[str, str]) -> str:
    """The lines under a table that say what its columns measure."""
    if not units:
        return ""
    lines = ["", "Units:"]
    lines += [f"- {METRIC_COLUMNS.get(k, k)}: {text}" for k, text in units.items()]
    return "\n".join(lines) + "\n"


def format_value(value, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` decimals, missing values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    rows: Sequence[Mapping], first_columns: Sequence[str] = ("set", "images"), digits: int = 4
) -> str:
    """A markdown table: ``first_columns`` then every metric of :data:`METRIC_COLUMNS` any row has."""
    metrics = [k for k in METRIC_COLUMNS if any(k in row for row in rows)]
    header = list(first_columns) + [METRIC_COLUMNS[k] for k in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [format_value(row.get(c), digits) for c in first_columns]
        cells += [format_value(row.get(k), digits) for k in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: Mapping) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def write_markdown(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_per_image_csv(path: Path, records: Sequence[Mapping]) -> Path:
    """One row per image: ``name`` then the metrics that image has (blank where it has none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in METRIC_COLUMNS if any(k in r for r in records)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", *keys])
        for record in records:
            writer.writerow([record["name"], *(_csv_cell(record.get(k)) for k in keys)])
    return path


def _csv_cell(value) -> str:
    return "" if value is None else repr(float(value))


def write_pr_csv(path: Path, curve: Mapping) -> Path:
    """The PR curve's points (threshold ``t`` on the min-max normalised map, precision, recall)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thresholds = list(curve["thresholds"]) + [float("nan")]  # the final (P=1, R=0) end point
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", "precision", "recall"])
        for t, p, r in zip(thresholds, curve["precision"], curve["recall"]):
            writer.writerow([repr(float(t)), repr(float(p)), repr(float(r))])
    return path


def plot_pr_curves(
    path: Path, curves: Mapping[str, Mapping], title: str = "precision-recall (blurred = positive)",
    mark_threshold: float | None = 0.3,
) -> Path:
    """Write a PNG with one PR curve per entry of ``curves`` (label -> curve dict with ``ap``).

    ``mark_threshold`` marks each curve's point at that relative threshold (0.3 = the reference
    accuracy threshold ``tau``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 4.5), dpi=100)
    for n, (label, curve) in enumerate(curves.items()):
        recall, precision = np.asarray(curve["recall"]), np.asarray(curve["precision"])
        (line,) = ax.plot(recall, precision, label=f"{label} (AP {curve['ap']:.3f})")
        if mark_threshold is not None and len(curve["thresholds"]):
            i = int(np.argmin(np.abs(np.asarray(curve["thresholds"]) - mark_threshold)))
            marker_label = f"t = {mark_threshold:g} (accuracy threshold)" if n == 0 else None
            ax.plot(recall[i], precision[i], "o", color=line.get_color(), label=marker_label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def log_report(
    logger, set_name: str, metrics: Mapping[str, float], records: Sequence[Mapping],
    pr_png: Path | None = None, step: int | None = None,
) -> None:
    """Send a set's results to a Lightning logger (or a list of them).

    Every logger gets ``log_metrics({"test/<set>/<metric>": value})``; a ``WandbLogger``
    additionally gets the per-image table and the PR plot.
    """
    if logger is None:
        return
    if isinstance(logger, (list, tuple)):
        for one in logger:
            log_report(one, set_name, metrics, records, pr_png, step)
        return
    if metrics:
        logger.log_metrics({f"test/{set_name}/{k}": float(v) for k, v in metrics.items()}, step=step)
    if type(logger).__name__ != "WandbLogger":
        return
    keys = [k for k in METRIC_COLUMNS if any(k in r for r in records)]
    if records:
        data = [[r["name"], *(r.get(k) for k in keys)] for r in records]
        logger.log_table(key=f"test/{set_name}/per_image", columns=["name", *keys], data=data)
    if pr_png is not None and Path(pr_png).is_file():
        logger.log_image(key=f"test/{set_name}/pr_curve", images=[str(pr_png)])
