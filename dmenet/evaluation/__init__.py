"""Evaluation: the paper's protocols (SPEC section 5), reports, and the Zhuo & Sim baseline.

* :mod:`dmenet.evaluation.metrics`: every metric (CUHK accuracy / PR / AP / F-measure, RTF and
  SYNDOF MSE / MAE, the RTF disc-to-Gaussian lookup).
* :mod:`dmenet.evaluation.evaluator`: :class:`Evaluator` (per-image updates, dataset metrics,
  report writing) and :func:`evaluate_estimator` (any ``image -> y`` callable over a dataset).
* :mod:`dmenet.evaluation.report`: ``metrics.json``, ``table.md``, ``per_image.csv``,
  ``pr_curve.png`` writers and logger hand-off.
* :mod:`dmenet.evaluation.zhuo_sim`: the classical baseline (Zhuo & Sim 2011).
* :mod:`dmenet.evaluation.ablation`: the ablation report (``python -m dmenet.evaluation.ablation``).

Submodules are imported on demand, so ``import dmenet.evaluation`` stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["Evaluator", "evaluate_estimator", "estimate_sigma_px"]

_LAZY = {
    "Evaluator": "dmenet.evaluation.evaluator",
    "evaluate_estimator": "dmenet.evaluation.evaluator",
    "estimate_sigma_px": "dmenet.evaluation.zhuo_sim",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dmenet.evaluation' has no attribute {name!r}")
