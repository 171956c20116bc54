"""The ablation report (paper section 7.1): B, BD, BDC, BDCS and BDCS without the auxiliary loss.

Each variant is trained for the same fixed budget (the same number of training batches, the
same seed, the same data) on the embedded default data, then evaluated on the held-out
synthetic test split (SYNDOF rendered from embedded scenes) and on the held-out proxy real
domain, with :func:`dmenet.evaluation.evaluator.evaluate_estimator`. The Zhuo & Sim baseline
is evaluated on the same images. Outputs, in ``--out``:

* ``ablation.md``: one comparison table (MSE, MAE, accuracy, AP on both sets, training time);
* ``ablation.json`` / ``ablation.csv``: the same numbers;
* ``ablation.png``: predictions side by side (image, ground truth, every variant, baseline);
* ``<variant>/``: the training logs (CSV), ``final.ckpt`` and each set's full report
  (``metrics.json``, ``table.md``, ``per_image.csv``, ``pr_curve.png``).

Run::

    python -m dmenet.evaluation.ablation --out runs/ablation     # 15 batches per variant, CPU
    python -m dmenet.evaluation.ablation --out runs/ablation --epochs 20 --samples-per-epoch 0 \
        --accelerator gpu --cli-arg=--model.vgg_weights=imagenet

The variants are ``configs/quickstart.yaml`` composed with ``configs/ablation/<variant>.yaml``
(the same files ``dmenet fit`` takes), so the report measures exactly what users train.
"""

from __future__ import annotations

import argparse
import contextvars
import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from dmenet.errors import DMENetError

__all__ = ["VARIANTS", "EVAL_SETS", "main", "run_ablation"]

VARIANTS: dict[str, str] = {
    "B": "b.yaml",
    "BD": "bd.yaml",
    "BDC": "bdc.yaml",
    "BDCS": "bdcs.yaml",
    "BDCS-noaux": "bdcs_noaux.yaml",
}
"""Variant name -> its file in ``configs/ablation/``."""

EVAL_SETS: dict[str, str] = {"synthetic": "embedded", "proxy": "proxy"}
"""Report column group -> the DataModule's evaluation set (its ``"test"`` split)."""

BASELINE = "Zhuo & Sim"
TABLE_METRICS = ("mse", "mae", "accuracy", "ap")
_TITLES = {"mse": "MSE", "mae": "MAE", "accuracy": "acc.", "ap": "AP"}


def _configs_dir() -> Path:
    here = Path.cwd() / "configs"
    if (here / "ablation").is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "configs"  # a source checkout


def _build(base_config: Path, variant_config: Path, cli_args: Sequence[str], seed: int):
    """Model and DataModule of one variant, exactly as ``dmenet fit`` would build them."""
    from dmenet.lightning_cli import DMENetCLI

    for path in (base_config, variant_config):
        if not Path(path).is_file():
            raise DMENetError(f"{path}: config not found (run from the repository root or pass --configs)")
    args = [
        "--config", str(base_config), "--config", str(variant_config),
        "--seed_everything", str(seed), *cli_args,
    ]
    # in a copy of the contextvars context, as dmenet.cli runs it: jsonargparse keeps its parser
    # (and through it this variant's model) in a context variable, alive during the next variant
    cli = contextvars.copy_context().run(DMENetCLI, args=args, run=False)
    return cli.model, cli.datamodule


def _train(
    model, datamodule, out_dir: Path, epochs: int, progress: bool, accelerator: str = "cpu"
) -> float:
    """Train for ``epochs`` epochs (no validation); returns the wall time in seconds."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=epochs, limit_val_batches=0,
        num_sanity_val_steps=0, logger=CSVLogger(str(out_dir), name="logs"),
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
        default_root_dir=str(out_dir), log_every_n_steps=5,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    elapsed = time.perf_counter() - start
    trainer.save_checkpoint(str(out_dir / "final.ckpt"))
    return elapsed


class _Recorder:
    """Wraps an estimator; keeps the first ``keep`` predictions (sigma in px) for the figure."""

    def __init__(self, estimator, keep: int) -> None:
        self.estimator, self.keep, self.maps = estimator, keep, []

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from dmenet.labels import to_sigma_px

        out = self.estimator(image)
        y = out.y if hasattr(out, "y") else out
        if len(self.maps) < self.keep:
            self.maps.append(to_sigma_px(y[0, 0].float().cpu(), "ours").numpy())
        return y


def _evaluate(estimator, datamodule, out_dir: Path, keep: int, progress: bool) -> tuple[dict, dict]:
    from dmenet.evaluation.evaluator import evaluate_estimator

    row, maps = {}, {}
    for column, set_name in EVAL_SETS.items():
        recorder = _Recorder(estimator, keep)
        summary, _ = evaluate_estimator(
            recorder, datamodule.eval_dataset(set_name, "test"), set_name,
            out_dir=out_dir / column, overwrite=True, progress=progress,
        )
        for key in TABLE_METRICS:
            if key in summary:
                row[f"{column}/{key}"] = summary[key]
        row[f"{column}/images"] = summary["images"]
        maps[column] = recorder.maps
    return row, maps


def _ground_truth(datamodule, keep: int) -> dict:
    from dmenet.labels import to_sigma_px

    shown = {}
    for column, set_name in EVAL_SETS.items():
        dataset = datamodule.eval_dataset(set_name, "test")
        items = [dataset[i] for i in range(min(keep, len(dataset)))]
        shown[column] = [
            (
                item["image"].permute(1, 2, 0).numpy(),
                to_sigma_px(item["label"][0], "ours").numpy() if "label" in item else None,
            )
            for item in items
        ]
    return shown


def comparison_table(rows: Sequence[dict]) -> str:
    """The markdown comparison table: one row per model, metric columns per evaluation set."""
    from dmenet.evaluation.report import format_value

    header = ["model", "train batches", "train time (s)"]
    keys = []
    for column in EVAL_SETS:
        for metric in TABLE_METRICS:
            keys.append(f"{column}/{metric}")
            header.append(f"{column} {_TITLES[metric]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        time_s = row.get("train_time_s")
        cells = [
            row["model"],
            format_value(row.get("train_batches")),
            "–" if time_s is None else f"{time_s:.0f}",
        ]
        cells += [format_value(row.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_side_by_side(path: Path, truth: dict, predictions: dict[str, dict]) -> Path:
    """Rows: test images of each set; columns: image, ground truth sigma, each model's sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmenet.labels import SIGMA_MAX_PX

    rows = [(column, i) for column in truth for i in range(len(truth[column]))]
    names = list(predictions)
    ncols = 2 + len(names)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(1.7 * ncols, 1.7 * len(rows) + 0.6), squeeze=False
    )
    shown = None
    for r, (column, i) in enumerate(rows):
        image, sigma = truth[column][i]
        panels = [("image", image), ("ground truth", sigma)]
        panels += [(name, predictions[name][column][i]) for name in names]
        for c, (title, data) in enumerate(panels):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{column} {i}", fontsize=8)
            if data is None:
                continue
            if c == 0:
                ax.imshow(image.clip(0, 1))
            else:
                shown = ax.imshow(data, cmap="magma", vmin=0.0, vmax=SIGMA_MAX_PX)
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
        bar.set_label("sigma (px)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run_ablation(
    out: Path,
    variants: Sequence[str] = tuple(VARIANTS),
    epochs: int = 3,
    base_config: Path | None = None,
    cli_args: Sequence[str] = (),
    seed: int = 0,
    baseline: bool = True,
    figure_images: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    accelerator: str = "cpu",
) -> list[dict]:
    """Train and evaluate every variant; write the table, the numbers and the figure into ``out``.

    Returns the table rows (one dict per model).
    """
    from dmenet.data.io import check_output_dir

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise DMENetError(f"unknown ablation variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    configs = _configs_dir()
    base_config = Path(base_config) if base_config else configs / "quickstart.yaml"
    out = check_output_dir(out, overwrite)
    rows, predictions, datamodule = [], {}, None
    for name in variants:
        model, built = _build(base_config, configs / "ablation" / VARIANTS[name], cli_args, seed)
        # the variants differ in the model only: reuse the DataModule, whose scenes and proxy
        # images are generated once (the same training and test data for every variant)
        if datamodule is None or dict(built.hparams) != dict(datamodule.hparams):
            datamodule = built
        variant_dir = out / name
        elapsed = _train(model, datamodule, variant_dir, epochs, progress, accelerator)
        batches = int(model.train_iteration)
        blur_estimator = model.blur_estimator.eval().cpu()  # evaluation runs on the CPU
        row, maps = _evaluate(blur_estimator, datamodule, variant_dir, figure_images, progress)
        rows.append({"model": name, "train_batches": batches, "train_time_s": elapsed, **row})
        predictions[name] = maps
        _write_outputs(out, rows)  # after every variant: a cut-short run still leaves a table
    if datamodule is None:
        raise DMENetError("no variant to run")
    if baseline:
        from dmenet.evaluation.zhuo_sim import ZhuoSimEstimator

        row, maps = _evaluate(ZhuoSimEstimator(), datamodule, out / "zhuo_sim", figure_images, progress)
        rows.append({"model": BASELINE, "train_batches": None, "train_time_s": None, **row})
        predictions[BASELINE] = maps
    _write_outputs(out, rows)
    plot_side_by_side(out / "ablation.png", _ground_truth(datamodule, figure_images), predictions)
    return rows


def _write_outputs(out: Path, rows: list[dict]) -> None:
    (out / "ablation.md").write_text(comparison_table(rows))
    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with (out / "ablation.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dmenet.evaluation.ablation",
        description="Train B, BD, BDC, BDCS and BDCS-noaux for the same budget on the embedded "
        "default data; compare them (and Zhuo & Sim) on the synthetic test split and the proxy "
        "real domain in one table and one figure.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=1,
                        help="training epochs per variant (the fixed budget; default 1)")
    parser.add_argument("--samples-per-epoch", type=int, default=45,
                        help="crops per stream per epoch (default 45: 15 batches of 3); 0 keeps "
                        "the base config's value")
    parser.add_argument("--base-config", type=Path, default=None,
                        help="base config (default configs/quickstart.yaml)")
    parser.add_argument("--cli-arg", action="append", default=[], metavar="ARG",
                        help="extra LightningCLI argument for every variant, e.g. "
                        "--cli-arg=--data.samples_per_epoch=30 (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip Zhuo & Sim")
    parser.add_argument("--figure-images", type=int, default=2,
                        help="test images of each set shown in the figure")
    parser.add_argument("--accelerator", default="cpu",
                        help="Lightning accelerator for training (cpu, gpu, auto; default cpu)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cli_args = list(args.cli_arg)
    if args.samples_per_epoch:
        cli_args.insert(0, f"--data.samples_per_epoch={args.samples_per_epoch}")
    rows = run_ablation(
        args.out, args.variants, args.epochs, args.base_config, cli_args, args.seed,
        baseline=not args.no_baseline, figure_images=args.figure_images,
        overwrite=args.overwrite, progress=not args.no_progress, accelerator=args.accelerator,
    )
    print(comparison_table(rows))
    print(f"written: {args.out / 'ablation.md'}, {args.out / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    import sys

    from dmenet.errors import DMENetError as _Error

    try:
        sys.exit(main())
    except _Error as exc:  # a user's mistake: one line, no traceback
        print(f"ablation: error: {exc}", file=sys.stderr)
        sys.exit(2)
