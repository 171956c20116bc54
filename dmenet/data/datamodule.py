"""DMENetDataModule: wires the three training streams of SPEC section 1 and the evaluation sets.

The flow: RGB-D source -> camera -> render -> crops -> batches. One loader per training stream
(:class:`~dmenet.data.streams.TrainingStream`; batch size 0 switches a stream off), combined
with Lightning's ``CombinedLoader(mode="max_size_cycle")`` into the batch dict of
``docs/ARCHITECTURE.md``:

* ``"synthetic"`` (I_s): raw RGB-D crops from an RGB-D source (the embedded procedural scenes
  by default, ``rgbd_source="kind:path"`` otherwise), rendered by the injected
  :class:`~dmenet.data.syndof.SyndofRenderer` (``--data.renderer``) in
  :meth:`on_after_batch_transfer` on the batch's device (:mod:`dmenet.data.synthetic`);
  and/or released SYNDOF files (``syndof_root``, with ``syndof_label_space`` chosen
  explicitly) that already hold ``{"image", "label", "binary"}``. With both, the files are a
  stream of their own (``"synthetic_files"``, the smaller half of the batch) whose rows are
  appended to the rendered ones (:func:`~dmenet.data.streams.append_rows`).
* ``"real"`` (I_r): unlabelled photos under ``flickr_root``; unset -> the proxy real domain
  (rendered as ``--data.proxy`` says, :class:`~dmenet.data.proxy.ProxyLook`).
* ``"blur"`` (I_b): CUHK photos with masks (``cuhk_root``); unset -> the proxy real domain
  with binary masks from its true blur.

Every training crop is augmented as SPEC section 4 says (:mod:`dmenet.data.augment`). The
evaluation sets are chosen by name (:mod:`dmenet.data.splits`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import Dataset

from dmenet.data.augment import PAPER_SHORT_SIDE_RANGE, TrainingCrops
from dmenet.data.photos import ImagePathsDataset
from dmenet.data.proxy import ProxyLook
from dmenet.data.splits import EVAL_SETS, evaluation_set, proxy_split, rgbd_training_source
from dmenet.data.streams import (
    SYNTHETIC_KEYS,
    ReleasedTrainingView,
    TrainingStream,
    UserErrorLoader,
    append_rows,
    split_iterations,
    synthetic_streams,
)
from dmenet.data.syndof import SyndofRenderer
from dmenet.data.synthetic import WholeImageCameraCrops, render_crops
from dmenet.errors import DataError

__all__ = ["DMENetDataModule"]


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
        render_ahead: training iterations per loader batch (default 1). Every stream's loader
            yields this many iterations' rows at once, the synthetic crops of all of them are
            rendered in one call on the batch's device, and ``training_step`` receives a list
            of that many iteration batches. On a GPU the renderer's launches and host round
            trips are per call, not per crop: rendering 16 iterations ahead divides them per
            step several times over (BENCHMARKS.md section 1); on the CPU it changes nothing
            but memory.
            Training sees the same crops in the same order for any value; ``max_steps`` and
            checkpoints are reached at batch ends, i.e. every ``render_ahead`` iterations.
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
        render_ahead: int = 1,
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
        self.batch_sizes = {"synthetic": int(batch_size_synthetic), "real": int(batch_size_real),
                            "blur": int(batch_size_blur)}
        # None: the paper's range; an explicit empty list: keep each image's size
        self.short_side_range = list(PAPER_SHORT_SIDE_RANGE if short_side_range is None
                                     else short_side_range) or None
        self.val_sets = list(val_sets) if val_sets is not None else ["embedded"]
        self.render_ahead = int(render_ahead)
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self._check_arguments()
        self._train_streams: dict[str, TrainingStream] | None = None
        self._eval_cache: dict[str, Dataset] = {}
        self._render_calls = 0

    # ------------------------------------------------------------------ argument checks

    def _check_arguments(self) -> None:
        hp = self.hparams
        for name, size in self.batch_sizes.items():
            if size < 0:
                raise DataError(f"--data.batch_size_{name} must be >= 0, got {size}")
        if self.batch_sizes["synthetic"] > 0 and hp.rgbd_source is None and not hp.syndof_root:
            raise DataError(
                "the synthetic stream has no source: set --data.rgbd_source (e.g. embedded) "
                "and/or --data.syndof_root, or --data.batch_size_synthetic 0"
            )
        if (hp.syndof_root or hp.syndof_test_root) and hp.syndof_label_space is None:
            raise DataError(
                "--data.syndof_label_space is required with SYNDOF files: 'released' for the "
                "dataset released with DMENet (y = x / 15), 'generator' for files of the current "
                "SYNDOF generator (y = sigma / 7), 'ours' for dmenet syndof export"
            )
        if self.render_ahead < 1:
            raise DataError(f"--data.render_ahead must be >= 1 (iterations per loader batch), "
                            f"got {self.render_ahead}")
        if hp.crop_size < 16:
            raise DataError(f"--data.crop_size must be at least 16 px, got {hp.crop_size}")
        low_high = self.short_side_range
        if low_high is not None and (len(low_high) != 2 or low_high[0] > low_high[1]):
            raise DataError(f"--data.short_side_range must be [low, high], got {low_high}")
        for name in [*self.val_sets, hp.test_set]:
            if name not in EVAL_SETS:
                raise DataError(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")

    # --------------------------------------------------------------------- data sources

    def _crops(self, dataset: Dataset, keys: Sequence[str]) -> TrainingCrops:
        return TrainingCrops(dataset, self.hparams.crop_size, keys=keys,
                             short_side_range=self.short_side_range,
                             length=self.hparams.samples_per_epoch)

    def build_training_streams(self) -> dict[str, TrainingStream]:
        """The training streams by name (streams with batch size 0 are absent)."""
        from dmenet.data.real import CUHKBlurDetection, ImageFolder
        from dmenet.data.syndof_files import ReleasedSyndof

        hp = self.hparams
        rendered = files = None
        if self.batch_sizes["synthetic"] > 0 and hp.rgbd_source is not None:
            rendered = WholeImageCameraCrops(
                rgbd_training_source(hp.rgbd_source, hp.embedded_train_scenes, hp.embedded_size),
                hp.crop_size, self.renderer, short_side_range=self.short_side_range,
                length=hp.samples_per_epoch)
        if self.batch_sizes["synthetic"] > 0 and hp.syndof_root:
            files = self._crops(
                ReleasedTrainingView(ReleasedSyndof(hp.syndof_root, hp.syndof_label_space)),
                SYNTHETIC_KEYS)
        streams = synthetic_streams(self.batch_sizes["synthetic"], rendered, files)
        # the user's folders first, so that a wrong path fails before any proxy rendering
        real = ImageFolder(hp.flickr_root) if self.batch_sizes["real"] > 0 and hp.flickr_root else None
        blur = (CUHKBlurDetection(hp.cuhk_root, hp.cuhk_train_split, hp.cuhk_mask_polarity)
                if self.batch_sizes["blur"] > 0 and hp.cuhk_root else None)
        for name, dataset, keys in (("real", real, ("image",)), ("blur", blur, ("image", "sharp_mask"))):
            if self.batch_sizes[name] > 0:
                if dataset is None:  # the proxy real domain
                    dataset = proxy_split(name, hp.proxy_images, hp.embedded_size, self.proxy_look)
                streams[name] = TrainingStream(self._crops(dataset, keys), self.batch_sizes[name])
        if not streams:
            raise DataError("every training stream is switched off (all batch sizes are 0)")
        return streams

    def eval_dataset(self, name: str, split: str = "val") -> Dataset:
        """An evaluation set by name (:func:`dmenet.data.splits.evaluation_set`), built once;
        ``split`` picks the held-out embedded / proxy scenes (``"val"`` or ``"test"``)."""
        key = f"{name}:{split}"
        if key not in self._eval_cache:
            self._eval_cache[key] = evaluation_set(name, split, self.hparams, self.renderer,
                                                   self.proxy_look)
        return self._eval_cache[key]

    # ------------------------------------------------------------------------ hooks

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self._train_streams is None:
            self._train_streams = self.build_training_streams()
        if stage in (None, "fit", "validate"):
            for name in self.val_sets:
                self.eval_dataset(name, "val")
        if stage in (None, "test"):
            self.eval_dataset(self.hparams.test_set, "test")

    def _loader(self, dataset: Dataset, batch_size: int = 1, train: bool = False) -> UserErrorLoader:
        """Training loaders shuffle and drop the last partial batch; evaluation and prediction
        loaders read every image once, in order."""
        return UserErrorLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                               num_workers=self.hparams.num_workers,
                               pin_memory=self.hparams.pin_memory,
                               persistent_workers=self.persistent_workers and train)

    def train_dataloader(self) -> CombinedLoader:
        if self._train_streams is None:
            self._train_streams = self.build_training_streams()
        loaders = {}
        k = self.render_ahead
        for name, stream in self._train_streams.items():
            rows = stream.batch_size * k
            if len(stream.dataset) < rows:
                ahead = f" x --data.render_ahead {k}" if k > 1 else ""
                raise DataError(f"the {name} stream has {len(stream.dataset)} samples per epoch, "
                                f"fewer than its batch size {stream.batch_size}{ahead}; add images "
                                "or raise --data.samples_per_epoch")
            loaders[name] = self._loader(stream.dataset, rows, train=True)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loaders(self, names: Sequence[str], split: str):
        loaders = [self._loader(self.eval_dataset(name, split)) for name in names]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self):
        return self._eval_loaders(self.val_sets, "val")

    def test_dataloader(self):
        return self._eval_loaders([self.hparams.test_set], "test")

    def predict_dataloader(self) -> UserErrorLoader:
        if not self.hparams.predict_paths:
            raise DataError("dmenet predict needs --data.predict_paths (files, folders or globs)")
        return self._loader(ImagePathsDataset(list(self.hparams.predict_paths)))

    # --------------------------------------------------------------- on-device synthesis

    def _synthesis_generator(self) -> torch.Generator:
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
        """Raw RGB-D crops -> the synthetic contract, on their device
        (:func:`dmenet.data.synthetic.render_crops` with this DataModule's renderer)."""
        return render_crops(self.renderer, raw, self._synthesis_generator())

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch: its synthetic crops rendered (all of its iterations' at once),
        then one batch dict per iteration (a list, with ``render_ahead`` > 1)."""
        if not isinstance(batch, dict) or "synthetic" not in batch:
            return batch
        synthetic = batch["synthetic"]
        if isinstance(synthetic, dict) and "depth_mm" in synthetic:
            batch["synthetic"] = self.render_synthetic(synthetic)
        streams = self._train_streams or {}
        if self.render_ahead == 1:
            return append_rows(batch, streams)
        return [append_rows(it, streams) for it in split_iterations(batch, self.render_ahead)]
