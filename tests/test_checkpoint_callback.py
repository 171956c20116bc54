"""dmenet.callbacks.ModelCheckpoint: last.ckpt is the newest state, never a second copy."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from dmenet.callbacks import ModelCheckpoint

# the monitored value per epoch: improves, gets worse twice, improves again
SCORES = [3.0, 1.0, 2.0, 2.5, 0.5]


class ScoredModel(BoringModel):
    def validation_step(self, batch, batch_idx):
        self.log("score", torch.tensor(SCORES[self.current_epoch]))


def test_last_checkpoint_is_the_newest_state_and_links_when_it_can(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="min", save_top_k=1)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=len(SCORES), limit_train_batches=2,
                         limit_val_batches=1, callbacks=[ckpt], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(ScoredModel())
    last = tmp_path / "last.ckpt"
    # the final state: epoch 4 improved, so last.ckpt links to that best file (one copy)
    assert last.is_symlink()
    assert os.path.realpath(last) == os.path.realpath(ckpt.best_model_path)
    assert torch.load(last, weights_only=False)["global_step"] == 2 * len(SCORES)
    files = sorted(p.name for p in tmp_path.glob("*.ckpt") if not p.is_symlink())
    assert len(files) == 1  # only the best; last is a link to it


def test_last_checkpoint_is_its_own_file_when_the_metric_did_not_improve(tmp_path):
    scores = SCORES[:4]  # ends on two epochs that did not improve

    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("score", torch.tensor(scores[self.current_epoch]))

    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="min", save_top_k=1)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=len(scores), limit_train_batches=2,
                         limit_val_batches=1, callbacks=[ckpt], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(Model())
    last = tmp_path / "last.ckpt"
    assert not last.is_symlink()
    # last = the newest state (epoch 3, 8 steps); best = epoch 1 (4 steps), left intact
    assert torch.load(last, weights_only=False)["global_step"] == 2 * len(scores)
    assert torch.load(ckpt.best_model_path, weights_only=False)["global_step"] == 4
