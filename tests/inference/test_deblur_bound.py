"""bench/bench_deblur_bound.py: the SYNDOF render of fixed layers as a linear operator (the
deblurring bound), assembled from the renderer's pieces with each layer blurred only near its
pixels and the fill's factorisations computed once.

Its ``apply`` must equal the renderer (``render_defocus`` itself, the loop and the tiled
execution, on a scene whose occluder in front of the focus makes the renderer fill), its
``adjoint`` must be the exact transpose, and inverting it must recover detail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_deblur_bound as bound  # noqa: E402


def _source(h: int = 40, w: int = 56, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Textured float RGB (H, W, 3) and depth_mm (H, W): a slanted plane 1.5-3 m, a box in
    front of it at 0.7 m (in front of the focus: the renderer fills behind it) and a small box
    at 2 m."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.random((h // 4 + 1, w // 4 + 1, 3)), np.ones((4, 4, 1)))[:h, :w]
    image = (0.7 * blocks + 0.3 * rng.random((h, w, 3))).astype(np.float32)
    depth = np.tile(np.linspace(1500.0, 3000.0, w, dtype=np.float32), (h, 1))
    depth[8:24, 6:20] = 700.0
    depth[26:34, 36:46] = 2000.0
    return image, depth


def test_apply_is_the_renderer_fill_included():
    from dmenet.data.syndof import render_defocus
    from dmenet.data.thin_lens import Camera, clean_depth_mm, max_defocus_ratio

    image, depth = _source()
    sharp, _, sigma, op, exact_db = bound.render_with_operator(image, depth, 12.0, 0.5)
    assert any("fill" in step for step in op.steps), "the scene must exercise the occlusion fill"
    assert float(sigma.max()) > 2.0
    # the renderer itself, both implementations, on the same camera
    d = clean_depth_mm(torch.from_numpy(depth)[None, None])
    focus = torch.quantile(d.flatten(), 0.3).reshape(1)
    camera = Camera(focus, 12.0 / max_defocus_ratio(d, focus))
    x = op.apply(sharp)
    for renderer in ("loop", "tiled"):
        ref = render_defocus(sharp[None], d, camera, coc_step_px=0.5, renderer=renderer).image[0]
        assert float((x - ref).abs().max()) < 1e-5, renderer
    assert exact_db > 90.0
    # linear in the image: another image through the same operator is its render too
    other = torch.rand_like(sharp)
    ref = render_defocus(other[None], d, camera, coc_step_px=0.5, renderer="loop").image[0]
    assert float((op.apply(other) - ref).abs().max()) < 1e-5


def test_a_constant_image_stays_constant():
    image, depth = _source(seed=1)
    _, _, _, op, _ = bound.render_with_operator(image, depth, 12.0, 0.5)
    grey = torch.full((3, *depth.shape), 0.37)
    assert float((op.apply(grey) - 0.37).abs().max()) < 1e-5


def test_adjoint_is_the_exact_transpose():
    image, depth = _source(seed=2)
    _, _, _, op, _ = bound.render_with_operator(image, depth, 12.0, 0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.rand((3, *depth.shape), generator=g)
        v = torch.randn((3, *depth.shape), generator=g)
        lhs, rhs = float((op.apply(x) * v).sum()), float((x * op.adjoint(v)).sum())
        assert lhs == pytest.approx(rhs, rel=1e-4, abs=1e-3)


def test_inverting_the_render_recovers_detail():
    image, depth = _source(48, 64, seed=3)
    sharp, y, _, op, _ = bound.render_with_operator(image, depth, 12.0, 0.5)
    x = bound.invert_render(y, op, **bound.SETTINGS["e"])
    psnr = lambda a: float(-10 * torch.log10(((a - sharp) ** 2).mean()))  # noqa: E731
    assert psnr(x) > psnr(y) + 1.5
