"""The evaluation of one test set: per-image metrics, dataset metrics and the written report.

:class:`Evaluator` is what ``DMENet.test_step`` feeds (one evaluation batch of
docs/ARCHITECTURE.md at a time); :func:`evaluate_estimator` runs any ``image -> y`` callable
(a trained B, the Zhuo & Sim baseline, the official checkpoint) over a dataset with the same
Evaluator, so every estimator lands in the same tables.

Which metrics a set gets depends on what its batches carry:

* ``set_name`` starting with ``"rtf"``: the RTF protocol on ``"sigma_px"`` (Gaussian sigma, px;
  the RTF reader maps the disc radii through the RTF table): ``mse``, ``mae`` (of sigma /
  3.275 px, the protocol's units) and ``mse_px``, ``mae_px`` (the same errors in px).
* ``"label"`` (dense ``y``) or ``"sigma_px"``: SYNDOF ``mse``, ``mae`` (of ``y = sigma_px / 7``)
  and ``mse_px``, ``mae_px`` (of sigma in px); and, when no
  ``"sharp_mask"`` is given, a blur mask derived from it (``sigma_px > blurred_sigma_px``).
* ``"sharp_mask"`` (1 = sharp): ``accuracy``, ``f_measure``, ``ap`` (CUHK protocol).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from dmenet.data.thin_lens import sigma_from_coc
from dmenet.errors import DataError, OutputExistsError
from dmenet.evaluation import metrics as M
from dmenet.evaluation import report
from dmenet.labels import (
    BINARY_COC_THRESHOLD_PX,
    SIGMA_MAX_PX,
    check_label_space,
    from_sigma_px,
    to_sigma_px,
)

__all__ = ["DERIVED_BLUR_SIGMA_PX", "Evaluator", "evaluate_estimator", "is_rtf_set", "metric_names"]

DERIVED_BLUR_SIGMA_PX: float = float(sigma_from_coc(torch.tensor(BINARY_COC_THRESHOLD_PX), "paper"))
"""A dense label marks a pixel blurred when its sigma exceeds this (px): the binary map's CoC
threshold (c > 1 px) under the paper's sigma = c / 4, i.e. 0.25 px."""

REPORT_FILES = ("metrics.json", "table.md", "per_image.csv", "pr_curve.png", "pr_curve.csv")


def is_rtf_set(set_name: str) -> bool:
    """The RTF evaluation rules apply to sets whose name starts with ``"rtf"``."""
    return set_name.lower().startswith("rtf")


def metric_names(set_name: str, item: Mapping) -> list[str]:
    """The dataset metrics a set whose evaluation items look like ``item`` gets (e.g.
    ``["mse", "mae"]`` for RTF, ``["accuracy", "f_measure", "ap"]`` for CUHK).

    ``item`` is one unbatched sample (``"image" (3, H, W)`` and the set's labels); it is scored
    once, with an all-zero prediction, by the same rules as the real evaluation.
    """
    batch = {k: v[None] for k, v in item.items() if isinstance(v, torch.Tensor) and v.ndim == 3}
    evaluator = Evaluator(set_name, None, overwrite=True)
    image = batch["image"]
    evaluator.update(image.new_zeros(1, 1, *image.shape[-2:]), batch)
    return list(evaluator.compute())


class Evaluator:
    """Accumulates one test set's metrics image by image and writes its report.

    Args:
        set_name: the test set's name (``results/<set_name>/``); ``rtf*`` selects the RTF rules.
        out_dir: where :meth:`write` puts the report by default (``results/<set_name>``).
        label_space: the label space of the PREDICTIONS (``"ours"``, or ``"released"`` for the
            public DMENet_BDCS checkpoint). Everything is converted to sigma in px with
            :func:`dmenet.labels.to_sigma_px`, then to our ``y``, before any metric.
        overwrite: allow :meth:`write` to replace an existing report.
        num_thresholds: points of the precision-recall sweep (``t`` in ``linspace(0, 1, n)``).
        blurred_sigma_px: sigma above which a dense label counts as blurred (derived masks).

    Labels in the batch (``"label"``) are always in OUR space (the readers convert them).
    """

    def __init__(
        self,
        set_name: str,
        out_dir: Path | None = None,
        label_space: str = "ours",
        overwrite: bool = False,
        num_thresholds: int = 101,
        blurred_sigma_px: float = DERIVED_BLUR_SIGMA_PX,
    ) -> None:
        check_label_space(label_space)
        self.set_name = str(set_name)
        self.out_dir = Path(out_dir) if out_dir is not None else Path("results") / self.set_name
        self.label_space = label_space
        self.overwrite = overwrite
        self.blurred_sigma_px = float(blurred_sigma_px)
        self.pr = M.BlurDetectionPR(num_thresholds)
        self.records: list[dict] = []
        if not overwrite:  # fail before a long evaluation, not after it
            _check_report_free(self.out_dir)

    @property
    def rtf(self) -> bool:
        return is_rtf_set(self.set_name)

    def reset(self) -> None:
        self.records = []
        self.pr.reset()

    # ----------------------------------------------------------------------------- updating

    def update(self, y_pred: torch.Tensor, batch: Mapping) -> dict[str, float]:
        """Score one evaluation batch.

        Args:
            y_pred: ``(N, 1, H, W)`` predictions in ``self.label_space`` (normally N = 1).
            batch: the evaluation batch (``"image"``, ``"name"``, ``"set"`` and any of
                ``"label"``, ``"sharp_mask"``, ``"sigma_px"``).

        Returns the image's metrics (the batch mean when N > 1).
        """
        if y_pred.ndim != 4 or y_pred.shape[1] != 1:
            raise ValueError(f"y_pred must be (N, 1, H, W), got {tuple(y_pred.shape)}")
        names = batch.get("name", None)
        if isinstance(names, str):
            names = [names]
        results = []
        for i in range(y_pred.shape[0]):
            name = str(names[i]) if names is not None else f"{self.set_name}_{len(self.records):05d}"
            item = {k: v[i] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim == 4}
            results.append(self._update_one(y_pred[i, 0].detach().float().cpu(), item, name))
        if len(results) == 1:
            return results[0]
        return {k: sum(r[k] for r in results) / len(results) for k in results[0]}

    def _update_one(self, y_pred: torch.Tensor, item: Mapping, name: str) -> dict[str, float]:
        sigma_pred_px = to_sigma_px(y_pred, self.label_space)
        y = from_sigma_px(sigma_pred_px, "ours")  # one label space from here on
        out: dict[str, float] = {}
        sigma_gt_px = _plane(item.get("sigma_px"))
        if self.rtf:
            if sigma_gt_px is None:
                raise DataError(f"{name}: an RTF set needs 'sigma_px' in the batch")
            out["mse"], out["mae"] = M.rtf_errors(sigma_pred_px, sigma_gt_px)
            _add_px(out, M.rtf_sigma_max_px())
        else:
            label = _plane(item.get("label"))
            if label is None and sigma_gt_px is not None:
                label = from_sigma_px(sigma_gt_px, "ours")
            if label is not None:
                out["mse"], out["mae"] = M.dense_errors(y, label)
                _add_px(out, SIGMA_MAX_PX)
            sharp = _plane(item.get("sharp_mask"))
            blurred = None
            if sharp is not None:
                blurred = sharp < 0.5
            elif label is not None:
                blurred = to_sigma_px(label, "ours") > self.blurred_sigma_px
            if blurred is not None:
                if blurred.shape != y.shape:
                    raise DataError(
                        f"{name}: prediction {tuple(y.shape)} and mask {tuple(blurred.shape)} differ in size"
                    )
                out["accuracy"] = M.cuhk_accuracy(y, blurred)
                out["f_measure"] = M.f_measure(M.cuhk_blurred(y), blurred)
                out["ap"] = self.pr.image_ap(y, blurred)
                self.pr.update(y, blurred)
        self.records.append({"name": name, **out})
        return out

    # ---------------------------------------------------------------------------- results

    def compute(self) -> dict[str, float]:
        """Dataset metrics: per-image means of mse, mae, accuracy, f_measure; AP of the pooled curve.

        Only the keys the set's labels allow; ``{}`` for an unlabelled set.
        """
        out: dict[str, float] = {}
        for key in ("mse", "mae", "mse_px", "mae_px", "accuracy", "f_measure"):
            values = [r[key] for r in self.records if key in r and not math.isnan(r[key])]
            if values:
                out[key] = float(sum(values) / len(values))
        if self.pr.count:
            out["ap"] = self.pr.compute()["ap"]
        return {k: out[k] for k in report.METRIC_COLUMNS if k in out}

    def pr_curve(self) -> dict | None:
        """The pooled PR curve (``precision``, ``recall``, ``thresholds``, ``ap``), if masks exist."""
        return self.pr.compute() if self.pr.count else None

    def units(self) -> dict[str, str]:
        """What each metric of this set measures (``metrics.json``'s ``"units"``)."""
        return report.metric_units(rtf=self.rtf)

    def summary(self) -> dict:
        """``{"set", "images", "label_space", **metrics}``: one row of a comparison table."""
        return {
            "set": self.set_name,
            "images": len(self.records),
            "label_space": self.label_space,
            **self.compute(),
        }

    def write(self, out_dir: Path | None = None, logger=None, log_scalars: bool = True) -> dict:
        """Write ``metrics.json``, ``table.md``, ``per_image.csv`` and (when binary masks exist)
        ``pr_curve.png`` + ``pr_curve.csv`` into ``out_dir``; log them to ``logger``
        (``log_scalars=False`` when the caller already logged the metrics, e.g. via ``self.log``).

        Returns :meth:`summary` plus ``"files"`` (the written paths).
        """
        out_dir = Path(out_dir) if out_dir is not None else self.out_dir
        if not self.overwrite:
            _check_report_free(out_dir)
        summary = self.summary()
        metrics = {k: summary[k] for k in report.METRIC_COLUMNS if k in summary}
        units = {k: v for k, v in self.units().items() if k in metrics}
        table = report.markdown_table([summary]) + report.units_note(units)
        files = {
            "metrics.json": report.write_json(
                out_dir / "metrics.json", {**summary, "metrics": metrics, "units": units}
            ),
            "table.md": report.write_markdown(out_dir / "table.md", table),
            "per_image.csv": report.write_per_image_csv(out_dir / "per_image.csv", self.records),
        }
        curve = self.pr_curve()
        if curve is not None:
            files["pr_curve.png"] = report.plot_pr_curves(
                out_dir / "pr_curve.png", {self.set_name: curve},
                title=f"{self.set_name}: precision-recall (blurred = positive)",
            )
            files["pr_curve.csv"] = report.write_pr_csv(out_dir / "pr_curve.csv", curve)
        report.log_report(
            logger, self.set_name, metrics if log_scalars else {}, self.records,
            files.get("pr_curve.png"),
        )
        return {**summary, "files": {k: str(v) for k, v in files.items()}}


def _add_px(out: dict[str, float], scale_px: float) -> None:
    """``mse_px``, ``mae_px`` from ``mse``, ``mae`` of maps that are sigma / ``scale_px``."""
    out["mse_px"] = out["mse"] * scale_px * scale_px
    out["mae_px"] = out["mae"] * scale_px


def _plane(x) -> torch.Tensor | None:
    """A map of one image as ``(H, W)`` float (from ``(1, H, W)``, ``(1, 1, H, W)`` or ``(H, W)``)."""
    if x is None:
        return None
    x = torch.as_tensor(x).detach().float().cpu()
    while x.ndim > 2:
        if x.shape[0] != 1:
            raise ValueError(f"expected a single-channel map, got shape {tuple(x.shape)}")
        x = x[0]
    return x


def _check_report_free(out_dir: Path) -> None:
    existing = [name for name in REPORT_FILES if (Path(out_dir) / name).exists()]
    if existing:
        raise OutputExistsError(
            f"{out_dir}: already holds an evaluation report ({', '.join(existing)}); "
            "pass overwrite=True (--overwrite) or choose another output folder"
        )


def _to_batch(sample: Mapping) -> dict:
    """Accept dataset items (unbatched ``(3, H, W)``, ``name`` str) as well as batches."""
    batch = dict(sample)
    image = batch["image"]
    if image.ndim == 3:
        for key, value in list(batch.items()):
            if isinstance(value, torch.Tensor) and value.ndim == 3:
                batch[key] = value.unsqueeze(0)
            elif isinstance(value, str):
                batch[key] = [value]
    return batch


@torch.no_grad()
def evaluate_estimator(
    estimator: Callable[[torch.Tensor], torch.Tensor],
    samples: Iterable[Mapping],
    set_name: str,
    label_space: str = "ours",
    out_dir: Path | None = None,
    overwrite: bool = False,
    logger=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[dict, Evaluator]:
    """Evaluate any estimator on a dataset, the same way ``dmenet test`` evaluates B.

    Args:
        estimator: ``image (1, 3, H, W) in [0, 1] -> y (1, 1, H, W)`` in ``label_space``
            (an object with a ``.y`` attribute, such as :class:`BlurEstimate`, is accepted).
        samples: dataset items or evaluation batches (a Dataset, DataLoader or list).
        set_name: the set's name (``rtf*`` selects the RTF rules).
        out_dir: when given, the report is written there (refused if one exists, unless
            ``overwrite``).

    Returns ``(summary, evaluator)``: :meth:`Evaluator.summary` (plus ``"files"`` when written).
    """
    from tqdm.auto import tqdm

    # without out_dir nothing is written by this call, so there is nothing to refuse
    evaluator = Evaluator(
        set_name, out_dir=out_dir, label_space=label_space, overwrite=overwrite or out_dir is None
    )
    total = len(samples) if hasattr(samples, "__len__") else None
    for sample in tqdm(samples, total=total, desc=f"evaluate {set_name}", disable=not progress):
        batch = _to_batch(sample)
        output = estimator(batch["image"].to(device))
        y_pred = output.y if hasattr(output, "y") else output
        evaluator.update(y_pred.float().cpu(), batch)
    if out_dir is not None:
        return evaluator.write(out_dir, logger=logger), evaluator
    return evaluator.summary(), evaluator
