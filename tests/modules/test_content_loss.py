"""C: frozen VGG19 (relu4_4) feature MSE; no gradients into C, always eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dmenet.modules import ContentLoss
from dmenet.modules.vgg import vgg19_features
from dmenet.registry import CONTENT_LOSSES


@pytest.fixture(scope="module")
def content() -> ContentLoss:
    return ContentLoss(weights=None)


def test_frozen_and_always_eval(content):
    assert all(not p.requires_grad for p in content.parameters())
    content.train()
    assert not content.training and not content.features.training
    assert CONTENT_LOSSES.get("vgg19_conv4_4") is ContentLoss


def test_stops_at_conv4_4(content):
    convs = [m for m in content.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 12 and convs[-1].out_channels == 512
    assert isinstance(content.features[-1], nn.ReLU)  # after ReLU, before pool4
    assert sum(p.numel() for p in content.parameters()) == 10_585_152


def test_loss_values_and_gradients(content):
    label = torch.rand(2, 1, 37, 29)
    assert float(content(label.clone(), label)) == 0.0
    pred = torch.rand(2, 1, 37, 29, requires_grad=True)
    loss = content(pred, label)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in content.parameters())


def test_same_weights_as_the_vgg_it_was_given(tmp_path):
    reference = vgg19_features(None)
    path = tmp_path / "vgg19.pth"
    torch.save(reference.state_dict(), path)
    c = ContentLoss(weights=str(path))
    assert torch.equal(c.features[25].weight, reference[25].weight)


def test_rejects_images(content):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        content(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        ContentLoss(weights=None, layer="conv9_9")
