"""Comparing our SYNDOF renders with the official generator's outputs (the test oracles in
``../shared/data/syndof_reference``, see its README) — used by the tests and the benchmark.

Metrics (SPEC section 2, issue 12): PSNR on the interior (a 14 px border strip excluded, where
the border rule decides), the 99th percentile of the per-pixel error (largest channel, in
levels of 255) more than 14 px from any depth edge (neighbouring pixels whose layer CoCs differ
by more than 1 px), and the largest deviation of a flat grey photo from its grey.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmenet.data.thin_lens import Camera

BORDER_PX = 14
"""Border strip excluded from the PSNR; also the distance from depth edges of the p99."""

EDGE_JUMP_PX = 1.0
"""A depth edge: neighbouring layer CoCs (signed) differing by more than this."""

MIDDLEBURY_SCENE = Path("middlebury2014") / "Adirondack-perfect"


def read_png16_rgb(path: str | Path) -> np.ndarray:
    """A 16-bit RGB PNG as float64 ``(H, W, 3)`` in [0, 1] (OpenCV keeps the 16 bits)."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(path)
    return raw[..., ::-1].astype(np.float64) / 65535.0


def load_middlebury_sample(rgbd_samples: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's Middlebury input: ``im0.png`` and ``depth_cm16.png`` channel 0 x 10
    (mm), as ``image (1, 3, H, W)`` in [0, 1] and ``depth_mm (1, 1, H, W)``."""
    import cv2

    scene = Path(rgbd_samples) / MIDDLEBURY_SCENE
    rgb = cv2.imread(str(scene / "im0.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    depth = cv2.imread(str(scene / "depth_cm16.png"), cv2.IMREAD_UNCHANGED)[..., 2]  # R = ch 0
    image = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return image.contiguous(), torch.from_numpy(depth.astype(np.float32) * 10.0)[None, None]


def load_cases(reference_dir: str | Path) -> list[dict]:
    """``cases.json`` of the oracle folder, each case with its ``camera`` (a :class:`Camera`)
    and the paths of its official image and sigma label."""
    root = Path(reference_dir)
    cases = json.loads((root / "cases.json").read_text())
    for case in cases:
        case["camera"] = Camera([case["focus_mm"]], [case["alpha_px"]])
        case["official_png"] = root / f"{case['case']}_official.png"
        case["sigma_npy"] = root / f"{case['case']}_sigma_px.npy"
    return cases


def psnr_interior(ours: np.ndarray, official: np.ndarray, border_px: int = BORDER_PX) -> float:
    """PSNR (dB, peak 1) of ``(H, W, 3)`` images without a ``border_px`` strip."""
    b = border_px
    mse = float(np.mean((ours[b:-b, b:-b] - official[b:-b, b:-b]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def away_from_depth_edges(coc_signed_px: torch.Tensor, distance_px: int = BORDER_PX,
                          jump_px: float = EDGE_JUMP_PX) -> np.ndarray:
    """``(H, W)`` bool: farther than ``distance_px`` (Chebyshev) from any depth edge of the
    layer CoC map ``(1, 1, H, W)`` (signed: in front of the focus negative)."""
    c = coc_signed_px.float()
    spread = F.max_pool2d(c, 3, 1, 1) + F.max_pool2d(-c, 3, 1, 1)
    edge = (spread > jump_px).float()
    near = F.max_pool2d(edge, 2 * distance_px + 1, 1, distance_px)
    return (near[0, 0] == 0).numpy()


def p99_away_levels(ours: np.ndarray, official: np.ndarray, away: np.ndarray) -> float:
    """99th percentile (levels of 255) of the largest-channel error where ``away``."""
    err = np.abs(ours - official).max(axis=2)[away]
    return float(np.percentile(err, 99) * 255.0) if err.size else float("nan")
