"""The loss terms of SPEC section 4, one function each (unweighted; DMENet applies the lambdas).

L_g = L_B + lambda_aux * sum_k L_aux,k + lambda_C * L_C + lambda_S * L_S + lambda_adv * L_adv
L_d = lambda_D * L_D
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "REFERENCE_LD_SCALE",
    "adversarial_loss",
    "auxiliary_loss",
    "blur_loss",
    "discriminator_loss",
    "sharpness_loss",
]

REFERENCE_LD_SCALE: float = 1e-3
"""The reference code multiplies L_D by 1e-3 on top of lambda_D (SPEC section 4); optional."""


def blur_loss(y_pred: torch.Tensor, y_label: torch.Tensor) -> torch.Tensor:
    """L_B: MSE between B(I_s) and the label, both ``(N, 1, H, W)`` in ``y`` units."""
    return F.mse_loss(y_pred, y_label)


def auxiliary_loss(aux_preds: Sequence[torch.Tensor], y_label: torch.Tensor) -> torch.Tensor:
    """sum_k L_aux,k: MSE of each scale's prediction against the label resized by nearest neighbour.

    ``aux_preds``: ``(N, 1, h_k, w_k)`` maps (coarse to fine, the full-resolution one included,
    as in the reference); ``y_label``: ``(N, 1, H, W)``.
    """
    total = y_label.new_zeros(())
    for pred in aux_preds:
        target = (
            y_label
            if pred.shape[-2:] == y_label.shape[-2:]
            else F.interpolate(y_label, size=pred.shape[-2:], mode="nearest")
        )
        total = total + F.mse_loss(pred, target)
    return total


def sharpness_loss(logits: torch.Tensor, sharp_mask: torch.Tensor) -> torch.Tensor:
    """L_S: sigmoid cross-entropy of S(B(I_b)) ``(N, 1, H, W)`` against the mask (1 = sharp)."""
    return F.binary_cross_entropy_with_logits(logits, sharp_mask.to(logits.dtype))


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_loss(
    synthetic_logits: torch.Tensor, real_logits: Sequence[torch.Tensor]
) -> torch.Tensor:
    """L_D: BCE of D with z = 1 for synthetic features, z = 0 for each real stream.

    The synthetic term is weighted by the number of real streams so both domains balance, as in
    the reference: with I_b and I_r, ``0.5 * [2 BCE(syn, 1) + BCE(cuhk, 0) + BCE(flickr, 0)]``.
    """
    if not real_logits:
        raise ValueError("L_D needs at least one real stream (the 'real' or 'blur' batch)")
    real = sum(_bce(logits, 0.0) for logits in real_logits)
    return 0.5 * (len(real_logits) * _bce(synthetic_logits, 1.0) + real)


def adversarial_loss(real_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_adv: BCE of D on real features against z = 1 ("synthetic"), summed over real streams."""
    if not real_logits:
        raise ValueError("L_adv needs at least one real stream (the 'real' or 'blur' batch)")
    return sum(_bce(logits, 1.0) for logits in real_logits)
