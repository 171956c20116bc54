"""The contracts between B, D, C, S and their users: what each part takes and returns.

Images are float32 RGB ``(N, 3, H, W)`` in ``[0, 1]``; defocus maps are ``(N, 1, H, W)`` with
``y = sigma_px / SIGMA_MAX_PX`` (dmenet.labels). Every part is a ``torch.nn.Module``:

* B (``BLUR_ESTIMATORS``, and the non-learned ``CLASSICAL_ESTIMATORS``):
  ``forward(image (N, 3, H, W)) -> BlurEstimate``, any H, W.
* D (``DOMAIN_DISCRIMINATORS``): ``forward(feature (N, 64, H, W)) -> logits
  (N, 1, ceil(H/32), ceil(W/32))``, 1 = synthetic.
* C (``CONTENT_LOSSES``): ``forward(pred_y (N, 1, H, W), label_y (N, 1, H, W)) -> scalar``;
  frozen (no parameter requires grad), gradients flow through it into ``pred_y`` only.
* S (``SHARPNESS_CALIBRATORS``): ``forward(y (N, 1, H, W)) -> logits (N, 1, H, W)``, 1 = sharp.

This module imports nothing from dmenet, so every estimator (dmenet.modules, the classical
baseline in dmenet.evaluation) can share :class:`BlurEstimate` without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["BlurEstimate"]


@dataclass
class BlurEstimate:
    """What every B returns.

    y: ``(N, 1, H, W)`` in ``[0, 1]``, ``sigma_px / SIGMA_MAX_PX``.
    aux: auxiliary predictions ``(N, 1, ceil(H/s), ceil(W/s))``, coarse to fine (may be empty).
    feature: ``(N, 64, H, W)`` stage-0 feature, D's input.
    """

    y: torch.Tensor
    aux: list[torch.Tensor] = field(default_factory=list)
    feature: torch.Tensor | None = None
