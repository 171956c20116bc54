"""The layered renderer: physics pinned by tests (SPEC section 2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dmenet.data.syndof import (
    SyndofRenderer,
    disc_kernel2d,
    layer_decomposition,
    render_defocus,
    render_defocus_loop,
    render_from_sigma,
)
from dmenet.data.thin_lens import Camera, sigma_from_coc
from dmenet.errors import DataError
from dmenet.labels import SIGMA_MAX_PX

H, W = 40, 56

def texture(b=1, h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, h // 4, w // 4, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                          align_corners=False)
    return (0.5 * img + 0.5 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def cv2_gauss(image: torch.Tensor, sigma: float) -> np.ndarray:
    """An independent Gaussian blur (OpenCV's own kernel, 4-sigma radius)."""
    rgb = image[0].permute(1, 2, 0).numpy()
    return cv2.GaussianBlur(rgb, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


class TestPhysics:
    @pytest.mark.parametrize("renderer", ["tiled", "batched"])
    def test_in_focus_is_identity(self, renderer):
        image = texture(b=2)
        depth = torch.full((2, 1, H, W), 1500.0)
        out = render_defocus(image, depth, Camera([1500.0, 1500.0], [25.0, 25.0]),
                             renderer=renderer)
        assert torch.equal(out.image, image)
        assert torch.all(out.sigma_px == 0) and torch.all(out.binary == 0)

    @pytest.mark.parametrize("renderer", ["tiled", "batched"])
    @pytest.mark.parametrize("alpha", [6.0, 18.0])
    def test_fronto_parallel_plane_is_one_gaussian(self, alpha, renderer):
        image = texture()
        depth = torch.full((1, 1, H, W), 3000.0)
        out = render_defocus(image, depth, Camera([1000.0], [alpha]), renderer=renderer)
        sigma = alpha * (3000.0 - 1000.0) / 3000.0 / 4.0  # the formula, c / 4
        assert torch.allclose(out.sigma_px, torch.full_like(out.sigma_px, sigma), atol=0.0125)
        ref = cv2_gauss(image, float(out.sigma_px[0, 0, 0, 0]))
        got = out.image[0].permute(1, 2, 0).numpy()
        m = int(3 * sigma) + 1  # interior: away from the frame border
        assert np.abs(got - ref)[m:-m, m:-m].max() < 1.0 / 255

    def test_labels_follow_the_formula(self):
        depth = torch.linspace(600.0, 8000.0, H * W).view(1, 1, H, W)
        cam = Camera([2000.0], [10.0])  # CoC from 23.3 px (near) to 7.5 px (far)
        out = render_defocus(texture(), depth, cam, sigma_rule="reference")
        assert int(out.num_layers[0]) < 350  # no merging: every pixel has its own CoC layer
        coc = 10.0 * (depth - 2000.0).abs() / depth
        # each pixel carries its layer's value: the CoC rounded to 0.1 px
        assert (out.coc_px - coc).abs().max() <= 0.05 + 1e-4
        assert torch.allclose(out.sigma_px, sigma_from_coc(out.coc_px, "reference"))
        assert torch.allclose(out.label, out.sigma_px / SIGMA_MAX_PX)
        assert torch.equal(out.binary, (out.coc_px > 1.0).float())

    def test_sigma_never_exceeds_sigma_max(self):
        depth = torch.linspace(100.0, 100000.0, H * W).view(1, 1, H, W)
        out = render_defocus(texture(), depth, Camera([500.0], [1000.0]))  # absurd alpha
        assert float(out.sigma_px.max()) <= SIGMA_MAX_PX + 1e-6
        assert float(out.label.max()) <= 1.0 + 1e-6

    def test_layer_cap(self):
        depth = torch.linspace(600.0, 8000.0, H * W).view(1, 1, H, W)
        cam = Camera([2000.0], [28.0])
        free = render_defocus(texture(), depth, cam, max_layers=10_000)
        assert int(free.num_layers[0]) > 300
        capped = render_defocus(texture(), depth, cam, max_layers=40)
        assert int(capped.num_layers[0]) == 40
        assert int(capped.layer_id.max()) == 39
        default = render_defocus(texture(), depth, cam)
        assert int(default.num_layers[0]) <= 350
        # merged layers keep depth order: far layers have larger layer CoC on the far side
        assert torch.isfinite(capped.image).all()

    def test_layer_decomposition_order(self):
        key = torch.tensor([[[[0.3, -2.0], [5.0, 0.3]]]])
        d = layer_decomposition(key, 0.1, 350)
        assert d.layer_id.flatten().tolist() == [1, 2, 0, 1]  # 0 = farthest
        assert torch.allclose(d.layer_value[0], torch.tensor([5.0, 0.3, -2.0]))


def two_planes(near_mm=1000.0, far_mm=4000.0):
    """Left half near (blue-ish), right half far (red-ish), flat colours."""
    image = torch.empty(1, 3, H, W)
    near_c = torch.tensor([0.15, 0.30, 0.90])
    far_c = torch.tensor([0.85, 0.25, 0.10])
    image[0, :, :, : W // 2] = near_c.view(3, 1, 1)
    image[0, :, :, W // 2:] = far_c.view(3, 1, 1)
    depth = torch.full((1, 1, H, W), far_mm)
    depth[..., : W // 2] = near_mm
    return image, depth, near_c, far_c


def _dense_layer_scene(h: int, w: int, slope_x: float, occluder: tuple[int, int, int, int],
                       seed: int):
    """A slanted, noisy depth (mm; a layer at nearly every 0.1 px CoC step) with a box occluder
    at 700 mm ``(y0, y1, x0, x1)``, a camera focused at 3 m with c = 28 px at the occluder, and
    a texture: ``(image, depth_mm, camera)``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    depth = (900.0 + slope_x * xx + 8.0 * yy + 60.0 * torch.rand(h, w, generator=g))[None, None]
    y0, y1, x0, x1 = occluder
    depth[..., y0:y1, x0:x1] = 700.0
    cam = Camera([3000.0], [28.0 / (3000.0 / 700.0 - 1.0)])
    return texture(h=h, w=w, seed=seed + 1), depth, cam


class TestDepthEdges:
    def check_no_halo(self, out, near_c, far_c):
        lo = torch.minimum(near_c, far_c).view(1, 3, 1, 1) - 1e-4
        hi = torch.maximum(near_c, far_c).view(1, 3, 1, 1) + 1e-4
        assert torch.all(out >= lo) and torch.all(out <= hi)
        # every pixel is a mix of the two colours: on the segment between them
        d = (far_c - near_c).view(1, 3, 1, 1)
        t = ((out - near_c.view(1, 3, 1, 1)) * d).sum(1, keepdim=True) / (d * d).sum()
        off = out - (near_c.view(1, 3, 1, 1) + t * d)
        assert off.abs().max() < 1e-3

    @pytest.mark.parametrize("renderer", ["tiled", "batched"])
    def test_near_plane_in_focus(self, renderer):
        image, depth, near_c, far_c = two_planes()
        out = render_defocus(image, depth, Camera([1000.0], [24.0]), renderer=renderer).image
        self.check_no_halo(out, near_c, far_c)
        # the sharp near plane stays sharp: its colour is untouched up to the edge
        assert torch.allclose(out[0, :, :, : W // 2], image[0, :, :, : W // 2], atol=1e-5)
        # the blurred far plane does not bleed over it, and is not darkened at the edge
        assert torch.allclose(out[0, :, :, W // 2], far_c.view(3, 1), atol=1e-4)

    @pytest.mark.parametrize("renderer", ["tiled", "batched"])
    def test_near_plane_blurred_shows_filled_background(self, renderer):
        image, depth, near_c, far_c = two_planes()
        cam = Camera([4000.0], [24.0])  # far in focus, near blurred (sigma 4.5 px)
        out = render_defocus(image, depth, cam, renderer=renderer).image
        self.check_no_halo(out, near_c, far_c)
        # the near edge blurs outwards over the sharp background ...
        outside = out[0, :, H // 2, W // 2 + 1]
        assert (outside - far_c).abs().max() > 0.1
        # ... and inwards it shows the (filled) background through it
        d = far_c - near_c
        inside_t = float(((out[0, :, H // 2, W // 2 - 2] - near_c) * d).sum() / (d * d).sum())
        assert inside_t > 0.2
        # without the occlusion fill the hidden background is missing there
        nofill = render_defocus(image, depth, cam, fill=False, renderer=renderer).image
        t_nofill = float(((nofill[0, :, H // 2, W // 2 - 2] - near_c) * d).sum() / (d * d).sum())
        assert t_nofill < inside_t - 0.1

    def test_tiled_equals_the_per_layer_loop(self):
        """Piecewise-planar scene: the tiled renderer computes what the per-layer loop
        computes, edges included, up to float rounding."""
        h, w = 96, 128
        image = texture(h=h, w=w, seed=3)
        depth = torch.full((1, 1, h, w), 5000.0)
        depth[..., 8:40, 10:40] = 900.0
        depth[..., 60:, 70:] = 2500.0
        depth[..., 50:90, 5:30] = 1300.0
        cam = Camera([1500.0], [20.0])
        tiled = render_defocus(image, depth, cam, renderer="tiled")
        loop = render_defocus_loop(image, depth, cam)
        assert torch.isfinite(loop).all() and int(tiled.num_layers[0]) == 4
        assert float((tiled.image - loop).abs().max()) < 0.01 / 255

    @pytest.mark.parametrize("render_mode", ["paper", "reference"])
    def test_tiled_equals_the_loop_on_dense_layers(self, render_mode):
        """A slanted, noisy depth (a layer at nearly every 0.1 px CoC step, like the stereo
        motorcycle) with an occluder, focused near the back so many layers are filled: the
        tiled renderer (the fill before every layer, like the loop) equals the loop."""
        image, depth, cam = _dense_layer_scene(30, 60, slope_x=40.0, occluder=(8, 22, 20, 34),
                                               seed=4)
        tiled = render_defocus(image, depth, cam, render_mode=render_mode, renderer="tiled")
        loop = render_defocus_loop(image, depth, cam, render_mode=render_mode)
        assert int(tiled.num_layers[0]) > 150
        assert float((tiled.image - loop).abs().max()) < 0.01 / 255

    def test_tiled_equals_the_loop_with_the_superlu_fill(self, monkeypatch):
        """The dense-layer scene with every fill of the tiled renderer forced off its envelope
        Cholesky onto its fallback for wide regions (SuperLU): still equal to the loop."""
        import dmenet.data.syndof.tiled as tiled_module

        monkeypatch.setattr(tiled_module, "ENVELOPE_MAX_WORK", 0)
        image, depth, cam = _dense_layer_scene(24, 40, slope_x=60.0, occluder=(6, 18, 14, 26),
                                               seed=8)
        tiled = render_defocus(image, depth, cam, renderer="tiled")
        loop = render_defocus_loop(image, depth, cam)
        assert float((tiled.image - loop).abs().max()) < 0.01 / 255

    def test_envelope_fill_solves_the_laplace_equation(self):
        """The tiled renderer's exact fill solver on a ring-shaped region with holes: every
        unknown is the mean of its 4 neighbours (known ones from the right-hand side)."""
        from dmenet.data.syndof.tiled import _kernels, _laplace_solve_envelope

        kern = _kernels()
        h, w = 30, 36
        yy, xx = np.mgrid[:h, :w]
        rr = np.hypot(yy - 15, xx - 18)
        region = (rr > 6) & (rr < 13) & ~((yy % 7 == 0) & (xx % 5 == 0))
        ys, xs = np.nonzero(region)
        index = np.full((h, w), -1)
        index[ys, xs] = np.arange(ys.size)
        nb = np.full((ys.size, 4), -1)
        deg = np.zeros(ys.size, dtype=np.int64)
        b = np.zeros((ys.size, 2))
        values = np.random.default_rng(0).random((h, w, 2))
        for q, (dy, dx) in enumerate([(-1, 0), (1, 0), (0, -1), (0, 1)]):
            y, x = ys + dy, xs + dx
            ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            deg += ok
            m = np.where(ok, index[y.clip(0, h - 1), x.clip(0, w - 1)], -1)
            nb[:, q] = np.where(ok, m, -1)
            known = ok & (m < 0)
            b[known] += values[y[known], x[known]]
        x = _laplace_solve_envelope(deg, nb, b, kern)
        assert x is not None
        xp = np.concatenate([x, np.zeros((1, 2))])
        residual = deg[:, None] * x - xp[nb].sum(1) - b
        assert np.abs(residual).max() < 1e-12

    def test_tiled_equals_the_loop_with_the_disc_aperture(self):
        """The disc (non-separable: 2-D blocks) through :func:`render_from_sigma`."""
        h, w = 32, 40
        g = torch.Generator().manual_seed(6)
        sigma = (torch.rand(1, 1, h // 4, w // 4, generator=g) * 3.0).repeat_interleave(
            4, 2).repeat_interleave(4, 3)
        order = torch.rand(1, 1, h, w, generator=g)
        image = texture(h=h, w=w, seed=7)
        kw = {"aperture": "disc", "gamma": 2.2}
        tiled = render_from_sigma(image, sigma, order, renderer="tiled", **kw)
        loop = render_from_sigma(image, sigma, order, renderer="loop", **kw)
        assert float((tiled - loop).abs().max()) < 0.01 / 255


class TestInterface:
    def test_invalid_depth_never_nan(self):
        image = texture()
        depth = torch.full((1, 1, H, W), 2500.0)
        depth[..., :5, :] = float("nan")
        depth[..., 5:8, :] = 1e11  # sky marker
        depth[..., 8:10, :] = -3.0
        depth[..., 10:12, :] = float("inf")
        out = SyndofRenderer()(image, depth, generator=torch.Generator().manual_seed(0))
        for t in (out.image, out.sigma_px, out.label, out.binary):
            assert torch.isfinite(t).all()

    def test_seed_reproducible(self):
        image = texture(b=2)
        depth = torch.linspace(700.0, 9000.0, H * W).view(1, 1, H, W).repeat(2, 1, 1, 1)
        r = SyndofRenderer()
        a = r(image, depth, generator=torch.Generator().manual_seed(7))
        b = r(image, depth, generator=torch.Generator().manual_seed(7))
        c = r(image, depth, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
        assert not torch.equal(a.label, c.label)

    def test_bad_inputs(self):
        image = texture()
        cam = Camera([1000.0], [5.0])
        with pytest.raises(DataError, match="shape mismatch"):
            render_defocus(image, torch.ones(1, 1, H, W + 1) * 1000, cam)
        with pytest.raises(DataError, match=r"\(B, 3, H, W\)"):
            render_defocus(torch.rand(1, 4, H, W), torch.ones(1, 1, H, W), cam)
        with pytest.raises(DataError, match="no valid depth"):
            render_defocus(image, torch.full((1, 1, H, W), float("nan")), cam)
        with pytest.raises(DataError, match="no valid depth"):
            SyndofRenderer()(image, torch.zeros(1, 1, H, W))
        with pytest.raises(DataError, match="camera has 2 samples"):
            render_defocus(image, torch.ones(1, 1, H, W), Camera([1.0, 2.0], [1.0, 1.0]))
        with pytest.raises(ValueError, match="aperture"):
            render_defocus(image, torch.ones(1, 1, H, W), cam, aperture="hexagon")

    def test_half_precision(self):
        image = texture()
        depth = torch.full((1, 1, H, W), 3000.0)
        cam = Camera([1000.0], [10.0])
        full = render_defocus(image, depth, cam).image
        half = render_defocus(image.half(), depth, cam).image
        assert half.dtype == torch.float16
        assert (half.float() - full).abs().max() < 2e-3

    def test_module_repr_and_sampler(self):
        r = SyndofRenderer(mode="fixed", focus_mm=1200.0)
        assert "fixed" in repr(r)
        out = r(texture(), torch.full((1, 1, H, W), 1200.0))
        assert float(out.sigma_px.max()) == 0.0

    @pytest.mark.gpu
    def test_cuda_matches_cpu(self):
        image = texture(b=2)
        depth = torch.linspace(700.0, 9000.0, H * W).view(1, 1, H, W).repeat(2, 1, 1, 1)
        cam = Camera([1500.0, 3000.0], [20.0, 12.0])
        cpu = render_defocus(image, depth, cam).image
        gpu = render_defocus(image.cuda(), depth.cuda(), cam).image
        assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max() < 1e-3


class TestRenderFromSigma:
    def test_constant_sigma_is_gaussian(self):
        image = texture()
        sigma = torch.full((1, 1, H, W), 2.0)
        out = render_from_sigma(image, sigma, torch.zeros_like(sigma))
        ref = cv2_gauss(image, 2.0)
        got = out[0].permute(1, 2, 0).numpy()
        assert np.abs(got - ref)[7:-7, 7:-7].max() < 1.0 / 255

    def test_disc_aperture(self):
        image = texture()
        sigma = torch.full((1, 1, H, W), 1.5)  # CoC diameter 6 px
        out = render_from_sigma(image, sigma, sigma, aperture="disc")
        k = disc_kernel2d(1.5).astype(np.float32)
        assert k.shape == (9, 9) and abs(k.sum() - 1) < 1e-6
        rgb = image[0].permute(1, 2, 0).numpy()
        ref = cv2.filter2D(rgb, -1, k, borderType=cv2.BORDER_REPLICATE)
        got = out[0].permute(1, 2, 0).numpy()
        assert np.abs(got - ref)[5:-5, 5:-5].max() < 1e-4

    def test_gamma_and_zero_sigma(self):
        image = texture()
        zero = torch.zeros(1, 1, H, W)
        out = render_from_sigma(image, zero, zero, gamma=2.2)
        assert (out - image).abs().max() < 1e-5
        blurred = render_from_sigma(image, zero + 2.0, zero, gamma=2.2)
        plain = render_from_sigma(image, zero + 2.0, zero)
        # blurring in linear light brightens mixed regions relative to sRGB blurring
        assert float((blurred - plain).mean()) > 0

    def test_equals_render_defocus_given_its_sigma_and_order(self):
        """Equal blur in front of and behind the focal plane stays in separate layers."""
        image = texture(seed=5)
        depth = torch.full((1, 1, H, W), 3000.0)
        depth[..., 10:30, 10:30] = 1000.0
        cam = Camera([1500.0], [16.0])  # CoC 8 px in front (1 m) and 8 px behind (3 m)
        ref = render_defocus(image, depth, cam)
        assert ref.sigma_px.unique().numel() == 1  # one blur, two depths
        order = cam.signed_coc_px(depth)
        out = render_from_sigma(image, ref.sigma_px, order)
        assert (out - ref.image).abs().max() < 1e-5

    def test_order_decides_occlusion(self):
        image, _, near_c, far_c = two_planes()
        sigma = torch.zeros(1, 1, H, W)
        sigma[..., : W // 2] = 3.0
        order = torch.zeros(1, 1, H, W)
        order[..., W // 2:] = 1.0  # right half farther
        out = render_from_sigma(image, sigma, order)
        # the blurred near half spreads over the sharp far half
        assert (out[0, :, H // 2, W // 2 + 1] - far_c).abs().max() > 0.1
        with pytest.raises(DataError, match="sigma_px must be finite"):
            render_from_sigma(image, sigma - 1.0, order)


@pytest.mark.parametrize("border", ["replicate", "symmetric"])
@pytest.mark.parametrize("aperture", ["gaussian", "disc"])
@pytest.mark.parametrize("sigma_px", [0.7, 2.5, 6.0])
def test_kornia_blur_equals_the_opencv_path(aperture, sigma_px, border):
    """The package's one blur: Kornia (any device, here float64 on the CPU) and OpenCV (float32
    on the CPU) blur identically, and :func:`blur_stack` with a kernel per item equals it."""
    from dmenet.data.syndof import blur_stack, disc_kernel2d, gaussian_blur, gaussian_kernel1d
    from dmenet.data.syndof.kernels import pad_border

    x = torch.rand(2, 4, 37, 41)
    radius = 14 if aperture == "gaussian" and border == "symmetric" else None
    cpu = gaussian_blur(x, sigma_px, radius, border, aperture)  # float32 on the CPU: OpenCV
    kornia_path = gaussian_blur(x.double(), sigma_px, radius, border, aperture).float()
    assert torch.allclose(cpu, kornia_path, atol=1e-5)
    assert not torch.allclose(cpu, x, atol=1e-3)  # it did blur
    # per-item kernels: item 0 with this sigma, item 1 with another one
    kernels = [disc_kernel2d(s) if aperture == "disc" else gaussian_kernel1d(s, radius)
               for s in (sigma_px, sigma_px / 2)]
    r = kernels[0].shape[0] // 2
    taps = torch.stack([torch.from_numpy(np.pad(k, r - k.shape[0] // 2)) for k in kernels])
    both = blur_stack(pad_border(x.double(), r, border), taps).float()
    assert torch.allclose(both[0], cpu[0], atol=1e-5)
    other = gaussian_blur(x[1:], sigma_px / 2, radius, border, aperture)
    assert torch.allclose(both[1:], other, atol=1e-5)


@pytest.mark.parametrize("renderer", ["tiled", "batched"])
def test_reference_mode_is_the_generators_kernel_and_border(renderer):
    """A fronto-parallel plane in reference mode: one 29 x 29 Gaussian of sigma (c - 1) / 4,
    normalised, image border mirrored including the edge pixel (MATLAB 'symmetric'),
    computed here by hand with numpy."""
    image = texture(seed=2)
    depth = torch.full((1, 1, H, W), 3000.0)
    out = render_defocus(image, depth, Camera([1000.0], [24.0]), render_mode="reference",
                         sigma_rule="reference", c_max_px=29.0, renderer=renderer)
    s = (16.0 - 1.0) / 4.0  # c = 24 * 2000 / 3000 = 16 px
    assert float(out.sigma_px.max()) == pytest.approx(s)
    x = np.arange(-14, 15)
    k1 = np.exp(-0.5 * (x / s) ** 2)
    k2 = np.outer(k1, k1) / np.outer(k1, k1).sum()
    rgb = np.pad(image[0].double().numpy(), ((0, 0), (14, 14), (14, 14)), mode="symmetric")
    ref = np.zeros((3, H, W))
    for dy in range(29):
        for dx in range(29):
            ref += k2[dy, dx] * rgb[:, dy:dy + H, dx:dx + W]
    assert np.abs(out.image[0].double().numpy() - ref).max() < 1e-5
