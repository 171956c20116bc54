"""Lightning callbacks of dmenet.

:class:`ValidationPictures` writes what people look at after a run: for the first images of
each validation set, a PNG panel ``photo | prediction | prediction colour-mapped | label |
label colour-mapped`` (``y`` in ``[0, 1]``, 0 = sharp, white = ``SIGMA_MAX_PX``), every
validation epoch, also sent to the logger (W&B, TensorBoard).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["ValidationPictures"]


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
            panel = defocus_panel(image[0], y[0], label)
        name = str(batch.get("name", [f"{batch_idx:04d}"])[0]).replace("/", "_")
        out_dir = run_dir(trainer) / self.dirname
        out_dir.mkdir(parents=True, exist_ok=True)
        save_image(panel, out_dir / f"epoch{trainer.current_epoch:03d}_{set_name}_{name}.png")
        # the same panel to W&B / TensorBoard (no second file)
        log_panels(trainer.logger, f"val/{set_name}/panel", [panel], trainer.global_step)
        self._written[set_name] = self._written.get(set_name, 0) + 1
