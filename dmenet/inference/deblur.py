"""``dmenet deblur``: all-in-focus photos by spatially varying deconvolution (SPEC section 6).

    dmenet deblur photos/ --ckpt model.ckpt --out sharp/
    dmenet deblur photo.jpg --estimator zhuo_sim --out sharp/
    dmenet infer photos/ --ckpt model.ckpt --out maps/ && dmenet deblur photos/ --sigma-map maps/ --out sharp/

The defocus map (Gaussian sigma in px per pixel) comes from B (``--ckpt``), from Zhuo & Sim
(``--estimator zhuo_sim``) or from a file (``--sigma-map``: a ``.npy`` / float TIFF / PFM in px,
or a 16-bit PNG holding ``1000 * sigma`` as ``dmenet infer`` writes it; a folder of
``NAME_sigma_px.npy`` / ``NAME_sigma_px_x1000.png`` serves several photos).

The default method (:func:`deblur`, ``method="invert"``) inverts the spatially varying blur
operator of the whole map (:class:`~dmenet.inference.deconvolution.BlurOperator`): Krishnan &
Fergus's hyper-Laplacian objective minimised by half-quadratic splitting with a few
conjugate-gradient steps per ``x``-step (:func:`~dmenet.inference.deconvolution.invert_blur`).
Its default forward model, ``model="layered"``, over-composites blur layers as the SYNDOF
renderer does (occlusions at depth edges; the sharper layer taken as the nearer) and is
inverted on the map itself; :func:`guarded_blend` then falls back smoothly, wherever that model
does not explain the photo (local RMS residual above about one 8-bit level), to the inversion of
the occlusion-free ``"gather"`` model (each pixel the blur of the sharp photo by its own
Gaussian) on the edge-safe map (:func:`edge_safe_sigma`), which rarely rings.

``method="bins"`` (the previous default): the map's blurred pixels (sigma >= ``min_sigma_px``,
0.3 px) are split into ``bins`` quantile bins (32); the whole photo is deconvolved once per bin sigma with a
Gaussian PSF, per channel, by Krishnan & Fergus's hyper-Laplacian half-quadratic solver
(:mod:`dmenet.inference.deconvolution`), all bins and channels batched on one device; each pixel
takes its bin's result. ``bin_mode="blend"`` (default) interpolates linearly in sigma between
the two deconvolutions whose sigma bracket the pixel's (bin edges as nodes), instead of the
reference's hard bin boundaries (``"hard"``: bin medians, each pixel its bin's result).
Pixels below ``min_sigma_px`` are left as they are. Output is clipped to ``[0, 1]``.

Per photo ``NAME`` the output folder gets ``NAME_deblurred.png`` (``.tiff`` for TIFF inputs) in
the input's bit depth and channels (grey stays grey, RGBA keeps its alpha untouched, 16-bit stays
16-bit, float TIFF stays float), and, with ``--save-map``, the map used as ``dmenet infer``'s
four files (:mod:`dmenet.inference.writer`, the JSON also records the deblurring settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dmenet.errors import DataError, DMENetError
from dmenet.inference.deconvolution import (
    ALPHA,
    BOUNDARIES,
    MODELS,
    beta_schedule,
    deconvolve,
    gaussian_taps,
    invert_blur,
)

__all__ = [
    "DEFAULT_LAMBDA",
    "DEFAULT_BINS",
    "MIN_SIGMA_PX",
    "BIN_MODES",
    "METHODS",
    "DEBLURRED_SUFFIX",
    "deblur",
    "guarded_blend",
    "edge_safe_sigma",
    "bin_plan",
    "check_sigma_map",
    "read_sigma_map",
    "main",
    "build_parser",
]

DEFAULT_LAMBDA: float = 1000.0
"""Data weight lambda of the K&F objective (larger = less regularisation). Chosen by
``bench/bench_deblur.py`` on 8-bit SYNDOF renders (BENCHMARKS.md); the reference uses 420 for
CUHK photos, 16.8 for DPDD, 4.2 for RealDOF (noisier, JPEG photos want smaller values)."""

DEFAULT_BINS: int = 32
MIN_SIGMA_PX: float = 0.3
"""Pixels with a smaller sigma (px) are left as they are."""

BIN_MODES: tuple[str, ...] = ("blend", "hard")
METHODS: tuple[str, ...] = ("invert", "bins")
"""``"invert"`` (default): half-quadratic inversion of the spatially varying blur operator itself
(:func:`dmenet.inference.deconvolution.invert_blur`); ``"bins"``: per-bin whole-image
deconvolutions (the reference's scheme, improved; the previous default). Measured in
BENCHMARKS.md section 5."""
DEFAULT_CG_ITERS: int = 8
GUARD_RMS: float = 1.0 / 255
"""The guard (:func:`guarded_blend`) keeps the layered solution where the layered model explains
the photo within about one 8-bit level (local RMS residual); the weight is
``exp(-(rms / GUARD_RMS)^2)``."""
GUARD_RADIUS_PX: float = 2.0
"""Gaussian sigma (px) of the local mean of the squared residual."""
NODE_TOL_PX: float = 0.01
"""Bin sigmas closer than this (px) share one deconvolution."""

DEBLURRED_SUFFIX: str = "_deblurred"
DEFAULT_MEMORY_MB: int | None = None
"""Working memory of the deconvolutions: None = 64 MB on a CPU (small chunks stay in cache;
measured faster than big batches), 2048 MB on a GPU."""
_TIFF = (".tif", ".tiff")


# ---------------------------------------------------------------------------------------------
# the method


def check_sigma_map(sigma_px: np.ndarray | torch.Tensor, size_hw: tuple[int, int],
                    where: str = "sigma map") -> torch.Tensor:
    """The map as a float32 ``(H, W)`` tensor, or a :class:`DataError` naming ``where``: wrong
    shape (``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` of the photo's size), NaN/inf, < 0."""
    sigma = torch.as_tensor(np.asarray(sigma_px) if not torch.is_tensor(sigma_px) else sigma_px)
    while sigma.dim() > 2 and sigma.shape[0] == 1:
        sigma = sigma[0]
    if sigma.dim() != 2:
        raise DataError(f"{where}: a sigma map must be one (H, W) channel, got shape "
                        f"{tuple(sigma.shape)}")
    if tuple(sigma.shape) != tuple(size_hw):
        raise DataError(f"{where}: the sigma map is {sigma.shape[0]}x{sigma.shape[1]} (HxW) but "
                        f"the photo is {size_hw[0]}x{size_hw[1]}")
    sigma = sigma.float()
    bad = int((~torch.isfinite(sigma)).sum())
    if bad:
        raise DataError(f"{where}: the sigma map holds {bad} NaN/inf value(s)")
    if sigma.numel() and float(sigma.min()) < 0:
        raise DataError(f"{where}: the sigma map has negative values (min {float(sigma.min()):.3g} px)")
    return sigma


EDGE_SAFE_REACH: float = 3.0
""":func:`edge_safe_sigma` lowers a pixel's sigma to the smallest within ``3 sigma`` px."""

_SAFE_RADII_PX = (1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 45)


def edge_safe_sigma(sigma_px: torch.Tensor, reach: float = EDGE_SAFE_REACH) -> torch.Tensor:
    """The map with each pixel's sigma lowered to the smallest sigma within ``reach * sigma``
    px (a grey erosion whose radius grows with sigma, on a few radii).

    Next to a less blurred region (a depth edge), a blurred pixel's neighbourhood is not the
    blur of one image by its own Gaussian, and deconvolving it with that Gaussian rings; with
    the smaller sigma it is only partly deblurred. Measured in BENCHMARKS.md (deblur section).
    """
    import cv2

    s = sigma_px.float().cpu().numpy()
    out = s.copy()
    for r in _SAFE_RADII_PX:
        if r > reach * float(s.max(initial=0.0)):
            break
        eroded = cv2.erode(s, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)),
                           borderType=cv2.BORDER_REPLICATE)
        out = np.where(r <= reach * s, np.minimum(out, eroded), out)
    return torch.from_numpy(out)


def guarded_blend(primary: torch.Tensor, residual: torch.Tensor, fallback: torch.Tensor,
                  rms: float = GUARD_RMS, radius_px: float = GUARD_RADIUS_PX) -> torch.Tensor:
    """``w primary + (1 - w) fallback`` with ``w = exp(-(r / rms)^2)``, ``r (H, W)`` the local RMS
    (Gaussian window of ``radius_px``, all channels) of the primary model's ``residual (C, H, W)``:
    where the model does not explain the photo (an occlusion it gets wrong), the result falls
    back smoothly to ``fallback``."""
    from dmenet.inference.deconvolution import _blur_zero

    r2 = (residual.float() ** 2).mean(0, keepdim=True)
    norm = _blur_zero(torch.ones_like(r2), radius_px)
    local = _blur_zero(r2, radius_px) / norm.clamp(min=1e-12)
    w = torch.exp(-local / (rms * rms))
    return w * primary + (1.0 - w) * fallback


def _quantiles(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    step = max(1, values.numel() // 4_000_000)  # torch.quantile's size limit; quantiles of a
    return torch.quantile(values[::step].double(), q.double()).float()  # stride sample suffice


def _dedupe(nodes: torch.Tensor) -> torch.Tensor:
    keep = [float(nodes[0])]
    for v in nodes[1:].tolist():
        if v - keep[-1] >= NODE_TOL_PX:
            keep.append(v)
    if float(nodes[-1]) - keep[-1] > 0 and len(keep) > 1:
        keep[-1] = float(nodes[-1])  # the top node stays the map's maximum
    return torch.tensor(keep)


def _plan(sigma_px: torch.Tensor, bins: int, bin_mode: str, min_sigma_px: float) -> tuple:
    """``(nodes, lower (H, W), t (H, W) or None, blurred (H, W))``: pixel weights are ``1 - t`` on
    node ``lower`` and ``t`` on ``lower + 1`` (hard bins: 1 on ``lower``), 0 off ``blurred``."""
    if bin_mode not in BIN_MODES:
        raise ValueError(f"unknown bin mode {bin_mode!r}; choose one of {', '.join(BIN_MODES)}")
    if bins < 1:
        raise DMENetError(f"--bins must be >= 1, got {bins}")
    blurred = sigma_px >= min_sigma_px
    values = sigma_px[blurred]
    if values.numel() == 0:
        return [], None, None, blurred
    levels = torch.arange(bins + 1, dtype=torch.float64) / bins
    edges = _quantiles(values, levels)
    if bin_mode == "hard":
        medians = _quantiles(values, (torch.arange(bins, dtype=torch.float64) + 0.5) / bins)
        nodes = _dedupe(medians)
        bin_of = torch.bucketize(sigma_px, edges[1:-1].contiguous(), right=True)  # 0 .. bins-1
        node_of_bin = (torch.bucketize(medians, nodes, right=True) - 1).clamp(0, len(nodes) - 1)
        # a median that was merged into a lower node goes to the nearer of its two neighbours
        upper = (node_of_bin + 1).clamp(max=len(nodes) - 1)
        nearer_up = (nodes[upper] - medians).abs() < (medians - nodes[node_of_bin]).abs()
        node_of_bin = torch.where(nearer_up, upper, node_of_bin)
        return nodes.tolist(), node_of_bin[bin_of].int(), None, blurred
    nodes = _dedupe(edges)
    n = len(nodes)
    if n == 1:
        return nodes.tolist(), torch.zeros(sigma_px.shape, dtype=torch.int32), None, blurred
    lower = (torch.bucketize(sigma_px, nodes, right=True) - 1).clamp(0, n - 2)
    t = ((sigma_px - nodes[lower]) / (nodes[lower + 1] - nodes[lower])).clamp(0.0, 1.0)
    return nodes.tolist(), lower.int(), t, blurred


def _weights(plan: tuple, start: int, stop: int) -> torch.Tensor:
    """The weights ``(stop - start, H, W)`` of nodes ``start .. stop - 1`` (built per chunk, so a
    big photo never holds all 33 weight maps)."""
    _, lower, t, blurred = plan
    k = torch.arange(start, stop, dtype=torch.int32)[:, None, None]
    if t is None:
        w = (lower[None] == k).float()
    else:
        w = (lower[None] == k) * (1.0 - t)[None] + (lower[None] + 1 == k) * t[None]
    return w * blurred[None]


def bin_plan(sigma_px: torch.Tensor, bins: int = DEFAULT_BINS, bin_mode: str = "blend",
             min_sigma_px: float = MIN_SIGMA_PX) -> tuple[list[float], torch.Tensor]:
    """The deconvolution sigmas and each pixel's weights on them.

    Returns ``(nodes, weights)``: ``nodes`` the kernel sigmas (px, increasing), ``weights``
    ``(len(nodes), H, W)`` summing to 1 on blurred pixels (sigma >= ``min_sigma_px``) and to 0
    on the others (left as they are). Bins are quantiles of the blurred pixels only.
    """
    plan = _plan(sigma_px, bins, bin_mode, min_sigma_px)
    if not plan[0]:
        return [], torch.zeros((0, *sigma_px.shape))
    return plan[0], _weights(plan, 0, len(plan[0]))


class _Progress:
    """Counts the steps of one :func:`deblur` call for its ``progress(done, total)`` callback."""

    def __init__(self, callback: Callable[[int, int], None] | None) -> None:
        self.callback, self.done, self.total = callback, 0, 0

    def start(self, total: int) -> None:
        self.total = total
        if self.callback is not None:
            self.callback(0, total)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.callback is not None:
            self.callback(self.done, self.total)


def deblur(image: torch.Tensor, sigma_px: np.ndarray | torch.Tensor, lam: float = DEFAULT_LAMBDA,
           alpha: float = ALPHA, bins: int = DEFAULT_BINS, bin_mode: str = "blend",
           boundary: str = "reflect", min_sigma_px: float = MIN_SIGMA_PX,
           device: torch.device | str | None = None,
           memory_mb: int | None = DEFAULT_MEMORY_MB, isolate: bool = True,
           edge_safe: bool = True, method: str = "invert", model: str = "layered",
           cg_iters: int = DEFAULT_CG_ITERS, guard: bool = True,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """All-in-focus ``image (C, H, W)`` in ``[0, 1]`` (any C) from its defocus map
    ``sigma_px (H, W)`` (Gaussian sigma in px). Returns ``(C, H, W)`` in ``[0, 1]`` on the CPU.

    ``lam``: K&F data weight; ``alpha``: prior exponent in [1, 2]; ``bins`` quantile bins;
    ``bin_mode``: ``"blend"`` or ``"hard"``; ``boundary``: ``"reflect"`` or ``"taper"``;
    ``memory_mb``: about how much working memory the batched deconvolutions may use (bins, and
    channels when one bin does not fit, are processed in chunks that fit; None: 64 MB on a CPU,
    2048 MB on a GPU). ``isolate``: each bin's deconvolution sees, away from
    the pixels that use it, the photo re-blurred with its own PSF (consistent data, no ringing
    from regions of other blur). ``edge_safe``: :func:`edge_safe_sigma` first. The reference
    method is ``method="bins", bin_mode="hard", boundary="taper", isolate=False,
    edge_safe=False``.

    ``method="invert"`` (default) inverts the blur operator of the whole map (``model``
    ``"layered"``, ``"gather"`` or ``"scatter"``, ``cg_iters`` CG steps per half-quadratic step;
    ``bins``, ``bin_mode``, ``boundary``, ``isolate`` and ``memory_mb`` do not apply);
    ``method="bins"`` is the per-bin scheme above. With ``model="layered"`` and ``guard``
    (the defaults), the layered model is inverted on the map itself (it models the occlusions)
    and the result falls back smoothly, by :func:`guarded_blend`, to the gather model's
    inversion on the edge-safe map wherever the layered model does not explain the photo;
    ``edge_safe`` then applies to that fallback only.

    ``progress(done, total)``: called once with ``done = 0`` and then after every step of the
    work (a half-quadratic step of each inversion, or a chunk of bins and channels), ending with
    ``done == total``: a photo of many megapixels takes minutes on a CPU.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if model not in MODELS:
        raise ValueError(f"unknown blur model {model!r}; choose one of {', '.join(MODELS)}")
    if image.dim() != 3:
        raise DataError(f"image must be (C, H, W), got {tuple(image.shape)}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; choose one of {', '.join(BOUNDARIES)}")
    c, h, w = image.shape
    sigma = check_sigma_map(sigma_px, (h, w))
    device = torch.device(device) if device is not None else image.device
    guarded = method == "invert" and model == "layered" and guard
    raw = sigma
    if edge_safe:
        sigma = edge_safe_sigma(sigma)
    tracker = _Progress(progress)
    if method == "invert":
        steps = len(beta_schedule())

        def solve(s: torch.Tensor, kind: str, residual: bool = False):
            s = torch.where(s >= min_sigma_px, s, torch.zeros_like(s))
            if not s.numel() or float(s.max()) <= 0:
                tracker.advance(steps)
                x = image.float().to(device)
                return (x, torch.zeros_like(x)) if residual else x
            return invert_blur(image.float().to(device), s.to(device), lam, alpha=alpha,
                               model=kind, cg_iters=cg_iters, return_residual=residual,
                               on_step=tracker.advance)

        tracker.start((2 if guarded else 1) * steps)
        if not guarded:
            return solve(sigma, model).clamp_(0.0, 1.0).cpu()
        x, residual = solve(raw, "layered", residual=True)
        fallback = solve(sigma, "gather").clamp_(0.0, 1.0)
        return guarded_blend(x.clamp_(0.0, 1.0), residual, fallback).clamp_(0.0, 1.0).cpu()
    plan = _plan(sigma, bins, bin_mode, min_sigma_px)
    nodes = plan[0]
    source = image.float().cpu()
    if not nodes:
        tracker.start(1)
        tracker.advance()
        return source.clamp(0.0, 1.0)
    out = source * (~plan[3]).float()[None]
    img = image.float().to(device)
    if memory_mb is None:
        memory_mb = 2048 if device.type == "cuda" else 64
    radius = max(len(gaussian_taps(s)) // 2 for s in nodes)
    pad_px = max(1, 2 * radius if boundary == "reflect" else radius)  # the same for every chunk
    plane_bytes = 4 * (h + 4 * radius + 16) * (w + 4 * radius + 16)
    planes = max(1, int(memory_mb * 2**20 // (12 * plane_bytes)))  # node-channel planes per chunk
    chunk, channels = max(1, planes // c), min(c, planes)
    tracker.start(-(-len(nodes) // chunk) * -(-c // channels))
    for start in range(0, len(nodes), chunk):
        stop = min(start + chunk, len(nodes))
        wk = _weights(plan, start, stop).to(device)
        masks = (wk[:, None] > 0).float() if isolate else None
        for c0 in range(0, c, channels):
            x = deconvolve(img[c0:c0 + channels], nodes[start:stop], lam, alpha, boundary,
                           pad_px=pad_px, masks=masks).clamp_(0.0, 1.0)
            out[c0:c0 + channels] += (x * wk[:, None]).sum(0).cpu()
            del x
            tracker.advance()
        del wk, masks
    return out.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# files


def read_sigma_map(path: str | Path) -> np.ndarray:
    """A defocus map file as float32 sigma in px ``(H, W)``.

    ``.npy`` and float images (TIFF) and ``.pfm`` hold px; 16-bit images hold
    ``png16_scale * sigma`` (1000, or the scale in the ``NAME_defocus.json`` that ``dmenet
    infer`` writes beside its ``NAME_sigma_px_x1000.png``). 8-bit images are refused (too coarse).
    """
    from dmenet.data.io import load_npy, read_gray
    from dmenet.inference.writer import OUTPUT_SUFFIXES, PNG_SIGMA_SCALE

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such sigma map file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = load_npy(path)
        if not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{path}: the array holds {array.dtype}, not numbers")
        return np.asarray(array, dtype=np.float32)
    if suffix == ".pfm":
        from dmenet.data.rgbd import read_pfm

        return read_pfm(path)
    array = read_gray(path)
    if array.dtype == np.uint16:
        scale = PNG_SIGMA_SCALE
        if path.name.endswith(OUTPUT_SUFFIXES["png16"]):
            sidecar = path.with_name(path.name[: -len(OUTPUT_SUFFIXES["png16"])] + OUTPUT_SUFFIXES["json"])
            if sidecar.is_file():
                try:
                    scale = float(json.loads(sidecar.read_text()).get("png16_scale", scale))
                except (ValueError, AttributeError, TypeError):
                    pass
        return array.astype(np.float32) / scale
    if array.dtype in (np.float32, np.float64):
        return array.astype(np.float32)
    raise DataError(f"{path}: a {array.dtype} image cannot hold sigma in px; give a .npy / float "
                    f"TIFF in px or a 16-bit PNG of 1000 * sigma (dmenet infer's _sigma_px_x1000.png)")


def _map_for(source: Path, name: str, count: int) -> Path:
    """The map file of photo ``name``: ``source`` itself, or its match in the folder ``source``."""
    from dmenet.inference.writer import OUTPUT_SUFFIXES

    if source.is_dir():
        for kind in ("npy", "png16"):
            candidate = source / f"{name}{OUTPUT_SUFFIXES[kind]}"
            if candidate.is_file():
                return candidate
        raise DataError(f"{source}: no {name}{OUTPUT_SUFFIXES['npy']} or "
                        f"{name}{OUTPUT_SUFFIXES['png16']} for this photo")
    if count > 1:
        raise DMENetError(f"--sigma-map {source} is one map but {count} photos were given; give a "
                          "folder of NAME_sigma_px.npy maps (what 'dmenet infer --out' writes)")
    return source


def _output_suffixes(path: Path, save_map: bool) -> dict[str, str]:
    from dmenet.inference.writer import OUTPUT_SUFFIXES

    ext = ".tiff" if path.suffix.lower() in _TIFF else ".png"
    suffixes = {"deblurred": f"{DEBLURRED_SUFFIX}{ext}"}
    if save_map:
        suffixes.update(OUTPUT_SUFFIXES)
    return suffixes


def _read_photo(path: Path) -> tuple[np.ndarray, torch.Tensor, np.ndarray | None]:
    """``(raw, colour (C, H, W) in [0, 1], alpha or None)``; channels in the file's order."""
    from dmenet.data.io import _to_unit_float, read_raw

    raw = read_raw(path)
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] not in (1, 3, 4)):
        raise DataError(f"{path}: unsupported image shape {raw.shape}")
    if raw.shape[0] < 1 or raw.shape[1] < 1:
        raise DataError(f"{path}: the image has no pixels")
    planes = raw[:, :, None] if raw.ndim == 2 else raw
    alpha = planes[:, :, 3:] if planes.shape[2] == 4 else None
    colour = _to_unit_float(np.ascontiguousarray(planes[:, :, :3]), path)
    return raw, torch.from_numpy(np.ascontiguousarray(colour.transpose(2, 0, 1))), alpha


def _to_raw(result: torch.Tensor, raw: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """``result (C, H, W)`` in [0, 1] back to the file's dtype and layout."""
    planes = result.permute(1, 2, 0).numpy()
    if raw.dtype == np.uint8:
        planes = np.clip(np.rint(planes * 255.0), 0, 255).astype(np.uint8)
    elif raw.dtype == np.uint16:
        planes = np.clip(np.rint(planes * 65535.0), 0, 65535).astype(np.uint16)
    else:
        planes = planes.astype(raw.dtype)
    if alpha is not None:
        planes = np.concatenate([planes, alpha], axis=2)
    return planes[:, :, 0] if raw.ndim == 2 else planes


def build_parser() -> argparse.ArgumentParser:
    from dmenet.inference.infer import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="dmenet deblur",
        description="All-in-focus photos: spatially varying non-blind deconvolution (Gaussian PSF "
        "of the defocus map, Krishnan & Fergus hyper-Laplacian prior).",
        epilog="Map source: --ckpt (B), --estimator zhuo_sim, or --sigma-map. Outputs per photo "
        "NAME: NAME_deblurred.png (.tiff for TIFF inputs) in the input's bit depth; with "
        "--save-map also dmenet infer's four map files. Example: dmenet deblur photos/ "
        "--ckpt model.ckpt --out sharp/",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="photo files, folders or glob patterns (jpg, png, tiff, webp; 8 or 16 bit)")
    add_model_arguments(parser)
    parser.add_argument("--sigma-map", metavar="FILE",
                        help="use this defocus map instead of estimating one: .npy / float TIFF / "
                        ".pfm in px, or a 16-bit PNG of 1000 * sigma (dmenet infer's output); a "
                        "folder of NAME_sigma_px.npy (or NAME_sigma_px_x1000.png) for several photos")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA,
                        help=f"data weight (larger = sharper but noisier; default {DEFAULT_LAMBDA:g} "
                        "the reference uses 420 for CUHK, 4.2 for noisy RealDOF)")
    parser.add_argument("--alpha", type=float, default=ALPHA,
                        help=f"hyper-Laplacian exponent in [1, 2] (default {ALPHA:g})")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS,
                        help=f"quantile bins of sigma (default {DEFAULT_BINS})")
    parser.add_argument("--bin-mode", choices=BIN_MODES, default="blend",
                        help="blend: interpolate between neighbouring bins (default, no seams); "
                        "hard: each pixel its bin's result (the reference)")
    parser.add_argument("--boundary", choices=BOUNDARIES, default="reflect",
                        help="image borders: reflect (mirror padding, default) or taper (the "
                        "reference: replicate padding + edgetaper)")
    parser.add_argument("--min-sigma", type=float, default=MIN_SIGMA_PX,
                        help=f"pixels with sigma below this (px) are left as they are "
                        f"(default {MIN_SIGMA_PX:g})")
    parser.add_argument("--reference", action="store_true",
                        help="the reference method exactly: hard bins, taper boundary, no bin "
                        "isolation, no edge-safe map (overrides --bin-mode / --boundary / --method)")
    parser.add_argument("--method", choices=METHODS, default="invert",
                        help="invert: half-quadratic inversion of the spatially varying blur "
                        "operator (CG, default); bins: per-bin whole-image deconvolutions, blended "
                        "(the previous default)")
    parser.add_argument("--model", choices=MODELS, default="layered",
                        help="blur model of --method invert: layered (the SYNDOF renderer's "
                        "over-compositing of blur layers, the sharper layer nearer; default), "
                        "gather (each pixel the blur of the sharp image by its own Gaussian) or "
                        "scatter (its transpose)")
    parser.add_argument("--no-guard", dest="guard", action="store_false",
                        help="with --model layered: do not fall back to the gather model on the "
                        "edge-safe map where the layered model does not explain the photo")
    parser.add_argument("--cg-iters", type=int, default=DEFAULT_CG_ITERS,
                        help="conjugate-gradient steps per half-quadratic step of --method invert")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB,
                        help="working memory of the deconvolutions in MB (default 64 on a CPU, "
                        "2048 on a GPU)")
    parser.add_argument("--save-map", action="store_true",
                        help="also write the sigma map used (dmenet infer's four files)")
    parser.add_argument("--recursive", action="store_true", help="also read subfolders of folders")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    if args.sigma_map and (args.ckpt or args.estimator == "zhuo_sim"):
        raise DMENetError("give one map source: --sigma-map, --ckpt or --estimator zhuo_sim")
    if args.sigma_map and not Path(args.sigma_map).exists():
        raise DMENetError(f"--sigma-map {args.sigma_map}: no such file or folder")
    if not args.lam > 0:
        raise DMENetError(f"--lambda must be > 0, got {args.lam}")
    if args.cg_iters < 1:
        raise DMENetError(f"--cg-iters must be >= 1, got {args.cg_iters}")
    if not 1.0 <= args.alpha <= 2.0:
        raise DMENetError(f"--alpha must be in [1, 2], got {args.alpha}")
    if args.bins < 1:
        raise DMENetError(f"--bins must be >= 1, got {args.bins}")
    if not args.min_sigma >= 0:
        raise DMENetError(f"--min-sigma must be >= 0, got {args.min_sigma}")
    if args.memory_mb is not None and args.memory_mb < 1:
        raise DMENetError(f"--memory-mb must be >= 1, got {args.memory_mb}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_options(args)
    from tqdm.auto import tqdm

    from dmenet.data.io import _imwrite, read_image_tensor
    from dmenet.inference.infer import (
        PHOTO_ERRORS,
        failure_reason,
        gather_inputs,
        make_estimator,
        report_failures,
        resolve_device,
    )
    from dmenet.inference.writer import check_outputs_free, output_paths, write_defocus_outputs

    if args.reference:
        args.bin_mode, args.boundary, args.method = "hard", "taper", "bins"
    items, failures = gather_inputs(args.paths, args.recursive)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DMENetError(f"{out_dir}: exists and is not a folder")
    for path, name in items:
        check_outputs_free(out_dir, [name], args.overwrite, _output_suffixes(path, args.save_map))
    device = resolve_device(args.device)
    map_source = Path(args.sigma_map) if args.sigma_map else None
    estimator = None
    if items and map_source is None:
        estimator = make_estimator(args, progress_tiles=len(items) == 1)
    elif map_source is not None and map_source.is_file():
        _map_for(map_source, "", len(items))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"lambda": args.lam, "alpha": args.alpha, "bins": args.bins,
                "bin_mode": args.bin_mode, "boundary": args.boundary,
                "min_sigma_px": args.min_sigma, "reference": args.reference,
                "method": args.method}
    if args.method == "invert":
        settings.update({"model": args.model, "cg_iters": args.cg_iters,
                         "guard": args.guard and args.model == "layered"})

    written = 0
    bar = tqdm(items, desc="dmenet deblur", unit="photo", disable=None)
    for path, name in bar:
        bar.set_postfix_str(path.name, refresh=False)
        steps = None
        try:
            raw, colour, alpha = _read_photo(path)
            start = time.perf_counter()
            if map_source is not None:
                map_path = _map_for(map_source, name, len(items))
                sigma = check_sigma_map(read_sigma_map(map_path), colour.shape[1:], str(map_path))
                meta = {"estimator": "file", "sigma_map": str(map_path)}
            else:
                assert estimator is not None
                sigma = check_sigma_map(estimator(read_image_tensor(path)), colour.shape[1:],
                                        str(path))
                meta = dict(estimator.describe)
            steps = tqdm(desc=f"deblurring {path.name}", unit="step", leave=False,
                         disable=None, position=1)

            def progress(done: int, total: int, steps=steps) -> None:
                steps.total = total
                steps.n = done
                steps.refresh()

            result = deblur(colour, sigma, lam=args.lam, alpha=args.alpha, bins=args.bins,
                            bin_mode=args.bin_mode, boundary=args.boundary,
                            min_sigma_px=args.min_sigma, device=device, memory_mb=args.memory_mb,
                            isolate=not args.reference, edge_safe=not args.reference,
                            method=args.method, model=args.model, cg_iters=args.cg_iters,
                            guard=args.guard, progress=progress)
            paths = output_paths(out_dir, name, _output_suffixes(path, args.save_map))
            meta.update({"source": str(path), "seconds": round(time.perf_counter() - start, 3),
                         "deblur": settings, "deblurred": paths["deblurred"].name})
            if args.save_map:
                write_defocus_outputs(out_dir, name, sigma, overwrite=args.overwrite, meta=meta)
            _imwrite(paths["deblurred"], _to_raw(result, raw, alpha))
            written += 1
        except PHOTO_ERRORS as exc:
            failures.append((str(path), failure_reason(exc)))
        finally:
            if steps is not None:
                steps.close()
    bar.close()
    return report_failures("dmenet deblur", f"wrote {written} deblurred photo(s) to {out_dir}",
                           failures)


if __name__ == "__main__":
    sys.exit(main())
