"""Inference benchmark (issue 9 item 3): ms per megapixel and peak memory of B on the CPU.

For each photo size (default 0.25, 1, 4 and 24 megapixels, 3:2) a fresh subprocess builds B
(random weights: speed and memory do not depend on the values), runs ``dmenet infer``'s code
path (:func:`dmenet.inference.tiling.predict_image`, tiled where the photo is larger than a tile)
and reports its wall time and its peak resident memory (``resource.getrusage``, ``ru_maxrss``).

The floor: B's FLOPs per megapixel, counted with ``torch.utils.flop_counter.FlopCounterMode``
on a 512 x 512 input, divided by this machine's convolution throughput measured in the same run
(a 3x3, 256 -> 256 channel convolution on a 256 x 256 map, best of several). Tiling recomputes
the overlaps; the table shows that factor (pixels processed / pixels of the photo) separately.

    python bench/bench_inference.py                       # all sizes, writes the report
    python bench/bench_inference.py --sizes 0.25 1 --out /tmp/x.md

Measurements accumulate in ``docs/benchmarks/inference.json`` (one per size, newest wins) and
the report ``docs/benchmarks/inference.md`` (machine, command, date, numbers) is rebuilt from it
after every size, so sizes can be measured in separate runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _size_for(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 3:2 photo with about ``megapixels`` million pixels."""
    width = int(round(math.sqrt(megapixels * 1e6 * 1.5)))
    height = int(round(megapixels * 1e6 / width))
    return height, width


def worker(args: argparse.Namespace) -> None:
    import torch

    from dmenet.inference.tiling import needs_tiling, predict_image, tile_starts

    torch.set_num_threads(args.threads)
    height, width = _size_for(args.mp)
    predictor = _predictor()
    with torch.inference_mode():
        predictor(torch.rand(1, 3, 64, 64))  # warm-up: first-call allocations and kernel choice
    conv_gflops = conv_throughput()  # just before the run: the machine is shared, load varies
    rss_model_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    image = torch.rand(1, 3, height, width)
    start = time.perf_counter()
    with torch.inference_mode():
        y = predict_image(predictor, image, tile=args.tile, overlap=args.overlap, progress=True)
    seconds = time.perf_counter() - start
    assert y.shape == (1, 1, height, width) and torch.isfinite(y).all()
    rows = tile_starts(height, args.tile, args.overlap)
    cols = tile_starts(width, args.tile, args.overlap)
    if needs_tiling(height, width, args.tile):
        tiled_px = _covered(height, rows, args.tile) * _covered(width, cols, args.tile)
    else:
        tiled_px = height * width
    print(json.dumps({
        "mp": args.mp, "height": height, "width": width, "seconds": seconds,
        "ms_per_mp": seconds * 1000.0 / (height * width / 1e6),
        "conv_gflops": conv_gflops, "tile": args.tile, "overlap": args.overlap,
        "threads": args.threads,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_after_model_mb": rss_model_mb,
        "tiles": len(rows) * len(cols) if tiled_px != height * width else 1,
        "overhead": tiled_px / (height * width),
    }))


def _covered(length: int, starts: list[int], tile: int) -> int:
    """Pixels processed along one axis, overlaps counted every time."""
    return sum((length if i == len(starts) - 1 else s + tile) - s for i, s in enumerate(starts))


def _predictor():
    """B as ``dmenet infer`` runs it: eval mode, auxiliary heads dropped, BatchNorm folded."""
    from dmenet.inference.checkpoint import DefocusPredictor, prepare_for_inference
    from dmenet.modules.blur_estimator import BlurEstimator

    return DefocusPredictor(prepare_for_inference(BlurEstimator(weights=None))).eval()


def conv_throughput(repeats: int = 3) -> float:
    """GFLOP/s of a big convolution (3x3, 256 -> 256 channels, 256 x 256 map), best of ``repeats``."""
    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.rand(1, 256, 256, 256)
    flops = 2.0 * 256 * 256 * 9 * 256 * 256
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            t = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def flops_per_mp(threads: int) -> float:
    """B's FLOPs per megapixel as infer runs it (FlopCounterMode on a 512 x 512 input)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    predictor = _predictor()
    side = 512
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        predictor(torch.rand(1, 3, side, side))
    return counter.get_total_flops() / (side * side / 1e6)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    import torch

    return (f"{cpu}, {os.cpu_count()} logical CPUs, {mem_gb:.0f} GiB RAM, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 4.0, 24.0],
                        help="photo sizes in megapixels")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--tile", type=int, default=None, help="tile side (default: infer's)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: infer's)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "inference.md"))
    parser.add_argument("--results", default=str(REPO / "docs" / "benchmarks" / "inference.json"),
                        help="measurements accumulate here (one per size; the report is built from it)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mp", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from dmenet.inference.tiling import DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX

    args.tile = DEFAULT_TILE_PX if args.tile is None else args.tile
    args.overlap = DEFAULT_OVERLAP_PX if args.overlap is None else args.overlap
    if args.worker:
        worker(args)
        return 0

    command = "python bench/bench_inference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results_path = Path(args.results)
    store = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": []}
    print("counting B's FLOPs ...", flush=True)
    store["gflop_per_mp"] = flops_per_mp(args.threads) / 1e9
    store["machine"] = _machine()
    for mp in args.sizes:
        cmd = [sys.executable, __file__, "--worker", "--mp", str(mp), "--threads", str(args.threads),
               "--tile", str(args.tile), "--overlap", str(args.overlap)]
        # the worker's stderr (its tile progress bar) goes straight to the terminal
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"worker for {mp} MP failed")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["date"] = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
        result["command"] = command.strip()
        # one row per size: a new measurement replaces an older one
        store["runs"] = [r for r in store["runs"] if r["mp"] != mp] + [result]
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(store, indent=1) + "\n")
        print(json.dumps(result), flush=True)
        _write_report(Path(args.out), store)
    print(f"wrote {args.out} and {results_path}")
    return 0


def _write_report(out: Path, store: dict) -> None:
    gflop = store["gflop_per_mp"]
    runs = sorted(store["runs"], key=lambda r: r["mp"])
    lines = [
        "# Inference benchmark (CPU)",
        "",
        f"- machine: {store['machine']}",
        "- model: B (`dmenet_vgg19`, random weights) as `dmenet infer` runs it (auxiliary heads "
        "dropped, BatchNorm folded into the convs), float32, `torch.inference_mode`, tiled where "
        "the photo is larger than a tile",
        f"- B's cost: {gflop:.0f} GFLOP per megapixel (`FlopCounterMode`, 512 x 512 input)",
        "- floor = cost / this machine's convolution throughput, measured by each run just "
        "before it ran (3x3 conv, 256 -> 256 channels, 256 x 256 map, best of 3)",
        "",
        "| photo | size (H x W) | tile / overlap (px) | tiles | px processed / photo px | "
        "time (s) | ms / MP | conv GFLOP/s | floor ms / MP | x floor | x floor per processed px | "
        "peak RSS (MB) | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        floor_ms = gflop / r["conv_gflops"] * 1000.0
        ratio = r["ms_per_mp"] / floor_ms
        lines.append(
            f"| {r['mp']:g} MP | {r['height']} x {r['width']} | {r['tile']} / {r['overlap']} | "
            f"{r['tiles']} | {r['overhead']:.2f} | {r['seconds']:.1f} | {r['ms_per_mp']:.0f} | "
            f"{r['conv_gflops']:.0f} | {floor_ms:.0f} | {ratio:.2f} | {ratio / r['overhead']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['date']} |"
        )
    commands = sorted({r["command"] for r in runs})
    lines += [
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in commands) + f" ({runs[0]['threads']} torch threads).",
        "",
        "Peak RSS is the whole worker process (Python, torch, B's weights, the photo, the output "
        "and the largest tile's activations), from `resource.getrusage(RUSAGE_SELF).ru_maxrss`.",
        "'x floor per processed px' divides out the recomputed tile overlaps: it is how close "
        "B's own forward pass comes to the big convolution's throughput. The machine is shared "
        "with other jobs, so times vary from run to run; each run's floor is measured under the "
        "load of its own moment.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
