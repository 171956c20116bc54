"""Every evaluation metric of SPEC section 5, in one module.

All functions take defocus maps in OUR label space (``y = sigma_px / SIGMA_MAX_PX``) or in
pixels where the name says so; converting another model's output (e.g. the public checkpoint's
``sigma = max(0, (15 y - 1) / 2)``) happens before, through :mod:`dmenet.labels`.

* CUHK blur detection: per-image threshold ``tau = 0.3 * max(y) + 0.7 * min(y)``,
  ``blurred = y > tau``, pixel accuracy against the blur mask, mean over images
  (:func:`cuhk_accuracy`); F-measure at the same threshold (:func:`f_measure`).
* Precision-recall over tau and average precision (:class:`BlurDetectionPR`): each image's map
  is min-max normalised, ``score = (y - min) / (max - min)``, so the sweep ``score >= t`` for
  ``t`` in ``[0, 1]`` is exactly the family ``tau_t = min + t (max - min)``; ``t = 0.3`` is the
  reference accuracy threshold. Pixels of all images are pooled (torchmetrics' binned curve,
  with its automatic sigmoid switched off) and AP is the step-wise area under that curve.
* RTF: GT disc radius -> Gaussian sigma by nearest lookup in the packaged table, read with
  the RTF files (:func:`dmenet.data.real.rtf_disc_to_gauss`, re-exported here); prediction
  sigma clipped to ``[0, 3.275]``, both divided by 3.275, both cropped to the common top-left
  size, MSE and MAE per image (:func:`rtf_errors`).
* SYNDOF test: MSE / MAE of ``y`` against the normalised label (:func:`dense_errors`).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAveragePrecision, BinaryPrecisionRecallCurve

# the RTF ground-truth table is a fact of reading RTF files; the protocol's clip derives from it
from dmenet.data.real import rtf_disc_to_gauss, rtf_table

__all__ = [
    "CUHK_TAU_WEIGHT_MAX",
    "F_MEASURE_BETA2",
    "BlurDetectionPR",
    "blur_scores",
    "crop_to_common",
    "cuhk_accuracy",
    "cuhk_blurred",
    "cuhk_threshold",
    "dense_errors",
    "f_measure",
    "rtf_disc_to_gauss",
    "rtf_errors",
    "rtf_sigma_max_px",
    "rtf_table",
]

CUHK_TAU_WEIGHT_MAX: float = 0.3
"""Reference threshold ``tau = 0.3 * max(y) + 0.7 * min(y)`` (the weight of the maximum)."""

F_MEASURE_BETA2: float = 0.3
"""beta^2 of the F-measure, the blur-detection literature's choice (precision weighted higher)."""


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


# ------------------------------------------------------------------------------------ dense maps


def crop_to_common(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop two maps ``(..., H, W)`` to their common top-left size ``(min H, min W)``."""
    h = min(a.shape[-2], b.shape[-2])
    w = min(a.shape[-1], b.shape[-1])
    return a[..., :h, :w], b[..., :h, :w]


def dense_errors(y_pred: torch.Tensor, y_true: torch.Tensor) -> tuple[float, float]:
    """SYNDOF test: ``(MSE, MAE)`` of one image's ``y`` maps ``(1, 1, H, W)`` or ``(H, W)``."""
    y_pred, y_true = _as_tensor(y_pred).double(), _as_tensor(y_true).double()
    if y_pred.shape[-2:] != y_true.shape[-2:]:
        raise ValueError(
            f"prediction {tuple(y_pred.shape[-2:])} and label {tuple(y_true.shape[-2:])} differ in size"
        )
    diff = y_pred - y_true
    return float((diff**2).mean()), float(diff.abs().mean())


# -------------------------------------------------------------------------------------------- RTF


def rtf_sigma_max_px() -> float:
    """Largest Gaussian sigma of the RTF table (3.275 px): the RTF clip and normaliser."""
    return float(rtf_table()[1].max())


def rtf_errors(sigma_pred_px: torch.Tensor, sigma_gt_px: torch.Tensor) -> tuple[float, float]:
    """RTF protocol for one image: ``(MSE, MAE)``.

    Args:
        sigma_pred_px: predicted Gaussian sigma in px ``(..., H, W)``.
        sigma_gt_px: ground-truth Gaussian sigma in px ``(..., H', W')``, already mapped from
            the disc radius with :func:`rtf_disc_to_gauss`.

    The prediction is clipped to ``[0, 3.275]``, both maps are divided by 3.275 and cropped
    to their common top-left size.
    """
    top = rtf_sigma_max_px()
    pred = _as_tensor(sigma_pred_px).double().clamp(0.0, top) / top
    gt = _as_tensor(sigma_gt_px).double() / top
    pred, gt = crop_to_common(pred, gt)
    diff = pred - gt
    return float((diff**2).mean()), float(diff.abs().mean())


# ---------------------------------------------------------------------------- blur detection


def cuhk_threshold(y: torch.Tensor) -> float:
    """The reference's per-image threshold ``tau = 0.3 * max(y) + 0.7 * min(y)``."""
    y = _as_tensor(y)
    return float(CUHK_TAU_WEIGHT_MAX * y.max() + (1.0 - CUHK_TAU_WEIGHT_MAX) * y.min())


def cuhk_blurred(y: torch.Tensor) -> torch.Tensor:
    """Binary blur decision of one image's map: ``y > tau`` (True = blurred)."""
    y = _as_tensor(y)
    return y > cuhk_threshold(y)


def cuhk_accuracy(y: torch.Tensor, blurred_mask: torch.Tensor) -> float:
    """Pixel accuracy of ``y > tau`` against the blur mask (True/1 = blurred) for one image."""
    blurred_mask = _as_tensor(blurred_mask).bool()
    pred = cuhk_blurred(y)
    if pred.shape != blurred_mask.shape:
        raise ValueError(f"map {tuple(pred.shape)} and mask {tuple(blurred_mask.shape)} differ")
    return float((pred == blurred_mask).double().mean())


def f_measure(
    pred_blurred: torch.Tensor, blurred_mask: torch.Tensor, beta2: float = F_MEASURE_BETA2
) -> float:
    """F-measure ``(1 + b2) P R / (b2 P + R)`` of a binary decision (True = blurred).

    Precision and recall of the blurred class; 0 when nothing is predicted or nothing is
    blurred (P = R = 0).
    """
    pred = _as_tensor(pred_blurred).bool()
    mask = _as_tensor(blurred_mask).bool()
    tp = float((pred & mask).sum())
    predicted, actual = float(pred.sum()), float(mask.sum())
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    if precision + recall == 0.0:
        return 0.0
    return (1.0 + beta2) * precision * recall / (beta2 * precision + recall)


def blur_scores(y: torch.Tensor) -> torch.Tensor:
    """One image's map min-max normalised to ``[0, 1]``: ``score >= t`` <=> ``y >= min + t (max - min)``.

    A constant map has no preferred pixels: all scores are 0.
    """
    y = _as_tensor(y).double()
    lo, hi = y.min(), y.max()
    if float(hi - lo) <= 0.0:
        return torch.zeros_like(y, dtype=torch.float32)
    return ((y - lo) / (hi - lo)).clamp(0.0, 1.0).float()


class BlurDetectionPR:
    """Precision-recall over the relative threshold and average precision, pooled over images.

    ``update(y, blurred_mask)`` per image; ``compute()`` returns ``precision``, ``recall``,
    ``thresholds`` (numpy, torchmetrics order: thresholds ascending, precision/recall with a
    final (1, 0) point) and ``ap``. Scores are :func:`blur_scores`, already in ``[0, 1]``,
    and torchmetrics' automatic sigmoid is switched off (``normalization=None``).
    """

    def __init__(self, num_thresholds: int = 101) -> None:
        self.thresholds = torch.linspace(0.0, 1.0, num_thresholds)
        kwargs = {"thresholds": self.thresholds, "normalization": None}
        # one compute group: the curve and AP share a single binned confusion matrix
        self.metrics = MetricCollection(
            {"curve": BinaryPrecisionRecallCurve(**kwargs), "ap": BinaryAveragePrecision(**kwargs)},
            compute_groups=[["curve", "ap"]],
        )
        self.count = 0

    def reset(self) -> None:
        self.metrics.reset()
        self.count = 0

    def update(self, y: torch.Tensor, blurred_mask: torch.Tensor) -> None:
        scores = blur_scores(y).flatten().cpu()
        target = _as_tensor(blurred_mask).flatten().long().cpu()
        if scores.shape != target.shape:
            raise ValueError(f"map with {scores.numel()} pixels and mask with {target.numel()} differ")
        self.metrics.update(scores, target)
        self.count += 1

    def image_ap(self, y: torch.Tensor, blurred_mask: torch.Tensor) -> float:
        """AP of a single image with the same thresholds (does not touch the pooled state)."""
        metric = BinaryAveragePrecision(thresholds=self.thresholds, normalization=None)
        metric.update(blur_scores(y).flatten().cpu(), _as_tensor(blurred_mask).flatten().long().cpu())
        return float(metric.compute())

    def compute(self) -> dict:
        if self.count == 0:
            raise RuntimeError("BlurDetectionPR.compute() before any update()")
        out = self.metrics.compute()
        precision, recall, thresholds = out["curve"]
        return {
            "precision": precision.double().numpy(),
            "recall": recall.double().numpy(),
            "thresholds": thresholds.double().numpy(),
            "ap": float(out["ap"]),
        }
