"""The thin-lens model: CoC formula, sigma rules, invalid depth, camera sampling."""

from __future__ import annotations

import math

import pytest
import torch

from dmenet.data.thin_lens import (
    Camera,
    CameraSampler,
    binary_from_coc,
    clean_depth_mm,
    coc_from_sigma,
    coc_px,
    count_layers,
    sigma_from_coc,
    sigma_max_px,
    signed_coc_px,
)
from dmenet.errors import DataError
from dmenet.labels import C_MAX_PX, SIGMA_MAX_PX


def ramp(b=2, h=32, w=48, near=800.0, far=9000.0):
    y = torch.linspace(near, far, h).view(1, 1, h, 1).expand(b, 1, h, w)
    return y.contiguous()


class TestFormula:
    def test_coc_values(self):
        depth = torch.tensor([500.0, 1000.0, 2000.0, 4000.0])
        c = coc_px(depth, 1000.0, 20.0)
        assert torch.allclose(c, torch.tensor([20.0, 0.0, 10.0, 15.0]))
        s = signed_coc_px(depth, 1000.0, 20.0)
        assert s[0] < 0 < s[2] and torch.all(s[1:] >= s[:-1])  # monotonic in depth

    def test_broadcast_per_sample(self):
        depth = ramp(b=2)
        focus = torch.tensor([1000.0, 3000.0]).view(2, 1, 1, 1)
        alpha = torch.tensor([10.0, 20.0]).view(2, 1, 1, 1)
        c = coc_px(depth, focus, alpha)
        assert c.shape == depth.shape
        assert torch.allclose(c[1], 20.0 * (depth[1] - 3000.0).abs() / depth[1])

    def test_sigma_rules(self):
        c = torch.tensor([0.0, 0.5, 1.0, 5.0, 28.0])
        assert torch.allclose(sigma_from_coc(c), c / 4)
        assert torch.allclose(sigma_from_coc(c, "reference"),
                              torch.tensor([0.0, 0.0, 0.0, 1.0, 6.75]))
        with pytest.raises(ValueError, match="sigma rule"):
            sigma_from_coc(c, "nope")
        assert binary_from_coc(c).tolist() == [0, 0, 0, 1, 1]

    def test_coc_of_sigma_and_largest_sigma(self):
        sigma = torch.tensor([0.0, 0.25, 1.75, 7.0])
        assert coc_from_sigma(sigma).tolist() == [0.0, 1.0, 7.0, 28.0]  # c = 4 sigma
        assert torch.equal(sigma_from_coc(coc_from_sigma(sigma)), sigma)
        assert coc_from_sigma(0.1) == pytest.approx(0.4)
        # the paper's c_max 28 -> our y = 1; the generator's c_max 29 under its rule -> 7 px too
        assert sigma_max_px() == SIGMA_MAX_PX == 7.0
        assert sigma_max_px(29.0, "reference") == 7.0

    def test_camera_coc_clip(self):
        camera = Camera(focus_mm=torch.tensor([1000.0]), alpha_px=torch.tensor([20.0]))
        depth = torch.tensor([500.0, 1000.0, 4000.0]).view(1, 1, 1, 3)
        assert camera.signed_coc_px(depth).flatten().tolist() == [-20.0, 0.0, 15.0]
        assert camera.signed_coc_px(depth, c_max_px=10.0).flatten().tolist() == [-10.0, 0.0, 10.0]


class TestInvalidDepth:
    def test_rule_farthest_valid(self):
        d = torch.tensor([[[[1000.0, float("nan"), 3000.0], [-5.0, float("inf"), 1e11]]]])
        out = clean_depth_mm(d)
        assert torch.isfinite(out).all()
        assert out.flatten().tolist() == [1000.0, 3000.0, 3000.0, 3000.0, 3000.0, 3000.0]

    def test_rule_is_local(self):
        """A thin stereo hole takes the farthest depth NEAR it, not a distant plane's."""
        d = torch.full((1, 1, 40, 40), 1000.0)
        d[..., :, 20:] = 2000.0
        d[..., :, 39] = 50000.0  # a far wall at the right border
        d[..., 5:35, 14] = float("nan")  # hole 6 px left of the 1 m / 2 m edge
        d[..., 5:35, 2] = float("nan")  # hole 18 px away from it: only 1 m nearby
        out = clean_depth_mm(d)
        assert torch.all(out[..., 5:35, 14] == 2000.0)
        assert torch.all(out[..., 5:35, 2] == 1000.0)
        # a large hole fills from its rim inwards: near its left rim the left depth
        hole = torch.full((1, 1, 40, 80), 700.0)
        hole[..., 60:] = 900.0
        hole[..., :, 5:75] = float("nan")
        out = clean_depth_mm(hole)
        assert torch.isfinite(out).all()
        assert float(out[0, 0, 20, 8]) == 700.0 and float(out[0, 0, 20, 72]) == 900.0

    @pytest.mark.parametrize("value", [float("nan"), 0.0, -1.0, float("inf")])
    def test_no_valid_depth_is_an_error(self, value):
        d = torch.full((2, 1, 4, 4), 1000.0)
        d[1] = value
        with pytest.raises(DataError, match=r"sample\(s\) \[1\] has no valid depth"):
            clean_depth_mm(d)

    def test_bad_shape(self):
        with pytest.raises(DataError, match=r"\(B, 1, H, W\)"):
            clean_depth_mm(torch.ones(4, 4))


class TestCameraSampler:
    def test_paper_mode_bounds(self):
        depth = ramp(b=8)
        cam = CameraSampler().sample(depth, torch.Generator().manual_seed(1))
        assert len(cam) == 8
        assert torch.all(cam.focus_mm >= 800.0 - 1e-3) and torch.all(cam.focus_mm <= 9000.0 + 1e-3)
        c = cam.signed_coc_px(depth).abs()
        assert float(c.max()) <= C_MAX_PX + 1e-3
        assert torch.isnan(cam.focal_mm).all()

    def test_seed_reproducible(self):
        depth = ramp(b=4)
        a = CameraSampler().sample(depth, torch.Generator().manual_seed(5))
        b = CameraSampler().sample(depth, torch.Generator().manual_seed(5))
        c = CameraSampler().sample(depth, torch.Generator().manual_seed(6))
        assert torch.equal(a.focus_mm, b.focus_mm) and torch.equal(a.alpha_px, b.alpha_px)
        assert not torch.equal(a.focus_mm, c.focus_mm)

    def test_fixed_alpha_up_hits_c_max(self):
        depth = ramp(b=2)
        cam = CameraSampler("fixed", focus_mm=2000.0).sample(depth)
        c = cam.signed_coc_px(depth).abs().flatten(1).amax(1)
        assert torch.allclose(c, torch.full((2,), C_MAX_PX), atol=1e-3)
        cam = CameraSampler("fixed", focus_mm=2000.0, alpha_px=4.0).sample(depth)
        assert cam.alpha_px.tolist() == [4.0, 4.0]

    def test_fixed_flat_scene_at_focus(self):
        depth = torch.full((1, 1, 8, 8), 2000.0)
        cam = CameraSampler("fixed", focus_mm=2000.0).sample(depth)
        assert float(cam.alpha_px[0]) == 0.0

    def test_reference_mode(self):
        # every pixel its own depth, so the layer count is set by the camera
        depth = torch.linspace(700.0, 20000.0, 64 * 64).view(1, 1, 64, 64).repeat(2, 1, 1, 1)
        cam = CameraSampler("reference").sample(depth, torch.Generator().manual_seed(0))
        assert set(cam.focal_mm.tolist()) <= {50.0, 70.0, 85.0}
        assert torch.isfinite(cam.f_number).all() and torch.all(cam.f_number > 0)
        # nearest depth shifted to at least 5 F
        assert torch.all(700.0 + cam.depth_offset_mm >= 5 * cam.focal_mm - 1e-3)
        coc = cam.signed_coc_px(depth)
        assert torch.allclose(coc.abs().flatten(1).amax(1), torch.full((2,), C_MAX_PX), atol=1e-2)
        n = count_layers(coc)
        assert torch.all((n >= 200) & (n <= 350)), n
        # alpha = m1 * m2 * F / N
        m1 = 64 / 36.0
        m2 = cam.focal_mm / (cam.focus_mm - cam.focal_mm)
        assert torch.allclose(m1 * m2 * cam.focal_mm / cam.f_number, cam.alpha_px, rtol=1e-4)

    def test_bad_settings(self):
        with pytest.raises(ValueError, match="camera mode"):
            CameraSampler("magic")
        with pytest.raises(ValueError, match="focus_mm"):
            CameraSampler("fixed")
        with pytest.raises(DataError, match="focus distance"):
            CameraSampler("fixed", focus_mm=-3.0)
        with pytest.raises(DataError, match="focus distance"):
            Camera([0.0], [1.0])
        with pytest.raises(DataError, match="alpha"):
            Camera([1000.0], [math.nan])

    def test_camera_json_ready(self):
        cam = Camera([1000.0, 2000.0], [3.0, 4.0])
        assert cam.sample(1) == {"focus_mm": 2000.0, "alpha_px": 4.0, "focal_mm": None,
                                 "f_number": None, "depth_offset_mm": 0.0}
