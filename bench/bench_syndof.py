"""Benchmark of the SYNDOF renderers: fidelity to the official generator, speed, and what the
batched renderer would cost on a GPU (ops, host round trips, bytes), on the CPU.

1. Against the official generator's outputs (../shared/data/syndof_reference, skipped when
   absent), reference mode: PSNR on the interior, 99th percentile error more than 14 px from
   depth edges, flat-grey deviation, label error and CPU time of each renderer on the whole
   497 x 720 image.
2. Training windows as the DataModule draws them (:class:`~dmenet.data.synthetic.
   WholeImageCameraCrops`: 240 px crops with their margin, reference-mode cameras drawn from
   the whole image, the whole image's fill start) from the real RGB-D samples (Sintel,
   SYNTHIA, Middlebury in ../shared/data/rgbd_samples) and the embedded Middlebury motorcycle,
   in batches of 1 and 16: crops/s of the batched, tiled and loop renderers (CPU time, one
   thread), the batched renderer's dispatched aten ops, host synchronisations and bytes per
   crop (:class:`~dmenet.profiling.DispatchCounter`), its launch-bound GPU estimate per crop,
   and its difference from the tiled renderer (exact fill). ``--baseline COMMIT`` adds the
   device path of the renderer of that commit (e74c6f9: the tiled renderer with torch ops and a
   conjugate-gradient fill, forced on the CPU) to the op counts.
3. Rendering ahead (``--data.render_ahead K``): per training step of the paper's 3 synthetic
   crops, the batched renderer's ops, syncs and GPU estimates when each call renders the crops
   of K steps (3 K windows), for K in ``--render-ahead`` (default 1 and 16); on CUDA also the
   wall time per step (``--gpu``: K = 1, 4 and 16).
4. About 1 MP (the motorcycle, the Middlebury sample): s/MP of the three renderers.

    python bench/bench_syndof.py --baseline e74c6f9   # all sections, writes docs/benchmarks/syndof.md
    python bench/bench_syndof.py --quick               # batch 1 and 4, no 1 MP rows, no loop
    python bench/bench_syndof.py --device cuda --gpu   # GPU rows: crops/s at batches 3/16/64
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmenet.profiling import BYTES_PER_S, LAUNCH_S, SYNC_S

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLES = SHARED / "rgbd_samples"
SHARED_REFERENCE = SHARED / "syndof_reference"
SOURCES = {"sintel": f"sintel:{SAMPLES / 'sintel'}", "synthia": f"synthia:{SAMPLES / 'synthia'}",
           "middlebury": f"middlebury:{SAMPLES / 'middlebury2014'}", "motorcycle": "embedded:0"}
REFERENCE = {"mode": "reference", "render_mode": "reference", "sigma_rule": "reference",
             "c_max_px": 29.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=1, warm_up=True):
    """Best time of ``repeats`` calls after a warm-up call (CPU time of this process on the
    CPU, wall time on a GPU) and the last result."""
    if warm_up:
        fn()
        _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        _sync(device)
        t = time.perf_counter() - t0 if device.type == "cuda" else time.process_time() - c0
        best = min(best, t)
    return best, out


def windows(source: str, n: int, seed: int, crop: int = 240) -> dict:
    """``n`` training windows of ``source`` as the DataModule cuts them (reference mode)."""
    from dmenet.data.rgbd import make_rgbd_source
    from dmenet.data.syndof import SyndofRenderer
    from dmenet.data.synthetic import WholeImageCameraCrops

    torch.manual_seed(seed)
    renderer = SyndofRenderer(**REFERENCE)
    crops = WholeImageCameraCrops(make_rgbd_source(SOURCES[source]), crop, renderer, length=n)
    items = [crops[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def render_windows(batch: dict, renderer: str, device: torch.device):
    from dmenet.data.syndof import render_defocus
    from dmenet.data.synthetic import CAMERA_KEYS
    from dmenet.data.thin_lens import Camera

    camera = Camera(*(batch[k] for k in CAMERA_KEYS))
    return render_defocus(batch["image"].to(device), batch["depth_mm"].to(device), camera,
                          renderer=renderer, sigma_rule="reference", render_mode="reference",
                          c_max_px=29.0, fill_from_coc_px=batch["fill_from_coc_px"])


def baseline_device_path(commit: str):
    """The renderer module of ``commit`` (``dmenet/data/syndof.py`` there), its device path
    (torch ops, conjugate-gradient fill) forced for CPU tensors: ``render(batch) -> image``."""
    source = subprocess.run(["git", "show", f"{commit}:dmenet/data/syndof.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "syndof_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("syndof_baseline", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # dataclasses look their module up
    spec.loader.exec_module(old)
    options = old._options
    old._options = lambda *a, **k: dataclasses.replace(options(*a, **k), iterative=True,
                                                        opencv=False)

    def render(batch):
        from dmenet.data.synthetic import CAMERA_KEYS
        from dmenet.data.thin_lens import Camera

        camera = Camera(*(batch[k] for k in CAMERA_KEYS))
        return old.render_defocus(batch["image"], batch["depth_mm"], camera,
                                  sigma_rule="reference", render_mode="reference",
                                  c_max_px=29.0, fill_from_coc_px=batch["fill_from_coc_px"]).image

    return render


def step_shape(args: tuple) -> tuple:
    """What the GPU model needs of one ``front_step(*args)`` call: the samples, the frame, the
    element sizes of the accumulation, the fill's iterate and the layer ids, the reach of the
    fill's start and whether it fills (its tensors are not held)."""
    import dmenet.data.syndof.batched as batched

    acc, *_, layer_id, _, _, _, kernel, fill = args
    n, _, h, w = acc.shape
    return (n, h, w, acc.element_size(), batched.FILL_DTYPE.itemsize, layer_id.element_size(),
            kernel.shape[0] // 2, fill)


def back_shape(args: tuple) -> tuple:
    """What the GPU model needs of one ``back_step(*args)`` call: the samples, the chunk's
    layers, the frame and the element size."""
    n, k, _, h, w = args[2].shape
    return n, k, h, w, args[2].element_size()


def counted(fn):
    """``fn()`` under a :class:`~dmenet.profiling.DispatchCounter`: the count, the output and
    each step on its own (each call of the batched renderer's ``front_step`` and
    ``back_step``: its count and :func:`step_shape` or :func:`back_shape`)."""
    import dmenet.data.syndof.batched as batched
    from dmenet.profiling import DispatchCounter, counting_calls

    with counting_calls(batched, "front_step", keep=step_shape) as steps, \
            counting_calls(batched, "back_step", keep=back_shape) as backs, \
            DispatchCounter() as count:
        out = fn()
    return count, out, (steps, backs)


def compiled_step_cost(shape: tuple) -> tuple[int, int, int]:
    """Kernels, bytes and the fill sweeps' bytes of one compiled ``front_step`` of
    :func:`step_shape` ``shape`` on a GPU (a model; ``--device cuda`` counts the kernels):
    ``compiled_kernels`` kernels; the accumulation read and written once, the layer read once
    (its colour and mask; with a fill also its union and the layer ids); the fill's start (the
    known values and their weight, 5 channels in the image's precision: the extended frame
    written, each of the two convolutions reading its input and writing its output, the
    result read); each half-sweep reads the fill's frame and its bool mask and writes the
    frame."""
    from dmenet.data.syndof.batched import compiled_kernels, front_step
    from dmenet.data.syndof.fill import RELAX_SWEEPS

    n, h, w, acc_size, fill_size, id_size, reach, fill = shape
    pixels = n * h * w
    moved = 2 * 4 * pixels * acc_size + 4 * pixels * acc_size  # (acc, alpha) twice, the layer
    sweeps = 0
    if fill:
        frame = 4 * pixels * fill_size
        moved += pixels * (acc_size + id_size)  # the union, the ids
        extended, once = (h + 2 * reach) * (w + 2 * reach), (h + 2 * reach) * w
        moved += 5 * n * acc_size * 2 * (extended + once + h * w)  # the start
        sweeps = 2 * RELAX_SWEEPS * (2 * frame + pixels)
    return compiled_kernels(front_step, fill, RELAX_SWEEPS), moved + sweeps, sweeps


def compiled_back_cost(shape: tuple) -> tuple[int, int]:
    """Kernels and bytes of one compiled ``back_step`` of :func:`back_shape` ``shape`` on a GPU
    (a model, as inductor schedules it on the CPU): ``compiled_kernels`` kernels; the masks read
    and ``1 - M`` written (reversed), the cumulative product read and written, then it and the
    layers read once; the accumulation read and written once."""
    from dmenet.data.syndof.batched import back_step, compiled_kernels

    n, k, h, w, size = shape
    pixels = n * h * w
    return compiled_kernels(back_step), pixels * size * (k * (2 + 2 + 1 + 4) + 2 * 4)


def gpu_estimates_ms(gpu_ops: float, syncs: float, gpu_bytes: float, per: float):
    """The GPU estimates of what was counted, in ms per ``per`` (crops or steps): bound by
    launches and synchronisations, and by memory traffic."""
    return ((gpu_ops * LAUNCH_S + syncs * SYNC_S) / per * 1e3,
            gpu_bytes / BYTES_PER_S / per * 1e3)


def gpu_path(count, steps) -> tuple[int, int, int]:
    """Ops and bytes of what ``count`` counted (uncompiled) as a CUDA device runs it (every step
    compiled, :func:`compiled_step_cost`, :func:`compiled_back_cost`; every other op as
    counted), and the fill sweeps' bytes. ``steps``: :func:`counted`'s."""
    ops, nbytes, fill_bytes = count.ops, count.bytes, 0
    fronts, backs = steps
    for inner, shape in fronts:
        kernels, moved, sweeps = compiled_step_cost(shape)
        ops += kernels - inner.ops
        nbytes += moved - inner.bytes
        fill_bytes += sweeps
    for inner, shape in backs:
        kernels, moved = compiled_back_cost(shape)
        ops += kernels - inner.ops
        nbytes += moved - inner.bytes
    return ops, nbytes, fill_bytes


def cuda_kernels(fn) -> int:
    """CUDA kernels launched by ``fn()`` (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type == DeviceType.CUDA)


def compare(got: torch.Tensor, ref: torch.Tensor, margin: int) -> tuple[float, float]:
    """PSNR (dB) and largest difference (levels) of the crops (margins cut off)."""
    crop = (..., slice(margin, -margin), slice(margin, -margin))
    d = (got[crop].float().cpu() - ref[crop].float().cpu()).abs()
    mse = float((d ** 2).mean())
    return (10 * np.log10(1 / mse) if mse > 0 else float("inf")), float(d.max()) * 255


def window_rows(args, device, baseline) -> list[dict]:

    rows = []
    for name in SOURCES:
        if name != "motorcycle" and not SAMPLES.is_dir():
            print(f"skipping {name}: {SAMPLES} is absent")
            continue
        for b in args.batches:
            batch = windows(name, b, seed=b)
            m = int(batch["margin_px"][0])

            def run(renderer, batch=batch):
                return lambda: render_windows(batch, renderer, device)

            first_s, kernels, t_batched = float("nan"), float("nan"), None
            if device.type == "cuda":  # timed and profiled before anything is counted
                t0 = time.perf_counter()
                run("batched")()  # the steps' compilation, once per process
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0
                t_batched, _ = timed(run("batched"), device, repeats=3, warm_up=False)
                kernels = cuda_kernels(run("batched")) / b
            count, out, steps = counted(run("batched"))  # (on the CPU: the warm-up)
            layers = float(out.num_layers.float().mean())
            if t_batched is None:
                t_batched, out = timed(run("batched"), device, warm_up=False)
            gpu_ops, gpu_bytes, fill_bytes = gpu_path(count, steps)
            row = {"source": name, "batch": b, "layers": layers, "device": device.type,
                   "ops": count.ops / b, "syncs": count.syncs / b, "bytes": count.bytes / b,
                   "batched": b / t_batched, "fills": sum(shape[-1] for _, shape in steps[0]) / b,
                   "gpu_ops": gpu_ops / b, "gpu_bytes": gpu_bytes / b, "first_s": first_s,
                   "fill_share": fill_bytes / max(gpu_bytes, 1), "kernels": kernels}
            row["ops_layer"] = row["ops"] / layers
            row["gpu_ops_layer"] = row["gpu_ops"] / layers
            row["launch_ms"], row["bandwidth_ms"] = gpu_estimates_ms(gpu_ops, count.syncs,
                                                                     gpu_bytes, b)
            if device.type == "cpu":
                t_tiled, ref = timed(run("tiled"), device)
                row["tiled"] = b / t_tiled
                row["psnr"], row["max"] = compare(out.image, ref.image, m)
                if not args.quick:
                    t_loop, _ = timed(run("loop"), device)
                    row["loop"] = b / t_loop
            if baseline is not None and device.type == "cpu":
                old, _, _ = counted(lambda batch=batch: baseline(batch))
                row["old_ops"], row["old_syncs"] = old.ops / b, old.syncs / b
                row["old_ops_layer"] = row["old_ops"] / layers
                row["old_launch_ms"] = old.launch_bound_s() / b * 1e3
            rows.append(row)
            print(row, flush=True)
    return rows


def ahead_rows(args, device) -> list[dict]:
    """Section 3: per training step of 3 crops, rendering ``k`` steps' crops in one call. Every
    row covers the same 3 K_max windows (K_max / k calls of 3 k), averaged per step."""
    rows = []
    k_max = max(args.render_ahead)
    for name in SOURCES:
        if name != "motorcycle" and not SAMPLES.is_dir():
            continue
        every = windows(name, 3 * k_max, seed=1000)
        for k in args.render_ahead:
            calls = [{key: v[3 * k * g:3 * k * (g + 1)] for key, v in every.items()}
                     for g in range(k_max // k)]

            def run_all(calls=calls):
                return [render_windows(batch, "batched", device) for batch in calls]

            step_ms = float("nan")
            if device.type == "cuda":
                run_all()  # the steps' compilation (once per process)
                step_ms = timed(run_all, device, repeats=3, warm_up=False)[0] / k_max * 1e3
            count, outs, steps = counted(run_all)  # k_max steps of 3 crops in all
            gpu_ops, gpu_bytes, _ = gpu_path(count, steps)
            layers = float(torch.cat([out.num_layers for out in outs]).float().mean())
            launch_ms, bandwidth_ms = gpu_estimates_ms(gpu_ops, count.syncs, gpu_bytes, k_max)
            row = {"source": name, "k": k, "layers": layers, "calls": len(calls),
                   "ops": count.ops / k_max, "gpu_ops": gpu_ops / k_max,
                   "syncs": count.syncs / k_max, "launch_ms": launch_ms,
                   "bandwidth_ms": bandwidth_ms, "step_ms": step_ms, "device": device.type}
            rows.append(row)
            print(row, flush=True)
    return rows


def oracle_rows(args) -> list[dict]:
    """Section 1: reference-mode renders of the whole image against the official outputs."""
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
    image, depth = load_middlebury_sample(SAMPLES)
    rows = []
    renderers = ("batched", "tiled") if args.quick else ("batched", "tiled", "loop")
    for k, case in enumerate(load_cases(SHARED_REFERENCE)):
        strip = {}
        official = read_png16_rgb(case["official_png"])
        cam = case["camera"]
        kw = {"sigma_rule": "reference", "render_mode": "reference", "c_max_px": 29.0}
        for renderer in renderers:
            t0 = time.process_time()
            out = render_defocus(image, depth, cam, renderer=renderer, **kw)
            t = time.process_time() - t0
            grey = render_defocus(torch.full_like(image, 128 / 255), depth, cam,
                                  renderer=renderer, **kw).image
            ours = out.image[0].permute(1, 2, 0).double().numpy()
            signed = out.coc_px * torch.sign(cam.signed_coc_px(depth))
            label = np.load(case["sigma_npy"])
            rows.append({
                "case": case["case"], "renderer": renderer, "layers": int(out.num_layers[0]),
                "psnr": psnr_interior(ours, official),
                "p99": p99_away_levels(ours, official, away_from_depth_edges(signed)),
                "grey": float((grey - 128 / 255).abs().max()) * 255,
                "label": float(np.abs(out.sigma_px[0, 0].numpy() - label).max()),
                "t": t, "official_s": case["official_s"],
            })
            print(rows[-1], flush=True)
            strip[renderer] = ours
        if k == 0 and not args.no_write:
            from dmenet.data.io import write_image

            diff = np.abs(strip["batched"] - official).max(axis=2, keepdims=True).repeat(3, 2) * 4
            panels = [official, strip["batched"], strip["tiled"], diff]
            write_image(Path(args.out).parent / f"syndof_{case['case']}_vs_official.png",
                        np.concatenate(panels, axis=1).clip(0, 1).astype(np.float32))
    return rows


def megapixel_rows(args) -> list[dict]:
    """Section 3: about 1 MP, one camera (reference mode, whole image)."""
    from dmenet.data.rgbd import make_rgbd_source
    from dmenet.data.syndof import render_defocus
    from dmenet.data.thin_lens import CameraSampler, clean_depth_mm

    rows = []
    names = ["motorcycle"] + (["middlebury"] if SAMPLES.is_dir() else [])
    for name in names:
        item = make_rgbd_source(SOURCES[name])[0]
        h, w = item["image"].shape[-2:]
        s = (1e6 / (h * w)) ** 0.5
        size = (round(h * s), round(w * s))
        image = F.interpolate(item["image"][None], size=size, mode="bilinear",
                              align_corners=False).clamp(0, 1)
        depth = clean_depth_mm(F.interpolate(item["depth_mm"][None], size=size, mode="nearest"))
        camera = CameraSampler("reference", c_max_px=29.0).sample(
            depth, torch.Generator().manual_seed(0))
        mp = size[0] * size[1] / 1e6
        row = {"source": name, "size": f"{size[0]} x {size[1]}"}
        for renderer in ("tiled", "batched", "loop"):
            t, out = timed(lambda r=renderer, x=image, d=depth, c=camera: render_defocus(
                x, d, c, renderer=r, sigma_rule="reference", render_mode="reference",
                c_max_px=29.0), torch.device("cpu"))
            row[renderer] = t / mp
            row["layers"] = int(out.num_layers[0])
        rows.append(row)
        print(row, flush=True)
    return rows


def machine_line(args) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} CPU cores visible, GPU: {gpu}; torch "
            f"{torch.__version__}, {args.threads} thread(s); 1-min load average at the end: "
            f"{load:.1f}")


def step_compilation() -> str:
    """Whether the front layers' steps ran compiled (the renderer warns and runs them
    uncompiled otherwise)."""
    from dmenet.data.syndof import batched

    failed = batched._COMPILE_FAILED
    return (f"The front steps ran UNCOMPILED: {failed[0]}." if failed
            else "The front steps ran compiled.")


def report(oracle, rows, ahead, mp_rows, args) -> str:
    lines = [
        "# SYNDOF renderer benchmark", "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `python bench/bench_syndof.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- machine: {machine_line(args)}", "",
    ]
    if oracle:
        lines += [
            "## Against the official generator (reference mode, Middlebury sample, 497 x 720)",
            "", "PSNR on the interior (14 px border excluded); p99 = 99th percentile error more "
            "than 14 px from depth edges (levels of 255); flat grey = largest deviation of a "
            "128-grey photo (levels); label = largest sigma label difference (px).", "",
            "| case | renderer | layers | PSNR (dB) | p99 (levels) | flat grey | label (px) | "
            "CPU time (s) | official (s, Octave) |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['renderer']} | {r['layers']} | {r['psnr']:.1f} | "
                  f"{r['p99']:.2f} | {r['grey']:.3f} | {r['label']:.3f} | {r['t']:.1f} | "
                  f"{r['official_s']:.0f} |" for r in oracle]
        lines.append("")
    if rows:
        cpu = rows[0]["device"] == "cpu"
        base = "old_ops" in rows[0]
        lines += [
            f"## Training windows ({rows[0]['device']})", "",
            "240 px crops with their margin (crop_margin_px), as the DataModule cuts them: "
            "reference-mode cameras drawn from the whole image, its fill start. Fill calls per "
            "crop: the batch's fills over its crops (a call fills every crop with a layer "
            "there). Rates in crops/s ("
            + ("CPU time, one thread" if cpu else "wall time, synchronised") + "). Ops and syncs "
            "per crop: the batched renderer's dispatched aten ops (uncompiled, as on the CPU) "
            "and host synchronisations; \"as on a GPU\": the same with every front layer's "
            "step and each chunk's behind the focus compiled (`compiled_step_cost`: one kernel "
            "per half-sweep of the fill and 12 around them, two of them the convolutions of "
            "the fill's start, 2 without a fill, each half-sweep reading and writing the "
            "fill's frame once, the step's inputs read once and its outputs written once; "
            "`compiled_back_cost`: 7 kernels, the layers read once, the "
            "cumulative product of their masks written and read), also in MB per crop, with "
            "the fill sweeps' share. GPU "
            "estimates per crop from those: launch-bound (5 us per op, 20 us per sync) and "
            "bandwidth-bound (the bytes at 3 TB/s, no cache reuse)."
            + ("" if cpu else " Kernels per crop: CUDA kernels counted by torch.profiler; "
               "first call: the first batch's wall time, the steps' compilation included. "
               + step_compilation()), ""]
        head = "| source | batch | layers per crop | fill calls per crop | batched | "
        head += "tiled | loop | " if cpu else ""
        head += "ops per crop and layer: uncompiled / as on a GPU | syncs per crop | " \
                "MB per crop as on a GPU (the fill's share) | GPU, launch-bound (ms per crop) | " \
                "GPU, bandwidth-bound (ms per crop) |"
        head += " kernels per crop | first call (s) |" if not cpu else ""
        head += " batched vs tiled: PSNR (dB), max (levels) |" if cpu else ""
        head += (" previous device path: ops per crop and layer, syncs per crop, GPU estimate "
                 "(ms per crop) |") if base else ""
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in rows:
            line = (f"| {r['source']} | {r['batch']} | {r['layers']:.0f} | {r['fills']:.0f} | "
                    f"{r['batched']:.3g} | ")
            if cpu:
                line += f"{r['tiled']:.3g} | {r.get('loop', float('nan')):.3g} | "
            line += (f"{r['ops_layer']:.2f} / {r['gpu_ops_layer']:.2f} | {r['syncs']:.2f} | "
                     f"{r['gpu_bytes'] / 1e6:.0f} ({r['fill_share']:.0%}) | {r['launch_ms']:.2f} | "
                     f"{r['bandwidth_ms']:.2f} |")
            if not cpu:
                line += f" {r['kernels']:.0f} | {r['first_s']:.1f} |"
            if cpu:
                line += f" {r['psnr']:.1f}, {r['max']:.2f} |"
            if base:
                line += (f" {r['old_ops_layer']:.0f}, {r['old_syncs']:.0f}, "
                         f"{r['old_launch_ms']:.0f} |")
            lines.append(line)
        lines.append("")
    if ahead:
        cuda = ahead[0]["device"] == "cuda"
        lines += [
            "## Rendering ahead: per training step of 3 synthetic crops", "",
            "Each call of the batched renderer renders the windows of K training steps (3 K "
            "crops, `--data.render_ahead K`). Every row renders the same 3 K_max windows of its "
            "source (K_max / K calls); the counts and estimates are per step of 3 crops. GPU "
            "estimates as above: launch-bound (5 us per op as on a GPU, 20 us per sync) and "
            "bandwidth-bound (3 TB/s)."
            + (" Measured: wall time per step (synchronised, best of 3)." if cuda else ""), "",
            "| source | K | layers per crop | ops per step: uncompiled / as on a GPU | syncs per "
            "step | GPU, launch-bound (ms per step) | GPU, bandwidth-bound (ms per step) |"
            + (" measured (ms per step) |" if cuda else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if cuda else "")]
        lines += [f"| {r['source']} | {r['k']} | {r['layers']:.0f} | {r['ops']:.0f} / "
                  f"{r['gpu_ops']:.0f} | {r['syncs']:.2f} | {r['launch_ms']:.1f} | "
                  f"{r['bandwidth_ms']:.1f} |" + (f" {r['step_ms']:.1f} |" if cuda else "")
                  for r in ahead]
        lines.append("")
    if mp_rows:
        lines += ["## About 1 MP (reference mode, one camera; CPU time, one thread, s/MP)", "",
                  "| source | size | layers | tiled | batched | loop |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['source']} | {r['size']} | {r['layers']} | {r['tiled']:.3g} | "
                  f"{r['batched']:.3g} | {r['loop']:.3g} |" for r in mp_rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="window batch sizes (default 1 16; --gpu: 3 16 64; --quick: 1 4)")
    parser.add_argument("--baseline", default=None, metavar="COMMIT",
                        help="also count the device path of the renderer at this commit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render-ahead", type=int, nargs="+", default=None, metavar="K",
                        help="section 3's steps per call (default 1 16; --gpu: 1 4 16; --quick: 1 4)")
    parser.add_argument("--parts", nargs="+", default=["oracle", "windows", "ahead", "mp"],
                        choices=["oracle", "windows", "ahead", "mp"],
                        help="the sections to run (--gpu: windows ahead)")
    parser.add_argument("--quick", action="store_true", help="small batches, no loop, no 1 MP")
    parser.add_argument("--gpu", action="store_true",
                        help="only the window and rendering-ahead rows, on --device")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "syndof.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    if args.batches is None:
        args.batches = [3, 16, 64] if args.gpu else [1, 4] if args.quick else [1, 16]
    if args.render_ahead is None:
        args.render_ahead = [1, 4, 16] if args.gpu else [1, 4] if args.quick else [1, 16]
    parts = {"windows", "ahead"} if args.gpu else set(args.parts) - ({"mp"} if args.quick else set())
    baseline = baseline_device_path(args.baseline) if args.baseline else None
    oracle = oracle_rows(args) if "oracle" in parts else []
    rows = window_rows(args, device, baseline) if "windows" in parts else []
    ahead = ahead_rows(args, device) if "ahead" in parts else []
    mp_rows = megapixel_rows(args) if "mp" in parts else []
    text = report(oracle, rows, ahead, mp_rows, args)
    print(text)
    if not args.no_write:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
