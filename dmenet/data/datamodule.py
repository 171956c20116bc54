"""DMENetDataModule: the three training streams of SPEC section 1 and the evaluation sets.

The flow: RGB-D source -> camera -> render -> crops -> batches. Training streams (each a
:class:`TrainingStream`: a dataset and its batch size, 0 switches it off), combined with
Lightning's ``CombinedLoader(mode="max_size_cycle")`` into the batch dict of
``docs/ARCHITECTURE.md``:

* ``"synthetic"`` (I_s): raw RGB-D crops ``{"image", "depth_mm"}`` from an RGB-D source (the
  embedded procedural scenes by default, ``rgbd_source="kind:path"`` otherwise), rendered by
  the injected :class:`~dmenet.data.syndof.SyndofRenderer` (``--data.renderer``) in
  :meth:`on_after_batch_transfer` on the batch's device; and/or released SYNDOF files
  (``syndof_root``, with ``syndof_label_space`` chosen explicitly) that already hold
  ``{"image", "label", "binary"}``. With both, the files are a stream of their own
  (``"synthetic_files"``, the smaller half of the batch) whose rows are appended to the
  rendered ones (:attr:`TrainingStream.append_to`).
* ``"real"`` (I_r): unlabelled photos under ``flickr_root``; unset -> the proxy real domain
  (rendered as ``--data.proxy`` says, :class:`~dmenet.data.proxy.ProxyLook`).
* ``"blur"`` (I_b): CUHK photos with masks (``cuhk_root``); unset -> the proxy real domain
  with binary masks from its true blur.

Every training crop is augmented as SPEC section 4 says (:mod:`dmenet.data.augment`).

Evaluation sets (batch size 1, image sizes differ), chosen by name: ``"embedded"`` (held-out
SYNDOF-rendered embedded scenes: dense labels and binary sharp masks), ``"proxy"`` (held-out
proxy real domain, also fully labelled), ``"syndof"`` (``syndof_test_root``), ``"cuhk"``
(``cuhk_root``, split ``cuhk_test_split``), ``"rtf"`` (``rtf_root`` at ``rtf_noise``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from dmenet.data.augment import PAPER_SHORT_SIDE_RANGE, TrainingCrops
from dmenet.data.proxy import ProxyLook
from dmenet.data.syndof import SyndofRenderer
from dmenet.errors import DataError, DMENetError

__all__ = ["DMENetDataModule", "EVAL_SETS", "RenderedEvalSet", "TrainingStream"]

EVAL_SETS: tuple[str, ...] = ("embedded", "proxy", "syndof", "cuhk", "rtf")

# Seeds of the embedded splits: training, validation and test scenes never coincide.
_EMBEDDED_SEEDS = {"train": 0, "val": 10_007, "test": 20_011}
_PROXY_SEEDS = {"real": 30_013, "blur": 40_009, "val": 50_021, "test": 60_013}


class _UserErrorLoader(DataLoader):
    """A DataLoader that re-raises a user's data mistake from a worker process as one line.

    A :class:`DMENetError` raised in a worker reaches the main process re-created with the
    worker's whole traceback as its message; the command line would print that. Here it is
    cut back to the original message (its last line), which names the file.
    """

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except DMENetError as exc:
                text = str(exc)
                if "Original Traceback" not in text:
                    raise
                last = [line for line in text.strip().splitlines() if line.strip()][-1]
                message = last.split(": ", 1)[1] if last.startswith("dmenet.errors.") else last
                raise type(exc)(message) from None
            yield batch


class _ReleasedTrainingView(Dataset):
    """Released SYNDOF items as the synthetic contract: ``{"image", "label", "binary"}``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        from dmenet.data.thin_lens import binary_from_coc, coc_from_sigma

        item = self.dataset[index]
        # binary map from the label: blurred where the CoC (paper rule) exceeds 1 px
        binary = binary_from_coc(coc_from_sigma(item["sigma_px"]))
        return {"image": item["image"], "label": item["label"], "binary": binary}


class _RGBDView(Dataset):
    """An RGB-D source's items reduced to ``{"image", "depth_mm"}`` (depth cleaned later).

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


CAMERA_KEYS: tuple[str, ...] = ("focus_mm", "alpha_px", "focal_mm", "f_number",
                                 "depth_offset_mm")


class WholeImageCameraCrops(Dataset):
    """Synthetic training crops with whole-image cameras (SPEC section 2 step 6).

    Per item: the source image is resized (short side, as :class:`TrainingCrops`), its depth
    cleaned, the camera drawn from the WHOLE image's depth (the renderer's sampler) with the
    whole image's fill start; then a window of ``crop_size + 2 * margin`` is cut around a random
    crop, ``margin`` = the renderer's blur reach, the image extended beyond its border by the
    render mode's border rule; flips/rot90 as :class:`TrainingCrops` (the renderer commutes
    with them). :meth:`DMENetDataModule.render_synthetic` renders the window and keeps its
    centre, which equals the same crop of the whole-image render (tested within 1/255).

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
        self.margin = self.renderer.blur_reach_px()
        self.short_side_range = short_side_range
        self.vertical_flip, self.rot90 = vertical_flip, rot90
        self.length = int(length) if length else len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        from dmenet.data.augment import random_crop_flip_rot, resize_short_side
        from dmenet.data.syndof import pad_like_border
        from dmenet.data.thin_lens import clean_depth_mm

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


@dataclass
class TrainingStream:
    """One loader of the training ``CombinedLoader``: a dataset and its batch size.

    ``append_to``: the stream whose (rendered) batch this stream's rows are appended to, in
    :meth:`DMENetDataModule.on_after_batch_transfer` (the released SYNDOF files beside
    on-the-fly synthesis); ``None``: a batch entry of its own.
    """

    dataset: Dataset
    batch_size: int
    append_to: str | None = None


class DMENetDataModule(pl.LightningDataModule):
    """The three training streams (I_s, I_r, I_b) and the evaluation sets of DMENet.

    Args:
        rgbd_source: RGB-D source of on-the-fly SYNDOF synthesis: ``"embedded"`` (default;
            procedural scenes shipped with the package) or ``"kind:path"`` with kind ``sintel``,
            ``synthia``, ``middlebury`` or ``folder`` (:func:`dmenet.data.rgbd.make_rgbd_source`);
            ``None``: no synthesis (then ``syndof_root`` must be set).
        syndof_root: released SYNDOF training files (``image/`` + ``blur_map/``).
        syndof_label_space: how ``syndof_root``'s labels are read, required with it:
            ``"released"`` (dataset released with DMENet) or ``"generator"`` (current SYNDOF
            generator) or ``"ours"`` (``dmenet syndof export``).
        syndof_test_root: released SYNDOF test files (``image/`` + ``gt/``) for the
            ``"syndof"`` evaluation set.
        flickr_root: I_r photos (any folder tree); unset -> the proxy real domain.
        cuhk_root: CUHK blur detection (``image/``, ``gt/``): I_b training and the ``"cuhk"``
            evaluation set; unset -> the proxy real domain for I_b.
        cuhk_train_split, cuhk_test_split: CUHK split names
            (:data:`dmenet.data.real.CUHK_SPLITS`) or list files.
        cuhk_mask_polarity: ``"auto"``, ``"white_is_sharp"`` or ``"white_is_blurred"``.
        rtf_root, rtf_noise: RTF (``image/{0,1,1.6}/``, ``gt/``) and its noise level.
        batch_size_synthetic, batch_size_real, batch_size_blur: per-stream batch sizes
            (paper 3 / 3 / 3); 0 turns a stream off.
        crop_size: training crop side in px (paper 240).
        short_side_range: ``[low, high]`` the short side is resized into before cropping
            (paper ``[241, 801]``); ``None`` keeps each image's size.
        samples_per_epoch: crops per stream per epoch (default: each stream's image count;
            the longest stream sets the epoch under ``max_size_cycle``).
        val_sets: evaluation sets for validation (names from :data:`EVAL_SETS`).
        test_set: the evaluation set for ``dmenet test``.
        embedded_size: side (px) of the embedded scenes.
        embedded_train_scenes, embedded_eval_scenes: number of embedded scenes for training and
            for each held-out evaluation split (validation and test use different scenes).
        proxy_images: images of each proxy real-domain stream.
        renderer: the SYNDOF renderer of the synthetic stream and the ``"embedded"`` sets
            (``None``: :class:`~dmenet.data.syndof.SyndofRenderer` with its defaults); on the
            command line ``--data.renderer.mode reference`` or ``--data.renderer '{mode:
            reference}'``, checked against its signature.
        proxy: how the proxy real domain is rendered (:class:`~dmenet.data.proxy.ProxyLook`;
            ``None``: its defaults), e.g. ``--data.proxy.noise false``.
        synthesis_seed: base seed of on-device synthesis (mixed with step and rank).
        num_workers, pin_memory, persistent_workers: DataLoader settings of every stream.
        predict_paths: files, folders or globs for ``dmenet predict`` (batch size 1).
    """

    def __init__(
        self,
        rgbd_source: str | None = "embedded",
        syndof_root: str | None = None,
        syndof_label_space: str | None = None,
        syndof_test_root: str | None = None,
        flickr_root: str | None = None,
        cuhk_root: str | None = None,
        cuhk_train_split: str = "dmenet_train",
        cuhk_test_split: str = "dmenet_test",
        cuhk_mask_polarity: str = "auto",
        rtf_root: str | None = None,
        rtf_noise: str = "0",
        batch_size_synthetic: int = 3,
        batch_size_real: int = 3,
        batch_size_blur: int = 3,
        crop_size: int = 240,
        short_side_range: list[int] | None = None,
        samples_per_epoch: int | None = None,
        val_sets: list[str] | None = None,
        test_set: str = "embedded",
        embedded_size: int = 256,
        embedded_train_scenes: int = 32,
        embedded_eval_scenes: int = 8,
        proxy_images: int = 32,
        renderer: SyndofRenderer | None = None,
        proxy: ProxyLook | None = None,
        synthesis_seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        predict_paths: list[str] | None = None,
    ) -> None:
        super().__init__()
        # the arguments are read from self.hparams; only derived values are attributes
        self.save_hyperparameters(ignore=["renderer", "proxy"])
        self.renderer = renderer if renderer is not None else SyndofRenderer()
        self.proxy_look = proxy if proxy is not None else ProxyLook()
        # the two parts described as plain data (checkpoints are read with weights_only=True)
        self.hparams.update(renderer=repr(self.renderer), proxy=asdict(self.proxy_look))
        self.batch_sizes = {
            "synthetic": int(batch_size_synthetic),
            "real": int(batch_size_real),
            "blur": int(batch_size_blur),
        }
        # None: the paper's range; an explicit empty list: keep each image's size
        self.short_side_range = (
            list(PAPER_SHORT_SIDE_RANGE) if short_side_range is None else list(short_side_range)
        ) or None
        self.val_sets = list(val_sets) if val_sets is not None else ["embedded"]
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self._check_arguments()
        self._train_streams: dict[str, TrainingStream] | None = None
        self._eval_cache: dict[str, Dataset] = {}
        self._render_calls = 0

    # ------------------------------------------------------------------ argument checks

    def _check_arguments(self) -> None:
        for name, size in self.batch_sizes.items():
            if size < 0:
                raise DataError(f"--data.batch_size_{name} must be >= 0, got {size}")
        if self.batch_sizes["synthetic"] > 0 and self.hparams.rgbd_source is None and not self.hparams.syndof_root:
            raise DataError(
                "the synthetic stream has no source: set --data.rgbd_source (e.g. embedded) "
                "and/or --data.syndof_root, or --data.batch_size_synthetic 0"
            )
        if (self.hparams.syndof_root or self.hparams.syndof_test_root) and self.hparams.syndof_label_space is None:
            raise DataError(
                "--data.syndof_label_space is required with SYNDOF files: 'released' for the "
                "dataset released with DMENet (y = x / 15), 'generator' for files of the current "
                "SYNDOF generator (y = sigma / 7), 'ours' for dmenet syndof export"
            )
        if self.hparams.crop_size < 16:
            raise DataError(f"--data.crop_size must be at least 16 px, got {self.hparams.crop_size}")
        if self.short_side_range is not None and (
            len(self.short_side_range) != 2 or self.short_side_range[0] > self.short_side_range[1]
        ):
            raise DataError(
                f"--data.short_side_range must be [low, high], got {self.short_side_range}"
            )
        for name in [*self.val_sets, self.hparams.test_set]:
            if name not in EVAL_SETS:
                raise DataError(
                    f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}"
                )

    # --------------------------------------------------------------------- data sources

    def _embedded(self, split: str, count: int):
        from dmenet.data.rgbd import EmbeddedRGBD

        return EmbeddedRGBD(
            num_scenes=count,
            size=(self.hparams.embedded_size, self.hparams.embedded_size),
            seed=_EMBEDDED_SEEDS[split],
            include_motorcycle=(split == "train"),
        )

    def _rgbd_training_source(self) -> Dataset:
        if self.hparams.rgbd_source in ("", "embedded"):
            return self._embedded("train", self.hparams.embedded_train_scenes)
        from dmenet.data.rgbd import make_rgbd_source

        return make_rgbd_source(self.hparams.rgbd_source)

    def _proxy(self, role: str, count: int) -> Dataset:
        from dmenet.data.proxy import ProxyRealDomain

        return ProxyRealDomain(num_images=count, size=self.hparams.embedded_size,
                               seed=_PROXY_SEEDS[role], look=self.proxy_look)

    def _crops(self, dataset: Dataset, keys: Sequence[str]) -> TrainingCrops:
        return TrainingCrops(
            dataset,
            self.hparams.crop_size,
            keys=keys,
            short_side_range=self.short_side_range,
            length=self.hparams.samples_per_epoch,
        )

    def build_training_streams(self) -> dict[str, TrainingStream]:
        """The training streams by name (streams with batch size 0 are absent)."""
        from dmenet.data.real import CUHKBlurDetection, ImageFolder
        from dmenet.data.syndof_files import ReleasedSyndof

        hp = self.hparams
        streams: dict[str, TrainingStream] = {}
        synthetic = self.batch_sizes["synthetic"]
        if synthetic > 0:
            rendered, files = hp.rgbd_source is not None, bool(hp.syndof_root)
            if rendered:
                embedded = hp.rgbd_source in ("", "embedded")
                crops = WholeImageCameraCrops(
                    _RGBDView(self._rgbd_training_source(), cache=embedded), hp.crop_size,
                    self.renderer, short_side_range=self.short_side_range,
                    length=hp.samples_per_epoch)
                # with the files as well, the rendered crops fill the larger half of the batch
                share = max(1, math.ceil(synthetic / 2)) if files else synthetic
                streams["synthetic"] = TrainingStream(crops, share)
            if files:
                crops = self._crops(
                    _ReleasedTrainingView(ReleasedSyndof(hp.syndof_root, hp.syndof_label_space)),
                    ("image", "label", "binary"),
                )
                if rendered:
                    streams["synthetic_files"] = TrainingStream(
                        crops, max(1, synthetic // 2), append_to="synthetic")
                else:
                    streams["synthetic"] = TrainingStream(crops, synthetic)
        # the user's folders first, so that a wrong path fails before any proxy rendering
        real = blur = None
        if self.batch_sizes["real"] > 0 and self.hparams.flickr_root:
            real = ImageFolder(self.hparams.flickr_root)
        if self.batch_sizes["blur"] > 0 and self.hparams.cuhk_root:
            blur = CUHKBlurDetection(self.hparams.cuhk_root, self.hparams.cuhk_train_split, self.hparams.cuhk_mask_polarity)
        if self.batch_sizes["real"] > 0:
            real = real if real is not None else self._proxy("real", self.hparams.proxy_images)
            streams["real"] = TrainingStream(self._crops(real, ("image",)), self.batch_sizes["real"])
        if self.batch_sizes["blur"] > 0:
            blur = blur if blur is not None else self._proxy("blur", self.hparams.proxy_images)
            streams["blur"] = TrainingStream(self._crops(blur, ("image", "sharp_mask")),
                                             self.batch_sizes["blur"])
        if not streams:
            raise DataError("every training stream is switched off (all batch sizes are 0)")
        return streams

    def eval_dataset(self, name: str, split: str = "val") -> Dataset:
        """An evaluation set by name (see :data:`EVAL_SETS`); ``split`` picks the held-out
        embedded / proxy scenes (``"val"`` or ``"test"``)."""
        from dmenet.data.real import RTF, CUHKBlurDetection
        from dmenet.data.syndof_files import ReleasedSyndof

        key = f"{name}:{split}"
        if key in self._eval_cache:
            return self._eval_cache[key]
        if name == "embedded":
            source = _RGBDView(self._embedded(split, self.hparams.embedded_eval_scenes))
            dataset: Dataset = RenderedEvalSet(
                source, "embedded", _EMBEDDED_SEEDS[split], self.renderer
            )
        elif name == "proxy":
            dataset = self._proxy(split, self.hparams.embedded_eval_scenes)
        elif name == "syndof":
            if not self.hparams.syndof_test_root:
                raise DataError("the 'syndof' evaluation set needs --data.syndof_test_root")
            dataset = ReleasedSyndof(self.hparams.syndof_test_root, self.hparams.syndof_label_space, "gt")
        elif name == "cuhk":
            if not self.hparams.cuhk_root:
                raise DataError("the 'cuhk' evaluation set needs --data.cuhk_root")
            dataset = CUHKBlurDetection(
                self.hparams.cuhk_root, self.hparams.cuhk_test_split, self.hparams.cuhk_mask_polarity
            )
        elif name == "rtf":
            if not self.hparams.rtf_root:
                raise DataError("the 'rtf' evaluation set needs --data.rtf_root")
            dataset = RTF(self.hparams.rtf_root, str(self.hparams.rtf_noise))
        else:
            raise DataError(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")
        self._eval_cache[key] = dataset
        return dataset

    # ------------------------------------------------------------------------ hooks

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self._train_streams is None:
            self._train_streams = self.build_training_streams()
        if stage in (None, "fit", "validate"):
            for name in self.val_sets:
                self.eval_dataset(name, "val")
        if stage in (None, "test"):
            self.eval_dataset(self.hparams.test_set, "test")

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return _UserErrorLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> CombinedLoader:
        if self._train_streams is None:
            self._train_streams = self.build_training_streams()
        loaders = {}
        for name, stream in self._train_streams.items():
            if len(stream.dataset) < stream.batch_size:
                raise DataError(
                    f"the {name} stream has {len(stream.dataset)} samples per epoch, fewer than "
                    f"its batch size {stream.batch_size}; add images or raise "
                    "--data.samples_per_epoch"
                )
            loaders[name] = self._loader(stream.dataset, stream.batch_size, shuffle=True)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loaders(self, names: Sequence[str], split: str):
        loaders = [
            _UserErrorLoader(
                self.eval_dataset(name, split),
                batch_size=1,
                shuffle=False,
                num_workers=self.hparams.num_workers,
                pin_memory=self.hparams.pin_memory,
            )
            for name in names
        ]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self):
        return self._eval_loaders(self.val_sets, "val")

    def test_dataloader(self):
        return self._eval_loaders([self.hparams.test_set], "test")

    def predict_dataloader(self) -> DataLoader:
        if not self.hparams.predict_paths:
            raise DataError("dmenet predict needs --data.predict_paths (files, folders or globs)")
        from dmenet.inference.data import ImagePathsDataset

        return _UserErrorLoader(
            ImagePathsDataset(list(self.hparams.predict_paths)),
            batch_size=1,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
        )

    # --------------------------------------------------------------- on-device synthesis

    def _synthesis_generator(self, device: torch.device) -> torch.Generator:
        """A CPU generator (cameras are drawn on the CPU) seeded by seed, rank and step.

        In training the key is the trainer's global step, restored on resume, so a resumed
        run draws the same cameras as an uninterrupted one; without a trainer, a call count.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            key = f"{self.hparams.synthesis_seed}:{trainer.global_rank}:{trainer.global_step}"
        else:
            self._render_calls += 1
            key = f"{self.hparams.synthesis_seed}:0:call{self._render_calls}"
        return torch.Generator(device="cpu").manual_seed(zlib.crc32(key.encode()))

    def render_synthetic(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw RGB-D crops ``{"image" (N,3,H,W), "depth_mm" (N,1,H,W)}`` -> the synthetic
        contract ``{"image", "label" y, "binary" 1 = blurred}``, on the crops' device.

        Windows of :class:`WholeImageCameraCrops` (with ``"margin_px"`` and their whole-image
        cameras) are rendered with those cameras and their margin cut off; plain crops get a
        camera drawn from the crop (seeded per step and rank)."""
        image, depth_mm = raw["image"], raw["depth_mm"]
        renderer = self.renderer.to(image.device)
        with torch.no_grad():
            if "margin_px" in raw:
                from dmenet.data.thin_lens import Camera

                camera = Camera(*(raw[k].cpu() for k in CAMERA_KEYS))
                out = renderer(image, depth_mm, camera=camera,
                               fill_from_coc_px=raw["fill_from_coc_px"].cpu())
                m = int(raw["margin_px"][0])
                h, w = image.shape[-2:]
                return {key: getattr(out, key)[..., m:h - m, m:w - m].contiguous()
                        for key in ("image", "label", "binary")} | {
                    "image": out.image[..., m:h - m, m:w - m].clamp(0.0, 1.0).contiguous()}
            out = renderer(image, depth_mm, generator=self._synthesis_generator(image.device))
        return {
            "image": out.image.clamp(0.0, 1.0),
            "label": out.label,
            "binary": out.binary,
        }

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or "synthetic" not in batch:
            return batch
        synthetic = batch["synthetic"]
        if isinstance(synthetic, dict) and "depth_mm" in synthetic:
            batch["synthetic"] = self.render_synthetic(synthetic)
        for name, stream in (self._train_streams or {}).items():
            if stream.append_to is not None and name in batch:
                rows, target = batch.pop(name), batch[stream.append_to]
                batch[stream.append_to] = {
                    key: torch.cat([target[key], rows[key].to(target[key])])
                    for key in ("image", "label", "binary")
                }
        return batch
