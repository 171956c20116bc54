"""Lightning callbacks of dmenet.

:class:`ValidationPictures` writes what people look at after a run: for the first images of
each validation set, a PNG strip ``photo | label | predicted defocus map`` (grey, ``y`` in
``[0, 1]``, 0 = sharp, white = ``SIGMA_MAX_PX``), every validation epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["ValidationPictures"]


class ValidationPictures(pl.Callback):
    """Write ``photo | label | prediction`` PNGs of held-out images at each validation.

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

        with torch.no_grad():
            image = batch["image"][:1].float().clamp(0, 1)
            y = pl_module(image).y[:1].float().clamp(0, 1)
            panels = [image]
            if "label" in batch:
                panels.append(batch["label"][:1].float().clamp(0, 1).repeat(1, 3, 1, 1))
            panels.append(y.repeat(1, 3, 1, 1))
            strip = torch.cat([p.cpu() for p in panels], dim=-1)
        name = str(batch.get("name", [f"{batch_idx:04d}"])[0]).replace("/", "_")
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        out_dir.mkdir(parents=True, exist_ok=True)
        save_image(strip, out_dir / f"epoch{trainer.current_epoch:03d}_{set_name}_{name}.png")
        self._written[set_name] = self._written.get(set_name, 0) + 1
