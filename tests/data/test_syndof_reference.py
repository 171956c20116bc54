"""Reference mode against the official SYNDOF generator's outputs (../shared/data/
syndof_reference: Middlebury sample, fixed cameras; skipped when absent).

The default suite checks one case (``middlebury_near``): the per-layer loop through the
``dmenet syndof export`` command line and the tiled renderer through the API; set
``DMENET_ORACLE_ALL=1`` for every case and both renderers (about 4 x 6 s on an idle core).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dmenet.data.syndof import render_defocus
from dmenet.data.syndof_oracle import (
    away_from_depth_edges,
    load_cases,
    load_middlebury_sample,
    p99_away_levels,
    psnr_interior,
    read_png16_rgb,
)

ALL = os.environ.get("DMENET_ORACLE_ALL") == "1"
BARS = {"loop": (40.0, 3.0), "tiled": (40.0, 4.0)}  # PSNR dB >=, p99 levels <=


@pytest.fixture(scope="module")
def oracle(shared_data):
    root = shared_data / "syndof_reference"
    if not root.is_dir():
        pytest.skip("../shared/data/syndof_reference is not present")
    image, depth = load_middlebury_sample(shared_data / "rgbd_samples")
    return {case["case"]: case for case in load_cases(root)}, image, depth


def check(ours: np.ndarray, case: dict, coc_px: torch.Tensor, depth: torch.Tensor,
          renderer: str) -> None:
    official = read_png16_rgb(case["official_png"])
    signed = coc_px * torch.sign(case["camera"].signed_coc_px(depth))
    away = away_from_depth_edges(signed)
    assert 0.3 < away.mean() < 0.7  # the measure covers a good part of the image
    psnr = psnr_interior(ours, official)
    p99 = p99_away_levels(ours, official, away)
    low, high = BARS[renderer]
    assert psnr >= low and p99 <= high, (case["case"], renderer, psnr, p99)


def cases(default):
    return [(c, r) for c in ("middlebury_near", "middlebury_far") for r in ("tiled", "loop")
            if ALL or (c, r) in default]


@pytest.mark.slow
@pytest.mark.parametrize("name,renderer", cases({("middlebury_near", "tiled")}))
def test_api_matches_the_official_generator(oracle, name, renderer):
    table, image, depth = oracle
    case = table[name]
    out = render_defocus(image, depth, case["camera"], sigma_rule="reference",
                         render_mode="reference", renderer=renderer, c_max_px=29.0)
    assert int(out.num_layers[0]) == case["layers"]  # every CoC its own layer, none merged
    label = np.load(case["sigma_npy"])
    assert np.abs(out.sigma_px[0, 0].numpy() - label).max() < 1e-4
    check(out.image[0].permute(1, 2, 0).double().numpy(), case, out.coc_px, depth, renderer)


@pytest.mark.slow
@pytest.mark.parametrize("name,renderer", cases({("middlebury_near", "loop")}))
def test_export_matches_the_official_generator(oracle, shared_data, tmp_path, name, renderer):
    """``dmenet syndof export --source folder:... --focus-mm F --coc-scale ALPHA
    --sigma-rule reference --max-coc 29 --mode reference`` (8-bit output)."""
    import cv2

    from dmenet.data.export import main

    table, _, depth = oracle
    case = table[name]
    scene = shared_data / "rgbd_samples" / "middlebury2014" / "Adirondack-perfect"
    src = tmp_path / "src"
    (src / "image").mkdir(parents=True)
    (src / "depth").mkdir()
    (src / "image" / "adirondack.png").symlink_to(scene / "im0.png")
    (src / "depth" / "adirondack.png").symlink_to(scene / "depth_cm16.png")
    out = tmp_path / "out"
    assert main(["export", "--source", f"folder:{src}", "--depth-scale", "10", "--out",
                 str(out), "--focus-mm", str(case["focus_mm"]), "--coc-scale",
                 str(case["alpha_px"]), "--sigma-rule", "reference", "--max-coc", "29",
                 "--mode", "reference", "--renderer", renderer]) == 0
    png = next(Path(out / "image").glob("*.png"))
    ours = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float64) / 255.0
    label = cv2.imread(str(out / "blur_map" / png.name), cv2.IMREAD_UNCHANGED)[..., 0] / 10.0
    coc = torch.from_numpy(4.0 * label + 1.0).float()[None, None] * (label > 0)[None, None]
    check(ours, case, coc, depth, renderer)


WINDOWS = {"middlebury_near": [(240, 470)], "middlebury_far": [(120, 240)]}
"""Top-left corners of the 240 px training windows checked per case (the far case's chair and
floor are ramps in front of the focus, where every layer needs its own fill)."""


@pytest.mark.slow
def test_batched_training_windows_match_the_official_generator(oracle, monkeypatch):
    """The batched renderer (the device path, run here on the CPU) on 240 px training windows
    as the DataModule cuts them (a 28 px margin, the whole image's camera and fill start), the
    a window of each camera in one batch: each window against the same crop of the
    official render, by the fidelity bars (>= 40 dB, 99th percentile <= 4 levels away from
    depth edges). (``bench/bench_syndof.py`` compares the whole image.)"""
    from dmenet.data.syndof import SyndofRenderer, batched, fill_start_coc_px, pad_like_border
    from dmenet.data.thin_lens import Camera

    # chunks of 128 MB instead of a device's 512 MB: several chunks per batch, and a CPU peak
    # that fits the suite's memory
    monkeypatch.setattr(batched, "CHUNK_ELEMENTS", 1 << 25)
    table, image, depth = oracle
    renderer = SyndofRenderer(render_mode="reference", sigma_rule="reference", c_max_px=29.0)
    size, m, reach = 240, renderer.crop_margin_px(), renderer.blur_reach_px()
    assert (m, reach) == (28, 14)
    image_p, depth_p = pad_like_border(image, m, "reference"), pad_like_border(depth, m, "reference")
    images, depths, cams, starts, where = [], [], [], [], []
    for name, corners in WINDOWS.items():
        camera = table[name]["camera"]
        start = fill_start_coc_px(depth, camera, render_mode="reference", c_max_px=29.0)
        for y, x in corners:
            images.append(image_p[0, :, y:y + size + 2 * m, x:x + size + 2 * m])
            depths.append(depth_p[0, :, y:y + size + 2 * m, x:x + size + 2 * m])
            cams.append(camera)
            starts.append(start)
            where.append((name, y, x))
    camera = Camera(*(torch.cat([getattr(c, k) for c in cams]) for k in
                      ("focus_mm", "alpha_px", "focal_mm", "f_number", "depth_offset_mm")))
    out = render_defocus(torch.stack(images), torch.stack(depths), camera,
                         sigma_rule="reference", render_mode="reference", renderer="batched",
                         c_max_px=29.0, fill_from_coc_px=torch.cat(starts))
    h, w = image.shape[-2:]
    inside = np.zeros((h, w), dtype=bool)
    inside[reach:-reach, reach:-reach] = True  # the image border strip follows the border rule
    for i, (name, y, x) in enumerate(where):
        case = table[name]
        official = read_png16_rgb(case["official_png"])[y:y + size, x:x + size]
        ours = out.image[i, :, m:-m, m:-m].permute(1, 2, 0).double().numpy()
        signed = case["camera"].signed_coc_px(depth, c_max_px=29.0)
        away = away_from_depth_edges(signed)[y:y + size, x:x + size]
        keep = inside[y:y + size, x:x + size]
        mse = float(np.mean((ours - official)[keep] ** 2))
        psnr = 10.0 * np.log10(1.0 / mse)
        p99 = p99_away_levels(ours, official, away & keep)
        assert psnr >= 40.0 and p99 <= 4.0, (name, y, x, psnr, p99)
