"""D, the domain discriminator (SPEC section 3): synthetic vs real, on B's stage-0 feature.

Five 4x4 stride-2 convolutions without bias (64, 128, 256, 512, then 1 logit channel), each of
the first four followed by BatchNorm + LeakyReLU(0.2). Padding follows TensorFlow's 'SAME'
rule (asymmetric when needed), so the output is exactly ``ceil(H/32) x ceil(W/32)`` at any size
(plain ``padding=1`` would give one pixel less at odd sizes). Module names: ``layers.K.conv``,
``layers.K.bn`` for K = 0..3 and ``layers.4.conv``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmenet.modules.blocks import LEAKY_SLOPE
from dmenet.modules.spec import Part
from dmenet.registry import DOMAIN_DISCRIMINATORS

__all__ = ["DomainDiscriminator", "SameConv2d", "same_padding"]


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis: output = ceil(size / stride)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Module):
    """Strided conv with TF 'SAME' padding, optionally followed by BN + LeakyReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 4,
        stride: int = 2,
        norm_act: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, bias=False)
        self.bn = nn.BatchNorm2d(out_channels) if norm_act else None
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if norm_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
        x = self.conv(F.pad(x, (left, right, top, bottom)))
        if self.bn is not None:
            x = self.act(self.bn(x))
        return x


@DOMAIN_DISCRIMINATORS.register("dmenet")
class DomainDiscriminator(Part):
    """D: ``feature (N, in_channels, H, W) -> logits (N, 1, ceil(H/32), ceil(W/32))`` (1 = synthetic)."""

    def __init__(
        self, in_channels: int = 64, channels: tuple[int, ...] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        layers = []
        c_in = in_channels
        for c_out in channels:
            layers.append(SameConv2d(c_in, c_out))
            c_in = c_out
        layers.append(SameConv2d(c_in, 1, norm_act=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if feature.ndim != 4:
            raise ValueError(f"D expects a feature map (N, C, H, W), got {tuple(feature.shape)}")
        return self.layers(feature)
