"""Reader of the released SYNDOF files (SPEC sections 2, 5): synthetic images, not real ones.

The dataset released with DMENet, files of the current SYNDOF generator and the output of
``dmenet syndof export`` share one layout: ``image/NAME.png`` beside a 16-bit label
``blur_map/NAME.png`` (training) or ``gt/NAME.png`` (test) storing ``10 * value``. What
``value`` means depends on who wrote the files, so the label space is chosen explicitly
(:mod:`dmenet.labels`) and converted to ours.

Items follow the evaluation-batch contract of ``docs/ARCHITECTURE.md`` (before batching);
bad input raises :class:`dmenet.errors.DataError` naming the file and the expected layout.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from dmenet.data.io import (
    check_same_size,
    find_partner,
    list_images,
    read_gray,
    read_image,
    require_dir,
    to_chw_tensor,
)
from dmenet.errors import DataError
from dmenet.labels import check_label_space, sigma_to_y, stored_png_to_sigma_px

__all__ = ["ReleasedSyndof", "SYNDOF_TEST_LAYOUT", "SYNDOF_TRAIN_LAYOUT"]

SYNDOF_TRAIN_LAYOUT = "<root>/image/NAME.png and <root>/blur_map/NAME.png (16-bit, 10 * value)"
SYNDOF_TEST_LAYOUT = "<root>/image/NAME.png and <root>/gt/NAME.png (16-bit, 10 * value)"


class ReleasedSyndof(Dataset):
    """Released SYNDOF files: the training set (``image/`` + ``blur_map/``) or the test set
    (``image/`` + ``gt/``), converted to our label space.

    Args:
        root: the folder holding ``image/`` (e.g. ``.../train/SYNDOF`` or ``.../test/SYNDOF``).
        label_space: how the stored 16-bit values (``10 * value``) are to be read, required:
            ``"released"`` (the dataset released with DMENet, ``y = x / 15``), ``"generator"``
            (the current SYNDOF generator, ``y = sigma / 7``) or ``"ours"`` (``dmenet syndof
            export``). See :mod:`dmenet.labels`.
        label_dir: ``"blur_map"`` (training layout), ``"gt"`` (test layout) or ``None`` to pick
            whichever exists.
        set_name: the ``"set"`` entry of each item.

    Items: ``{"image" (3,H,W), "sigma_px" (1,H,W), "label" (1,H,W) y (clipped to [0, 1]),
    "name", "set"}``.
    """

    def __init__(
        self,
        root: str | Path,
        label_space: str,
        label_dir: str | None = None,
        set_name: str = "syndof",
    ) -> None:
        self.root = Path(root)
        self.label_space = check_label_space(label_space, "SYNDOF label_space")
        layout = f"{SYNDOF_TRAIN_LAYOUT}, or {SYNDOF_TEST_LAYOUT}"
        require_dir(self.root, "the SYNDOF root", layout)
        image_dir = require_dir(self.root / "image", "the SYNDOF image folder", layout)
        if label_dir is None:
            label_dir = next(
                (d for d in ("blur_map", "gt") if (self.root / d).is_dir()), "blur_map"
            )
        labels = require_dir(self.root / label_dir, "the SYNDOF label folder", layout)
        images, _ = list_images(image_dir)
        if not images:
            raise DataError(f"{image_dir}: no images; expected layout: {layout}")
        self.samples: list[tuple[str, Path, Path]] = []
        for path in images:
            label_path = find_partner(labels, path.stem, (".png", ".tif", ".tiff"))
            if label_path is None:
                raise DataError(
                    f"{path}: no label {labels / path.stem}.png; expected layout: {layout}"
                )
            self.samples.append((path.stem, path, label_path))
        self.set_name = set_name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        name, image_path, label_path = self.samples[index]
        image = read_image(image_path)
        stored = read_gray(label_path)
        check_same_size(image, stored, image_path, label_path)
        if stored.dtype == np.uint8:
            warnings.warn(
                f"{label_path}: an 8-bit label file; SYNDOF labels are 16-bit (10 * value), "
                "values above 25.5 were lost when it was saved",
                UserWarning,
                stacklevel=2,
            )
        sigma_px = stored_png_to_sigma_px(stored.astype(np.float32), self.label_space)
        sigma = to_chw_tensor(np.asarray(sigma_px, dtype=np.float32))
        return {
            "image": to_chw_tensor(image),
            "sigma_px": sigma,
            "label": sigma_to_y(sigma).clamp(0.0, 1.0),
            "name": name,
            "set": self.set_name,
        }
