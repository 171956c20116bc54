"""Benchmark of the SYNDOF renderer: against the official generator, and its speed.

1. Against the official generator's outputs (../shared/data/syndof_reference, skipped when
   absent), in reference mode (29 x 29 kernel, symmetric border, the generator's fill): PSNR on
   the interior, 99th percentile error more than 14 px from depth edges, flat-grey deviation
   and time, for the fast renderer and the per-layer loop; the official time from cases.json.
2. Speed of the fast renderer (:func:`dmenet.data.syndof.render_defocus`) against the
   straightforward per-layer loop (:func:`dmenet.data.syndof.render_defocus_loop`: one
   full-frame blur per layer, the exact fill before every layer) on the SAME inputs and
   cameras: 240x240 crops with 200 to 350 CoC layers and about 1 MP, in both render modes.

    python bench/bench_syndof.py                 # prints, writes docs/benchmarks/syndof.md
    python bench/bench_syndof.py --quick         # fewer repeats, no 1 MP rows (a smoke run)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHARED_MIDDLEBURY = SHARED / "rgbd_samples" / "middlebury2014"
SHARED_REFERENCE = SHARED / "syndof_reference"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def crops_with_layers(image, depth, n, size, generator, lo=200, hi=350, tries=200):
    """``n`` random ``size`` crops whose reference-mode camera gives ``lo``..``hi`` layers."""
    from dmenet.data.thin_lens import CameraSampler, clean_depth_mm, count_layers

    sampler = CameraSampler("reference", min_layers=lo, max_layers=hi)
    h, w = image.shape[-2:]
    images, depths, cams = [], [], []
    for _ in range(tries):
        y = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        x = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        d = clean_depth_mm(depth[None, :, y:y + size, x:x + size])
        cam = sampler.sample(d, generator)
        layers = int(count_layers(cam.signed_coc_px(d))[0])
        if lo <= layers <= hi:
            images.append(image[:, y:y + size, x:x + size])
            depths.append(d[0])
            cams.append(cam)
        if len(images) == n:
            break
    if len(images) < n:
        return None
    from dmenet.data.thin_lens import Camera

    camera = Camera(*(torch.cat([getattr(c, k) for c in cams]) for k in
                      ("focus_mm", "alpha_px", "focal_mm", "f_number", "depth_offset_mm")))
    return torch.stack(images), torch.stack(depths), camera


def to_megapixel(image, depth):
    """Resize to about 1 MP (depth by nearest neighbour, so no new depth values appear)."""
    h, w = image.shape[-2:]
    s = (1e6 / (h * w)) ** 0.5
    size = (round(h * s), round(w * s))
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
    dep = F.interpolate(depth[None], size=size, mode="nearest")
    return img.clamp(0, 1), dep


def timed(fn, device, repeats):
    """Best wall time and best CPU time (this process; on the GPU the wall time) of
    ``repeats`` calls after a warm-up, and the last result. The CPU time is what a shared,
    loaded machine distorts least (1 thread: the time the renderer itself ran)."""
    fn()  # warm-up (kernels, caches)
    _sync(device)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        _sync(device)
        wall = time.perf_counter() - t0
        best = min(best, wall)
        best_cpu = min(best_cpu, wall if device.type == "cuda" else time.process_time() - c0)
    return best, best_cpu, out


def write_strip(path, image, fast, loop):
    """input | fast | loop | 4 x |fast - loop| of the first sample, as one PNG."""
    from dmenet.data.io import write_image

    def rgb(t):
        return t[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()

    diff = (fast - loop).abs().amax(1, keepdim=True).repeat(1, 3, 1, 1) * 4
    write_image(path, np.concatenate([rgb(image), rgb(fast), rgb(loop), rgb(diff)], axis=1))


def compare(image, depth, camera, device, repeats, loop_repeats, picture=None,
            render_mode="paper"):
    from dmenet.data.syndof import depth_edge_region, render_defocus, render_defocus_loop

    image, depth, camera = image.to(device), depth.to(device), camera.to(device)
    kw = {"render_mode": render_mode}
    w_fast, t_fast, fast = timed(lambda: render_defocus(image, depth, camera, **kw), device,
                                 repeats)
    w_loop, t_loop, loop = timed(lambda: render_defocus_loop(image, depth, camera, **kw), device,
                         loop_repeats)
    diff = (fast.image.float() - loop.float()).abs().amax(1, keepdim=True)
    if picture is not None:
        write_strip(picture, image, fast.image, loop)
    radius = int(np.ceil(3 * float(fast.sigma_px.max())))
    # depth edges: neighbouring CoCs differ by more than 1 px; "away" = beyond the blur radius
    from dmenet.data.syndof import layer_decomposition
    from dmenet.data.thin_lens import clean_depth_mm

    coc = camera.signed_coc_px(clean_depth_mm(depth)).clamp(-28, 28)
    layers = layer_decomposition(coc, 0.1, 350)
    edge = depth_edge_region(layers.layer_value, layers.layer_id, radius, 1.0)
    away = diff[~edge]
    return {
        "t_fast": t_fast, "t_loop": t_loop, "ratio": t_loop / t_fast,
        "wall_ratio": w_loop / w_fast,
        "max_all": float(diff.max()) * 255, "max_away": float(away.max()) * 255 if away.numel()
        else float("nan"), "p999_away": float(torch.quantile(away.flatten()[:2_000_000], 0.999))
        * 255 if away.numel() else float("nan"), "away_frac": float((~edge).float().mean()),
        "layers": [int(n) for n in fast.num_layers],
    }


def oracle_rows(out_dir, write):
    """Section 1: the reference-mode renders against the official generator's outputs."""
    from dmenet.data.io import write_image
    from dmenet.data.syndof import render_defocus
    from dmenet.data.syndof_oracle import (
        away_from_depth_edges,
        load_cases,
        load_middlebury_sample,
        p99_away_levels,
        psnr_interior,
        read_png16_rgb,
    )

    if not SHARED_REFERENCE.is_dir():
        print(f"skipping the oracle comparison: {SHARED_REFERENCE} is absent")
        return []
    image, depth = load_middlebury_sample(SHARED / "rgbd_samples")
    rows = []
    for k, case in enumerate(load_cases(SHARED_REFERENCE)):
        official = read_png16_rgb(case["official_png"])
        cam = case["camera"]
        kw = {"sigma_rule": "reference", "render_mode": "reference", "c_max_px": 29.0}
        strip = [official]
        for renderer in ("fast", "loop"):
            t0 = time.process_time()
            out = render_defocus(image, depth, cam, renderer=renderer, **kw)
            t = time.process_time() - t0
            grey = render_defocus(torch.full_like(image, 128 / 255), depth, cam,
                                  renderer=renderer, **kw).image
            ours = out.image[0].permute(1, 2, 0).double().numpy()
            signed = out.coc_px * torch.sign(cam.signed_coc_px(depth))
            away = away_from_depth_edges(signed)
            label = np.load(case["sigma_npy"])
            rows.append({
                "case": case["case"], "renderer": renderer, "layers": int(out.num_layers[0]),
                "psnr": psnr_interior(ours, official),
                "p99": p99_away_levels(ours, official, away),
                "grey": float((grey - 128 / 255).abs().max()) * 255,
                "label": float(np.abs(out.sigma_px[0, 0].numpy() - label).max()),
                "t": t, "official_s": case["official_s"],
            })
            print(rows[-1], flush=True)
            strip.append(ours)
        if k == 0 and write:
            diff = np.abs(strip[1] - official).max(axis=2, keepdims=True).repeat(3, 2) * 4
            write_image(Path(out_dir) / f"syndof_{case['case']}_vs_official.png",
                        np.concatenate(strip + [diff], axis=1).clip(0, 1).astype(np.float32))
    return rows


def load_sources():
    from dmenet.data.rgbd import EmbeddedRGBD, MiddleburyRGBD

    sources = {}
    emb = EmbeddedRGBD(num_scenes=0)
    sources["embedded (motorcycle)"] = emb[0]
    if SHARED_MIDDLEBURY.is_dir():
        sources["middlebury (Adirondack sample)"] = MiddleburyRGBD(SHARED_MIDDLEBURY)[0]
    else:
        print(f"skipping the Middlebury sample: {SHARED_MIDDLEBURY} is absent")
    return sources


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=3, help="crops per 240x240 batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and OpenCV threads (1: robust on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="one repeat, no 1 MP loop")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "syndof.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    repeats = 1 if args.quick else args.repeats
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    oracle = oracle_rows(Path(args.out).parent, not args.no_write)
    rows = []
    generator = torch.Generator().manual_seed(0)
    for name, item in load_sources().items():
        image, depth = item["image"], item["depth_mm"]
        crops = crops_with_layers(image, depth, args.crops, 240, generator)
        if crops is None:
            # e.g. depth stored in whole cm: too few distinct depths for 200 layers per crop
            print(f"{name}: no 240x240 crops with 200 to 350 layers; taking 50 to 350")
            crops = crops_with_layers(image, depth, args.crops, 240, generator, lo=50)
        if crops is None:
            print(f"{name}: no 240x240 crops with 50 to 350 layers; skipped")
            continue
        mp_image, mp_depth = to_megapixel(image, depth)
        from dmenet.data.thin_lens import CameraSampler, clean_depth_mm

        mp_cam = CameraSampler("reference").sample(mp_depth, generator)
        # the invalid-depth rule once, up front, as for the crops: both renderers would run
        # it identically (0.2-0.6 s at 1 MP on the motorcycle's holes); it is not rendering
        mp_depth = clean_depth_mm(mp_depth)
        for device in devices:
            slug = name.split()[0]
            picture = (Path(args.out).parent / f"syndof_{slug}_{device.type}.png"
                       if not args.no_write else None)
            for mode in ("paper", "reference"):
                r = compare(*crops, device, repeats, 1, picture if mode == "paper" else None,
                            mode)
                rows.append({"source": name, "device": device.type, "mode": mode,
                             "case": f"240x240 x {args.crops}", "unit": "crops/s",
                             "fast": args.crops / r["t_fast"],
                             "loop": args.crops / r["t_loop"], **r})
                print(rows[-1], flush=True)
                if not args.quick:
                    mp = mp_image.shape[-2] * mp_image.shape[-1] / 1e6
                    r = compare(mp_image, mp_depth, mp_cam, device, 1, 1, None, mode)
                    rows.append({"source": name, "device": device.type, "mode": mode,
                                 "case": f"{mp_image.shape[-2]}x{mp_image.shape[-1]} "
                                 f"({mp:.2f} MP)", "unit": "s/MP", "fast": r["t_fast"] / mp,
                                 "loop": r["t_loop"] / mp, **r})
                    print(rows[-1], flush=True)
    report = render_report(oracle, rows, args)
    print(report)
    if not args.no_write:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")
    return 0


NOTES = """
Notes:

- Reference mode: the official generator's 29 x 29 kernel, `symmetric` border, layering and
  fill; the camera of each case is fixed (cases.json), sigma rule (c - 1) / 4, c_max = 29.
- The fast renderer computes what the loop computes (the same per-layer compositing and the
  exact fill before every layer; the two agree to float rounding, "max diff" above), but
  sparse in 16 x 16 tiles: each layer is blurred separably over runs of the tiles within its
  kernel radius of its own pixels (only the kernel's taps above 1e-10 of tail mass), Acc / A
  are composited and un-premultiplied only on the tiles it changed (compiled numba loops on
  the CPU), the fill region is searched only on the tiles at the frontier of the union of the
  farther layers and solved on its own pixels (exactly: Cholesky in the envelope of the
  reverse Cuthill-McKee order, SuperLU where that envelope is wide).
- Both renderers get the depth already cleaned (the invalid-depth rule, identical for both)
  and are timed after a warm-up call (numba loads its compiled loops on the first one).
- On a shared machine (see the load average above) absolute rates are pessimistic; the two
  columns of a row ran back to back on the same inputs with the same thread count.
"""


def render_report(oracle, rows, args) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# SYNDOF renderer benchmark",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `python bench/bench_syndof.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- machine: {cpu}, {os.cpu_count()} CPU cores visible, GPU: {gpu}; "
        f"torch {torch.__version__}, {args.threads} torch/OpenCV thread(s); "
        f"1-min load average at the end: {load:.1f}",
        "- fast = `render_defocus` (the loop's algorithm, sparse in tiles); loop = "
        "`render_defocus_loop` (full-frame blur of every layer, the exact fill before every "
        "layer). Same inputs, same cameras "
        "(reference-mode sampler: largest CoC = 28 px), best of the repeats.",
        "- difference = max over channels of |fast - loop| in 8-bit steps (x 255); "
        "\"away\" = farther than 3 sigma_max from a depth edge (neighbouring CoCs differ by > 1 "
        "px); p99.9 = 99.9th percentile there.",
        "- pictures: `syndof_<source>_<device>.png` beside this file: input | fast | loop | "
        "4 x |fast - loop| of the first 240x240 crop.",
        "",
        "## Against the official generator (reference mode, Middlebury sample, 497 x 720)",
        "",
        "PSNR on the interior (14 px border excluded); p99 = 99th percentile error more than "
        "14 px from depth edges (levels of 255); flat grey = largest deviation of a 128-grey "
        "photo; label = largest sigma label difference (px).",
        "",
        "| case | renderer | layers | PSNR (dB) | p99 (levels) | flat grey (levels) | "
        "label (px) | CPU time (s) | official (s, Octave) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in oracle:
        lines.append(f"| {r['case']} | {r['renderer']} | {r['layers']} | {r['psnr']:.1f} | "
                     f"{r['p99']:.2f} | {r['grey']:.3f} | {r['label']:.3f} | {r['t']:.1f} | "
                     f"{r['official_s']:.0f} |")
    lines += [
        "",
        "## Speed against the per-layer loop",
        "",
        "Rates from the CPU time of this process (1 thread), speed-up = loop / fast CPU time; "
        "the wall-clock speed-up beside it (distorted by the other jobs on a shared machine).",
        "",
        "| source | device | mode | case | layers | fast | loop | unit | speed-up | "
        "wall speed-up | max diff | max diff away | p99.9 away | away share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['device']} | {r['mode']} | {r['case']} | "
            f"{min(r['layers'])}-{max(r['layers'])} | {r['fast']:.3g} | {r['loop']:.3g} | "
            f"{r['unit']} | {r['ratio']:.1f}x | {r['wall_ratio']:.1f}x | {r['max_all']:.4f} | "
            f"{r['max_away']:.4f} | {r['p999_away']:.4f} | {100 * r['away_frac']:.0f}% |")
    return "\n".join(lines) + "\n" + NOTES


if __name__ == "__main__":
    raise SystemExit(main())
