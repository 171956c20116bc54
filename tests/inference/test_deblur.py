"""``dmenet deblur``: the K&F shrinkage, the deconvolution, the bins and the command end to end."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dmenet.cli import main as dmenet
from dmenet.data.syndof import gaussian_kernel1d
from dmenet.errors import DataError
from dmenet.inference.deblur import bin_plan, check_sigma_map, deblur, read_sigma_map
from dmenet.inference.deconvolution import (
    LEVEL_TOL,
    BlurOperator,
    beta_schedule,
    deconvolve,
    shrink,
)
from dmenet.inference.writer import PNG_SIGMA_SCALE, write_defocus_outputs


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Sharp float RGB (H, W, 3): 8 px blocks of random colour plus fine noise (many edges)."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
    return 0.7 * blocks + 0.3 * rng.random((h, w, 3))


def _blur(x: np.ndarray, sigma_px: float) -> np.ndarray:
    k = gaussian_kernel1d(sigma_px)
    return cv2.sepFilter2D(x, -1, k, k, borderType=cv2.BORDER_REFLECT)


def _q8(x: np.ndarray) -> torch.Tensor:
    """8-bit quantised (C, H, W) tensor, as a photo file would hold it."""
    return torch.from_numpy(np.round(np.clip(x, 0, 1) * 255).transpose(2, 0, 1) / 255).float()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def _brute_force(v: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """argmin over a 1e-3 grid, then over a 1e-6 grid around the best point."""
    f = lambda w: w.abs() ** alpha + beta / 2 * (w - v[:, None]) ** 2  # noqa: E731
    coarse = torch.linspace(-2.0, 2.0, 4001, dtype=torch.float64)[None]
    best = coarse[0, f(coarse).argmin(1)]
    fine = best[:, None] + torch.linspace(-1e-3, 1e-3, 2001, dtype=torch.float64)[None]
    return fine.gather(1, f(fine).argmin(1, keepdim=True))[:, 0]


@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 2.0])
def test_shrink_is_the_scalar_minimiser(alpha):
    """argmin_w |w|^alpha + beta/2 (w - v)^2 against brute-force minimisation, for the beta
    values of the continuation (closed forms for 1, 1.5, 2; bisection for 1.25)."""
    v = torch.linspace(-2.0, 2.0, 81, dtype=torch.float64)
    for beta in (1.0, 2.0 * 2**0.5, 22.6, 181.0):
        got = shrink(v, beta, alpha)
        best = _brute_force(v, beta, alpha)
        f = lambda w: w.abs() ** alpha + beta / 2 * (w - v) ** 2  # noqa: E731,B023
        assert torch.all(f(got) <= f(best) + 1e-10), beta
        assert torch.allclose(got, best, atol=3e-6), beta
        assert torch.all(got.abs() <= v.abs() + 1e-12) and torch.all(got * v >= 0)


def test_constant_sigma_is_recovered():
    x = _scene(48, 64)
    sharp = torch.from_numpy(x.transpose(2, 0, 1)).float()
    for sigma, gain_db in ((1.0, 2.0), (2.0, 1.0)):
        y = _q8(_blur(x, sigma))
        out = deblur(y, torch.full((48, 64), sigma), method="bins")
        assert _psnr(out, sharp) > _psnr(y, sharp) + gain_db, sigma
        # the reference settings also gain
        ref = deblur(y, torch.full((48, 64), sigma), method="bins", bin_mode="hard", boundary="taper",
                     isolate=False, edge_safe=False)
        assert _psnr(ref, sharp) > _psnr(y, sharp) + gain_db / 2


def test_blur_operator_adjoint_and_constant_map():
    """<K x, y> = <x, K^T y> for both models; a constant map is the plain Gaussian blur
    (up to the blur basis's interpolation tolerance)."""
    torch.manual_seed(0)
    sigma = torch.rand(20, 26) * 3
    x, y = torch.rand(2, 3, 20, 26, dtype=torch.float32)
    for model in ("gather", "scatter", "layered"):
        op = BlurOperator(sigma, model)
        assert abs(float((op.apply(x) * y).sum() - (x * op.adjoint(y)).sum())) < 1e-3, model
    # the layered model composites convexly: a constant image stays constant
    assert torch.allclose(BlurOperator(sigma, "layered").apply(torch.full((1, 20, 26), 0.4)),
                          torch.full((1, 20, 26), 0.4), atol=1e-5)
    k = gaussian_kernel1d(1.5).astype(np.float32)
    plain = cv2.sepFilter2D(x[0].numpy(), -1, k, k, borderType=cv2.BORDER_CONSTANT)
    inner = (slice(6, -6), slice(6, -6))  # the layered model normalises by the mask at the border
    for model in ("gather", "layered"):
        const = BlurOperator(torch.full((20, 26), 1.5), model).apply(x)
        # the basis interpolation: <= LEVEL_TOL on a step edge, up to 2.5x that on white noise
        # (the worst case; 1.5 px lies between two levels)
        assert np.abs(const[0].numpy() - plain)[inner].max() < 2.5 * LEVEL_TOL, model


def test_layered_model_is_the_renderer_at_an_occlusion_and_the_guard_never_loses():
    """A sharp near square over a blurred far plane, rendered by SYNDOF: the layered model
    matches the render better than the gather model, and its guarded inversion gains on it;
    with the depth order reversed (a blurred near square over a sharp plane: the order the
    layered model assumes is wrong) the guarded default still does not end below the input."""
    from dmenet.data.syndof import render_defocus
    from dmenet.data.thin_lens import Camera

    h, w = 48, 64
    x = _scene(h, w, seed=3)
    sharp = torch.from_numpy(x.transpose(2, 0, 1)).float()
    near = torch.zeros(h, w, dtype=torch.bool)
    near[12:36, 16:44] = True
    for near_is_sharp, far_mm, near_mm, focus_mm in ((True, 4000.0, 1000.0, 1000.0),
                                                     (False, 2000.0, 500.0, 2000.0)):
        depth = torch.where(near, near_mm, far_mm)[None, None].float()
        out = render_defocus(sharp[None], depth, Camera(torch.tensor([focus_mm]),
                                                        torch.tensor([16.0])))
        y = torch.round(out.image[0].clamp(0, 1) * 255) / 255
        sigma = out.sigma_px[0, 0]
        gain = _psnr(deblur(y, sigma), sharp) - _psnr(y, sharp)
        if near_is_sharp:  # (10 px: the kernel radius; the operator has a zero border)
            mismatch = {m: float((BlurOperator(sigma, m).apply(sharp)[:, 10:-10, 10:-10]
                                  - y[:, 10:-10, 10:-10]).abs().mean()) for m in ("gather", "layered")}
            assert mismatch["layered"] < 0.5 * mismatch["gather"], mismatch
            assert gain > 1.0
        assert gain > 0.0


def test_invert_method_recovers_constant_and_two_region_blur():
    """--method invert: a constant sigma and a two-region map (left 1 px, right 2 px, each
    pixel blurred by its own Gaussian) gain PSNR on each side, seam included."""
    h, w = 40, 64
    x = _scene(h, w, seed=2)
    sharp = torch.from_numpy(x.transpose(2, 0, 1)).float()
    y = _q8(_blur(x, 1.0))
    out = deblur(y, torch.full((h, w), 1.0), method="invert")
    assert _psnr(out, sharp) > _psnr(y, sharp) + 2.0
    y = _q8(np.concatenate([_blur(x, 1.0)[:, : w // 2], _blur(x, 2.0)[:, w // 2:]], 1))
    sigma = torch.full((h, w), 1.0)
    sigma[:, w // 2:] = 2.0
    out = deblur(y, sigma, method="invert")
    for side in (slice(0, w // 2), slice(w // 2, w)):
        assert _psnr(out[..., side], sharp[..., side]) > _psnr(y[..., side], sharp[..., side]) + 1.0
    seam = slice(w // 2 - 4, w // 2 + 4)
    assert _psnr(out[..., seam], sharp[..., seam]) > _psnr(y[..., seam], sharp[..., seam])
    assert torch.equal(deblur(y, torch.zeros(h, w), method="invert"), y)


def test_sigma_below_threshold_is_identity():
    y = _q8(_scene(20, 30))
    sigma = torch.rand(20, 30) * 0.29
    assert torch.equal(deblur(y, sigma), y)
    assert torch.equal(deblur(y, torch.zeros(20, 30)), y)
    nodes, weights = bin_plan(sigma)
    assert nodes == [] and weights.shape == (0, 20, 30)


def test_two_regions_get_their_own_deconvolution():
    """Left half blurred with sigma 1, right half with 2: each half equals the whole-image
    deconvolution with its own sigma, exactly with the reference's hard bins and, with the
    defaults (edge-safe map, isolation), beyond 5 sigma (10 px) of the seam."""
    h, w = 40, 96
    x = _scene(h, w, seed=1)
    y = _q8(np.concatenate([_blur(x, 1.0)[:, : w // 2], _blur(x, 2.0)[:, w // 2:]], 1))
    sigma = torch.full((h, w), 1.0)
    sigma[:, w // 2:] = 2.0
    lam = 1000.0
    whole = deconvolve(y, [1.0, 2.0], lam).clamp(0, 1)  # batched: the same padding as deblur
    expected = torch.cat([whole[0][..., : w // 2], whole[1][..., w // 2:]], -1)
    plain = deblur(y, sigma, lam=lam, method="bins", isolate=False, edge_safe=False)
    assert (plain - expected).abs().max() < 1e-5
    diff = (deblur(y, sigma, lam=lam, method="bins") - expected).abs().amax((0, 1))
    seam = w // 2
    assert diff[: seam - 3].max() < 0.02  # the sharper side barely changes
    assert diff[seam + 10:].max() < 0.02
    # and the blended bins have no step at the seam beyond what the image has
    blend = deblur(y, sigma, lam=lam, method="bins")
    step = (blend[..., seam] - blend[..., seam - 1]).abs().mean()
    assert step < 2 * (expected[..., seam] - expected[..., seam - 1]).abs().mean() + 0.02


def test_blend_weights_interpolate_between_bins():
    sigma = torch.linspace(0.0, 4.0, 200).reshape(10, 20)
    nodes, weights = bin_plan(sigma, bins=4, bin_mode="blend")
    blurred = sigma >= 0.3
    assert torch.allclose(weights.sum(0)[blurred], torch.ones(int(blurred.sum())))
    assert torch.all(weights.sum(0)[~blurred] == 0)
    recon = (weights * torch.tensor(nodes)[:, None, None]).sum(0)
    assert torch.allclose(recon[blurred], sigma[blurred], atol=1e-5)  # linear in sigma
    nodes_h, weights_h = bin_plan(sigma, bins=4, bin_mode="hard")
    assert len(nodes_h) == 4 and torch.all(weights_h.amax(0)[blurred] == 1)


def test_result_does_not_depend_on_the_memory_chunks():
    """Bins and, when one bin does not fit, channels are processed in chunks: same result."""
    torch.manual_seed(0)
    image, sigma = torch.rand(3, 24, 30), torch.rand(24, 30) * 4
    whole = deblur(image, sigma, memory_mb=1024, method="bins")
    assert torch.allclose(deblur(image, sigma, memory_mb=1, method="bins"), whole, atol=1e-5)


@pytest.mark.parametrize("options", [
    dict(method="invert"),  # layered + guard: two inversions
    dict(method="invert", model="gather"),
    dict(method="bins", memory_mb=1),  # several chunks of bins
    dict(method="bins", min_sigma_px=10.0),  # nothing to deblur
])
def test_progress_counts_every_step_to_the_end(options):
    """Long photos show progress: ``progress(done, total)`` starts at 0, never goes back, and
    ends at ``total``; the result is the same with and without it."""
    torch.manual_seed(0)
    image, sigma = torch.rand(3, 20, 26), torch.rand(20, 26) * 3
    calls = []
    out = deblur(image, sigma, progress=lambda done, total: calls.append((done, total)), **options)
    assert torch.equal(out, deblur(image, sigma, **options))
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] >= 1
    assert len({total for _, total in calls}) == 1
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(done) == calls[-1][1] + 1  # one call per step
    if options.get("method") == "invert" and "model" not in options:
        assert calls[-1][1] == 2 * len(beta_schedule())  # the layered and the gather solve


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (3, 7, 5), (4, 33, 17), (3, 5, 64)])
def test_any_size_and_channels(shape):
    torch.manual_seed(0)
    image = torch.rand(shape)
    sigma = torch.rand(shape[1:]) * 7
    for method in ("invert", "bins"):
        out = deblur(image, sigma, method=method)
        assert out.shape == image.shape and torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1


def test_bad_maps_are_clear_errors():
    image = torch.rand(3, 10, 12)
    with pytest.raises(DataError, match="10x12"):
        deblur(image, torch.zeros(10, 11))
    bad = torch.zeros(10, 12)
    bad[2, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        deblur(image, bad)
    with pytest.raises(DataError, match="negative"):
        check_sigma_map(-torch.ones(10, 12), (10, 12), "m.npy")
    with pytest.raises(DataError, match="one"):
        check_sigma_map(torch.zeros(2, 10, 12), (10, 12))


def test_sigma_map_files(tmp_path):
    sigma = (np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25)
    paths = write_defocus_outputs(tmp_path, "p", sigma)
    assert np.array_equal(read_sigma_map(paths["npy"]), sigma)
    assert np.allclose(read_sigma_map(paths["png16"]), sigma, atol=0.5 / PNG_SIGMA_SCALE)
    cv2.imwrite(str(tmp_path / "f.tiff"), sigma)
    assert np.array_equal(read_sigma_map(tmp_path / "f.tiff"), sigma)
    cv2.imwrite(str(tmp_path / "eight.png"), np.zeros((3, 4), np.uint8))
    with pytest.raises(DataError, match="eight.png"):
        read_sigma_map(tmp_path / "eight.png")


# ---------------------------------------------------------------------------------------------
# the command


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_cli_with_b_keeps_formats(tiny_ckpt, photo_folder, tmp_path, capsys):
    out = tmp_path / "sharp"
    rc = dmenet(["deblur", str(photo_folder), "--ckpt", str(tiny_ckpt), "--out", str(out),
                 "--save-map"])
    assert rc == 0, capsys.readouterr().err
    for name, suffix in (("a", ".png"), ("b", ".png"), ("c", ".png"), ("d", ".tiff"),
                         ("grey16", ".png"), ("rgba", ".png")):
        source = next(photo_folder.glob(f"{name}.*"))
        src, got = _read(source), _read(out / f"{name}_deblurred{suffix}")
        assert got.dtype == src.dtype and got.shape == src.shape, name
        meta = json.loads((out / f"{name}_defocus.json").read_text())
        assert meta["deblur"]["lambda"] > 0 and meta["estimator"] == "b"
        assert np.load(out / f"{name}_sigma_px.npy").shape == src.shape[:2]
    assert np.array_equal(_read(out / "rgba_deblurred.png")[:, :, 3], _read(photo_folder / "rgba.png")[:, :, 3])
    # the map that was used is B's; deblurring with it from the file gives the same photo
    again = tmp_path / "again"
    rc = dmenet(["deblur", str(photo_folder / "d.tiff"), "--sigma-map", str(out / "d_sigma_px.npy"),
                 "--out", str(again)])
    assert rc == 0
    assert np.array_equal(_read(again / "d_deblurred.tiff"), _read(out / "d_deblurred.tiff"))


def test_cli_sigma_map_sources_and_overwrite(photo_folder, tmp_path, capsys):
    maps = tmp_path / "maps"
    sigma = np.full((36, 50), 0.5, np.float32)  # values the x1000 PNG holds exactly
    sigma[18:] = 1.25
    sigma[:, 25:] += 1.75
    write_defocus_outputs(maps, "b", sigma)
    out = tmp_path / "sharp"
    args = ["deblur", str(photo_folder / "b.png"), "--sigma-map", str(maps), "--out", str(out)]
    assert dmenet(args) == 0
    first = _read(out / "b_deblurred.png")
    assert first.shape == (36, 50, 3) and not np.array_equal(first, _read(photo_folder / "b.png"))
    # the 16-bit x1000 PNG gives the same result
    png_out = tmp_path / "png"
    assert dmenet(["deblur", str(photo_folder / "b.png"), "--sigma-map",
                   str(maps / "b_sigma_px_x1000.png"), "--out", str(png_out)]) == 0
    assert np.array_equal(_read(png_out / "b_deblurred.png"), first)
    # overwrite rule: refused, file untouched, exit 2; then replaced with --overwrite
    (out / "b_deblurred.png").write_bytes(b"user's file")
    capsys.readouterr()
    assert dmenet(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "b_deblurred.png").read_bytes() == b"user's file"
    assert dmenet([*args, "--overwrite"]) == 0
    assert np.array_equal(_read(out / "b_deblurred.png"), first)


def test_cli_zhuo_sim_and_errors(photo_folder, tmp_path, capsys):
    out = tmp_path / "z"
    assert dmenet(["deblur", str(photo_folder / "c.webp"), "--estimator", "zhuo_sim",
                   "--out", str(out), "--save-map"]) == 0
    assert _read(out / "c_deblurred.png").shape == (30, 56, 3)
    assert json.loads((out / "c_defocus.json").read_text())["estimator"] == "zhuo_sim"
    # a map of the wrong size or with NaN: that photo fails by name, exit 1
    np.save(tmp_path / "small.npy", np.zeros((5, 5), np.float32))
    nan = np.zeros((30, 56), np.float32)
    nan[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    for bad, message in (("small.npy", "5x5"), ("nan.npy", "NaN")):
        capsys.readouterr()
        rc = dmenet(["deblur", str(photo_folder / "c.webp"), "--sigma-map", str(tmp_path / bad),
                     "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 1 and bad in err and message in err
    # user mistakes: one line, exit 2
    for extra, message in (
        (["--sigma-map", str(tmp_path / "small.npy"), "--estimator", "zhuo_sim"], "one map source"),
        (["--sigma-map", str(tmp_path / "small.npy")], "2 photos"),
        (["--sigma-map", str(tmp_path / "missing.npy")], "missing.npy"),
        (["--estimator", "zhuo_sim", "--lambda", "0"], "--lambda"),
        ([], "--ckpt"),
    ):
        capsys.readouterr()
        rc = dmenet(["deblur", str(photo_folder / "a.jpg"), str(photo_folder / "b.png"),
                     "--out", str(tmp_path / "o2"), *extra])
        assert rc == 2, extra
        assert message in capsys.readouterr().err
