"""On-the-fly SYNDOF synthesis in the data pipeline: every call to the renderer is here.

The training stream I_s and the ``"embedded"`` evaluation set come from an RGB-D source
rendered by a :class:`~dmenet.data.syndof.SyndofRenderer`:

* :class:`RGBDView`: a source's items reduced to ``{"image", "depth_mm"}``;
* :class:`WholeImageCameraCrops`: training windows with the camera drawn from the whole image
  (built in the DataLoader workers, on the CPU);
* :func:`render_crops`: those windows (or plain crops) rendered on the batch's device, in
  :meth:`DMENetDataModule.on_after_batch_transfer
  <dmenet.data.datamodule.DMENetDataModule.on_after_batch_transfer>`;
* :class:`RenderedEvalSet`: a fixed, seeded evaluation set rendered once.

The renderer is used through its public API only: ``renderer(image, depth_mm, camera=...,
fill_from_coc_px=...)`` or ``renderer(image, depth_mm, generator=...)`` (output ``.image``,
``.label``, ``.binary``, ``.sigma_px``), ``sample_camera``, ``fill_start_coc_px``,
``crop_margin_px``, ``render_mode`` and :func:`~dmenet.data.syndof.pad_like_border`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from dmenet.data.augment import PAPER_SHORT_SIDE_RANGE, random_crop_flip_rot, resize_short_side
from dmenet.data.syndof import SyndofRenderer, pad_like_border
from dmenet.data.thin_lens import Camera, clean_depth_mm
from dmenet.errors import DataError

__all__ = ["CAMERA_KEYS", "RGBDView", "RenderedEvalSet", "WholeImageCameraCrops", "render_crops"]

CAMERA_KEYS: tuple[str, ...] = ("focus_mm", "alpha_px", "focal_mm", "f_number",
                                 "depth_offset_mm")
"""The :class:`~dmenet.data.thin_lens.Camera` fields a training window carries, in order."""


class RGBDView(Dataset):
    """An RGB-D source's items reduced to ``{"image", "depth_mm", "name"}`` (depth cleaned later).

    ``cache=True`` keeps loaded items in memory: the embedded scenes are small but cost
    about 0.2 s each to generate, on every epoch otherwise.
    """

    def __init__(self, dataset: Dataset, cache: bool = False) -> None:
        self.dataset = dataset
        self._cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = self.dataset[index]
        item = {"image": item["image"], "depth_mm": item["depth_mm"], "name": item.get("name")}
        if self._cache is not None:
            self._cache[index] = item
        return item


class WholeImageCameraCrops(Dataset):
    """Synthetic training crops with whole-image cameras (SPEC section 2 step 6).

    Per item: the source image is resized (short side, as :class:`~dmenet.data.augment.
    TrainingCrops`), its depth cleaned, the camera drawn from the WHOLE image's depth (the
    renderer's sampler) with the whole image's fill start; then a window of
    ``crop_size + 2 * margin`` is cut around a random crop (``margin``: the renderer's
    ``crop_margin_px()``, the reach of the blur and of the fill), the image extended beyond its
    border by the render mode's border rule; flips/rot90 as ``TrainingCrops`` (the renderer
    commutes with them). :func:`render_crops` renders the window and keeps its centre, which
    equals the same crop of the whole-image render (tested within 1/255 for every renderer).

    Items: ``{"image" (3,S,S), "depth_mm" (1,S,S), "margin_px", "fill_from_coc_px", camera
    fields}`` with ``S = crop_size + 2 * margin_px``. Randomness: torch's global generator
    (seeded per DataLoader worker).
    """

    def __init__(self, dataset: Dataset, crop_size: int, renderer: SyndofRenderer,
                 short_side_range: Sequence[int] | None = PAPER_SHORT_SIDE_RANGE,
                 vertical_flip: bool = True, rot90: bool = True,
                 length: int | None = None) -> None:
        if len(dataset) == 0:
            raise DataError("a training stream has no images")
        self.dataset = dataset
        self.crop_size = int(crop_size)
        self.renderer = renderer
        self.margin = self.renderer.crop_margin_px()
        self.short_side_range = short_side_range
        self.vertical_flip, self.rot90 = vertical_flip, rot90
        self.length = int(length) if length else len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index % len(self.dataset)]
        sample = resize_short_side({"image": item["image"], "depth_mm": item["depth_mm"]},
                                   self.crop_size, self.short_side_range)
        depth = clean_depth_mm(sample["depth_mm"][None].float())
        camera = self.renderer.sample_camera(depth)
        fill_from = self.renderer.fill_start_coc_px(depth, camera)
        m, mode = self.margin, self.renderer.render_mode
        padded = {"image": pad_like_border(sample["image"], m, mode),
                  "depth_mm": pad_like_border(depth[0], m, mode)}
        # a random window of crop + 2 m in the extended image = a random crop with its margin
        window = random_crop_flip_rot(padded, self.crop_size + 2 * m, None, self.vertical_flip,
                                      self.rot90)
        out = {"image": window["image"], "depth_mm": window["depth_mm"],
               "margin_px": torch.tensor(m), "fill_from_coc_px": fill_from[0]}
        out.update({k: getattr(camera, k)[0] for k in CAMERA_KEYS})
        return out


def render_crops(renderer: SyndofRenderer, raw: dict[str, torch.Tensor],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Raw RGB-D crops ``{"image" (N,3,H,W), "depth_mm" (N,1,H,W)}`` -> the synthetic
    contract ``{"image", "label" y, "binary" 1 = blurred}``, on the crops' device.

    Windows of :class:`WholeImageCameraCrops` (with ``"margin_px"`` and their whole-image
    cameras) are rendered with those cameras and their margin cut off; plain crops get a
    camera drawn from the crop with ``generator`` (a CPU generator: cameras are drawn there).
    """
    image, depth_mm = raw["image"], raw["depth_mm"]
    renderer = renderer.to(image.device)
    with torch.no_grad():
        if "margin_px" in raw:
            camera = Camera(*(raw[k].cpu() for k in CAMERA_KEYS))
            out = renderer(image, depth_mm, camera=camera,
                           fill_from_coc_px=raw["fill_from_coc_px"].cpu())
            m = int(raw["margin_px"][0])
            h, w = image.shape[-2:]
            inner = (..., slice(m, h - m), slice(m, w - m))
        else:
            out = renderer(image, depth_mm, generator=generator)
            inner = (...,)
    return {"image": out.image[inner].clamp(0.0, 1.0).contiguous(),
            "label": out.label[inner].contiguous(),
            "binary": out.binary[inner].contiguous()}


class RenderedEvalSet(Dataset):
    """A fixed, fully labelled evaluation set rendered once with SYNDOF from an RGB-D source.

    Items: ``{"image" (3,H,W), "label" (1,H,W) y, "sigma_px" (1,H,W), "sharp_mask" (1,H,W)
    1 = sharp, "name", "set"}``. Rendering is seeded, so the set is the same on every run.
    """

    def __init__(self, source: Dataset, set_name: str, seed: int, renderer: SyndofRenderer) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items: list[dict] = []
        with torch.no_grad():
            for index in range(len(source)):
                item = source[index]
                out = renderer(item["image"][None], item["depth_mm"][None], generator=generator)
                self.items.append({
                    "image": out.image[0].clamp(0, 1).contiguous(),
                    "label": out.label[0].contiguous(),
                    "sigma_px": out.sigma_px[0].contiguous(),
                    "sharp_mask": (1.0 - out.binary[0]).contiguous(),
                    "name": str(item.get("name", f"{set_name}_{index:03d}")),
                    "set": set_name,
                })

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]
