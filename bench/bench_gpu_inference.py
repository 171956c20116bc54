"""GPU inference speed of B: ms per megapixel in fp32, bf16 and fp16, untiled.

Rows: the reference forward (BatchNorm folded) in the default layout and in channels_last, and
the fast path (:mod:`dmenet.inference.fast`: channels_last, halo padding, phase-conv upsampling;
on a GPU its convs are plain cuDNN ``conv2d``), each in fp32, bf16 and fp16 (the reference under
``torch.autocast``, the fast path with its weights cast), ``cudnn.benchmark`` on. Each row also
gives the largest difference to the fp32 reference.

    python bench/bench_gpu_inference.py --sizes 1 4 --out gpu_inference.md
    python bench/bench_gpu_inference.py --device cpu --sizes 0.01 --repeats 1   # smoke test

B runs with random weights (the speed does not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dmenet.checkpoint import prepare_for_inference  # noqa: E402
from dmenet.inference.fast import FastBlurEstimator  # noqa: E402
from dmenet.modules.blur_estimator import BlurEstimator  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, x: torch.Tensor, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(ms per MP, peak GiB, output) of ``fn(x)``, mean of ``repeats`` after 2 warm-ups."""
    device = x.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for _ in range(2):
            y = fn(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            y = fn(x)
        _sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    mp = x.shape[-2] * x.shape[-1] / 1e6
    return 1000.0 * seconds / mp, peak, y.float()


def runners(model: torch.nn.Module, device: torch.device) -> dict:
    """name -> (dtype name -> callable image -> y)."""
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    fast = {name: FastBlurEstimator(model).to(device=device, dtype=dt) for name, dt in DTYPES.items()}

    def reference(m, layout):
        def make(dtype_name):
            dt = DTYPES[dtype_name]

            def run(x):
                x = x.contiguous(memory_format=layout)
                with torch.autocast(device.type, dtype=dt, enabled=dt != torch.float32):
                    return m(x).y
            return run
        return make

    return {
        "reference": reference(model, torch.contiguous_format),
        "reference channels_last": reference(model_cl, torch.channels_last),
        "fast": lambda name: (lambda x: fast[name](x.to(DTYPES[name]))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    model = prepare_for_inference(BlurEstimator(weights=None)).eval().to(device)
    paths = runners(model, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"B inference on {name}, torch {torch.__version__}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}; `python bench/bench_gpu_inference.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}` (mean of {args.repeats} runs, "
        "cudnn.benchmark, untiled)",
        "",
        "| MP | path | dtype | ms / MP | peak GiB | max diff to fp32 reference |",
        "|---|---|---|---|---|---|",
    ]
    for mp in args.sizes:
        side = max(16, int(math.sqrt(mp * 1e6) / 16) * 16)
        x = torch.rand(1, 3, side, side, device=device)
        expected = None
        for path, make in paths.items():
            for dtype_name in args.dtypes:
                try:
                    ms, peak, y = measure(make(dtype_name), x, args.repeats)
                except RuntimeError as exc:  # e.g. out of memory, or a dtype the device lacks
                    lines.append(f"| {mp:g} | {path} | {dtype_name} | failed: "
                                 f"{str(exc).splitlines()[0][:80]} | | |")
                    continue
                if expected is None:
                    expected = y
                diff = float((y - expected).abs().max())
                lines.append(f"| {mp:g} | {path} | {dtype_name} | {ms:.2f} | {peak:.2f} | {diff:.1e} |")
                print(lines[-1], flush=True)
                del y
        del x, expected
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
