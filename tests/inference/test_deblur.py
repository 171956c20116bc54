"""``dmenet deblur``: the K&F shrinkage, the deconvolution, the nodes and the command end to end."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dmenet.cli import main as dmenet
from dmenet.data.syndof import gaussian_kernel1d
from dmenet.errors import DataError
from dmenet.inference.deblur import read_sigma_map
from dmenet.inference.deconvolution import (
    check_sigma_map,
    deblur,
    deconvolve,
    edge_safe_sigma,
    node_weight,
    reference_bins,
    shrink,
    sigma_nodes,
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


def test_a_constant_image_stays_constant():
    """Whatever the map, deconvolving a flat photo gives it back (every node's deconvolution of
    a constant is that constant, and the weights of a pixel sum to 1)."""
    torch.manual_seed(0)
    flat = torch.full((3, 30, 40), 0.37)
    sigma = torch.rand(30, 40) * 6
    for reference in (False, True):
        assert (deblur(flat, sigma, reference=reference) - 0.37).abs().max() < 1e-5


def test_sharp_pixels_are_left_as_they_are():
    """sigma = 0 is node 0, the photo itself: an all-sharp map changes nothing, and the sharp
    part of a half-blurred map is untouched (the edge-safe map only lowers sigma)."""
    y = _q8(_scene(20, 30))
    assert torch.equal(deblur(y, torch.zeros(20, 30)), y)
    sigma = torch.zeros(20, 30)
    sigma[:, 15:] = 2.0
    out = deblur(y, sigma)
    assert torch.equal(out[..., :15], y[..., :15])
    assert not torch.equal(out[..., 15:], y[..., 15:])


def test_nodes_and_their_weights():
    """Nodes 0, 0.25, then 25 % apart up to the largest sigma; a pixel's weights sum to 1 and
    interpolate its sigma linearly between the two nodes around it."""
    nodes = sigma_nodes(7.0)
    assert nodes[:3] == [0.0, 0.25, 0.3125] and nodes[-2] < 7.0 <= nodes[-1]
    assert all(b == pytest.approx(1.25 * a) for a, b in zip(nodes[1:], nodes[2:]))
    assert sigma_nodes(0.0) == [0.0]
    sigma = torch.linspace(0.0, 7.0, 400).reshape(20, 20)
    weights = torch.stack([node_weight(sigma, nodes, k) for k in range(len(nodes))])
    assert torch.allclose(weights.sum(0), torch.ones(20, 20), atol=1e-6)
    assert torch.allclose((weights * torch.tensor(nodes)[:, None, None]).sum(0), sigma, atol=1e-5)
    assert int((weights > 0).sum(0).max()) == 2  # two nodes at most
    # a pixel exactly on a node uses that node alone
    on_node = torch.full((2, 2), nodes[5])
    assert float(node_weight(on_node, nodes, 5).min()) == pytest.approx(1.0)


@pytest.mark.parametrize("sigma_px, gain_db", [(0.6, 9.0), (1.0, 2.2), (2.0, 1.4), (3.0, 1.6)])
def test_a_known_gaussian_blur_is_undone(sigma_px, gain_db):
    """A test image blurred by a known Gaussian (the renderer's taps) and stored as 8 bits gains
    at least ``gain_db`` over the blurred input with the exact map (measured: 10.8, 2.7, 1.8,
    2.0 dB), and within 0.25 dB of what one deconvolution with that exact sigma gains (the
    interpolation between nodes costs little; measured within 0.05 dB)."""
    x = _scene(48, 64)
    sharp = torch.from_numpy(x.transpose(2, 0, 1)).float()
    y = _q8(_blur(x, sigma_px))
    gain = _psnr(deblur(y, torch.full((48, 64), sigma_px)), sharp) - _psnr(y, sharp)
    exact = _psnr(deconvolve(y, [sigma_px], 1000.0)[0].clamp(0, 1), sharp) - _psnr(y, sharp)
    assert gain > gain_db
    assert gain > exact - 0.25


def test_two_regions_get_their_own_deconvolution():
    """Left half blurred with one sigma, right half with another (both nodes): away from the
    seam each half equals the whole-image deconvolution with its own sigma (isolation), both
    halves and the seam gain; with the reference's hard bins, exactly and everywhere."""
    h, w = 40, 96
    nodes = sigma_nodes(2.0)
    s1, s2 = nodes[7], nodes[10]  # 0.95 and 1.86 px
    x = _scene(h, w, seed=1)
    sharp = torch.from_numpy(x.transpose(2, 0, 1)).float()
    y = _q8(np.concatenate([_blur(x, s1)[:, : w // 2], _blur(x, s2)[:, w // 2:]], 1))
    sigma = torch.full((h, w), s1)
    sigma[:, w // 2:] = s2
    lam, seam = 1000.0, w // 2
    own = [deconvolve(y, [s], lam)[0].clamp(0, 1) for s in (s1, s2)]
    diff = (deblur(y, sigma, lam=lam) - torch.cat([own[0][..., :seam], own[1][..., seam:]], -1))
    diff = diff.abs().amax((0, 1))
    assert diff[: seam - 3].max() < 0.02  # the sharper side barely changes
    assert diff[seam + 10:].max() < 0.02  # beyond 5 sigma of the seam
    out = deblur(y, sigma, lam=lam)
    for part in (slice(0, seam), slice(seam, w), slice(seam - 4, seam + 4)):
        assert _psnr(out[..., part], sharp[..., part]) > _psnr(y[..., part], sharp[..., part]) + 0.5
    # the reference: one deconvolution per bin median, all padded alike, each pixel its bin's
    whole = deconvolve(y, [s1, s2], lam).clamp(0, 1)
    expected = torch.cat([whole[0][..., :seam], whole[1][..., seam:]], -1)
    assert (deblur(y, sigma, lam=lam, reference=True) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("near_is_sharp, far_mm, near_mm, focus_mm, min_gain_db", [
    (True, 4000.0, 1000.0, 1000.0, 1.0),  # measured +1.33 dB (+0.57 without isolation)
    (False, 2000.0, 500.0, 2000.0, -0.05),  # measured -0.01 dB (-0.97 without isolation)
])
def test_occlusions_do_not_ring(near_is_sharp, far_mm, near_mm, focus_mm, min_gain_db):
    """A square in front of a plane, rendered by the SYNDOF renderer (occlusion, fill, 8 bits),
    deblurred with its true map. Sharp square over a blurred plane (sigma up to 5.25 px): a
    clear gain. Blurred square (7 px) over a sharp plane, where the render is far from any
    convolution: not below the input. Without the edge-safe map or the isolation both ring."""
    from dmenet.data.syndof import render_defocus
    from dmenet.data.thin_lens import Camera

    h, w = 96, 128
    sharp = torch.from_numpy(_scene(h, w, seed=3).transpose(2, 0, 1)).float()
    near = torch.zeros(h, w, dtype=torch.bool)
    near[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    depth = torch.where(near, near_mm, far_mm)[None, None].float()
    out = render_defocus(sharp[None], depth, Camera(torch.tensor([focus_mm]), torch.tensor([28.0])))
    y = torch.round(out.image[0].clamp(0, 1) * 255) / 255
    sigma = out.sigma_px[0, 0]
    assert bool((sigma[near] < 0.1).all()) == near_is_sharp and float(sigma.max()) > 5
    assert _psnr(deblur(y, sigma), sharp) - _psnr(y, sharp) > min_gain_db


def test_reference_bins():
    """32 quantile bins of the pixels with sigma >= 0.3 px, each deconvolved with its median;
    the others are left as they are (-1)."""
    sigma = torch.linspace(0.0, 4.0, 640).reshape(20, 32)
    nodes, index = reference_bins(sigma)
    blurred = sigma >= 0.3
    assert len(nodes) == 32 and nodes == sorted(nodes)
    assert torch.all(index[~blurred] == -1) and torch.all(index[blurred] >= 0)
    counts = torch.bincount(index[blurred], minlength=32)
    assert int(counts.max()) - int(counts.min()) <= 1  # equal bins
    for k in (0, 15, 31):  # each node is its bin's median
        assert nodes[k] == pytest.approx(float(sigma[index == k].median()), abs=0.01)
    assert reference_bins(torch.full((3, 3), 0.2))[0] == []


@pytest.mark.parametrize("reference, scale", [(False, 3.0), (True, 3.0), (False, 0.0)])
def test_progress_counts_every_step_to_the_end(reference, scale):
    """Long photos show progress: ``progress(done, total)`` starts at 0, counts one step per
    deconvolution and ends at ``total``; the result is the same with and without it."""
    torch.manual_seed(0)
    image, sigma = torch.rand(3, 20, 26), torch.rand(20, 26) * scale
    calls = []
    out = deblur(image, sigma, reference=reference,
                 progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(out, deblur(image, sigma, reference=reference))
    total = calls[0][1]
    assert [d for d, _ in calls] == list(range(total + 1)) and {t for _, t in calls} == {total}
    if scale == 0:
        assert calls == [(0, 0)]
    elif not reference:  # one step per channel (a CPU does one at a time) and node in use
        safe = edge_safe_sigma(sigma)
        nodes = sigma_nodes(float(safe.max()))
        used = [k for k in range(1, len(nodes)) if bool((node_weight(safe, nodes, k) > 0).any())]
        assert total == 3 * len(used) and len(used) >= 5


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (3, 7, 5), (4, 33, 17), (3, 5, 64)])
def test_any_size_and_channels(shape):
    torch.manual_seed(0)
    image = torch.rand(shape)
    sigma = torch.rand(shape[1:]) * 7
    for reference in (False, True):
        out = deblur(image, sigma, reference=reference)
        assert out.shape == image.shape and torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_gives_the_cpu_result():
    """--device cuda: all channels of a node at once on the GPU, the same result."""
    torch.manual_seed(0)
    image, sigma = torch.rand(3, 64, 80), torch.rand(64, 80) * 5
    for reference in (False, True):
        cpu = deblur(image, sigma, reference=reference)
        gpu = deblur(image, sigma, reference=reference, device="cuda")
        assert gpu.device.type == "cpu" and (gpu - cpu).abs().max() < 1e-3


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


@pytest.mark.parametrize("option", [
    ["--method", "bins"], ["--model", "layered"], ["--no-guard"], ["--cg-iters", "8"],
    ["--bins", "32"], ["--bin-mode", "hard"], ["--boundary", "taper"], ["--min-sigma", "0.3"],
    ["--alpha", "1.5"], ["--memory-mb", "64"],
])
def test_removed_options_are_gone(photo_folder, tmp_path, capsys, option):
    """One method: the options of the removed methods, blur models and knobs are refused by the
    parser (exit 2), and nothing is written."""
    with pytest.raises(SystemExit) as exit_info:
        dmenet(["deblur", str(photo_folder / "b.png"), "--estimator", "zhuo_sim",
                "--out", str(tmp_path / "o"), *option])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {option[0]}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_reference_is_the_reference_method(photo_folder, tmp_path):
    """--reference: the reference's own method, recorded in the JSON, the result of
    deblur(reference=True) with the same map."""
    from dmenet.data.io import read_photo

    maps, out = tmp_path / "maps", tmp_path / "ref"
    sigma = np.linspace(0.0, 3.0, 36 * 50, dtype=np.float32).reshape(36, 50)
    write_defocus_outputs(maps, "b", sigma)
    assert dmenet(["deblur", str(photo_folder / "b.png"), "--sigma-map", str(maps), "--out",
                   str(out), "--reference", "--save-map"]) == 0
    assert json.loads((out / "b_defocus.json").read_text())["deblur"]["method"] == "reference"
    colour, _ = read_photo(photo_folder / "b.png")
    expected = deblur(colour, torch.from_numpy(sigma), reference=True)
    got, _ = read_photo(out / "b_deblurred.png")
    assert (got - expected).abs().max() <= 0.5 / 255 + 1e-6
    assert (got - deblur(colour, torch.from_numpy(sigma))).abs().max() > 2 / 255
