"""GPU inference speed of B: ms per megapixel in fp32 and bf16 (autocast), untiled.

    python bench/bench_gpu_inference.py --sizes 1 4 --out gpu_inference.md

Needs CUDA. B runs with random weights (the speed does not depend on them).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime, timezone

import torch

from dmenet.modules.blur_estimator import BlurEstimator


def measure(model: torch.nn.Module, megapixels: float, dtype: torch.dtype | None, repeats: int) -> tuple[float, float]:
    side = int(math.sqrt(megapixels * 1e6) / 16) * 16
    x = torch.rand(1, 3, side, side, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(2):
            model(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / repeats
    return 1000.0 * seconds / (side * side / 1e6), torch.cuda.max_memory_allocated() / 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    model = BlurEstimator(weights=None).eval().cuda()
    lines = [
        f"B inference on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}; `python bench/bench_gpu_inference.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| MP | fp32 ms/MP | bf16 ms/MP | fp32 peak GiB | bf16 peak GiB |",
        "|---|---|---|---|---|",
    ]
    for mp in args.sizes:
        fp32 = measure(model, mp, None, args.repeats)
        bf16 = measure(model, mp, torch.bfloat16, args.repeats)
        lines.append(f"| {mp:g} | {fp32[0]:.2f} | {bf16[0]:.2f} | {fp32[1]:.2f} | {bf16[1]:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
