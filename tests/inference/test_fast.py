"""The fast inference path computes B's output: equal to the reference forward within 1e-4,
on oneDNN's fused convolutions (a test fails when it falls back to plain conv2d)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmenet.checkpoint import DefocusPredictor, prepare_for_inference
from dmenet.inference.fast import (
    FastBlurEstimator,
    FastPathUnsupported,
    _phase_weight,
    fast_blur_estimator,
    fast_predictor,
    onednn_fused_conv_problem,
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


def _prepared(model: nn.Module) -> nn.Module:
    return prepare_for_inference(copy.deepcopy(model))


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
def test_fast_equals_reference(b_models, mode):
    """Both backends equal B's own forward (BatchNorm not folded) within 1e-4."""
    model = b_models[mode]
    image = _photo(37, 61)  # not a multiple of 16: padded and cropped back
    with torch.no_grad():
        expected = model(image).y
    assert float(expected.std()) > 1e-2  # the comparison is not between constants
    prepared = _prepared(model)
    variants = {"oneDNN fused": FastBlurEstimator(prepared),
                "plain conv2d (GPU path)": FastBlurEstimator(prepared, fused=False)}
    assert variants["oneDNN fused"].uses_fused_convs(image)
    assert not variants["plain conv2d (GPU path)"].uses_fused_convs(image)
    for name, fast in variants.items():
        got = fast(image)
        assert got.shape == expected.shape, name
        assert float((got - expected).abs().max()) < 1e-4, name
        with torch.no_grad():  # a size that needs no padding to a multiple of 16
            other = float((fast(_photo(48, 80)) - model(_photo(48, 80)).y).abs().max())
        assert other < 1e-4, name


def test_padding_mode_matters(b_models):
    """The fast path reads each conv's padding mode: the two modes give different maps."""
    image = _photo(32, 48)
    zeros = FastBlurEstimator(_prepared(b_models["zeros"]))(image)
    replicate = FastBlurEstimator(_prepared(b_models["replicate"]))(image)
    assert float((zeros - replicate).abs().max()) > 1e-3


def test_fused_convs_in_use(b_models, caplog):
    """On the CPU the fast path runs oneDNN's fused convolutions: this fails when a PyTorch
    version changes or drops those (internal) ops and the fast path falls back to conv2d."""
    assert onednn_fused_conv_problem() is None
    with caplog.at_level(logging.WARNING):
        predictor = fast_predictor(DefocusPredictor(_prepared(b_models["replicate"])).eval())
    assert predictor.fast_path is True and predictor.blur_estimator.fused
    assert predictor.blur_estimator.uses_fused_convs(_photo(16, 16))
    assert caplog.records == []


def test_broken_onednn_ops_warn_and_compute_the_same(b_models, monkeypatch, caplog):
    """When the fused ops fail (as after a PyTorch upgrade that changed them), building the fast
    path logs one warning line and it runs plain conv2d, with the same result."""
    model = b_models["replicate"]
    prepared = _prepared(model)

    def changed_op(*args, **kwargs):
        raise RuntimeError("_convolution_pointwise() got an unexpected argument")

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", changed_op)
    assert "missing or changed" in onednn_fused_conv_problem()
    with caplog.at_level(logging.WARNING):
        fast = FastBlurEstimator(prepared)
    assert not fast.fused
    (record,) = caplog.records
    assert "plain conv2d" in record.getMessage() and "\n" not in record.getMessage()
    image = _photo(37, 61)
    with torch.no_grad():
        assert float((fast(image) - model(image).y).abs().max()) < 1e-4


def test_unfolded_b_keeps_the_reference_path_and_warns(b_models, caplog):
    """BatchNorm is folded once, by prepare_for_inference: the fast path refuses B with its
    BatchNorm, and fast_predictor says so in one line and keeps B's own forward."""
    model = b_models["zeros"]
    with pytest.raises(FastPathUnsupported, match="prepare_for_inference"):
        FastBlurEstimator(model)
    with caplog.at_level(logging.WARNING):
        predictor = fast_predictor(DefocusPredictor(model).eval())
    assert predictor.fast_path is False and predictor.blur_estimator is model
    (record,) = caplog.records
    assert "BatchNorm not folded" in record.getMessage()


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


def test_other_estimators_keep_their_forward(caplog):
    """A blur estimator that is not B runs its own forward (no fast path to fall back from)."""
    from tests.inference.tiny_b import TinyB

    tiny = TinyB().eval()
    with pytest.raises(FastPathUnsupported):
        fast_blur_estimator(tiny)
    with caplog.at_level(logging.WARNING):
        predictor = fast_predictor(DefocusPredictor(tiny))
    assert predictor.fast_path is False and predictor.blur_estimator is tiny
    assert caplog.records == []


def test_fast_predictor_keeps_label_space(b_models):
    reference = DefocusPredictor(_prepared(b_models["replicate"]), label_space="released").eval()
    fast = fast_predictor(reference)
    assert fast.fast_path is True and isinstance(fast.blur_estimator, FastBlurEstimator)
    assert fast.label_space == "released"
    image = _photo(20, 36)
    with torch.no_grad():
        assert float((fast(image) - reference(image)).abs().max()) < 1e-4
