"""A tiny in-memory DataModule producing random tensors of the batch contracts in
docs/ARCHITECTURE.md (training: "synthetic" / "real" / "blur" streams; evaluation batches with
"image", "label", "sharp_mask", "name", "set"). Deterministic: sample i depends only on (seed, i).
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


def _smooth_map(gen: torch.Generator, size: int) -> torch.Tensor:
    """A smooth (1, size, size) map in [0, 1]: upsampled coarse noise (looks like a defocus map)."""
    coarse = torch.rand(1, 1, 4, 4, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]


class TinyTrainSet(Dataset):
    def __init__(
        self, length: int, size: int, streams: tuple[str, ...], seed: int, sleep_s: float = 0.0
    ) -> None:
        self.length, self.size, self.streams, self.seed, self.sleep_s = (
            length,
            size,
            streams,
            seed,
            sleep_s,
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if self.sleep_s:
            time.sleep(self.sleep_s)  # slow batches: lets a test signal a run mid-epoch
        gen = torch.Generator().manual_seed(self.seed * 100_003 + index)
        s = self.size
        item: dict[str, dict[str, torch.Tensor]] = {}
        if "synthetic" in self.streams:
            label = _smooth_map(gen, s)
            item["synthetic"] = {
                "image": torch.rand(3, s, s, generator=gen),
                "label": label,
                "binary": (label > 1 / 7).float(),
            }
        if "real" in self.streams:
            item["real"] = {"image": torch.rand(3, s, s, generator=gen)}
        if "blur" in self.streams:
            item["blur"] = {
                "image": torch.rand(3, s, s, generator=gen),
                "sharp_mask": (_smooth_map(gen, s) > 0.5).float(),
            }
        return item


class TinyEvalSet(Dataset):
    def __init__(self, length: int, height: int, width: int, set_name: str, seed: int) -> None:
        self.length, self.height, self.width, self.set_name, self.seed = (
            length,
            height,
            width,
            set_name,
            seed,
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(self.seed * 7919 + index)
        label = F.interpolate(
            torch.rand(1, 1, 3, 3, generator=gen),
            size=(self.height, self.width),
            mode="bilinear",
            align_corners=False,
        )[0]
        return {
            "image": torch.rand(3, self.height, self.width, generator=gen),
            "label": label,
            "sharp_mask": (label < 0.3).float(),
            "sigma_px": label * 7.0,
            "name": f"{self.set_name}_{index:03d}",
            "set": self.set_name,
        }


class TinyDataModule(L.LightningDataModule):
    """Random tensors of the batch contracts; ``n_batches`` training batches per epoch."""

    def __init__(
        self,
        size: int = 32,
        batch_size: int = 1,
        n_batches: int = 2,
        streams: tuple[str, ...] = ("synthetic", "real", "blur"),
        eval_height: int = 33,
        eval_width: int = 45,
        n_eval: int = 2,
        sleep_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.size, self.batch_size, self.n_batches, self.streams = (
            size,
            batch_size,
            n_batches,
            tuple(streams),
        )
        self.eval_height, self.eval_width, self.n_eval = eval_height, eval_width, n_eval
        self.sleep_s, self.seed = sleep_s, seed

    def train_dataloader(self) -> DataLoader:
        ds = TinyTrainSet(
            self.n_batches * self.batch_size, self.size, self.streams, self.seed, self.sleep_s
        )
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def _eval(self, set_name: str) -> DataLoader:
        ds = TinyEvalSet(self.n_eval, self.eval_height, self.eval_width, set_name, self.seed + 1)
        return DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._eval("syndof")

    def test_dataloader(self) -> DataLoader:
        return self._eval("syndof")

    def predict_dataloader(self) -> DataLoader:
        return self._eval("photos")


def cpu_trainer(root, **kwargs):
    """A quiet one-epoch CPU Trainer for tests (no logger, no checkpoints, no validation)."""
    import lightning as L

    defaults = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=str(root),
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)
