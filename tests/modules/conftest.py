"""Shared, session-scoped subnetworks (random init: VGG19 is big, build it once)."""

from __future__ import annotations

import pytest

from dmenet.modules import BlurEstimator, LightBlurEstimator


@pytest.fixture(scope="session")
def paper_b() -> BlurEstimator:
    return BlurEstimator(weights=None)


@pytest.fixture(scope="session")
def light_b() -> LightBlurEstimator:
    return LightBlurEstimator(weights=None)
