"""Zhuo & Sim 2011: recovers a known blur at a step edge; the B wrapper follows B's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from dmenet.evaluation.zhuo_sim import ZhuoSimEstimator, edge_sigma_px, estimate_sigma_px
from dmenet.labels import SIGMA_MAX_PX
from dmenet.modules.contracts import BlurEstimate
from dmenet.registry import CLASSICAL_ESTIMATORS


def _step_edge(sigma_px: float, shape=(40, 64), edge_col: int = 32) -> np.ndarray:
    """A vertical step (0.2 | 0.8) blurred with a Gaussian of ``sigma_px``, as RGB."""
    gray = np.full(shape, 0.2)
    gray[:, edge_col:] = 0.8
    gray = ndi.gaussian_filter(gray, sigma_px, mode="nearest")
    return np.repeat(gray[:, :, None], 3, axis=2)


@pytest.mark.parametrize("sigma_px", [1.5, 2.0, 3.0, 4.5])
def test_step_edge_sigma_within_15_percent(sigma_px):
    image = _step_edge(sigma_px)
    sparse, edges = edge_sigma_px(image)
    cols = np.nonzero(edges.any(axis=0))[0]
    assert edges.sum() >= 30 and set(cols) <= {30, 31, 32, 33}  # found at the edge only
    assert np.median(sparse[edges]) == pytest.approx(sigma_px, rel=0.15)
    dense = estimate_sigma_px(image)
    assert dense.shape == image.shape[:2] and dense.dtype == np.float32
    assert dense[10:30, 31:33].mean() == pytest.approx(sigma_px, rel=0.15)


def test_large_image_is_propagated_at_reduced_size():
    image = _step_edge(2.0, shape=(150, 260), edge_col=130)
    dense = estimate_sigma_px(image, max_side_px=64)  # coarse solve, full-resolution sigma
    assert dense.shape == (150, 260)
    assert dense[40:110, 129:131].mean() == pytest.approx(2.0, rel=0.15)


def test_sharp_edge_is_sharper_than_blurred_edge():
    sharp = estimate_sigma_px(_step_edge(0.01))[:, 31:33].mean()
    blurred = estimate_sigma_px(_step_edge(3.0))[:, 31:33].mean()
    assert sharp < 1.0 < 2.5 < blurred


def test_image_without_edges_gives_zeros():
    assert not estimate_sigma_px(np.full((16, 16, 3), 0.5)).any()


def test_bad_shape_is_an_error():
    with pytest.raises(ValueError, match="RGB"):
        estimate_sigma_px(np.zeros((8, 8)))


def test_registered_module_follows_the_b_contract():
    assert CLASSICAL_ESTIMATORS.get("zhuo_sim") is ZhuoSimEstimator
    model = CLASSICAL_ESTIMATORS.create("zhuo_sim")
    image = torch.from_numpy(_step_edge(2.0, shape=(24, 37), edge_col=18)).permute(2, 0, 1).float()
    out = model(torch.stack([image, image]))
    assert isinstance(out, BlurEstimate)
    assert out.y.shape == (2, 1, 24, 37) and out.aux == []
    assert out.feature.shape == (2, 64, 24, 37) and not out.feature.any()
    assert float(out.y.min()) >= 0.0 and float(out.y.max()) <= 1.0
    assert float(out.y[0, 0, 12, 17:19].mean()) * SIGMA_MAX_PX == pytest.approx(2.0, rel=0.15)
    assert list(model.parameters()) == []
