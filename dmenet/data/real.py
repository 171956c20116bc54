"""Readers of the real-domain datasets: real photos (SPEC sections 1, 5).

Every reader is a ``torch.utils.data.Dataset`` of dicts following the evaluation-batch contract
of ``docs/ARCHITECTURE.md`` (before batching): ``"image"`` float32 ``(3, H, W)`` in ``[0, 1]``,
``"name"`` (file stem), ``"set"`` (dataset name), and when the dataset knows them
``"sharp_mask"`` ``(1, H, W)`` (1 = sharp), ``"label"`` ``(1, H, W)`` (our ``y``) and
``"sigma_px"`` ``(1, H, W)``.

* :class:`CUHKBlurDetection`: ``image/out_of_focusNNNN.jpg`` + ``gt/out_of_focusNNNN.png``
  (motion-blur images skipped); mask polarity detected from the image or set explicitly.
* :class:`ImageFolder`: Flickr-style unlabelled folders (recursive; non-images skipped with one
  warning).
* :class:`RTF`: ``image/{0,1,1.6}/`` + ``gt/`` as ``.mat`` (``blurMap``, disc radius, mapped to
  Gaussian sigma by :func:`rtf_disc_to_gauss`) or ``.npy`` (Gaussian sigma in px).

The released SYNDOF files are synthetic, not real: their reader is
:mod:`dmenet.data.syndof_files`.

Bad input (missing root, wrong layout, unreadable image, image/mask size mismatch) raises
:class:`dmenet.errors.DataError` naming the file and the expected layout.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dmenet.data.io import (
    IMAGE_EXTENSIONS,
    check_same_size,
    find_partner,
    list_images,
    read_image,
    read_mask,
    require_dir,
    to_chw_tensor,
)
from dmenet.errors import DataError
from dmenet.labels import sigma_to_y

__all__ = [
    "CUHK_LAYOUT",
    "CUHK_SPLITS",
    "CUHKBlurDetection",
    "FLICKR_LAYOUT",
    "ImageFolder",
    "RTF",
    "RTF_LAYOUT",
    "RTF_NOISE_LEVELS",
    "cuhk_split_names",
    "detect_mask_polarity",
    "rtf_disc_to_gauss",
    "rtf_table",
]

CUHK_LAYOUT = "<root>/image/out_of_focusNNNN.jpg and <root>/gt/out_of_focusNNNN.png"
FLICKR_LAYOUT = "<root>/**/*.jpg|png|... (any folder tree of photos)"
RTF_LAYOUT = "<root>/image/{0,1,1.6}/NAME.png and <root>/gt/NAME.mat (blurMap) or NAME.npy (sigma)"

CUHK_SPLITS: tuple[str, ...] = (
    "all", "dmenet_train", "dmenet_test", "common_train", "common_test",
)
"""Named CUHK splits over the defocus images sorted by name: DMENet's 504/200 and the 604/100
of other works (the test part is the *last* images of the sorted list)."""

_CUHK_SPLIT_TEST_SIZE = {"dmenet": 200, "common": 100}

RTF_NOISE_LEVELS: tuple[str, ...] = ("0", "1", "1.6")


# ---------------------------------------------------------------------------------- helpers


def _warn_skipped(folder: Path, skipped: Sequence[Path]) -> None:
    if skipped:
        names = ", ".join(str(p.relative_to(folder)) for p in skipped[:20])
        more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(
            f"{folder}: skipped {len(skipped)} non-image file(s): {names}{more}",
            UserWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------- CUHK


def detect_mask_polarity(image: np.ndarray, white: np.ndarray) -> str | None:
    """Which side of a binary blur mask is sharp, judged from the photo itself.

    The in-focus region holds more high-frequency energy than the defocused one: compare the
    mean absolute Laplacian of the grey image inside the mask's white and black parts.

    Args:
        image: float RGB ``(H, W, 3)`` in ``[0, 1]``.
        white: bool ``(H, W)``, the mask's white (nonzero) pixels.

    Returns:
        ``"white_is_sharp"``, ``"white_is_blurred"`` or ``None`` when one side is (nearly) empty.
    """
    import cv2

    grey = image.mean(axis=2).astype(np.float32)
    energy = np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))
    n_white, n_black = int(white.sum()), int((~white).sum())
    if min(n_white, n_black) < max(16, white.size // 200):
        return None
    return "white_is_sharp" if energy[white].mean() > energy[~white].mean() else "white_is_blurred"


def cuhk_split_names(stems: Sequence[str], split: str) -> list[str]:
    """The stems of a named CUHK split (see :data:`CUHK_SPLITS`) from all defocus stems."""
    stems = sorted(stems)
    if split == "all":
        return stems
    family, _, part = split.partition("_")
    test_size = _CUHK_SPLIT_TEST_SIZE[family]
    if len(stems) <= test_size:
        raise DataError(
            f"CUHK split {split!r} needs more than {test_size} defocus images, found {len(stems)}; "
            "use split='all' or a list file"
        )
    return stems[:-test_size] if part == "train" else stems[-test_size:]


class CUHKBlurDetection(Dataset):
    """CUHK blur detection (Shi et al. 2014): defocus photos with binary blur masks (I_b).

    Layout: ``<root>/image/out_of_focusNNNN.jpg`` and ``<root>/gt/out_of_focusNNNN.png``.
    Images whose name starts with ``motion`` (the 296 motion-blur images) are skipped.

    Args:
        root: dataset folder.
        split: a name from :data:`CUHK_SPLITS` (``dmenet_train`` 504 / ``dmenet_test`` 200,
            ``common_train`` 604 / ``common_test`` 100; test = the last names in sorted order),
            a path to a text file with one image name (stem or file name) per line, or a list
            of names.
        mask_polarity: ``"auto"`` (detected from the first images with
            :func:`detect_mask_polarity`: the side with more fine detail is sharp),
            ``"white_is_sharp"`` (the public CUHK masks) or ``"white_is_blurred"``.

    Items: ``{"image" (3,H,W), "sharp_mask" (1,H,W) float 1 = sharp (the reference's target),
    "name", "set": "cuhk"}``. The resolved polarity is ``self.mask_polarity``.
    """

    POLARITIES = ("auto", "white_is_sharp", "white_is_blurred")

    def __init__(
        self,
        root: str | Path,
        split: str | Sequence[str] = "all",
        mask_polarity: str = "auto",
        polarity_probe_images: int = 5,
    ) -> None:
        self.root = Path(root)
        if mask_polarity not in self.POLARITIES:
            raise DataError(
                f"CUHK mask_polarity {mask_polarity!r}: choose one of {', '.join(self.POLARITIES)}"
            )
        require_dir(self.root, "the CUHK root", CUHK_LAYOUT)
        image_dir = require_dir(self.root / "image", "the CUHK image folder", CUHK_LAYOUT)
        gt_dir = require_dir(self.root / "gt", "the CUHK mask folder", CUHK_LAYOUT)
        images, _ = list_images(image_dir)
        defocus = {p.stem: p for p in images if not p.stem.lower().startswith("motion")}
        if not defocus:
            raise DataError(f"{image_dir}: no defocus images found; expected layout: {CUHK_LAYOUT}")
        names = self._resolve_split(split, defocus)
        self.samples: list[tuple[str, Path, Path]] = []
        for name in names:
            mask_path = find_partner(gt_dir, name, (".png", ".bmp", ".jpg", ".tif"))
            if mask_path is None:
                raise DataError(
                    f"{defocus[name]}: no mask {gt_dir / (name + '.png')}; "
                    f"expected layout: {CUHK_LAYOUT}"
                )
            self.samples.append((name, defocus[name], mask_path))
        self.mask_polarity = (
            self._detect(polarity_probe_images) if mask_polarity == "auto" else mask_polarity
        )

    def _resolve_split(self, split: str | Sequence[str], defocus: dict[str, Path]) -> list[str]:
        if isinstance(split, str) and split in CUHK_SPLITS:
            return cuhk_split_names(list(defocus), split)
        if isinstance(split, str):
            list_path = Path(split)
            if not list_path.is_file():
                raise DataError(
                    f"CUHK split {split!r}: neither a split name ({', '.join(CUHK_SPLITS)}) "
                    "nor an existing list file"
                )
            entries = [
                line.strip() for line in list_path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
            where = str(list_path)
        else:
            entries, where = list(split), "the split list"
        names = []
        for entry in entries:
            stem = Path(entry).stem if Path(entry).suffix.lower() in IMAGE_EXTENSIONS else entry
            stem = Path(stem).name
            if stem not in defocus:
                raise DataError(f"{where}: {entry!r} is not a defocus image in {self.root / 'image'}")
            names.append(stem)
        if not names:
            raise DataError(f"{where}: the split lists no images")
        return names

    def _detect(self, probes: int) -> str:
        votes = []
        for _, image_path, mask_path in self.samples[: max(1, probes)]:
            image, white = self._read_pair(image_path, mask_path)
            vote = detect_mask_polarity(image, white)
            if vote is not None:
                votes.append(vote)
        if not votes:
            warnings.warn(
                f"{self.root}: could not detect the CUHK mask polarity (masks nearly uniform); "
                "assuming white_is_sharp (the public CUHK masks). Set mask_polarity to be sure.",
                UserWarning,
                stacklevel=3,
            )
            return "white_is_sharp"
        return max(set(votes), key=votes.count)

    @staticmethod
    def _read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(image_path)
        white = read_mask(mask_path)
        check_same_size(image, white, image_path, mask_path)
        return image, white

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        name, image_path, mask_path = self.samples[index]
        image, white = self._read_pair(image_path, mask_path)
        sharp = white if self.mask_polarity == "white_is_sharp" else ~white
        return {
            "image": to_chw_tensor(image),
            "sharp_mask": to_chw_tensor(sharp.astype(np.float32)),
            "name": name,
            "set": "cuhk",
        }


# ------------------------------------------------------------------------- unlabelled folders


class ImageFolder(Dataset):
    """Unlabelled photos (Flickr-style I_r): every image file under ``root``.

    Args:
        root: a folder; searched recursively unless ``recursive=False``.
        set_name: the ``"set"`` entry of each item.

    Non-image files are skipped with one warning that lists them; an unreadable image raises
    :class:`DataError` naming it when it is read. Items: ``{"image" (3,H,W), "name", "set"}``.
    """

    def __init__(self, root: str | Path, recursive: bool = True, set_name: str = "flickr") -> None:
        self.root = Path(root)
        require_dir(self.root, "the image folder", FLICKR_LAYOUT)
        self.paths, skipped = list_images(self.root, recursive=recursive)
        _warn_skipped(self.root, skipped)
        if not self.paths:
            raise DataError(
                f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                f"expected layout: {FLICKR_LAYOUT}"
            )
        self.set_name = set_name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        name = str(path.relative_to(self.root).with_suffix("")).replace("\\", "/")
        return {"image": to_chw_tensor(read_image(path)), "name": name, "set": self.set_name}


# ---------------------------------------------------------------------------------------- RTF


RTF_TABLE_RESOURCE = "rtf_disc_to_gauss.csv"


@lru_cache(maxsize=1)
def rtf_table() -> tuple[np.ndarray, np.ndarray]:
    """The RTF conversion table shipped with the package: ``(disc_radius_px, gaussian_sigma_px)``.

    23 pairs, 0.5 -> 0.3 ... 6.0 -> 3.275 (a copy of the reference's table, read from
    ``dmenet/data/assets/rtf_disc_to_gauss.csv``; columns ``gaussian_sigma,disc_blur``).
    """
    text = resources.files("dmenet.data").joinpath("assets", RTF_TABLE_RESOURCE).read_text()
    rows = list(csv.DictReader(text.splitlines()))
    disc = np.array([float(r["disc_blur"]) for r in rows], dtype=np.float64)
    sigma = np.array([float(r["gaussian_sigma"]) for r in rows], dtype=np.float64)
    order = np.argsort(disc)
    return disc[order], sigma[order]


def rtf_disc_to_gauss(disc_radius_px):
    """RTF ground truth: disc blur radius (px) -> Gaussian sigma (px) by nearest tabulated radius.

    Works on numpy arrays and tensors of any shape (returns the same kind). A radius exactly
    half-way between two tabulated radii takes the smaller one; radii below 0.5 (in focus)
    map to the table's smallest sigma, 0.3 px, as the nearest-lookup rule says.
    """
    disc, sigma = rtf_table()
    if isinstance(disc_radius_px, torch.Tensor):
        table_disc = torch.as_tensor(disc, dtype=disc_radius_px.dtype, device=disc_radius_px.device)
        table_sigma = torch.as_tensor(sigma, dtype=disc_radius_px.dtype, device=disc_radius_px.device)
        nearest = (disc_radius_px.unsqueeze(-1) - table_disc).abs().argmin(dim=-1)
        return table_sigma[nearest]
    radius = np.asarray(disc_radius_px, dtype=np.float64)
    nearest = np.abs(radius[..., None] - disc).argmin(axis=-1)
    return sigma[nearest]


def _read_rtf_gt(path: Path) -> np.ndarray:
    """An RTF ground truth as Gaussian sigma in px ``(H, W)``."""
    if path.suffix.lower() == ".npy":
        try:
            sigma = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from None
        if sigma.ndim == 3 and sigma.shape[-1] == 1:
            sigma = sigma[..., 0]
        if sigma.ndim != 2:
            raise DataError(f"{path}: expected a 2-D sigma map (H, W), got shape {sigma.shape}")
        return sigma.astype(np.float32)
    from scipy.io import loadmat

    try:
        content = loadmat(str(path))
    except NotImplementedError:
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save with -v7 or as .npy"
        ) from None
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DataError(f"{path}: not a readable .mat file ({exc})") from None
    if "blurMap" not in content:
        keys = ", ".join(k for k in content if not k.startswith("__"))
        raise DataError(f"{path}: no variable 'blurMap' (found: {keys or 'none'})")
    radius = np.asarray(content["blurMap"], dtype=np.float32)
    if radius.ndim != 2:
        raise DataError(f"{path}: 'blurMap' must be 2-D, got shape {radius.shape}")
    return np.asarray(rtf_disc_to_gauss(radius), dtype=np.float32)


class RTF(Dataset):
    """RTF (D'Andres et al. 2016): photos at noise levels 0, 1, 1.6 with dense defocus GT.

    Layout: ``<root>/image/{0,1,1.6}/NAME.png`` and ``<root>/gt/NAME.mat`` (variable ``blurMap``:
    disc blur radius in px, mapped to Gaussian sigma by the evaluation protocol's table,
    :func:`rtf_disc_to_gauss`) or ``<root>/gt/NAME.npy`` (Gaussian sigma in px). A per-noise ``gt/<noise>/`` folder is used
    when present.

    Items: ``{"image" (3,H,W), "sigma_px" (1,H,W), "label" (1,H,W) y = sigma / SIGMA_MAX_PX
    (clipped to 1), "name", "set": "rtf_<noise>"}`` (the evaluator applies the RTF protocol to
    sets named ``rtf*``; the noise level keeps the reports of the three levels apart). The image and its GT may differ in size (the
    protocol crops both to the common top-left size); they are returned as they are.
    """

    def __init__(self, root: str | Path, noise: str | float = "0") -> None:
        self.root = Path(root)
        self.noise = self._noise_name(noise)
        require_dir(self.root, "the RTF root", RTF_LAYOUT)
        image_dir = require_dir(
            self.root / "image" / self.noise, f"the RTF noise-{self.noise} image folder", RTF_LAYOUT
        )
        gt_dir = require_dir(self.root / "gt", "the RTF ground-truth folder", RTF_LAYOUT)
        if (gt_dir / self.noise).is_dir():
            gt_dir = gt_dir / self.noise
        images, _ = list_images(image_dir)
        if not images:
            raise DataError(f"{image_dir}: no images; expected layout: {RTF_LAYOUT}")
        self.samples: list[tuple[str, Path, Path]] = []
        for path in images:
            gt = find_partner(gt_dir, path.stem, (".mat", ".npy"))
            if gt is None:
                raise DataError(
                    f"{path}: no ground truth {gt_dir / path.stem}.mat or .npy; "
                    f"expected layout: {RTF_LAYOUT}"
                )
            self.samples.append((path.stem, path, gt))

    @staticmethod
    def _noise_name(noise: str | float) -> str:
        for name in RTF_NOISE_LEVELS:
            try:
                if float(noise) == float(name):
                    return name
            except (TypeError, ValueError):
                break
        raise DataError(f"RTF noise level {noise!r}: choose one of {', '.join(RTF_NOISE_LEVELS)}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        name, image_path, gt_path = self.samples[index]
        sigma_px = np.clip(_read_rtf_gt(gt_path), 0.0, None)
        sigma = to_chw_tensor(sigma_px)
        return {
            "image": to_chw_tensor(read_image(image_path)),
            "sigma_px": sigma,
            "label": sigma_to_y(sigma).clamp(0.0, 1.0),
            "name": name,
            "set": f"rtf_{self.noise}",
        }
