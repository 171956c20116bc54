"""D: five 4x4 stride-2 convs, TF 'SAME' padding, ceil(H/32) x ceil(W/32) logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmenet.modules import DomainDiscriminator
from dmenet.modules.domain_discriminator import same_padding
from dmenet.registry import DOMAIN_DISCRIMINATORS


@pytest.fixture(scope="module")
def disc() -> DomainDiscriminator:
    return DomainDiscriminator()


@pytest.mark.parametrize("hw", [(97, 131), (64, 64), (33, 45), (1, 1), (240, 240)])
def test_output_is_ceil_over_32(disc, hw):
    h, w = hw
    with torch.no_grad():
        out = disc.eval()(torch.rand(2, 64, h, w))
    assert out.shape == (2, 1, math.ceil(h / 32), math.ceil(w / 32))
    assert torch.isfinite(out).all()


def test_same_padding_matches_tensorflow_rule():
    # TF: out = ceil(n / s); pad_total = max((out - 1) * s + k - n, 0), smaller half first
    assert same_padding(64, 4, 2) == (1, 1)
    assert same_padding(97, 4, 2) == (1, 2)
    assert same_padding(1, 4, 2) == (1, 2)


def test_layers_match_spec(disc):
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.bias is None for c in convs)
    bns = [m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == [64, 128, 256, 512]
    assert sum(p.numel() for p in disc.parameters()) == 2_828_160


def test_gradients_and_registry(disc):
    assert DOMAIN_DISCRIMINATORS.get("dmenet") is DomainDiscriminator
    feature = torch.rand(2, 64, 40, 36, requires_grad=True)
    disc.train()(feature).sum().backward()
    assert feature.grad is not None and feature.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.parameters())
    disc.zero_grad()


def test_rejects_non_feature_input(disc):
    with pytest.raises(ValueError, match="feature map"):
        disc(torch.rand(64, 32, 32))
