"""A tiny stand-in for B with B's contract and building blocks, so the slow-to-export VGG19 is
not needed where only the plumbing is under test (ONNX export, magnify, depth, predict)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmenet.modules.blocks import ConvBNLReLU, crop_to_scale, pad_to_multiple
from dmenet.modules.blur_estimator import BlurEstimate
from dmenet.modules.spec import Part
from dmenet.modules.vgg import ImageNetNormalize


class TinyB(Part):
    """U-Net with 4 poolings: image (N, 3, H, W) in [0, 1] -> BlurEstimate(y (N, 1, H, W))."""

    size_multiple = 16

    def __init__(self, weights=None, width: int = 8, padding_mode: str = "zeros") -> None:
        super().__init__()
        pad = padding_mode
        self.normalize = ImageNetNormalize()
        self.encoder = nn.ModuleList(ConvBNLReLU(3 if i == 0 else width, width, padding_mode=pad)
                                     for i in range(5))
        self.decoder = nn.ModuleList(ConvBNLReLU(2 * width, width, padding_mode=pad) for _ in range(4))
        self.head = nn.Sequential(nn.Conv2d(width, 1, 3, padding=1, padding_mode=pad), nn.Sigmoid())

    def forward(self, image: torch.Tensor) -> BlurEstimate:
        x, size_hw = pad_to_multiple(image, self.size_multiple)
        x = self.normalize(x)
        skips = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i < 4:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for layer, skip in zip(self.decoder, reversed(skips)):
            x = layer(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        return BlurEstimate(y=crop_to_scale(self.head(x), size_hw, 1), feature=x)
