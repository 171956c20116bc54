"""The README's main job, ``dmenet fit --config configs/quickstart.yaml``, for a few steps.

The full run (about 10 minutes) is measured by hand; here the same config runs through the real
CLI in-process with overrides for two iterations and tiny embedded data, and must write what the
full run writes: metrics with L_B and validation metrics, a checkpoint and prediction PNGs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dmenet.cli import main

TINY_DATA = [
    "--data.embedded_size", "48",
    "--data.embedded_train_scenes", "2",
    "--data.embedded_eval_scenes", "1",
    "--data.proxy_images", "2",
    "--data.samples_per_epoch", "4",
]


@pytest.mark.slow
def test_quickstart_config_trains_validates_and_writes(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(repo_root / "configs" / "quickstart.yaml")
    code = main([
        "fit", "--config", config,
        # manual optimisation: 2 optimizer steps per batch -> 2 batches
        "--trainer.max_steps", "4",
        "--trainer.limit_val_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--model.log_images_every_n_steps", "1",
        "--trainer.log_every_n_steps", "1",
        *TINY_DATA,
    ])
    assert code == 0
    run = tmp_path / "runs" / "quickstart" / "version_0"
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"train/L_B", "train/L_D", "train/L_C", "train/L_S", "train/L_adv"} <= columns
    assert {"val/embedded/mse", "val/proxy/mse", "val/proxy/accuracy"} <= columns
    values = [float(r["val/embedded/mse"]) for r in rows if r.get("val/embedded/mse")]
    assert values and all(v == v for v in values)  # logged and not NaN
    assert list((run / "checkpoints").glob("*.ckpt"))
    pictures = list((run / "train_images").glob("*.png"))
    assert len(pictures) == 2
    # held-out strips: photo | label | prediction, one per validation set (limit 2 batches)
    strips = sorted(p.name for p in (run / "val_images").glob("*.png"))
    assert any("_embedded_" in n for n in strips) and any("_proxy_" in n for n in strips)


@pytest.mark.parametrize("config", ["quickstart.yaml", "dmenet.yaml"])
def test_configs_parse(repo_root, config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(repo_root / "configs" / config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "DMENetDataModule" in printed or "crop_size" in printed


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
