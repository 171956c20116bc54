"""Experiment tracking and scale-out, end to end through the real `dmenet fit` command.

* an offline W&B run of the quickstart holds the losses, the validation metrics, the
  learning rates, image panels and the resolved config; two runs never overwrite each other's
  saved config (in this process, as a notebook would run them: each command ends its run);
* two-process DDP on CPU (gloo), asked for as ``--trainer.strategy ddp``, trains a few steps
  and logs the metrics once (a subprocess: DDP starts its second rank by running the command
  line of the process again).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmenet.cli import main
from tests.helpers.wandb_offline import read_run

REPO = Path(__file__).resolve().parents[1]

# the quickstart, shrunk to a few steps on tiny crops
TINY = [
    "--config", str(REPO / "configs/quickstart.yaml"),
    "--trainer.max_epochs", "1",
    "--trainer.max_time", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.log_every_n_steps", "1",
    "--data.samples_per_epoch", "4",
    "--data.batch_size_synthetic", "2",
    "--data.batch_size_real", "2",
    "--data.batch_size_blur", "2",
    "--data.crop_size", "32",
    "--data.short_side_range", "[33, 48]",
    "--data.embedded_size", "48",
    "--data.embedded_train_scenes", "2",
    "--data.embedded_eval_scenes", "1",
    "--data.proxy_images", "2",
    "--model.log_images_every_n_steps", "1",
]


def _run(args: list[str], cwd: Path, env_extra: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "dmenet", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"dmenet {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _wait_for_wandb_files() -> None:
    """The command finished its run; W&B's service process may still be writing the run's
    files (as it does when a process exits): shut it down, which waits for them."""
    import wandb

    wandb.teardown()


@pytest.mark.slow
def test_offline_wandb_run_holds_losses_metrics_images_and_config(tmp_path, monkeypatch):
    # offline W&B writes files only; a dead base URL makes sure nothing could go out
    env = {"WANDB_MODE": "offline", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_DIR": str(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--config", str(REPO / "configs/logging/wandb.yaml"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path / "root"),
            "--model.results_dir", str(tmp_path / "results"),
            "--trainer.enable_progress_bar", "false",
            # the light B (C, D and S as configured): what W&B records does not depend on B
            "--model.blur_estimator", "light_resnet18",
            "--model.blur_estimator.init_args.weights", "null"]
    assert main(["fit", *args]) == 0
    _wait_for_wandb_files()
    runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "runs").rglob("*"))[:20]
    fit_run = runs[0]
    logged = read_run(next(fit_run.glob("run-*.wandb")))
    for key in ("train/L_B", "train/L_aux", "train/L_C", "train/L_S", "train/L_adv",
                "train/L_D", "val/embedded/mse", "val/proxy/ap"):
        assert key in logged["history"], (key, sorted(logged["history"]))
    assert any(k.startswith("lr-") for k in logged["history"]), sorted(logged["history"])
    assert "cli" in logged["config"] and "lambda_adv" in logged["config"]
    # image panels: W&B media of training and validation, and our PNGs in the run folder
    files = fit_run / "files"
    assert list((files / "media" / "images" / "train").rglob("*.png"))
    assert list((files / "media" / "images" / "val").rglob("*.png"))
    assert list((files / "val_images").glob("*.png")) and list((files / "train_images").glob("*.png"))
    assert "lambda_adv" in (files / "config.yaml").read_text()
    # a second run in the same folder (validating the first's checkpoint) must not clash
    checkpoint = next((tmp_path / "runs").rglob("checkpoints/last.ckpt"))
    assert main(["validate", *args, "--ckpt_path", str(checkpoint)]) == 0
    _wait_for_wandb_files()
    runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and fit_run in runs
    val_run = next(r for r in runs if r != fit_run)
    logged = read_run(next(val_run.glob("run-*.wandb")))
    assert "val/embedded/mse" in logged["history"] and "train/L_B" not in logged["history"]
    assert list((val_run / "files" / "val_images").glob("*.png"))
    assert "lambda_adv" in (val_run / "files" / "config.yaml").read_text()
    assert not (tmp_path / "runs" / "val_images").exists()  # nothing shared between runs


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_process_ddp_on_cpu_logs_metrics_once(tmp_path):
    args = [*TINY, "--config", str(REPO / "configs/logging/csv.yaml"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path / "root"),
            "--model.results_dir", str(tmp_path / "results"),
            "--config", str(REPO / "configs/scale/ddp.yaml"),
            # what a Lightning user types: dmenet selects the unused-parameter variant itself
            "--trainer.strategy", "ddp",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            # SyncBatchNorm needs GPUs: torch refuses it on CPU
            "--trainer.sync_batchnorm", "false",
            # the light B (with D and S, which DDP must find unused in each pass) keeps the two
            # ranks' memory down: with the VGG19 B and C they were the suite's memory peak
            "--model.blur_estimator", "light_resnet18",
            "--model.blur_estimator.init_args.weights", "null", "--model.content_loss", "false"]
    proc = _run(["fit", *args], tmp_path, {"WANDB_MODE": "disabled"}, timeout=500)
    metrics_files = list((tmp_path / "runs" / "csv").rglob("metrics.csv"))
    assert len(metrics_files) == 1, metrics_files  # rank 0 alone writes
    rows = list(csv.DictReader(metrics_files[0].open()))
    val_rows = [r for r in rows if r.get("val/embedded/mse")]
    assert len(val_rows) == 1, val_rows  # one validation epoch -> logged once
    assert any(r.get("train/L_B") for r in rows)
    # both ranks ran: Lightning reports the second process joining the group
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    # said once (rank 0), and DDP found no fault with the unused parameters
    assert proc.stderr.count("--trainer.strategy ddp -> ddp_find_unused_parameters_true") == 1
