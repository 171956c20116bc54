"""Quality and speed of ``dmenet deblur`` (spatially varying deconvolution, SPEC section 6).

Quality: sharp RGB-D sources (procedural scenes of the embedded source, scikit-image's
motorcycle, and the shared samples ../shared/data/rgbd_samples: Middlebury, Sintel, SYNTHIA,
longest side reduced to ``--max-side``) are defocused by the SYNDOF renderer
(:func:`dmenet.data.syndof.render_defocus`, thin-lens camera focused at the 30 % depth
quantile, largest CoC ``C_MAX_PX`` = 28 px, i.e. sigma up to 7 px), stored as 8-bit, and
deblurred with (b) the ground-truth sigma map, (c) B's map (``--ckpt``, when given), (d) the
Zhuo & Sim map, each with the default method and (b') with the reference's own method
(``reference=True``). PSNR / SSIM against the sharp source, over the whole image and "away from
depth edges" (pixels whose sigma differs by < 0.5 px from every sigma within 3 sigma + 2 px).
Also a lambda sweep, with the ground-truth and with the Zhuo & Sim map.

Speed: CPU seconds (``time.process_time``) per megapixel of
:func:`dmenet.inference.deconvolution.deblur` (default and reference method) side by side with a
straightforward NumPy loop (one FFT deconvolution per bin and channel, the reference method) in
the same run, with the largest difference between the loop and the reference method.

    python bench/bench_deblur.py                       # writes docs/benchmarks/deblur.{json,md}
    python bench/bench_deblur.py --quick               # fewer images, smaller speed case
    python bench/bench_deblur.py --ckpt model.ckpt     # adds row (c), B's estimated map
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "rgbd_samples"
OUT_DIR = ROOT / "docs" / "benchmarks"
IMAGES = ROOT / "docs" / "images"


# ---------------------------------------------------------------------------------------------
# data


def _resize(image: np.ndarray, depth: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = depth.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return image, depth
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return (cv2.resize(image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST))


def sources(n_scenes: int, max_side: int, shared: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image (H, W, 3) float in [0, 1], depth_mm (H, W))`` of every sharp source."""
    from dmenet.data.rgbd import EmbeddedRGBD, MiddleburyRGBD, SintelRGBD, SynthiaRGBD

    out = []
    embedded = EmbeddedRGBD(num_scenes=n_scenes, seed=100)
    readers = [("embedded", embedded)]
    if shared and SAMPLES.is_dir():
        readers += [("middlebury", MiddleburyRGBD(SAMPLES / "middlebury2014")),
                    ("sintel", SintelRGBD(SAMPLES / "sintel")),
                    ("synthia", SynthiaRGBD(SAMPLES / "synthia"))]
    for kind, reader in readers:
        for i in range(len(reader)):
            item = reader[i]
            image = item["image"].permute(1, 2, 0).numpy().astype(np.float32)
            depth = item["depth_mm"][0].numpy().astype(np.float32)
            image, depth = _resize(image, depth, max_side)
            name = item["name"] if kind == "embedded" else f"{kind}:{item['name']}"
            out.append((name, image, depth))
    return out


def defocus(image: np.ndarray, depth: np.ndarray, c_max_px: float | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """SYNDOF render (largest CoC ``c_max_px``), 8-bit: ``(defocused (3, H, W), sigma_px (H, W))``."""
    from dmenet.data.syndof import render_defocus
    from dmenet.data.thin_lens import Camera, clean_depth_mm, max_defocus_ratio
    from dmenet.labels import C_MAX_PX

    img = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    d = clean_depth_mm(torch.from_numpy(depth)[None, None])
    focus = torch.quantile(d.flatten()[:: max(1, d.numel() // 1_000_000)], 0.3).reshape(1)
    alpha = (c_max_px or C_MAX_PX) / max_defocus_ratio(d, focus)
    out = render_defocus(img, d, Camera(focus, alpha))
    blurred = torch.round(out.image[0].clamp(0, 1) * 255.0) / 255.0
    return blurred, out.sigma_px[0, 0]


def away_from_edges(sigma: np.ndarray) -> np.ndarray:
    """Pixels whose sigma is within 0.5 px of every sigma within 3 sigma + 2 px."""
    ok = np.ones(sigma.shape, bool)
    for r in (2, 4, 8, 12, 16, 23):
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        spread = cv2.dilate(sigma, k) - cv2.erode(sigma, k)
        ok &= ~((r <= 3 * sigma + 2) & (spread >= 0.5))
    return ok


def metrics(x: torch.Tensor, sharp: torch.Tensor, mask: np.ndarray) -> dict:
    from skimage.metrics import structural_similarity

    a = x.permute(1, 2, 0).numpy().astype(np.float64)
    b = sharp.permute(1, 2, 0).numpy().astype(np.float64)
    se = ((a - b) ** 2).mean(2)
    psnr = lambda e: float(10 * np.log10(1.0 / max(e, 1e-12)))  # noqa: E731
    ssim_map = structural_similarity(a, b, channel_axis=2, data_range=1.0, full=True)[1].mean(2)
    return {"psnr": psnr(se.mean()), "ssim": float(ssim_map.mean()),
            "psnr_away": psnr(se[mask].mean()) if mask.any() else None,
            "ssim_away": float(ssim_map[mask].mean()) if mask.any() else None}


# ---------------------------------------------------------------------------------------------
# the NumPy per-bin loop (the reference's algorithm, written straightforwardly)


def numpy_loop_deblur(image: np.ndarray, sigma: np.ndarray, lam: float) -> np.ndarray:
    """The reference method (:func:`~dmenet.inference.deconvolution.reference_bins`, replicate
    padding by the largest kernel radius, ``edgetaper``) as one K&F deconvolution per bin and
    channel with ``numpy.fft`` (float32 like the torch path), each pixel its bin's result."""
    from dmenet.inference.deconvolution import (
        beta_schedule,
        edge_taper,
        gaussian_otf,
        gaussian_taps,
        pad_image,
        reference_bins,
    )

    nodes, index = reference_bins(torch.from_numpy(sigma))
    index = index.numpy()
    out = image * (index < 0)[None]
    h, w = sigma.shape
    pad = max(1, max((len(gaussian_taps(s)) // 2 for s in nodes), default=1))  # as deblur pads
    padded = pad_image(torch.from_numpy(image).float(), pad)
    hp, wp = padded.shape[-2:]
    u = np.arange(wp // 2 + 1)
    v = np.arange(hp)
    grad = ((2 - 2 * np.cos(2 * np.pi * v / hp))[:, None]
            + (2 - 2 * np.cos(2 * np.pi * u / wp))[None, :]).astype(np.float32)
    for k, s in enumerate(nodes):
        otf_t = gaussian_otf([s], (hp, wp))
        tapered = edge_taper(padded[None], [s], otf_t)[0].numpy()
        otf = otf_t[0, 0].numpy()
        for c in range(image.shape[0]):
            y = tapered[c]
            num = lam * otf * np.fft.rfft2(y)
            den = lam * otf * otf
            x = y
            for beta in beta_schedule():
                vx, vy = np.roll(x, -1, 1) - x, np.roll(x, -1, 0) - x
                ws = []
                for vv in (vx, vy):
                    a = np.abs(vv)
                    sq = 2 * beta * a / (1.5 + np.sqrt(2.25 + 4 * beta * beta * a))
                    ws.append(np.sign(vv) * sq * sq)
                dtw = (np.roll(ws[0], 1, 1) - ws[0]) + (np.roll(ws[1], 1, 0) - ws[1])
                x = np.fft.irfft2((num + beta * np.fft.rfft2(dtw)) / (den + beta * grad),
                                  s=(hp, wp)).astype(np.float32)
            out[c] += (index == k) * np.clip(x[pad:pad + h, pad:pad + w], 0, 1)
    return np.clip(out, 0, 1)


# ---------------------------------------------------------------------------------------------


def _panel(images: list[torch.Tensor], labels: list[str]) -> np.ndarray:
    tiles = []
    for img, label in zip(images, labels):
        t = (img.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().clip(0, 255).astype(np.uint8).copy()
        cv2.putText(t, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(t, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(t)
    return np.concatenate(tiles, axis=1)


def quality(args) -> dict:
    from dmenet.evaluation.zhuo_sim import estimate_sigma_px
    from dmenet.inference.deconvolution import DEFAULT_LAMBDA, deblur

    estimator = None
    if args.ckpt:
        from dmenet.inference.infer import make_estimator

        ns = argparse.Namespace(estimator="b", ckpt=args.ckpt, device="cpu", half=False, tile=512,
                                overlap=32, trust_checkpoint=False)
        estimator = make_estimator(ns)
    rows = []
    variants = {"default": {}, "reference": {"reference": True}}
    for (name, image, depth), c_max in [(src, c) for c in args.c_max
                                        for src in sources(args.scenes, args.max_side, not args.no_shared)
                                        if not args.only or any(t in src[0] for t in args.only)]:
        sharp = torch.from_numpy(image.transpose(2, 0, 1).copy())
        blurred, sigma_gt = defocus(image, depth, c_max)
        mask = away_from_edges(sigma_gt.numpy())
        row = {"name": name, "c_max_px": c_max, "size": list(sigma_gt.shape), "sigma_max_px": float(sigma_gt.max()),
               "away_fraction": float(mask.mean()), "input": metrics(blurred, sharp, mask)}
        results = {}
        for label, options in variants.items():
            t = time.perf_counter()
            results[label] = deblur(blurred, sigma_gt, lam=DEFAULT_LAMBDA, **options)
            row[f"gt {label}"] = metrics(results[label], sharp, mask)
            row[f"gt {label}"]["seconds"] = round(time.perf_counter() - t, 2)
        for lam in args.lambdas:
            if lam != DEFAULT_LAMBDA:
                row[f"gt lambda {lam:g}"] = metrics(deblur(blurred, sigma_gt, lam=lam), sharp, mask)
        rgb = blurred.permute(1, 2, 0).numpy().astype(np.float64)
        t = time.perf_counter()
        sigma_zs = torch.from_numpy(estimate_sigma_px(rgb))
        torch.set_num_threads(args.threads)  # the estimator's pymatting (numba) changes it
        zs = deblur(blurred, sigma_zs)
        row["zhuo_sim"] = metrics(zs, sharp, mask)
        row["zhuo_sim"]["seconds"] = round(time.perf_counter() - t, 2)
        row["zhuo_sim"]["map_mae_px"] = float((sigma_zs - sigma_gt).abs().mean())
        for lam in args.lambdas:
            if lam != DEFAULT_LAMBDA:
                row[f"zhuo_sim lambda {lam:g}"] = metrics(deblur(blurred, sigma_zs, lam=lam), sharp,
                                                          mask)
        if estimator is not None:
            sigma_b = torch.from_numpy(estimator(blurred))
            row["b"] = metrics(deblur(blurred, sigma_b), sharp, mask)
            row["b"]["map_mae_px"] = float((sigma_b - sigma_gt).abs().mean())
        rows.append(row)
        if args.partial:  # a long run on a busy machine: keep what is done
            Path(args.partial).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{name:28s} c_max {c_max:g}: in {row['input']['psnr']:.2f}  gt {row['gt default']['psnr']:.2f}  "
              f"ref {row['gt reference']['psnr']:.2f}  zs {row['zhuo_sim']['psnr']:.2f}  "
              f"(away: {row['input']['psnr_away']:.2f} -> {row['gt default']['psnr_away']:.2f})",
              flush=True)
        if args.pictures and name in (args.picture_scene, "motorcycle") and c_max == args.c_max[0]:
            IMAGES.mkdir(parents=True, exist_ok=True)
            tag = "scene" if name != "motorcycle" else "motorcycle"
            p = lambda k: f"{row[k]['psnr']:.1f} dB"  # noqa: E731, B023
            panel = _panel([sharp, blurred, results["reference"], results["default"], zs],
                           ["sharp source", f"SYNDOF, sigma<={c_max / 4:g}px {p('input')}",
                            f"reference, GT map {p('gt reference')}",
                            f"dmenet deblur, GT map {p('gt default')}",
                            f"Zhuo & Sim map {p('zhuo_sim')}"])
            cv2.imwrite(str(IMAGES / f"deblur_{tag}.jpg"), panel, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if tag == "motorcycle":
                cv2.imwrite(str(IMAGES / "deblur_photo.jpg"),
                            _panel([blurred, zs], [f"defocused photo {p('input')}",
                                                   f"deblurred, Zhuo & Sim map {p('zhuo_sim')}"]),
                            [cv2.IMWRITE_JPEG_QUALITY, 85])
    return {"rows": rows, "variants": list(variants), "lambdas": args.lambdas,
            "default_lambda": DEFAULT_LAMBDA}


def speed(args) -> dict:
    from dmenet.data.procedural import make_scene
    from dmenet.inference.deconvolution import DEFAULT_LAMBDA, deblur

    torch.set_num_threads(args.threads)
    h, w = args.speed_size
    image, depth = make_scene((h, w), seed=7)
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    blurred, sigma = defocus(image, np.asarray(depth, dtype=np.float32).reshape(h, w))
    mp = h * w / 1e6
    out = {"size": [h, w], "threads": torch.get_num_threads(), "sigma_max_px": float(sigma.max()),
           "rows": []}
    timings = {}
    for label, fn in [
        ("torch, default", lambda: deblur(blurred, sigma, lam=DEFAULT_LAMBDA)),
        ("torch, --reference", lambda: deblur(blurred, sigma, lam=DEFAULT_LAMBDA, reference=True)),
        ("NumPy per-bin loop (reference method)",
         lambda: torch.from_numpy(numpy_loop_deblur(blurred.numpy(), sigma.numpy(), DEFAULT_LAMBDA))),
    ]:
        best, wall, result = float("inf"), float("inf"), None
        for _ in range(args.repeats):
            t, t_wall = time.process_time(), time.perf_counter()
            result = fn()
            best = min(best, time.process_time() - t)
            wall = min(wall, time.perf_counter() - t_wall)
        timings[label] = (best, result)
        out["rows"].append({"what": label, "cpu_seconds": round(best, 3), "wall_seconds": round(wall, 3),
                            "s_per_mp": round(best / mp, 3)})
        print(f"{label:42s} {best:8.2f} s CPU ({wall:.2f} s wall)  {best / mp:8.2f} s/MP", flush=True)
    loop = timings["NumPy per-bin loop (reference method)"]
    torch_ref = timings["torch, --reference"]
    out["max_abs_diff_torch_vs_numpy"] = float((torch_ref[1] - loop[1]).abs().max())
    out["speedup_reference"] = round(loop[0] / torch_ref[0], 2)
    out["speedup_default"] = round(loop[0] / timings["torch, default"][0], 2)
    print(f"max |torch - numpy| = {out['max_abs_diff_torch_vs_numpy']:.2e}; the loop takes "
          f"{out['speedup_reference']}x the torch reference's CPU time, "
          f"{out['speedup_default']}x the default's")
    return out


def _fmt(m: dict | None, key: str) -> str:
    if m is None or m.get(key) is None:
        return "-"
    return f"{m[key]:.2f}" if "psnr" in key else f"{m[key]:.3f}"


def markdown(result: dict) -> str:
    q = result["quality"]
    lines = [f"Run {result['when']} on {result['machine']}.", "",
             "PSNR (dB) / SSIM against the sharp source; in brackets: PSNR away from depth edges."]
    for c_max in sorted({r["c_max_px"] for r in q["rows"]}, reverse=True):
        rows = [r for r in q["rows"] if r["c_max_px"] == c_max]
        lines += ["", *_quality_table(rows, q, c_max)]
    s = result.get("speed")
    if s:
        lines += ["", f"Speed, CPU time (process_time), {s['size'][0]}x{s['size'][1]} (sigma up to "
                  f"{s.get('sigma_max_px', 7):.2g} px), {s['threads']} thread(s), best of "
                  f"{result['repeats']}:", "", "| what | CPU s | wall s | CPU s/MP |", "|---|---|---|---|"]
        lines += [f"| {r['what']} | {r['cpu_seconds']:.2f} | {r['wall_seconds']:.2f} | {r['s_per_mp']:.2f} |"
                  for r in s["rows"]]
        lines += ["", f"The NumPy loop takes {s['speedup_reference']}x the CPU time of the torch "
                  f"reference method (largest difference {s['max_abs_diff_torch_vs_numpy']:.1e}) and "
                  f"{s['speedup_default']}x that of the default."]
    return "\n".join(lines) + "\n"


def _quality_table(rows: list[dict], q: dict, c_max: float) -> list[str]:
    has_b = any("b" in r for r in rows)
    cols = [("input", "(a) input"), ("gt default", "(b) GT map"), ("gt reference", "(b') GT, reference method")]
    if has_b:
        cols.append(("b", "(c) B's map"))
    cols.append(("zhuo_sim", "(d) Zhuo & Sim map"))
    lines = [f"Camera with largest CoC {c_max:g} px (sigma up to {c_max / 4:g} px):", "",
             "| image | size | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{_fmt(r.get(k), 'psnr')} / {_fmt(r.get(k), 'ssim')} ({_fmt(r.get(k), 'psnr_away')})"
                 for k, _ in cols]
        lines.append(f"| {r['name']} | {r['size'][0]}x{r['size'][1]} | " + " | ".join(cells) + " |")
    mean = {k: np.mean([r[k]["psnr"] for r in rows if k in r]) for k, _ in cols}
    mean_ssim = {k: np.mean([r[k]["ssim"] for r in rows if k in r]) for k, _ in cols}
    mean_away = {k: np.mean([r[k]["psnr_away"] for r in rows if k in r and r[k]["psnr_away"]]) for k, _ in cols}
    lines.append("| **mean** | | " + " | ".join(f"**{mean[k]:.2f} / {mean_ssim[k]:.3f}** ({mean_away[k]:.2f})"
                                              for k, _ in cols) + " |")
    gains = [r["gt default"]["psnr"] - r["input"]["psnr"] for r in rows]
    away = [r["gt default"]["psnr_away"] - r["input"]["psnr_away"] for r in rows if r["input"]["psnr_away"]]
    worst = rows[int(np.argmin(gains))]["name"]
    lines += ["", f"(b) - (a): mean {np.mean(gains):+.2f} dB, min {min(gains):+.2f} dB ({worst}), max "
              f"{max(gains):+.2f} dB; away from depth edges: mean {np.mean(away):+.2f} dB."]
    lines += ["", "Method and lambda (mean over these images; the last column: the largest gain over "
              "the same map at the default lambda on one image):", "",
              "| map, variant | PSNR | SSIM | PSNR away from edges | min gain over input | "
              "best gain over the default lambda |", "|---|---|---|---|---|---|"]
    keys = [f"gt {v}" for v in q["variants"]] + ["zhuo_sim"]
    for source in ("gt", "zhuo_sim"):
        keys += [f"{source} lambda {lam:g}" for lam in q["lambdas"] if lam != q["default_lambda"]]
    for k in keys:
        rows_k = [r for r in rows if k in r]
        if not rows_k:
            continue
        ps = [r[k]["psnr"] for r in rows_k]
        aw = [r[k]["psnr_away"] for r in rows_k if r[k]["psnr_away"]]
        base = "zhuo_sim" if k.startswith("zhuo_sim") else "gt default"
        best = (f"{max(r[k]['psnr'] - r[base]['psnr'] for r in rows_k):+.2f}" if "lambda" in k
                else "")
        label = k.replace("gt ", "GT map, ").replace("zhuo_sim", "Zhuo & Sim map,").rstrip(",")
        lines.append(f"| {label} | {np.mean(ps):.2f} | {np.mean([r[k]['ssim'] for r in rows_k]):.3f} | "
                     f"{np.mean(aw):.2f} | {min(p - r['input']['psnr'] for p, r in zip(ps, rows_k)):+.2f} | "
                     f"{best} |")
    return lines


def merge(files: list[str], out: Path) -> None:
    """One deblur.json / deblur.md from runs made in parallel (quality per camera, speed)."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    template = next(p for p in parts if isinstance(p, dict))
    for i, p in enumerate(parts):
        if isinstance(p, list):  # a --partial file: the rows of an unfinished run
            from dmenet.inference.deconvolution import DEFAULT_LAMBDA

            q = template.get("quality") or {
                "variants": [k[3:] for k in p[0] if k.startswith("gt ") and "lambda" not in k],
                "lambdas": [float(k.split()[-1]) for k in p[0] if k.startswith("gt lambda")],
                "default_lambda": DEFAULT_LAMBDA}
            parts[i] = {"quality": dict(q, rows=p)}
    result = {k: v for k, v in template.items() if k not in ("quality", "speed")}
    rows = [r for p in parts if "quality" in p for r in p["quality"]["rows"]]
    quality = next(p["quality"] for p in parts if "quality" in p)
    result["quality"] = dict(quality, rows=rows)
    speed = [p["speed"] for p in parts if "speed" in p]
    if speed:
        result["speed"] = speed[0]
        result["repeats"] = next(p["repeats"] for p in parts if "speed" in p)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deblur.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "deblur.md").write_text(markdown(result))
    print(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenes", type=int, default=8, help="procedural scenes (plus the motorcycle)")
    parser.add_argument("--max-side", type=int, default=720)
    parser.add_argument("--no-shared", action="store_true", help="skip ../shared/data/rgbd_samples")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="only the sources whose name contains one of these")
    parser.add_argument("--ckpt", help="B checkpoint for row (c)")
    parser.add_argument("--c-max", type=float, nargs="+", default=[28.0, 12.0],
                        help="largest CoC of the camera (px; sigma = CoC / 4); one table each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (NumPy's FFT uses one)")
    parser.add_argument("--lambdas", type=float, nargs="*", default=[100.0, 420.0, 3000.0],
                        help="also these lambdas, with the GT and the Zhuo & Sim map")
    parser.add_argument("--speed-size", type=int, nargs=2, default=[577, 866], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--pictures", action="store_true", help="write docs/images/deblur_*.jpg")
    parser.add_argument("--picture-scene", default="scene_00101")
    parser.add_argument("--out", default=str(OUT_DIR))
    parser.add_argument("--partial", help="also write the quality rows so far to this JSON file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="only merge earlier runs' deblur.json files into --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        return merge(args.merge, Path(args.out))
    if args.quick:
        args.scenes, args.max_side, args.repeats, args.c_max = 1, 320, 1, args.c_max[:1]
        args.speed_size = [240, 320]
    result = {"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"torch {torch.__version__}, {torch.get_num_threads()} threads",
              "repeats": args.repeats}
    if not args.no_quality:
        result["quality"] = quality(args)
    if not args.no_speed:
        result["speed"] = speed(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deblur.json").write_text(json.dumps(result, indent=1) + "\n")
    if "quality" in result:
        (out / "deblur.md").write_text(markdown(result))
        print(markdown(result))


if __name__ == "__main__":
    main()
