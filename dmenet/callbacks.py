"""Lightning callbacks of dmenet.

:class:`ValidationPictures` writes what people look at after a run: for the first images of
each validation set, a titled PNG panel ``photo | label | prediction | error`` (sigma in px on
one colour scale, with its colour bar; :func:`dmenet.visualize.defocus_panel`), every
validation epoch, also sent to the logger (W&B, TensorBoard).

:class:`TrainingSummary` ends ``dmenet fit`` with what was trained: iterations done of planned,
time, the held-out metrics in px, where the pictures and checkpoints are; and says loudly when
a time cap (``--trainer.max_time``) cut the plan short.

:class:`ModelCheckpoint` is Lightning's, with ``last.ckpt`` always the NEWEST training state
(what ``--ckpt_path`` resumes) and never a second copy of a file saved at the same step.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["DefocusMapWriter", "ModelCheckpoint", "TrainingSummary", "ValidationPictures"]


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint whose ``last.ckpt`` is the newest state, stored once.

    Lightning's ``save_last="link"`` links ``last.ckpt`` to the last *top-k* checkpoint, which
    is an older state whenever the monitored metric did not improve: resuming from it would
    silently drop the epochs since. Here ``last.ckpt`` is a link to the checkpoint written at
    the same optimiser step when there is one (no second copy of the same file), and a file
    of its own otherwise. Same arguments as Lightning's class; ``save_last`` defaults to True.
    """

    def __init__(self, *args: Any, save_last: bool | str | None = True, **kwargs: Any) -> None:
        # "link" internally: Lightning 2.6 only calls the last-checkpoint step at a save of its
        # own when save_last is "link"; with True, last.ckpt is written only when a top-k file is
        super().__init__(*args, save_last="link" if save_last else save_last, **kwargs)
        self._newest: tuple[int, str] | None = None  # (global step, path) of the newest file

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if os.path.islink(filepath):  # never write through a link into the file it names
            os.remove(filepath)
        super()._save_checkpoint(trainer, filepath)
        self._newest = (trainer.global_step, filepath)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if not self.save_last:
            return
        newest = self._newest
        same_step = (newest is not None and newest[0] == trainer.global_step
                     and os.path.isfile(newest[1]) and self.save_top_k != 0)
        if same_step:  # link to the file of this very step
            self._last_checkpoint_saved = newest[1]
            super()._save_last_checkpoint(trainer, monitor_candidates)
            return
        self.save_last = True  # a file of its own: nothing else holds this state
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self.save_last = "link"


class ValidationPictures(pl.Callback):
    """Write panels (:func:`dmenet.visualize.defocus_panel`) of held-out images at each validation.

    Args:
        num_images: images per validation set (the first ones, so epochs are comparable).
        every_n_epochs: write on every n-th validation epoch.
        dirname: sub-folder of the logger's run folder (``trainer.log_dir``).

    Files: ``<log_dir>/<dirname>/epoch<NNN>_<set>_<name>.png``. Images without a dense label
    show the predicted map next to the photo only.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1,
                 dirname: str = "val_images") -> None:
        super().__init__()
        self.num_images = int(num_images)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.dirname = dirname
        self._written: dict[str, int] = {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        self._written = {}

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        if not isinstance(batch, dict) or "image" not in batch:
            return
        set_name = str(batch.get("set", ["val"])[0])
        if self._written.get(set_name, 0) >= self.num_images:
            return
        from torchvision.utils import save_image

        from dmenet.runs import run_dir
        from dmenet.visualize import defocus_panel, log_panels

        with torch.no_grad():
            image = batch["image"][:1].float()
            y = pl_module(image).y[:1]
            label = batch["label"][0] if "label" in batch else None
            # the prediction is in the model's label space, evaluation labels in ours
            space = getattr(pl_module, "hparams", {}).get("label_space", "ours")
            panel = defocus_panel(image[0], y[0], label, prediction_space=space)
        name = str(batch.get("name", [f"{batch_idx:04d}"])[0]).replace("/", "_")
        out_dir = run_dir(trainer) / self.dirname
        out_dir.mkdir(parents=True, exist_ok=True)
        save_image(panel, out_dir / f"epoch{trainer.current_epoch:03d}_{set_name}_{name}.png")
        # the same panel to W&B / TensorBoard (no second file)
        log_panels(trainer.logger, f"val/{set_name}/panel", [panel], trainer.global_step)
        self._written[set_name] = self._written.get(set_name, 0) + 1


SUMMARY_FILE = "summary.json"
TIME_CAP_FILE = "TIME_CAP_REACHED.txt"

# held-out metrics the summary prints, in this order, with their units
_SUMMARY_METRICS = (("mae_px", "MAE", "px"), ("mse_px", "MSE", "px^2"),
                    ("accuracy", "accuracy", ""), ("ap", "AP", ""))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class TrainingSummary(pl.Callback):
    """The last lines of ``dmenet fit``: what was trained, and ``RUN/summary.json``.

    Printed (rank 0) and written to the run's folder (:func:`dmenet.runs.run_dir`):

    * training iterations done of those planned (``max_epochs`` x batches per epoch x the
      DataModule's ``render_ahead``, the iterations per batch),
      and what stopped training: ``completed``, ``max_steps``, ``max_time`` or ``stopped early``;
    * the time from the start of training to its end (validation included);
    * the last validation's metrics of every held-out set, in px (``mae_px``, ``mse_px``) and
      blur detection (``accuracy``, ``ap``) where the set has masks;
    * where the pictures (``val_images/``, ``train_images/``) and checkpoints are.

    When the time cap (``Trainer(max_time=...)``) ended training before the plan, a
    ``WARNING`` line says so, ``summary.json`` has ``"stopped_by": "max_time"`` and the run folder
    gets ``TIME_CAP_REACHED.txt``: a model trained for a fraction of its plan must not pass for
    the full one.

    Args:
        prefix: how the printed lines start.
    """

    def __init__(self, prefix: str = "dmenet fit") -> None:
        super().__init__()
        self.prefix = prefix
        self._start: float | None = None
        self.summary: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    # ------------------------------------------------------------------ what happened
    @staticmethod
    def iterations_per_batch(trainer: pl.Trainer) -> int:
        """Training iterations per loader batch (the DataModule's ``render_ahead``; 1 without)."""
        return int(getattr(trainer.datamodule, "render_ahead", 1))

    @classmethod
    def planned_iterations(cls, trainer: pl.Trainer) -> int | None:
        per_epoch = trainer.num_training_batches
        if trainer.max_epochs is None or trainer.max_epochs < 0 or not math.isfinite(per_epoch):
            return None
        return int(per_epoch) * int(trainer.max_epochs) * cls.iterations_per_batch(trainer)

    @staticmethod
    def _time_cap_reached(trainer: pl.Trainer) -> bool:
        from lightning.pytorch.callbacks import Timer

        for callback in trainer.callbacks:
            remaining = callback.time_remaining() if isinstance(callback, Timer) else None
            if remaining is not None:  # a Timer with a duration (max_time)
                return remaining <= 0
        return False

    def _stopped_by(self, trainer: pl.Trainer, done: int, planned: int | None) -> str:
        if planned is not None and done >= planned:
            return "completed"
        if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
            return "max_steps"
        if self._time_cap_reached(trainer):
            return "max_time"
        return "stopped early"

    @staticmethod
    def held_out_metrics(trainer: pl.Trainer) -> dict[str, dict[str, float]]:
        """``{set: {metric: value}}`` of the last validation (``val/<set>/<metric>``)."""
        out: dict[str, dict[str, float]] = {}
        for key, value in trainer.callback_metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "val":
                out.setdefault(parts[1], {})[parts[2]] = float(value)
        return out

    def build(self, trainer: pl.Trainer) -> dict[str, Any]:
        from dmenet.runs import run_dir

        done = (int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)
                * self.iterations_per_batch(trainer))
        planned = self.planned_iterations(trainer)
        folder = run_dir(trainer)
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") or None
        last = getattr(checkpoint, "last_model_path", "") or None
        pictures = {name: str(folder / name) for name in ("val_images", "train_images")
                    if (folder / name).is_dir()}
        return {
            "iterations_done": done,
            "iterations_planned": planned,
            "batches_per_epoch": None if not math.isfinite(trainer.num_training_batches)
            else int(trainer.num_training_batches),
            "epochs_done": int(trainer.current_epoch),
            "optimizer_steps": int(trainer.global_step),
            "stopped_by": self._stopped_by(trainer, done, planned),
            "max_time": _max_time_text(trainer),
            "seconds": round(time.monotonic() - self._start, 1) if self._start else None,
            "held_out": self.held_out_metrics(trainer),
            "units": {"mae_px": "px", "mse_px": "px^2", "accuracy": "0..1", "ap": "0..1"},
            "pictures": pictures,
            "best_checkpoint": best,
            "last_checkpoint": last,
            "run_dir": str(folder),
        }

    # ------------------------------------------------------------------ reporting
    def lines(self, summary: dict[str, Any]) -> list[str]:
        p = self.prefix
        planned = summary["iterations_planned"]
        of = f" of {planned} planned" if planned is not None else ""
        seconds = summary["seconds"]
        took = f" in {_duration(seconds)}" if seconds is not None else ""
        out = []
        if summary["stopped_by"] == "max_time":
            out.append(
                f"{p}: WARNING: the time cap (max_time {summary['max_time']}) stopped training "
                f"after {summary['iterations_done']}{of} iterations: this model is under-trained. "
                "Train on a faster or less busy machine, or raise --trainer.max_time."
            )
        out.append(f"{p}: trained {summary['iterations_done']}{of} iterations "
                   f"({summary['optimizer_steps']} optimiser steps){took} [{summary['stopped_by']}]")
        for set_name, metrics in summary["held_out"].items():
            cells = [f"{title} {metrics[key]:.3f}{(' ' + unit) if unit else ''}"
                     for key, title, unit in _SUMMARY_METRICS if key in metrics]
            if cells:
                out.append(f"{p}: held-out {set_name} (last validation): " + ", ".join(cells))
        for name, folder in summary["pictures"].items():
            what = "photo | label | prediction | error panels" if name == "val_images" else "training crops"
            out.append(f"{p}: pictures ({what}): {folder}/")
        if summary["best_checkpoint"]:
            out.append(f"{p}: best checkpoint: {summary['best_checkpoint']}")
        if summary["last_checkpoint"]:
            out.append(f"{p}: last checkpoint: {summary['last_checkpoint']}")
        out.append(f"{p}: summary: {Path(summary['run_dir']) / SUMMARY_FILE}")
        return out

    def _report(self, trainer: pl.Trainer, extra: dict[str, Any] | None = None) -> None:
        if self._start is None:
            return
        summary = {**self.build(trainer), **(extra or {})}
        self.summary = summary
        if not trainer.is_global_zero:
            return
        folder = Path(summary["run_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        lines = self.lines(summary)
        if summary["stopped_by"] == "max_time":
            (folder / TIME_CAP_FILE).write_text(lines[0] + "\n")
        print("\n".join(lines), flush=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._report(trainer, {"stopped_by": f"interrupted ({type(exception).__name__})"})
        self._start = None


def _max_time_text(trainer: pl.Trainer) -> str | None:
    from lightning.pytorch.callbacks import Timer

    for callback in trainer.callbacks:
        remaining = callback.time_remaining() if isinstance(callback, Timer) else None
        if remaining is not None:  # its duration, from public API: elapsed + remaining
            total = int(round(callback.time_elapsed() + remaining))
            days, rest = divmod(total, 86400)
            return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return None


class DefocusMapWriter(BasePredictionWriter):
    """Lightning callback for ``dmenet predict``: writes each photo's outputs as they come.

    It reads ``predict_step``'s ``{"sigma_px": (N, 1, H, W), "name": [str], ...}`` (sigma in
    pixels, already converted from the model's label space) and writes
    :func:`dmenet.inference.writer.write_defocus_outputs` per photo.

    Args:
        output_dir: the output folder.
        overwrite: replace existing outputs; otherwise an existing output stops the run.
    """

    def __init__(self, output_dir: str, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.written: list[Path] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        from dmenet.inference.writer import write_defocus_outputs

        if prediction is None:
            return
        sigma = prediction.get("sigma_px")
        if sigma is None:
            raise KeyError("predict_step must return 'sigma_px' (N, 1, H, W) for DefocusMapWriter")
        names = prediction.get("name") or batch.get("name")
        if isinstance(names, str):
            names = [names]
        label_space = getattr(getattr(pl_module, "hparams", {}), "get", lambda *_: None)("label_space")
        paths = batch.get("path") if isinstance(batch, dict) else None
        for i, name in enumerate(names):
            meta = {"label_space": label_space, "produced_by": "dmenet predict"}
            if paths is not None:
                meta["source"] = str(paths[i])
            out = write_defocus_outputs(self.output_dir, str(name), sigma[i], self.overwrite, meta)
            self.written.append(out["npy"])
