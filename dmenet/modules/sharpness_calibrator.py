"""S, sharpness calibration (SPEC section 3): 1x1 convolutions on B's output.

Only 1x1 convs, so B's receptive field is untouched: 64, 64, 64, 32, 32, 32, 16, 16, 16
channels, each BN + LeakyReLU(0.2) (``layers.K.conv``, ``layers.K.bn``), then a 1x1 conv to one
logit (``logit``). The label is the CUHK binary mask with 1 = sharp (reference convention).
"""

from __future__ import annotations

import torch
from torch import nn

from dmenet.modules.blocks import ConvBNLReLU
from dmenet.modules.spec import Part
from dmenet.registry import SHARPNESS_CALIBRATORS

__all__ = ["SharpnessCalibrator"]

PAPER_CHANNELS: tuple[int, ...] = (64, 64, 64, 32, 32, 32, 16, 16, 16)


@SHARPNESS_CALIBRATORS.register("dmenet")
class SharpnessCalibrator(Part):
    """S: ``y (N, 1, H, W) -> sharpness logits (N, 1, H, W)``; sigmoid(logit) = P(sharp)."""

    def __init__(self, channels: tuple[int, ...] = PAPER_CHANNELS) -> None:
        super().__init__()
        layers = []
        c_in = 1
        for c_out in channels:
            layers.append(ConvBNLReLU(c_in, c_out, kernel_size=1))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.logit = nn.Conv2d(c_in, 1, kernel_size=1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 4 or y.shape[1] != 1:
            raise ValueError(f"S expects a defocus map (N, 1, H, W), got {tuple(y.shape)}")
        return self.logit(self.layers(y))
