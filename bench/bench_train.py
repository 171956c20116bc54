"""Training-step benchmark: samples/s of one DMENet step (B and BDCS) and the synthesis share.

One training step = on-device SYNDOF synthesis of the synthetic crops (the DataModule's
``on_after_batch_transfer``) + DMENet's ``training_step`` (a D step and a G step). Both are
timed separately inside a real Lightning ``fit``, after warm-up steps, on the same batches.

    python bench/bench_train.py                          # CPU, 240x240, 3 + 3 + 3
    python bench/bench_train.py --device cuda --precision 32-true bf16-mixed
    python bench/bench_train.py --rgbd-source embedded sintel:../shared/data/rgbd_samples/sintel
    python bench/bench_train.py --device cuda --configs BDCS --render-ahead 1 16

With ``--render-ahead K`` each loader batch holds K iterations (``--data.render_ahead``): their
synthetic crops are rendered in one call; every time and FLOP count is per iteration (the
batch's divided by K).

Against the FLOP floor (issue 17): the FLOPs of one ``training_step`` (forward + backward of
every part that runs: B on the 3 or 9 crops, D, C, S), counted by
``torch.utils.flop_counter.FlopCounterMode`` during the first warm-up step, divided by this
machine's 3x3 256-channel conv throughput measured in the same process before and after the
timed steps (``bench_inference.Floor``: default layout and the strict oneDNN form).
``--memory-format channels_last`` runs the same step with the model in channels_last (the layout
change that applies to training; the fused inference ops have no backward).

    python bench/bench_train.py --configs BDCS --memory-format contiguous channels_last

Prints a markdown table; ``--out FILE`` also writes it (with machine, command and date).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import lightning.pytorch as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

from dmenet.data.datamodule import DMENetDataModule
from dmenet.lightning_model import DMENet

CONFIGS = {
    "B": dict(domain_discriminator=False, content_loss=False, sharpness_calibrator=False),
    "BDCS": dict(domain_discriminator=True, content_loss=True, sharpness_calibrator=True),
}


class StepTimer(pl.Callback):
    """Wall time of each training_step (synchronised on CUDA); FLOPs of the first one."""

    def __init__(self, memory_format: str = "contiguous", count_flops: bool = True) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._t0 = self._c0 = 0.0
        self.memory_format = memory_format
        self.count_flops = count_flops
        self.flops = 0
        self._counter: FlopCounterMode | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.memory_format == "channels_last":
            pl_module.to(memory_format=torch.channels_last)

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and self.count_flops:  # a warm-up step: counting slows it
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        self._sync(pl_module)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._t0)
        self.cpu_times.append(time.process_time() - self._c0)
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops()
            self._counter = None


def measure(config: str, device: str, precision: str, crop: int, batch: int, steps: int, warmup: int,
            memory_format: str = "contiguous", rgbd_source: str = "embedded",
            render_ahead: int = 1) -> dict:
    k = render_ahead
    dm = DMENetDataModule(
        rgbd_source=rgbd_source,
        batch_size_synthetic=batch, batch_size_real=batch, batch_size_blur=batch,
        crop_size=crop, short_side_range=[crop + 1, max(crop + 2, 801)],
        samples_per_epoch=batch * k * (steps + warmup), embedded_size=max(256, crop + 16),
        embedded_train_scenes=8, proxy_images=8, val_sets=[], render_ahead=k,
    )
    synthesis_times: list[float] = []
    render = dm.render_synthetic

    def timed_render(raw):
        if raw["image"].is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = render(raw)
        if raw["image"].is_cuda:
            torch.cuda.synchronize()
        synthesis_times.append(time.perf_counter() - t0)
        return out

    dm.render_synthetic = timed_render
    model = DMENet(vgg_weights=None, log_images_every_n_steps=0, **CONFIGS[config])
    timer = StepTimer(memory_format, count_flops=warmup > 0)
    floor = None
    if device == "cpu":
        from bench_inference import Floor

        floor = Floor()
        floor.measure()
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(model, dm)
    if floor is not None:
        floor.measure()
    # per iteration: a timed batch holds k of them
    train = [t / k for t in timer.times[warmup:]]
    synth = [t / k for t in synthesis_times[warmup : warmup + len(train)]]
    step = [a + b for a, b in zip(train, synth)]
    images = batch if config == "B" else 3 * batch
    return {
        "config": config, "device": device, "precision": precision,
        "source": rgbd_source.split(":")[0], "render_ahead": k,
        "step_s": statistics.median(step), "synthesis_s": statistics.median(synth),
        "train_step_s": statistics.median(train), "images": images, "steps": len(step),
        "samples_per_s": images / statistics.median(step),
        "synthesis_share": statistics.median(synth) / statistics.median(step),
        "memory_format": memory_format, "gflop": timer.flops / 1e9 / k,
        "min_train_step_s": min(train), "min_train_step_cpu_s": min(timer.cpu_times[warmup:]) / k,
        "conv_cpu_gflops": floor.cpu_gflops("default") if floor else None,
        "conv_cpu_gflops_strict": floor.cpu_gflops("strict") if floor else None,
        "conv_gflops": floor.gflops("default") if floor else None,
        "conv_gflops_strict": floor.gflops("strict") if floor else None,
        "load_avg": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", nargs="+", default=["32-true"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--crop", type=int, default=240)
    parser.add_argument("--batch", type=int, default=3, help="per stream (paper: 3)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-format", nargs="+", default=["contiguous"],
                        choices=["contiguous", "channels_last"])
    parser.add_argument("--rgbd-source", nargs="+", default=["embedded"],
                        help="RGB-D sources of the synthetic stream (KIND:PATH, as "
                        "--data.rgbd_source), e.g. embedded sintel:../shared/data/rgbd_samples/sintel")
    parser.add_argument("--render-ahead", type=int, nargs="+", default=[1], metavar="K",
                        help="iterations per loader batch (--data.render_ahead)")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = [
        measure(c, args.device, p, args.crop, args.batch, args.steps, args.warmup, f, s, k)
        for s in args.rgbd_source
        for k in args.render_ahead
        for p in args.precision
        for c in args.configs
        for f in args.memory_format
    ]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    lines = [
        f"Training step, {args.crop}x{args.crop} crops, {args.batch}+{args.batch}+{args.batch} per step "
        f"(B alone uses only the {args.batch} synthetic crops). Median of {args.steps} steps after {args.warmup} warm-up "
        "(loader batches; with render ahead K, a batch holds K steps and every figure is per step).",
        f"Machine: {device_name}, {os.cpu_count()} CPU threads, torch {torch.__version__}; "
        f"date {datetime.now(timezone.utc):%Y-%m-%d}; command: `python bench/bench_train.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| source | render ahead | config | device | precision | layout | step (s) | synthesis (s) | "
        "training_step (s) | samples/s | synthesis share | GFLOP / step | floor (s) | "
        "best step x floor | x strict floor | CPU time: x floor | CPU time: x strict floor | "
        "load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["conv_gflops"]:
            floor_s = r["gflop"] / r["conv_gflops"]
            vs = f"{floor_s:.2f} | {r['min_train_step_s'] / floor_s:.2f} | " \
                 f"{r['min_train_step_s'] / (r['gflop'] / r['conv_gflops_strict']):.2f} | " \
                 f"{r['min_train_step_cpu_s'] / (r['gflop'] / r['conv_cpu_gflops']):.2f} | " \
                 f"{r['min_train_step_cpu_s'] / (r['gflop'] / r['conv_cpu_gflops_strict']):.2f}"
        else:
            vs = "- | - | - | - | -"
        lines.append(
            f"| {r['source']} | {r['render_ahead']} | {r['config']} | {r['device']} | {r['precision']} | {r['memory_format']} | "
            f"{r['step_s']:.3f} | {r['synthesis_s']:.3f} | {r['train_step_s']:.3f} | "
            f"{r['samples_per_s']:.2f} | {100 * r['synthesis_share']:.1f}% | {r['gflop']:.0f} | "
            f"{vs} | {r['load_avg']:.1f} |"
        )
    lines += ["", "The floor: the step's FLOPs (FlopCounterMode, forward + backward) / the 3x3 "
              "256-channel conv throughput measured in the same process (default layout; strict: "
              "oneDNN channels_last, prepacked). 'best step' is the fastest timed training_step; "
              "'CPU time' divides the step's process CPU time by the conv's (robust to other "
              "jobs' load on a shared machine)."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
