"""dmenet.callbacks.ModelCheckpoint: last.ckpt is the newest state, never a second copy.

Lightning 2.6's own ``save_last=True`` writes last.ckpt only when a top-k file is written (so
it is the BEST state, not the newest), and ``save_last="link"`` links it to the last top-k
file: either way a resume from last.ckpt silently drops the epochs after the best one.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from dmenet.callbacks import ModelCheckpoint


def _fit(tmp_path, scores: list[float]) -> ModelCheckpoint:
    """Train a BoringModel 2 steps per epoch whose monitored ``score`` per epoch is given."""

    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("score", torch.tensor(scores[self.current_epoch]))

    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="min", save_top_k=1)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=len(scores), limit_train_batches=2,
                         limit_val_batches=1, callbacks=[ckpt], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(Model())
    return ckpt


def _step(path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


def test_last_checkpoint_links_to_the_file_of_its_step(tmp_path):
    ckpt = _fit(tmp_path, [3.0, 1.0, 2.0, 2.5, 0.5])  # the last epoch is the best
    last = tmp_path / "last.ckpt"
    assert last.is_symlink()
    assert os.path.realpath(last) == os.path.realpath(ckpt.best_model_path)
    assert _step(last) == 10
    assert len([p for p in tmp_path.glob("*.ckpt") if not p.is_symlink()]) == 1  # one copy


def test_last_checkpoint_is_the_newest_state_when_the_metric_did_not_improve(tmp_path):
    ckpt = _fit(tmp_path, [3.0, 1.0, 2.0, 2.5])  # ends on two epochs that did not improve
    last = tmp_path / "last.ckpt"
    assert not last.is_symlink()
    assert _step(last) == 8  # the newest state, what a resume must continue from
    assert _step(ckpt.best_model_path) == 4  # the best file is left intact
