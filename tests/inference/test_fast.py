"""The fast inference path computes B's output: equal to the reference forward within 1e-4."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmenet.checkpoint import DefocusPredictor, prepare_for_inference
from dmenet.inference.fast import (
    FastBlurEstimator,
    _phase_weight,
    fast_blur_estimator,
    fast_predictor,
)


def with_padding_mode(model: nn.Module, mode: str) -> nn.Module:
    """``model`` with every padded conv set to ``mode`` ("zeros" or "replicate"), in place."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and any(p > 0 for p in module.padding):
            module.padding_mode = mode
    return model


def _photo(height: int, width: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(1, 3, height + 2, width + 2, generator=gen), 3, 1)


@pytest.fixture(scope="module")
def b_models(random_b):
    """B (random VGG init, calibrated BatchNorm) with zero and with replicate padding."""
    models = {}
    for mode in ("zeros", "replicate"):
        models[mode] = with_padding_mode(copy.deepcopy(random_b), mode).eval()
    return models


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
def test_fast_equals_reference(b_models, mode):
    model = b_models[mode]
    image = _photo(37, 61)  # not a multiple of 16: padded and cropped back
    with torch.no_grad():
        expected = model(image).y
    assert float(expected.std()) > 1e-2  # the comparison is not between constants
    folded = prepare_for_inference(copy.deepcopy(model))
    variants = {
        "fused, BN folded here": FastBlurEstimator(model),
        "fused, BN folded before": FastBlurEstimator(folded),
        "plain conv2d (GPU path)": FastBlurEstimator(model, fused=False),
        "upsample + split conv": FastBlurEstimator(model, phase_upsample=False),
    }
    for name, fast in variants.items():
        got = fast(image)
        assert got.shape == expected.shape, name
        assert float((got - expected).abs().max()) < 1e-4, name


def test_padding_mode_matters(b_models):
    """The fast path reads each conv's padding mode: the two modes give different maps."""
    image = _photo(32, 48)
    zeros = FastBlurEstimator(b_models["zeros"])(image)
    replicate = FastBlurEstimator(b_models["replicate"])(image)
    assert float((zeros - replicate).abs().max()) > 1e-3


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
def test_phase_conv_is_upsample_then_conv(mode):
    """Nearest x2 upsampling + 3x3 conv == a 2x2 conv with four phases on the small map."""
    torch.manual_seed(0)
    x = torch.rand(1, 5, 6, 7, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    pad = "replicate" if mode == "replicate" else "constant"
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    expected = F.conv2d(F.pad(up, (1, 1, 1, 1), mode=pad), w)
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=pad), _phase_weight(w))  # (1, 16, 7, 8)
    got = torch.empty_like(expected)
    for i, (p, q) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        got[:, :, p::2, q::2] = phases[:, 4 * i:4 * i + 4, p:p + 6, q:q + 7]
    assert torch.allclose(got, expected, atol=1e-12)


def test_unsupported_model_falls_back():
    """A model without B's parts keeps the reference path (no error, no silent change)."""
    from tests.inference.tiny_b import TinyB

    tiny = TinyB().eval()
    assert fast_blur_estimator(tiny) is None
    predictor = fast_predictor(DefocusPredictor(tiny))
    assert predictor.fast_path is False and predictor.blur_estimator is tiny


def test_fast_predictor_keeps_label_space(b_models):
    reference = DefocusPredictor(b_models["replicate"], label_space="released").eval()
    fast = fast_predictor(reference)
    assert fast.fast_path is True and isinstance(fast.blur_estimator, FastBlurEstimator)
    assert fast.label_space == "released"
    image = _photo(20, 36)
    with torch.no_grad():
        assert float((fast(image) - reference(image)).abs().max()) < 1e-4
