"""The README's main job, ``dmenet fit --config configs/quickstart.yaml``, for a few steps.

The full run is measured by hand; here the same config runs through the real command (in this
process, with Python's default warning filters and the console captured: the warnings and
lines a user would see) with overrides for two iterations and tiny embedded data, and must
write what the full run writes: metrics with L_B and validation metrics in y and px, a
checkpoint (last.ckpt a link, not a copy), titled panels, the summary lines and summary.json;
then ``dmenet test`` on that run's checkpoint writes its report inside the run and opens no
new version. (``tests/test_cli.py`` starts the real ``dmenet`` process.)
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path

import cv2
import lightning as L  # imported at collection: its log handler must not keep a test's capture
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from dmenet.callbacks import TIME_CAP_FILE, TrainingSummary
from dmenet.cli import main

TINY_DATA = [
    "--data.crop_size", "32",
    "--data.short_side_range", "[33, 48]",
    "--data.embedded_size", "48",
    "--data.embedded_train_scenes", "2",
    "--data.embedded_eval_scenes", "1",
    "--data.proxy_images", "2",
    "--data.samples_per_epoch", "6",
]

# messages a user cannot act on: none may reach the console of a dmenet command
UNACTIONABLE = ("LightningCLI's args parameter", "litlogger", "module(s) in eval mode", "LeafSpec")


def _dmenet(args: list[str], capfd) -> str:
    """Run ``dmenet ARGS`` here as a user's process would; its console output (stdout).

    Fails on a warning that Python's default filters would show, or on a console line a user
    cannot act on (:data:`UNACTIONABLE`)."""
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as shown:
        # Python's defaults (no -W): DeprecationWarning and the like hidden, the rest shown
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        code = main(args)
    out, err = capfd.readouterr()
    assert code == 0, f"{args}:\n{out[-3000:]}\n{err[-5000:]}"
    assert not shown, [f"{w.category.__name__}: {w.message}" for w in shown]
    for text in UNACTIONABLE:
        assert text not in out + err, (text, err[-3000:])
    assert "Warning" not in err, err[-3000:]
    return out


@pytest.mark.slow
def test_quickstart_config_trains_validates_and_writes(repo_root, tmp_path, monkeypatch, capfd):
    config = str(repo_root / "configs" / "quickstart.yaml")
    monkeypatch.chdir(tmp_path)
    stdout = _dmenet([
        "fit", "--config", config,
        # manual optimisation: 2 optimizer steps per batch -> 2 batches of the 2 x 6 planned
        "--trainer.max_steps", "4",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--model.log_images_every_n_steps", "1",
        "--trainer.log_every_n_steps", "1",
        *TINY_DATA,
    ], capfd)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"train/L_B", "train/L_D", "train/L_C", "train/L_S", "train/L_adv"} <= columns
    assert {"val/embedded/mse", "val/embedded/mae_px", "val/proxy/mse_px", "val/proxy/accuracy"} <= columns
    # metrics.csv's step column counts batches; the two counters say what it means
    trained = [r for r in rows if r.get("progress/iteration")]
    assert trained and all(int(r["step"]) == float(r["progress/iteration"]) - 1 for r in trained)
    assert all(float(r["progress/optimizer_steps"]) == 2 * float(r["progress/iteration"])
               for r in trained)  # D on: two optimiser steps per batch
    values = [float(r["val/embedded/mae_px"]) for r in rows if r.get("val/embedded/mae_px")]
    y_values = [float(r["val/embedded/mae"]) for r in rows if r.get("val/embedded/mae")]
    assert values and values[0] == pytest.approx(7.0 * y_values[0], rel=1e-5)  # px = 7 y
    # one checkpoint file; last.ckpt links to it
    checkpoints = run / "checkpoints"
    files = sorted(p.name for p in checkpoints.iterdir() if not p.is_symlink())
    assert len(files) == 1 and (checkpoints / "last.ckpt").is_symlink()
    assert (checkpoints / "last.ckpt").resolve() == (checkpoints / files[0]).resolve()
    assert len(list((run / "train_images").glob("*.png"))) == 2
    # held-out panels: one per validation set, titled tiles at least 256 px tall
    strips = sorted((run / "val_images").glob("*.png"))
    assert any("_embedded_" in p.name for p in strips) and any("_proxy_" in p.name for p in strips)
    assert all(cv2.imread(str(p)).shape[0] >= 256 for p in strips)
    # the last lines say what was trained, with the held-out metrics in px
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations_done"] == 2 and summary["iterations_planned"] == 12
    assert summary["stopped_by"] == "max_steps"
    assert set(summary["held_out"]) == {"embedded", "proxy"}
    last_lines = stdout.strip().splitlines()[-8:]
    text = "\n".join(last_lines)
    assert "trained 2 of 12 planned iterations" in text, text
    assert "held-out embedded (last validation): MAE" in text and " px" in text
    assert f"{(run / 'val_images').relative_to(tmp_path)}/" in text  # as the user gave it
    assert not (run / "TIME_CAP_REACHED.txt").exists()

    # test on the run's own checkpoint: the report lands inside the run, no new version
    assert main(["test", "--config", config, "--ckpt_path", str(checkpoints / "last.ckpt"),
                 "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
                 *TINY_DATA]) == 0
    report = json.loads((run / "results" / "last" / "embedded" / "metrics.json").read_text())
    assert {"mse", "mae_px"} <= set(report["metrics"]) and report["units"]["mae_px"].endswith("px")
    assert sorted(p.name for p in (tmp_path / "runs" / "quickstart").iterdir()) == ["version_0"]


def test_time_cap_is_reported_loudly(tmp_path, capsys):
    """A run cut short by max_time says so on the console and in its folder."""
    class Slow(BoringModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.4)
            return super().training_step(batch, batch_idx)

    trainer = L.Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0,
                        max_time="00:00:00:01", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[TrainingSummary()])
    trainer.fit(Slow())
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "max_time" and summary["iterations_planned"] == 12
    assert 1 <= summary["iterations_done"] < 12
    warning = (tmp_path / TIME_CAP_FILE).read_text()
    assert "WARNING: the time cap (max_time 00:00:00:01) stopped training" in warning
    assert warning.strip() in out and "under-trained" in out


def _print_config(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _assert_within(given, printed, where: str = "config") -> None:
    """Every value ``given`` sets is in ``printed`` unchanged (printed adds the defaults)."""
    if isinstance(given, dict):
        assert isinstance(printed, dict), where
        for key, value in given.items():
            assert key in printed, f"{where}.{key} is missing"
            _assert_within(value, printed[key], f"{where}.{key}")
    elif isinstance(given, list):
        assert isinstance(printed, list) and len(printed) == len(given), where
        for i, (a, b) in enumerate(zip(given, printed)):
            _assert_within(a, b, f"{where}[{i}]")
    else:
        assert printed == given, f"{where}: printed {printed!r}, the file says {given!r}"


@pytest.mark.parametrize("config", ["quickstart.yaml", "dmenet.yaml"])
def test_print_config_shows_what_the_config_file_sets(repo_root, config, capsys, tmp_path):
    """``--print_config`` shows what would run: every value of the file as it says (the parts
    and callbacks by their full class paths), and it is itself a complete config that prints
    the same when read back."""
    import yaml

    path = repo_root / "configs" / config
    printed = _print_config(["--config", str(path)], capsys)
    _assert_within(yaml.safe_load(path.read_text()), yaml.safe_load(printed))
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert _print_config(["--config", str(again)], capsys) == printed


def test_quickstart_is_budgeted_by_iterations(repo_root):
    """The plan is a number of iterations; max_time is only a generous safety net."""
    import yaml

    config = yaml.safe_load((repo_root / "configs" / "quickstart.yaml").read_text())
    trainer, data = config["trainer"], config["data"]
    iterations = trainer["max_epochs"] * data["samples_per_epoch"] // data["batch_size_synthetic"]
    assert iterations >= 100 and trainer.get("max_steps", -1) == -1
    days, hours, minutes, seconds = (int(x) for x in trainer["max_time"].split(":"))
    assert (days * 24 + hours) * 60 + minutes >= 20  # far beyond the planned run


def test_bad_data_root_is_one_clear_line(repo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no_such_cuhk"
    code = main([
        "fit", "--config", str(repo_root / "configs" / "quickstart.yaml"),
        "--data.cuhk_root", str(missing), "--trainer.enable_progress_bar", "false", *TINY_DATA,
    ])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{missing}: the CUHK root does not exist" in err
    assert "Traceback" not in err
    assert not Path(tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints").exists()
