"""Inference benchmark: seconds per megapixel and peak memory of B on the CPU.

``--infer`` (the figures of BENCHMARKS.md's targets): ``dmenet infer`` as a new user runs it, one
fresh process per photo (``python -m dmenet infer PHOTO --ckpt B.ckpt --out DIR``, default
options: fast path, ``--tile auto``, 4 GB budget), on a 64 px photo, a 1 MP photo and a full
24 MP photo (6000 x 4000, every tile run). Each run's wall time, CPU time and peak RSS come from
the kernel (``wait4``). The start-up (imports, loading the checkpoint, first call) is the 64 px
run's time, subtracted from the bigger photos' times; the rest is compared with the floor.

The floor: B's FLOPs per megapixel (``FlopCounterMode`` on a 512 x 512 input, the reference
forward's count; the fast path computes fewer) divided by this machine's convolution throughput
measured in the same run (a 3x3, 256 -> 256 channel conv on a 256 x 256 map, best of several,
just before and after each measurement): ``floor`` (``nn.Conv2d``, default layout) and
``strict floor`` (the same conv in oneDNN's best form: channels_last, prepacked weights), the
higher throughput of the two. Tiling recomputes the overlaps; the tables show that factor.

Without ``--infer``, for each photo size (0.25, 1, 4 and 24 megapixels, 3:2) and path a fresh
worker process builds B (random weights: speed and memory do not depend on the values) and
runs ``dmenet infer``'s code path in-process (:func:`dmenet.tiling.predict_image`,
tiled where the photo does not fit the memory budget). The paths are the fast path
(``fast``, what ``dmenet infer`` runs), B's own forward (``reference``, ``--reference-path``) and
the public-PyTorch alternatives to the fast path's private oneDNN ops: B's forward in
``channels_last``, ``compile`` (``torch.compile`` with freezing, cold compile cache) and
``onnxruntime`` (the ``dmenet export`` ONNX file on onnxruntime's CPU provider); their set-up
time (building, compiling or exporting, and the first call) is reported beside their speed.

    python bench/bench_inference.py --infer                 # dmenet infer: 64 px, 1 MP, 24 MP
    python bench/bench_inference.py --sizes 1 --paths fast reference channels_last compile onnxruntime
    python bench/bench_inference.py                         # sizes x (fast, reference)
    python bench/bench_inference.py --ablation              # each optimisation's gain, 0.25 MP
    python bench/bench_inference.py --reach                 # B's reach: error vs distance to a cut

Measurements accumulate in ``docs/benchmarks/inference.json`` (one per size and path, newest
wins; the ``--infer``, ablation and reach tables too) and the report
``docs/benchmarks/inference.md`` is rebuilt from it after every measurement, so parts can be
measured in separate runs.
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
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _size_for(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 3:2 photo with about ``megapixels`` million pixels."""
    width = int(round(math.sqrt(megapixels * 1e6 * 1.5)))
    height = int(round(megapixels * 1e6 / width))
    return height, width


def _reference_model():
    """B as the reference path runs it: eval mode, auxiliary heads dropped, BatchNorm folded."""
    from dmenet.checkpoint import prepare_for_inference
    from dmenet.modules.blur_estimator import BlurEstimator

    return prepare_for_inference(BlurEstimator(weights=None))


PATHS = {
    "fast": "dmenet.inference.fast, what dmenet infer runs",
    "reference": "B's own forward, BatchNorm folded (--reference-path)",
    "channels_last": "B's own forward, BatchNorm folded, in channels_last",
    "compile": "torch.compile(options={'freezing': True}) of the channels_last forward",
    "onnxruntime": "the dmenet export ONNX file on onnxruntime's CPU provider",
}


def _predictor(path: str, threads: int, workdir: str):
    """``image (1, 3, H, W) -> y`` on ``path`` (one of :data:`PATHS`)."""
    import torch

    from dmenet.checkpoint import DefocusPredictor
    from dmenet.inference.fast import fast_predictor

    model = _reference_model()
    if path == "fast":
        predictor = fast_predictor(DefocusPredictor(model).eval())
        assert predictor.fast_path and predictor.blur_estimator.fused, "not on the fused fast path"
        return predictor
    if path == "reference":
        return DefocusPredictor(model).eval()
    if path == "onnxruntime":
        import onnxruntime as ort

        from dmenet.inference.onnx_export import export_onnx

        onnx = export_onnx(DefocusPredictor(model), Path(workdir) / "b.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # CPU time = work
        session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(["y"], {"image": x.numpy()})[0])
    model = model.to(memory_format=torch.channels_last)
    if path == "compile":
        model = torch.compile(model, dynamic=False, options={"freezing": True})
    return lambda x: model(x.contiguous(memory_format=torch.channels_last)).y


class Floor:
    """This machine's 3x3 256 -> 256 conv throughput on a 256 x 256 map (GFLOP/s), best so far:
    ``default`` (``nn.Conv2d``, default layout) and ``strict`` (oneDNN,
    channels_last, prepacked weights, the fastest form of the same conv)."""

    FLOPS = 2.0 * 256 * 256 * 9 * 256 * 256

    def __init__(self) -> None:
        import torch

        self.conv = torch.nn.Conv2d(256, 256, 3, padding=1)
        self.x = torch.rand(1, 256, 256, 256)
        self.x_cl = self.x.contiguous(memory_format=torch.channels_last)
        self.packed = torch.ops.mkldnn._reorder_convolution_weight(
            self.conv.weight.detach(), [1, 1], [1, 1], [1, 1], 1, list(self.x.shape))
        self.best = {"default": float("inf"), "strict": float("inf")}
        self.best_cpu = {"default": float("inf"), "strict": float("inf")}

    def _strict(self):
        import torch

        return torch.ops.mkldnn._convolution_pointwise(
            self.x_cl, self.packed, self.conv.bias.detach(), [1, 1], [1, 1], [1, 1], 1, "none", [], "")

    def measure(self, repeats: int = 3) -> None:
        import torch

        with torch.inference_mode():
            for name, fn in (("default", lambda: self.conv(self.x)), ("strict", self._strict)):
                fn()
                for _ in range(repeats):
                    t, c = time.perf_counter(), time.process_time()
                    fn()
                    self.best[name] = min(self.best[name], time.perf_counter() - t)
                    self.best_cpu[name] = min(self.best_cpu[name], time.process_time() - c)

    def gflops(self, name: str) -> float:
        return self.FLOPS / self.best[name] / 1e9

    def cpu_gflops(self, name: str) -> float:
        """Per CPU-second of this process (all its threads): robust to other jobs' load."""
        return self.FLOPS / self.best_cpu[name] / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): ``VmHWM``. (``ru_maxrss`` is not reset by
    ``exec``: a worker would report its parent's peak when the parent was bigger.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args: argparse.Namespace) -> None:
    import torch

    from dmenet.tiling import auto_tile_px, needs_tiling, predict_image, tile_spans

    torch.set_num_threads(args.threads)
    height, width = _size_for(args.mp)
    setup, setup_cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as workdir:  # the ONNX file: read into the session
        predictor = _predictor(args.path, args.threads, workdir)
    memory_path = "fast" if args.path == "fast" else "reference"  # tiles: the budget's model
    tile = (auto_tile_px(height, width, args.memory_gb, memory_path, args.overlap)
            if args.tile == "auto" else int(args.tile))
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    with torch.inference_mode():
        predictor(torch.rand(1, 3, 64, 64))  # warm-up: first-call allocations and kernel choice
    setup, setup_cpu = time.perf_counter() - setup, time.process_time() - setup_cpu
    floor = Floor()
    floor.measure()  # just before the run: the machine is shared, load varies
    rss_model_mb = peak_rss_mb()
    image = torch.rand(1, 3, height, width)
    if needs_tiling(height, width, tile):
        rows, cols = tile_spans(height, tile_h, args.overlap), tile_spans(width, tile_w, args.overlap)
        tiled_px = sum(b - a for a, b in rows) * sum(b - a for a, b in cols)
        tiles = len(rows) * len(cols)
    else:
        tiled_px, tiles = height * width, 1
    computed = {"px": 0, "calls": 0}

    def run(x):  # with --max-tiles: the first tiles for real, the others skipped (zeros)
        computed["calls"] += 1
        if args.max_tiles and computed["calls"] > args.max_tiles:
            return torch.zeros(1, 1, x.shape[-2], x.shape[-1])
        computed["px"] += x.shape[-2] * x.shape[-1]
        return predictor(x)

    best = best_cpu = float("inf")
    first = first_cpu = None
    for _ in range(args.repeats):
        computed.update(px=0, calls=0)
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            y = predict_image(run, image, tile=tile, overlap=args.overlap, progress=True)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if first is None:  # the first photo of this size (a compiled path compiles for it)
            first, first_cpu = seconds, cpu
        # extrapolated to every tile by computed pixels when only some ran
        best = min(best, seconds * tiled_px / computed["px"])
        best_cpu = min(best_cpu, cpu * tiled_px / computed["px"])
        assert y.shape == (1, 1, height, width) and torch.isfinite(y).all()
        del y
    peak = peak_rss_mb()
    floor.measure()  # and after it
    print(json.dumps({
        "mp": args.mp, "path": args.path, "height": height, "width": width, "seconds": best,
        "repeats": args.repeats, "ms_per_mp": best * 1000.0 / (height * width / 1e6),
        "conv_gflops": floor.gflops("default"), "conv_gflops_strict": floor.gflops("strict"),
        "cpu_seconds": best_cpu, "cpu_ms_per_mp": best_cpu * 1000.0 / (height * width / 1e6),
        "conv_cpu_gflops": floor.cpu_gflops("default"),
        "conv_cpu_gflops_strict": floor.cpu_gflops("strict"),
        "tile": tile if isinstance(tile, int) else f"{tile_h} x {tile_w}", "overlap": args.overlap,
        "memory_gb": args.memory_gb,
        "threads": args.threads, "peak_rss_mb": peak, "rss_after_model_mb": rss_model_mb,
        "tiles": tiles, "overhead": tiled_px / (height * width),
        "load_avg": os.getloadavg()[0],
        "tiles_run": min(tiles, args.max_tiles) if args.max_tiles else tiles,
        "setup_seconds": setup, "setup_cpu_seconds": setup_cpu,
        "first_seconds": first, "first_cpu_seconds": first_cpu,
    }))


def flops_per_mp(threads: int) -> float:
    """B's FLOPs per megapixel as the reference path runs it (FlopCounterMode, 128 x 128: the
    same count per pixel as 512 x 512, in less memory, which the --infer children would inherit
    in their peak RSS)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    model = _reference_model()
    side = 128
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, side, side))
    return counter.get_total_flops() / (side * side / 1e6)


INFER_START_PX = 64
"""Side of the photo whose ``dmenet infer`` run measures the start-up (subtracted)."""


def _write_photo(path: Path, height: int, width: int, seed: int) -> None:
    """A smooth random JPEG photo (content does not change B's speed; a smooth one keeps the
    JPEG and the output PNGs the size of a real photo's)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    photo = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)  # uint8: small
    cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 92])


def _run_infer(photo: Path, ckpt: Path, out: Path) -> dict:
    """One ``python -m dmenet infer`` process: wall and CPU seconds, peak RSS (from ``wait4``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    cmd = [sys.executable, "-m", "dmenet", "infer", str(photo), "--ckpt", str(ckpt), "--out", str(out)]
    parent_rss_mb = _rss_mb()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)  # its progress bars go to the terminal
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dmenet infer failed on {photo}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024.0, "bench_rss_mb": parent_rss_mb}


def _rss_mb() -> float:
    """This process's resident memory now (MB): a child's ``ru_maxrss`` may start from it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def infer_runs(args: argparse.Namespace, gflop_per_mp: float) -> dict:
    """``dmenet infer`` on a 64 px photo (the start-up) and on each of ``--infer-sizes``, each in
    a fresh process, the floor measured in this process before and after each run (best of
    ``--repeats`` runs for photos up to 4 MP, one run above)."""
    from dmenet.checkpoint import save_inference_checkpoint
    from dmenet.modules.blur_estimator import BlurEstimator

    floor = Floor()
    sizes = [(INFER_START_PX, INFER_START_PX)] + [_size_for(mp) for mp in args.infer_sizes]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        ckpt = save_inference_checkpoint(Path(tmp) / "b.ckpt", BlurEstimator(weights=None))
        for i, (height, width) in enumerate(sizes):
            photo = Path(tmp) / f"photo_{width}x{height}.jpg"
            _write_photo(photo, height, width, seed=i)
            best: dict = {}
            for repeat in range(args.repeats if height * width <= 4e6 else 1):
                floor.measure()
                print(f"dmenet infer on {width} x {height} ({repeat + 1}) ...", flush=True)
                run = _run_infer(photo, ckpt, Path(tmp) / f"out_{i}_{repeat}")
                floor.measure()
                for key, value in run.items():
                    best[key] = min(best.get(key, float("inf")), value)
            runs.append({"height": height, "width": width, "mp": height * width / 1e6} | best)
            print(json.dumps(runs[-1]), flush=True)
    start = runs[0]
    floor_s = gflop_per_mp / floor.gflops("default")  # s per MP, the floor
    floor_cpu_s = gflop_per_mp / floor.cpu_gflops("default")
    for r in runs[1:]:
        r["x_floor_wall"] = (r["seconds"] - start["seconds"]) / (floor_s * r["mp"])
        r["x_floor_cpu"] = (r["cpu_seconds"] - start["cpu_seconds"]) / (floor_cpu_s * r["mp"])
        r["x_floor_wall_raw"] = r["seconds"] / (floor_s * r["mp"])
    return {
        "runs": runs, "threads": torch_threads(), "repeats": args.repeats,
        "conv_gflops": floor.gflops("default"), "conv_gflops_strict": floor.gflops("strict"),
        "conv_cpu_gflops": floor.cpu_gflops("default"), "load_avg": os.getloadavg()[0],
        "bench_rss_mb": max(r["bench_rss_mb"] for r in runs),
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def fast_flops_per_mp(threads: int) -> float:
    """FLOPs per megapixel the fast path computes (phase convs do fewer), by the same counter
    on its plain-conv2d form."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dmenet.inference.fast import FastBlurEstimator

    torch.set_num_threads(threads)
    fast = FastBlurEstimator(_reference_model(), fused=False)
    side = 512
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fast(torch.rand(1, 3, side, side))
    return counter.get_total_flops() / (side * side / 1e6)


ABLATION = [
    ("reference (BN folded)", "reference", {}),
    ("+ channels_last (reference forward)", "reference_cl", {}),
    ("fast: halo padding, split/phase up-conv, in-place adds (plain conv2d)", "fast",
     {"fused": False}),
    ("+ oneDNN fused conv + activation / add, prepacked weights (= the fast path)", "fast", {}),
]


def ablation(args: argparse.Namespace) -> dict:
    """Every step's time on one photo, the steps interleaved round by round (best of rounds)."""
    import torch

    from dmenet.inference.fast import FastBlurEstimator

    torch.set_num_threads(args.threads)
    height, width = _size_for(args.ablation_mp)
    model = _reference_model()
    model_cl = _reference_model().to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, height, width)
    image_cl = image.contiguous(memory_format=torch.channels_last)
    steps = list(ABLATION)
    fns = []
    for _, kind, kwargs in steps:
        if kind == "reference":
            fns.append(lambda: model(image).y)
        elif kind == "reference_cl":
            fns.append(lambda: model_cl(image_cl).y)
        else:
            fast = FastBlurEstimator(model, **kwargs)
            fns.append(lambda fast=fast: fast(image))
    floor = Floor()
    best = [float("inf")] * len(fns)
    best_cpu = [float("inf")] * len(fns)
    with torch.inference_mode():
        reference = fns[0]()
        for fn in fns[1:]:
            assert float((fn() - reference).abs().max()) < 1e-4
        for _ in range(args.rounds):
            floor.measure(repeats=1)
            for i, fn in enumerate(fns):
                t, c = time.perf_counter(), time.process_time()
                fn()
                best[i] = min(best[i], time.perf_counter() - t)
                best_cpu[i] = min(best_cpu[i], time.process_time() - c)
    mp = height * width / 1e6
    return {
        "mp": args.ablation_mp, "height": height, "width": width, "rounds": args.rounds,
        "threads": args.threads, "conv_gflops": floor.gflops("default"),
        "conv_gflops_strict": floor.gflops("strict"), "load_avg": os.getloadavg()[0],
        "conv_cpu_gflops": floor.cpu_gflops("default"),
        "conv_cpu_gflops_strict": floor.cpu_gflops("strict"),
        "steps": [{"step": name, "ms_per_mp": 1000 * t / mp, "cpu_ms_per_mp": 1000 * c / mp}
                  for (name, _, _), t, c in zip(steps, best, best_cpu)],
    }


def reach(args: argparse.Namespace) -> dict:
    """How far a tile's cut edge changes B's output: B (random VGG init, BatchNorm calibrated on
    smooth random images, so activations have unit scale) on a strip, whole and cut at a
    multiple of 16; the largest change at each distance from the cut, both padding modes."""
    import copy

    import torch
    import torch.nn.functional as F

    from dmenet.checkpoint import prepare_for_inference
    from dmenet.inference.fast import FastBlurEstimator
    from dmenet.modules.blur_estimator import BlurEstimator
    from tests.inference.conftest import calibrate_batchnorm
    from tests.inference.test_fast import with_padding_mode

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = calibrate_batchnorm(BlurEstimator(weights=None))
    gen = torch.Generator().manual_seed(3)
    height, width, cut = 64, 1024, 512
    image = F.avg_pool2d(torch.rand(1, 3, height + 4, width + 4, generator=gen), 5, 1)
    out = {"height": height, "width": width, "cut": cut, "modes": {}}
    for mode in ("zeros", "replicate"):
        model = prepare_for_inference(with_padding_mode(copy.deepcopy(base), mode))
        fast = FastBlurEstimator(model)
        with torch.inference_mode():
            whole = fast(image)[0, 0]
            left = fast(image[..., :cut])[0, 0]  # cut on its right
            right = fast(image[..., cut:])[0, 0]  # cut on its left
        err_left = (left - whole[:, :cut]).abs().amax(0).flip(0)  # index = distance to the cut
        err_right = (right - whole[:, cut:]).abs().amax(0)
        err = torch.maximum(err_left, err_right)
        # the change at distance >= d (what a tile keeps beyond a margin of d)
        beyond = err.flip(0).cummax(0).values.flip(0)
        out["modes"][mode] = {
            "output_std": float(whole.std()),
            "max_change_beyond_px": {str(d): float(beyond[d]) for d in range(0, cut, 16)},
        }
    return out


def _margin_for(profile: dict, tol: float) -> int:
    for d, v in sorted(((int(k), v) for k, v in profile.items())):
        if v <= tol:
            return d
    return -1


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
    parser.add_argument("--sizes", type=float, nargs="*", default=None,
                        help="photo sizes in megapixels (default 0.25 1 4 24, none with --infer, "
                        "--ablation or --reach)")
    parser.add_argument("--paths", nargs="+", default=["fast", "reference"], choices=list(PATHS))
    parser.add_argument("--infer", action="store_true",
                        help="dmenet infer as a user runs it: a 64 px photo, then --infer-sizes")
    parser.add_argument("--infer-sizes", type=float, nargs="+", default=[1.0, 24.0],
                        help="photo sizes (MP, 3:2) for --infer (default 1 and 24)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--tile", default="auto", help="tile side in px, 0, or auto (default)")
    parser.add_argument("--memory-gb", type=float, default=None, help="budget for --tile auto")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: infer's)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per photo (best is kept)")
    parser.add_argument("--max-tiles", type=int, default=0,
                        help="run only the first N tiles of big photos and extrapolate the time "
                        "by computed pixels (peak memory is reached on the first tile)")
    parser.add_argument("--ablation", action="store_true", help="each optimisation's gain")
    parser.add_argument("--ablation-mp", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3, help="ablation rounds (best is kept)")
    parser.add_argument("--reach", action="store_true", help="B's error vs distance to a cut")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "inference.md"))
    parser.add_argument("--results", default=str(REPO / "docs" / "benchmarks" / "inference.json"),
                        help="measurements accumulate here (the report is built from it)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mp", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="fast", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from dmenet.tiling import DEFAULT_MEMORY_GB, DEFAULT_OVERLAP_PX

    if args.sizes is None:
        args.sizes = [] if (args.infer or args.ablation or args.reach) else [0.25, 1.0, 4.0, 24.0]
    args.memory_gb = DEFAULT_MEMORY_GB if args.memory_gb is None else args.memory_gb
    args.overlap = DEFAULT_OVERLAP_PX if args.overlap is None else args.overlap
    if args.worker:
        worker(args)
        return 0

    command = "python bench/bench_inference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results_path = Path(args.results)
    store = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": []}
    store["machine"] = _machine()
    now = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"

    def save() -> None:
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(store, indent=1) + "\n")
        _write_report(Path(args.out), store)

    if args.infer:  # first: the floor with torch's default threads, as dmenet infer runs
        threads = torch_threads()
        store["gflop_per_mp"] = flops_per_mp(threads) / 1e9
        store["infer"] = infer_runs(args, store["gflop_per_mp"]) | {"date": now,
                                                                    "command": command.strip()}
        save()
    if args.reach:
        print("measuring B's reach ...", flush=True)
        store["reach"] = reach(args) | {"date": now, "command": command.strip()}
        save()
    if args.ablation:
        print("ablation ...", flush=True)
        store["ablation"] = ablation(args) | {"date": now, "command": command.strip()}
        print(json.dumps(store["ablation"]), flush=True)
        save()
    if args.sizes:
        print("counting B's FLOPs ...", flush=True)
        store["gflop_per_mp"] = flops_per_mp(args.threads) / 1e9
        store["fast_gflop_per_mp"] = fast_flops_per_mp(args.threads) / 1e9
    for mp in args.sizes:
        for path in args.paths:
            cmd = [sys.executable, __file__, "--worker", "--mp", str(mp), "--path", path,
                   "--threads", str(args.threads), "--tile", str(args.tile),
                   "--memory-gb", str(args.memory_gb), "--overlap", str(args.overlap),
                   "--repeats", str(args.repeats if mp <= 4 else 1),
                   "--max-tiles", str(args.max_tiles if mp > 4 else 0)]
            # the worker's stderr (its tile progress bar) goes straight to the terminal
            with tempfile.TemporaryDirectory(prefix="inductor_") as cache:
                # torch.compile: a cold compile cache, as a new user meets it
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"worker for {mp} MP ({path}) failed")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["date"] = now
            result["command"] = command.strip()
            # one row per size and path: a new measurement replaces an older one
            store["runs"] = [r for r in store["runs"]
                             if (r["mp"], r.get("path", "first reference")) != (mp, path)] + [result]
            print(json.dumps(result), flush=True)
            save()
    print(f"wrote {args.out} and {results_path}")
    return 0


def _tiles(r: dict) -> str:
    run = r.get("tiles_run", r["tiles"])
    return str(r["tiles"]) if run == r["tiles"] else f"{r['tiles']} ({run} run, time extrapolated)"


def _write_report(out: Path, store: dict) -> None:
    gflop = store.get("gflop_per_mp", 2458.0)
    lines = [
        "# Inference benchmark (CPU)",
        "",
        f"- machine: {store['machine']}",
        "- model: B (`dmenet_vgg19`, random weights), float32, `torch.inference_mode`; paths: "
        + "; ".join(f"`{name}` = {text}" for name, text in PATHS.items())
        + "; `first reference` rows: the reference path as first measured (1024 px tiles, idle machine)",
        f"- B's cost: {gflop:.0f} GFLOP per megapixel (`FlopCounterMode`, reference forward)"
        + (f"; the fast path computes {store['fast_gflop_per_mp']:.0f} (phase convs for the "
           "upsampled halves of the decoder convs)" if "fast_gflop_per_mp" in store else ""),
        "- floor = B's cost / this machine's 3x3 256 -> 256 conv throughput (256 x 256 map), best of "
        "the measurements just before and after each run in the same process: `floor` with "
        "`nn.Conv2d` in the default layout, `strict` with the same conv "
        "in oneDNN's fastest form (channels_last, prepacked weights)",
        "",
    ]
    if "infer" in store:
        inf = store["infer"]
        floor_s = gflop / inf["conv_gflops"]
        lines += [
            f"## `dmenet infer` as a user runs it ({inf['date']})",
            "",
            "One fresh `python -m dmenet infer PHOTO --ckpt B.ckpt --out DIR` process per photo, "
            "default options (fast path, `--tile auto`, 4 GB budget; B with random weights); wall "
            "and CPU seconds and peak RSS of the process from the kernel (`wait4`). x floor: the "
            f"time beyond the {inf['runs'][0]['width']} px photo's run (start-up: imports, loading "
            "the checkpoint, first call) over B's FLOP floor for the photo, "
            f"{floor_s:.1f} s per MP at {inf['conv_gflops']:.0f} GFLOP/s (wall; "
            f"{gflop / inf['conv_cpu_gflops']:.1f} CPU s per MP) in this run, "
            f"{inf['threads']} threads.",
            "",
            "| photo | size (W x H) | wall (s) | CPU (s) | peak RSS (MB) | x floor, wall | "
            "x floor, CPU time | x floor, wall, start-up included |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in inf["runs"]:
            name = "start-up" if "x_floor_wall" not in r else f"{r['mp']:.2g} MP"
            lines.append(
                f"| {name} | {r['width']} x {r['height']} | {r['seconds']:.1f} | "
                f"{r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
                + (f"**{r['x_floor_wall']:.2f}** | {r['x_floor_cpu']:.2f} | "
                   f"{r['x_floor_wall_raw']:.2f} |" if "x_floor_wall" in r else "- | - | - |"))
        lines += [
            "",
            f"Command: `{inf['command']}`; load average at the end {inf['load_avg']:.1f}; best of "
            f"{inf['repeats']} runs up to 4 MP, one run above."
            + (f" (The bench process held at most {inf['bench_rss_mb']:.0f} MB when it started a "
               "run, below every run's peak: the peaks are the runs' own.)"
               if "bench_rss_mb" in inf else ""),
            "",
        ]
    lines += [
        "## B's paths in-process",
        "",
        "| photo | path | size (H x W) | tile / overlap (px) | tiles | px computed / photo px | "
        "time (s) | ms / MP | x floor (wall) | x strict floor (wall) | x floor (CPU time) | "
        "x strict floor (CPU time) | x strict floor per computed px (CPU time) | peak RSS (MB) | "
        "set-up + first 64 px call (CPU s) | first photo (CPU s) | load avg | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate([*PATHS, "first reference"])}
    runs = sorted(store["runs"], key=lambda r: (r["mp"], order.get(r.get("path", "first reference"), 3)))

    def ratio(ms: float | None, gflops: float | None) -> float | None:
        return ms / (gflop / gflops * 1000.0) if ms and gflops else None

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in runs:
        wall = ratio(r["ms_per_mp"], r["conv_gflops"])
        wall_strict = ratio(r["ms_per_mp"], r.get("conv_gflops_strict"))
        cpu = ratio(r.get("cpu_ms_per_mp"), r.get("conv_cpu_gflops"))
        cpu_strict = ratio(r.get("cpu_ms_per_mp"), r.get("conv_cpu_gflops_strict"))
        per_px = None if cpu_strict is None else cpu_strict / r["overhead"]
        load = f"{r['load_avg']:.1f}" if "load_avg" in r else "~1 (idle)"
        lines.append(
            f"| {r['mp']:g} MP | {r.get('path', 'first reference')} | {r['height']} x {r['width']} | "
            f"{r['tile']} / {r['overlap']} | {_tiles(r)} | {r['overhead']:.2f} | "
            f"{r['seconds']:.1f} | {r['ms_per_mp']:.0f} | {fmt(wall)} | {fmt(wall_strict)} | "
            f"{fmt(cpu)} | {fmt(cpu_strict)} | {fmt(per_px)} | {r['peak_rss_mb']:.0f} | "
            f"{fmt(r.get('setup_cpu_seconds'))} | {fmt(r.get('first_cpu_seconds'))} | {load} | "
            f"{r['date']} |"
        )
    commands = sorted({r["command"] for r in runs})
    lines += [
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in commands) + ".",
        "",
        "Peak RSS is the whole worker process (Python, torch, B's weights, the photo, the output "
        "and the largest tile's activations): `VmHWM` for the 2026-12 rows (2026-11-25 rows: "
        "`ru_maxrss`, which a worker inherits from its parent when the parent was bigger). "
        "Times are the best of the repeats (one run at 24 MP). 'x floor per computed px' divides "
        "out the recomputed tile overlaps. 'load avg' is the 1-minute load average at the end of "
        "the run: the 2-core machine was shared with other jobs during the 2026-12-06 00:xx runs, so "
        "times vary; each run's floor is measured in the same process under the load of its "
        "own moment.",
        "",
    ]
    if "ablation" in store:
        a = store["ablation"]
        floor_ms = gflop / a["conv_gflops"] * 1000.0
        lines += [
            f"## What each optimisation gives ({a['mp']:g} MP, {a['height']} x {a['width']}, "
            f"{a['threads']} threads, best of {a['rounds']} interleaved rounds, {a['date']})",
            "",
            "| step | ms / MP (wall) | x floor (wall) | CPU ms / MP | gain vs previous row (CPU) | "
            "x reference (CPU) | x floor (CPU time) | x strict floor (CPU time) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        prev = None
        ref = a["steps"][0].get("cpu_ms_per_mp")
        cpu_floor = gflop / a["conv_cpu_gflops"] * 1000.0 if "conv_cpu_gflops" in a else None
        cpu_strict = gflop / a["conv_cpu_gflops_strict"] * 1000.0 if "conv_cpu_gflops" in a else None
        for step in a["steps"]:
            ms = step["ms_per_mp"]
            cms = step.get("cpu_ms_per_mp")
            gain = f"{prev / cms:.2f}x" if prev and cms else "-"
            lines.append(
                f"| {step['step']} | {ms:.0f} | {ms / floor_ms:.2f} | "
                + (f"{cms:.0f} | {gain} | {ref / cms:.2f}x faster | {cms / cpu_floor:.2f} | "
                   f"{cms / cpu_strict:.2f} |" if cms and cpu_floor else "- | - | - | - | - |"))
            prev = cms
        lines += [
            "",
            f"Floor in this run: {a['conv_gflops']:.0f} GFLOP/s wall (default layout), "
            f"{a['conv_gflops_strict']:.0f} GFLOP/s wall (strict), "
            f"{a.get('conv_cpu_gflops', float('nan')):.0f} / "
            f"{a.get('conv_cpu_gflops_strict', float('nan')):.0f} GFLOP per CPU-second; "
            f"load average {a['load_avg']:.1f}. "
            f"Command: `{a['command']}`. Every step's output equals the reference within 1e-4 "
            "(checked by the run).",
            "",
        ]
    if "reach" in store:
        rc = store["reach"]
        lines += [
            f"## B's reach: how far a tile's cut changes the output ({rc['date']})",
            "",
            f"B (random VGG init, BatchNorm calibrated on smooth random images) on a "
            f"{rc['height']} x {rc['width']} strip, whole and cut at x = {rc['cut']}; the largest "
            "|change| of y at distance >= d from the cut (what a tile keeps beyond a margin of d):",
            "",
            "| d (px) | " + " | ".join(rc["modes"]) + " |",
            "|---|" + "---|" * len(rc["modes"]),
        ]
        ds = sorted(int(d) for d in next(iter(rc["modes"].values()))["max_change_beyond_px"])
        for d in ds:
            if d > 256:
                break
            vals = [m["max_change_beyond_px"][str(d)] for m in rc["modes"].values()]
            lines.append(f"| {d} | " + " | ".join(f"{v:.1e}" for v in vals) + " |")
        for tol in (1e-3, 1e-4):
            margins = {k: _margin_for(m["max_change_beyond_px"], tol) for k, m in rc["modes"].items()}
            lines.append("")
            lines.append(f"Margin for {tol:g}: " + ", ".join(f"{k} {v} px" for k, v in margins.items()) + ".")
        lines += ["", f"Command: `{rc['command']}`.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
