"""Training augmentation of SPEC section 4: resize the short side into ``[241, 801]``, random
crop, vertical flip, rot90; one geometric transform applied alike to every map of a sample.

Maps are ``(C, H, W)`` tensors. How each key is resampled:

* ``"image"``: bilinear with antialiasing (a photo);
* ``"depth_mm"``, ``"sharp_mask"``, ``"binary"``: nearest (values must stay real depths / 0-1);
* ``"label"`` (``y``) and ``"sigma_px"``: nearest, and *multiplied by the resize factor*, since a
  blur of sigma px becomes sigma * s px when the picture is scaled by s (``label`` then clipped
  to ``[0, 1]``). Maps synthesised after the crop (the on-the-fly SYNDOF stream) are unaffected.

Other entries (``"name"``, ``"set"``) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dmenet.errors import DataError

__all__ = [
    "PAPER_SHORT_SIDE_RANGE",
    "TrainingCrops",
    "random_crop_flip_rot",
    "resize_sample",
    "resize_short_side",
]

PAPER_SHORT_SIDE_RANGE: tuple[int, int] = (241, 801)
"""Short side of a training image is resized to a uniform integer in this range (paper)."""

NEAREST_KEYS: frozenset[str] = frozenset({"depth_mm", "sharp_mask", "binary"})
SCALED_KEYS: frozenset[str] = frozenset({"label", "sigma_px"})
IMAGE_KEYS: frozenset[str] = frozenset({"image"})
SPATIAL_KEYS = IMAGE_KEYS | NEAREST_KEYS | SCALED_KEYS


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def resize_sample(sample: dict, size_hw: tuple[int, int]) -> dict:
    """Resize every spatial map of ``sample`` to ``size_hw`` (see the module docstring)."""
    out = dict(sample)
    height, width = sample["image"].shape[-2:]
    if (height, width) == tuple(size_hw):
        return out
    scale = 0.5 * (size_hw[0] / height + size_hw[1] / width)
    for key, value in sample.items():
        if key not in SPATIAL_KEYS or not isinstance(value, torch.Tensor):
            continue
        if key in IMAGE_KEYS:
            resized = F.interpolate(
                value[None].float(), size=size_hw, mode="bilinear", align_corners=False,
                antialias=True,
            )[0].clamp(0.0, 1.0)
        else:
            resized = F.interpolate(value[None].float(), size=size_hw, mode="nearest")[0]
            if key in SCALED_KEYS:
                resized = resized * scale
                if key == "label":
                    resized = resized.clamp(0.0, 1.0)
        out[key] = resized.to(value.dtype)
    return out


def resize_short_side(sample: dict, crop_size: int,
                      short_side_range: Sequence[int] | None = PAPER_SHORT_SIDE_RANGE,
                      generator: torch.Generator | None = None) -> dict:
    """The resize step of :func:`random_crop_flip_rot`: the short side to a uniform integer in
    ``[max(low, crop_size), max(high, crop_size)]`` (``None``: kept, or enlarged to the crop)."""
    height, width = sample["image"].shape[-2:]
    short = min(height, width)
    if short_side_range is not None:
        low, high = (max(int(v), crop_size) for v in short_side_range)
        target_short = _randint(min(low, high), max(low, high), generator)
    else:
        target_short = max(short, crop_size)
    if target_short == short:
        return sample
    factor = target_short / short
    size = (max(crop_size, round(height * factor)), max(crop_size, round(width * factor)))
    return resize_sample(sample, size)


def random_crop_flip_rot(
    sample: dict,
    crop_size: int,
    short_side_range: Sequence[int] | None = PAPER_SHORT_SIDE_RANGE,
    vertical_flip: bool = True,
    rot90: bool = True,
    generator: torch.Generator | None = None,
) -> dict:
    """SPEC section 4 augmentation of one sample: resize, random ``crop_size`` square, flips.

    Args:
        sample: dict with ``"image"`` ``(3, H, W)`` and optional other maps of the same size.
        crop_size: side of the square crop in px.
        short_side_range: ``(low, high)``: the short side is first resized to a uniform integer
            in ``[max(low, crop_size), max(high, crop_size)]``; ``None`` keeps the size, except
            that an image smaller than the crop is enlarged to fit it.
        vertical_flip: flip upside down with probability 1/2.
        rot90: rotate by a uniformly drawn multiple of 90 degrees.
        generator: torch random generator (default: the global one, seeded per worker).

    Returns:
        A new dict whose spatial maps are ``(C, crop_size, crop_size)``.
    """
    image = sample["image"]
    height, width = image.shape[-2:]
    for key, value in sample.items():
        if key in SPATIAL_KEYS and isinstance(value, torch.Tensor):
            if value.shape[-2:] != image.shape[-2:]:
                raise DataError(
                    f"{sample.get('name', 'sample')}: map {key!r} is "
                    f"{tuple(value.shape[-2:])}, its image {tuple(image.shape[-2:])}"
                )
    sample = resize_short_side(sample, crop_size, short_side_range, generator)
    height, width = sample["image"].shape[-2:]
    top = _randint(0, height - crop_size, generator)
    left = _randint(0, width - crop_size, generator)
    flip = vertical_flip and _randint(0, 1, generator) == 1
    turns = _randint(0, 3, generator) if rot90 else 0
    out = {}
    for key, value in sample.items():
        if key in SPATIAL_KEYS and isinstance(value, torch.Tensor):
            value = value[..., top : top + crop_size, left : left + crop_size]
            if flip:
                value = value.flip(-2)
            if turns:
                value = torch.rot90(value, turns, dims=(-2, -1))
            value = value.contiguous()
        out[key] = value
    return out


class TrainingCrops(Dataset):
    """A dataset of augmented training crops drawn from another dataset.

    Args:
        dataset: yields dicts with ``"image"`` and optional maps (see the module docstring).
        crop_size: side of the square crops in px.
        keys: the entries kept in each crop (e.g. ``("image", "sharp_mask")``).
        short_side_range, vertical_flip, rot90: see :func:`random_crop_flip_rot`.
        length: crops per epoch (default ``len(dataset)``); item ``i`` reads source image
            ``i % len(dataset)``, so small sources can fill a longer epoch.

    Randomness comes from torch's global generator, which the DataLoader seeds differently in
    every worker (and ``seed_everything`` seeds in the main process).
    """

    def __init__(
        self,
        dataset: Dataset,
        crop_size: int,
        keys: Sequence[str] = ("image",),
        short_side_range: Sequence[int] | None = PAPER_SHORT_SIDE_RANGE,
        vertical_flip: bool = True,
        rot90: bool = True,
        length: int | None = None,
    ) -> None:
        if len(dataset) == 0:
            raise DataError("a training stream has no images")
        self.dataset = dataset
        self.crop_size = int(crop_size)
        self.keys = tuple(keys)
        self.short_side_range = short_side_range
        self.vertical_flip = vertical_flip
        self.rot90 = rot90
        self.length = int(length) if length else len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index % len(self.dataset)]
        missing = [k for k in self.keys if k not in sample]
        if missing:
            raise DataError(f"{sample.get('name', index)}: the sample has no {', '.join(missing)}")
        crop = random_crop_flip_rot(
            {k: sample[k] for k in self.keys},
            self.crop_size,
            self.short_side_range,
            self.vertical_flip,
            self.rot90,
        )
        return crop
