"""S: 1x1 convs only, 64,64,64,32,32,32,16,16,16 + BN + LReLU, then one logit."""

from __future__ import annotations

import torch
from torch import nn

from dmenet.modules import SharpnessCalibrator
from dmenet.registry import SHARPNESS_CALIBRATORS


def test_only_1x1_convs_with_paper_widths():
    s = SharpnessCalibrator()
    convs = [m for m in s.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert [c.out_channels for c in convs] == [64, 64, 64, 32, 32, 32, 16, 16, 16, 1]
    assert len([m for m in s.modules() if isinstance(m, nn.BatchNorm2d)]) == 9
    assert sum(p.numel() for p in s.parameters()) == 14_065
    assert SHARPNESS_CALIBRATORS.get("dmenet") is SharpnessCalibrator


def test_pixelwise_so_receptive_field_is_one_pixel():
    s = SharpnessCalibrator().eval()
    y = torch.rand(1, 1, 9, 11)
    with torch.no_grad():
        out = s(y)
        y2 = y.clone()
        y2[0, 0, 4, 5] = 1.0 - y2[0, 0, 4, 5]
        changed = (s(y2) != out)[0, 0]
    assert out.shape == (1, 1, 9, 11)
    assert changed.nonzero().tolist() == [[4, 5]]


def test_gradients():
    s = SharpnessCalibrator().train()
    y = torch.rand(2, 1, 16, 16, requires_grad=True)
    s(y).mean().backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is not None for p in s.parameters())
