"""The monitored validation metric names its set, and a metric no set logs fails at the start."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from dmenet.errors import ConfigError
from dmenet.lightning_model import DMENet
from dmenet.modules import LightBlurEstimator
from tests.helpers.tiny_data import TinyDataModule, TinyEvalSet, cpu_trainer


class _MaskOnlySet(TinyEvalSet):
    """CUHK-like: a binary sharp mask, no dense label."""

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        return {k: item[k] for k in ("image", "sharp_mask", "name", "set")}


class _SyndofAndCuhk(TinyDataModule):
    def val_dataloader(self):
        return [
            self._eval("syndof"),
            DataLoader(_MaskOnlySet(1, self.eval_height, self.eval_width, "cuhk", 1), batch_size=1),
        ]


def _model() -> DMENet:
    return DMENet(
        blur_estimator=LightBlurEstimator(weights=None, aux_heads=False),
        domain_discriminator=False,
        content_loss=False,
        sharpness_calibrator=False,
        log_images_every_n_steps=0,
    )


def _fit(tmp_path, monitor: str, model: DMENet) -> DMENet:
    trainer = cpu_trainer(
        tmp_path,
        max_steps=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=monitor, mode="min")],
    )
    trainer.fit(model, _SyndofAndCuhk(size=64, n_batches=1, eval_height=32, eval_width=32))
    return model


@pytest.mark.parametrize("monitor", ["val/cuhk/mse", "val/mse", "val/rtf/mse"])
def test_a_metric_no_validation_set_logs_fails_before_training(tmp_path, monitor):
    model = _model()
    with pytest.raises(ConfigError, match=rf"monitors '{monitor}'.*val/cuhk/ap.*val/syndof/mse"):
        _fit(tmp_path, monitor, model)
    assert int(model.train_iteration) == 0  # not one batch trained


def test_every_set_logs_under_its_own_name_and_the_monitor_is_found(tmp_path):
    model = _fit(tmp_path, "val/cuhk/ap", _model())
    logged = set(model.trainer.callback_metrics)
    assert {"val/syndof/mse", "val/syndof/ap", "val/cuhk/ap", "val/cuhk/accuracy"} <= logged
    assert "val/cuhk/mse" not in logged and "val/mse" not in logged  # no set-less alias
    assert model.trainer.checkpoint_callback.best_model_path  # the monitor was there
    assert torch.isfinite(model.trainer.callback_metrics["val/cuhk/ap"])
