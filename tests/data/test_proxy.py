"""The proxy real domain: labelled, deterministic, and rendered differently from SYNDOF."""

from __future__ import annotations

import pytest
import torch

from dmenet.data.proxy import (
    ProxyLook,
    ProxyRealDomain,
    add_sensor_noise,
    colour_grade,
    jpeg_roundtrip,
)
from dmenet.errors import ConfigError, DataError
from dmenet.labels import BINARY_COC_THRESHOLD_PX, SIGMA_MAX_PX

SIZE = 40


@pytest.fixture(scope="module")
def proxy() -> ProxyRealDomain:
    return ProxyRealDomain(num_images=2, size=SIZE, seed=7)


@pytest.fixture(scope="module")
def no_gap() -> ProxyRealDomain:
    """The same scenes and cameras rendered like SYNDOF: Gaussian, sRGB, clean, lossless."""
    look = ProxyLook(aperture="gaussian", gamma=None, noise=False, jpeg_quality=None, grade=False)
    return ProxyRealDomain(num_images=2, size=SIZE, seed=7, look=look)


class TestProxyRealDomain:
    def test_items(self, proxy):
        assert len(proxy) == 2
        item = proxy[0]
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        for key in ("sigma_px", "label", "sharp_mask"):
            assert item[key].shape == (1, SIZE, SIZE)
        assert torch.allclose(item["label"], (item["sigma_px"] / SIGMA_MAX_PX).clamp(0, 1))
        # sharp (1) exactly where the CoC (4 sigma, paper rule) is at most the binary threshold
        sharp = (4 * item["sigma_px"] <= BINARY_COC_THRESHOLD_PX + 1e-6).float()
        assert torch.equal(item["sharp_mask"], sharp)
        assert item["set"] == "proxy" and item["name"].startswith("proxy_0000")

    def test_deterministic_and_seeded(self, proxy):
        again = ProxyRealDomain(num_images=2, size=SIZE, seed=7)
        assert torch.equal(again[1]["image"], proxy[1]["image"])
        other = ProxyRealDomain(num_images=1, size=SIZE, seed=8)
        assert not torch.equal(other[0]["image"], proxy[0]["image"])

    def test_domain_gap(self, proxy, no_gap):
        # same labels (cameras are drawn first), different pictures
        for i in range(2):
            assert torch.equal(proxy[i]["sigma_px"], no_gap[i]["sigma_px"])
            gap = (proxy[i]["image"] - no_gap[i]["image"]).abs().mean()
            assert gap > 0.01
        # the blur is real: a defocused image has less fine detail than its scene would
        assert any(float(proxy[i]["sigma_px"].max()) > 0.5 for i in range(2))

    def test_bad_count(self):
        with pytest.raises(DataError, match="at least one image"):
            ProxyRealDomain(num_images=0, size=SIZE)

    @pytest.mark.parametrize("field,value,message", [
        ("aperture", "box", "aperture 'box': choose disc or gaussian"),
        ("gamma", 0.0, "gamma must be > 0"),
        ("jpeg_quality", (95, 60), r"jpeg_quality must be \[low, high\].*got \[95, 60\]"),
        ("jpeg_quality", (0, 60), "jpeg_quality must be"),
        ("c_max_px", -1.0, "c_max_px must be > 0"),
        ("render_batch", 0, "render_batch must be >= 1"),
    ])
    def test_look_is_validated(self, field, value, message):
        with pytest.raises(ConfigError, match=message):
            ProxyLook(**{field: value})


class TestCameraLook:
    def test_noise_is_heteroscedastic_and_clipped(self):
        g = torch.Generator().manual_seed(0)
        flat = torch.cat([torch.full((1, 3, 32, 32), 0.05), torch.full((1, 3, 32, 32), 0.8)])
        noisy = add_sensor_noise(flat, g, shot=(1e-2, 1e-2), read_std=(1e-3, 1e-3))
        assert 0 <= noisy.min() and noisy.max() <= 1
        std_dark, std_bright = noisy[0].std(), noisy[1].std()
        assert std_bright > 2 * std_dark  # shot noise grows with the signal

    def test_colour_grade_range(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, 8, 8)
        y = colour_grade(x, g)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
        assert not torch.allclose(x, y)

    def test_jpeg_roundtrip(self):
        x = torch.rand(3, 16, 24)
        low, high = jpeg_roundtrip(x, 20), jpeg_roundtrip(x, 98)
        assert low.shape == x.shape
        assert (high - x).abs().mean() < (low - x).abs().mean()
