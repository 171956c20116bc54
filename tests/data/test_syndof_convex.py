"""Convex compositing: a constant photo renders constant, whatever the depth map, camera,
sigma rule, renderer and option (SPEC section 2 step 4). These tests never skip, except the
real-sample one without ../shared."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmenet.data.syndof import regionfill, relax_fill, render_defocus, render_from_sigma
from dmenet.data.syndof.fill import smooth_start, start_kernel
from dmenet.data.thin_lens import CameraSampler

GREY = 128.0 / 255.0
TOL = 0.5 / 255.0
H, W = 24, 36
KINDS = ("steps", "ramp", "noise", "holes", "sky")


def random_depth(kind: str, g: torch.Generator, h: int = H, w: int = W) -> torch.Tensor:
    """``(1, 1, h, w)`` mm: fronto-parallel steps, a slanted ramp, per-pixel noise, steps with
    invalid holes (NaN, 0, inf), a ramp under a sky band (1e11 mm)."""
    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand(1, generator=g))

    if kind in ("steps", "holes"):
        d = torch.full((1, 1, h, w), u(3000, 9000))
        for _ in range(4):
            y, x = int(u(0, h - 4)), int(u(0, w - 4))
            d[..., y:y + int(u(3, h / 2)), x:x + int(u(3, w / 2))] = u(500, 9000)
        if kind == "holes":
            d[..., int(u(0, h - 3)):, int(u(0, w - 5)):][..., :3, :5] = float("nan")
            d[..., :, int(u(0, w - 2))] = 0.0
            d[..., int(u(0, h - 1)), :] = float("inf")
        return d
    if kind in ("ramp", "sky"):
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        t = u(0, 1) * yy + u(0, 1) * xx
        d = (u(400, 1500) + u(1000, 8000) * t / t.max().clamp(min=1e-6))[None, None]
        if kind == "sky":
            d[..., : int(u(2, h / 2)), :] = 1e11
        return d
    return torch.exp(torch.empty(1, 1, h, w).uniform_(6.5, 9.0, generator=g))  # noise


def random_camera(depth: torch.Tensor, g: torch.Generator, rule_index: int):
    mode = ("paper", "reference")[rule_index % 2]
    c_max = 10.0 + 19.0 * float(torch.rand(1, generator=g))
    return CameraSampler(mode, c_max_px=c_max, max_redraws=2).sample(depth, g), c_max


@pytest.mark.parametrize("renderer", ["tiled", "batched", "loop"])
@pytest.mark.parametrize("render_mode", ["paper", "reference"])
def test_flat_grey_stays_flat(renderer, render_mode):
    """Every combination of sigma rule, aperture, gamma and fill, over random depth kinds and
    random cameras: every pixel within 0.5 / 255 of the grey."""
    g = torch.Generator().manual_seed(len(renderer) * 10 + len(render_mode))
    image = torch.full((1, 3, H, W), GREY)
    # a half fraction of the 2^4 design: every value of every option, every pair of options
    combos = [c for c in itertools.product(("paper", "reference"), ("gaussian", "disc"),
                                           (None, 2.2), (True, False))
              if sum(v in ("paper", "gaussian", None, True) for v in c) % 2 == 0]
    for j, (rule, aperture, gamma, fill) in enumerate(combos + combos[:2]):
        kind = KINDS[j % len(KINDS)]
        depth = random_depth(kind, g)
        camera, c_max = random_camera(depth, g, j)
        out = render_defocus(image, depth, camera, sigma_rule=rule, render_mode=render_mode,
                             renderer=renderer, aperture=aperture, gamma=gamma, fill=fill,
                             c_max_px=c_max)
        assert int(out.num_layers[0]) > 1 or kind == "noise"
        dev = float((out.image - GREY).abs().max())
        assert dev < TOL, (kind, rule, aperture, gamma, fill, dev * 255)


@pytest.mark.parametrize("renderer", ["tiled", "batched", "loop"])
def test_flat_grey_from_sigma(renderer):
    g = torch.Generator().manual_seed(3)
    image = torch.full((1, 3, H, W), GREY)
    sigma = F.interpolate(torch.rand(1, 1, 4, 6, generator=g) * 6, size=(H, W), mode="nearest")
    order = torch.rand(1, 1, H, W, generator=g)
    for aperture in ("gaussian", "disc"):
        out = render_from_sigma(image, sigma, order, aperture=aperture, renderer=renderer)
        assert float((out - GREY).abs().max()) < TOL


def test_flat_grey_on_the_real_samples(rgbd_samples):
    """The real depth maps of ../shared/data/rgbd_samples (Sintel, SYNTHIA, Middlebury) at a
    sixth of their size, a generator-like camera, reference mode, layers merged to 60."""
    from dmenet.data.rgbd import make_rgbd_source

    specs = {"sintel": rgbd_samples / "sintel", "synthia": rgbd_samples / "synthia",
             "middlebury": rgbd_samples / "middlebury2014"}
    g = torch.Generator().manual_seed(0)
    for kind, path in specs.items():
        depth = make_rgbd_source(f"{kind}:{path}")[0]["depth_mm"][None]
        depth = depth[..., ::6, ::6].contiguous()
        camera = CameraSampler("reference", c_max_px=29.0, max_redraws=3).sample(depth, g)
        image = torch.full((1, 3, *depth.shape[-2:]), GREY)
        out = render_defocus(image, depth, camera, sigma_rule="reference", max_layers=60,
                             render_mode="reference", c_max_px=29.0)
        assert int(out.num_layers[0]) == 60
        assert float((out.image - GREY).abs().max()) < TOL, kind


def test_regionfill_is_the_laplace_solution():
    """A row segment between two known values fills linearly (the discrete harmonic function
    with 2 in-row neighbours known ... here a 1-pixel-high image: only in-image neighbours)."""
    values = np.zeros((1, 1, 7))
    values[0, 0, 0], values[0, 0, 6] = 1.0, 4.0
    region = np.zeros((1, 7), dtype=bool)
    region[0, 1:6] = True
    out = regionfill(values, region)
    assert np.allclose(out[0, 0], np.linspace(1.0, 4.0, 7))
    # border pixels count only in-image neighbours: a region touching the border is flat
    region = np.zeros((1, 7), dtype=bool)
    region[0, 3:] = True
    assert np.allclose(regionfill(values, region)[0, 0, 3:], 0.0)
    # 2-D: each filled pixel is the mean of its 4 neighbours
    rng = np.random.default_rng(0)
    values = rng.random((3, 12, 15))
    region = rng.random((12, 15)) < 0.4
    out = regionfill(values, region)
    pad = np.pad(out, ((0, 0), (1, 1), (1, 1)))
    cnt = np.pad(np.ones((12, 15)), 1)
    nsum = pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]
    deg = cnt[:-2, 1:-1] + cnt[2:, 1:-1] + cnt[1:-1, :-2] + cnt[1:-1, 2:]
    assert np.allclose((nsum / deg)[:, region], out[:, region])
    assert np.array_equal(out[:, ~region], values[:, ~region])


def test_relaxation_fill_converges_to_the_exact_one():
    """The batched renderer's fill (red-black SOR on the whole frame, a batch at once) reaches
    the sparse solve; colour / alpha of a constant photo is exact after any number of
    sweeps."""
    rng = np.random.default_rng(1)
    values = torch.from_numpy(rng.random((2, 4, 20, 24)))
    values[:, 3] = (values[:, 3] > 0.5).double()  # an alpha channel: the union, 0 or 1
    region = torch.from_numpy(rng.random((2, 1, 20, 24)) < 0.5)
    known = torch.cat([values[:, :3] * values[:, 3:], values[:, 3:]], 1)
    exact = torch.stack([torch.from_numpy(regionfill(known[i].numpy(), region[i, 0].numpy()))
                         for i in range(2)])
    assert float((relax_fill(known, region, sweeps=300) - exact).abs().max()) < 1e-9
    few = relax_fill(known, region, sweeps=1)
    assert float((few - exact).abs().max()) > 1e-3  # one sweep is not the solution yet
    grey = torch.cat([GREY * values[:, 3:].expand(2, 3, 20, 24), values[:, 3:]], 1)
    for sweeps in (1, 3, 8):
        out = relax_fill(grey, region, sweeps=sweeps)
        a = out[:, 3:]
        ratio = out[:, :3] / torch.where(a > 0, a, 1.0)
        assert float((ratio - GREY)[(a > 1e-6).expand_as(ratio)].abs().max()) < 1e-9


def test_the_relaxation_starts_from_a_local_average_of_the_known_values():
    """:func:`smooth_start`: the known values outside the region; inside, a weighted mean of the
    known values within the Gaussian's reach (so a region pixel all of whose known pixels within
    reach hold the same value starts at that value), 0 beyond any; and the same at every
    position: a frame cut elsewhere starts alike away from its cut edges."""
    reach = start_kernel().shape[0] // 2
    assert reach == 12  # ceil(3 sigma), sigma = FILL_START_SIGMA_PX
    rng = np.random.default_rng(2)
    h, w = 60, 70
    region = torch.zeros(1, 1, h, w, dtype=torch.bool)
    region[..., 5:50, 8:60] = True  # a box whose middle is beyond reach of every known pixel
    known = torch.from_numpy(rng.random((1, 2, h, w)))
    known[:, 0] = 0.7  # constant outside
    known[:, 1, 20:] = 0.25  # varying only above row 20
    known = torch.where(region, 0.0, known)  # (the values inside do not count)
    start = smooth_start(known, region)
    assert torch.equal(start[~region.expand_as(start)], known[~region.expand_as(known)])
    # the Chebyshev distance to the nearest known pixel, per region pixel
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dist = torch.minimum(torch.minimum(yy - 4, 50 - yy), torch.minimum(xx - 7, 60 - xx))
    inside = region[0, 0]
    reached, beyond = inside & (dist <= reach), inside & (dist > reach)
    assert beyond.any() and reached.any()
    assert float((start[0, 0][reached] - 0.7).abs().max()) < 1e-12
    assert float(start[0, :, beyond].abs().max()) == 0.0
    # from row 32 on, all known pixels within reach are from row 20 on: 0.25
    low = reached & (yy >= 20 + reach)
    assert low.any()
    assert float((start[0, 1][low] - 0.25).abs().max()) < 1e-12
    values = known[0, 1][~inside]
    assert float(start[0, 1][reached].min()) >= float(values.min()) - 1e-12
    assert float(start[0, 1][reached].max()) <= float(values.max()) + 1e-12
    # the frame cut 3 rows and 5 columns later: the same start beyond reach of the cut
    cut = smooth_start(known[..., 3:, 5:], region[..., 3:, 5:])
    assert float((cut - start[..., 3:, 5:])[..., reach:, reach:].abs().max()) < 1e-12


def test_an_overshooting_relaxation_is_brought_back_to_a_colour_and_an_alpha():
    """Hand-computed: after the sweeps, alpha is clamped to [0, 1]; where alpha overshot 1 the
    colour shrinks with it (the same colour / alpha), colour stays in [0, alpha], and values
    within the bounds pass unchanged."""
    x = torch.tensor([[0.9, 1.5], [0.3, 0.6], [0.7, -0.1], [0.2, 0.25]])  # (colour, alpha)
    known = x.T.reshape(1, 2, 1, 4).double()
    region = torch.zeros(1, 1, 1, 4, dtype=torch.bool)  # no sweeps change anything
    out = relax_fill(known, region, sweeps=1)[0, :, 0].T
    expected = torch.tensor([[0.6, 1.0],  # alpha 1.5 -> 1, colour 0.9 / 1.5
                             [0.3, 0.6],  # within the bounds
                             [0.0, 0.0],  # alpha below 0: nothing
                             [0.2, 0.25]]).double()
    assert torch.allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("renderer", ["tiled", "batched", "loop"])
def test_a_crop_whose_fill_starts_farther_than_its_layers(renderer):
    """A training crop takes the fill start from its whole image; when that is farther than
    every layer of the crop, the fill runs before the first layer, with nothing composited yet
    (this crashed the fast renderer in the quickstart). It must render, and stay convex."""
    g = torch.Generator().manual_seed(3)
    depth = random_depth("steps", g)
    camera, c_max = random_camera(depth, g, 0)
    grey = torch.full((1, 3, H, W), GREY)
    out = render_defocus(grey, depth, camera, renderer=renderer, c_max_px=c_max,
                         fill_from_coc_px=torch.tensor([1e3]))
    assert (out.image - GREY).abs().max() <= TOL
