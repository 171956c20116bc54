"""Image and label file reading and writing, written once: 16-bit safe, with errors that name
the file.

PIL silently truncates 16-bit RGB PNGs to 8 bits, so everything here reads with OpenCV
(``cv2.IMREAD_UNCHANGED``) and converts explicitly. Every output file of the tools is written
through :func:`atomic_outputs` (a temporary name in the same folder, then renamed), so a full
disk, an error or an interrupt never leaves a partial output behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from dmenet.errors import DataError, OutputWriteError

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_raw(path: str | Path) -> np.ndarray:
    """Read an image file unchanged (any bit depth, channels in OpenCV's BGR(A) order)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    # np.fromfile + imdecode also handles non-ASCII paths
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"{path}: the file is empty")
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{path}: not a readable image (unknown format, truncated or corrupt)")
    return array


def to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """Pixel values as float32 in ``[0, 1]``: 8-bit / 255, 16-bit / 65535, floats clipped;
    another pixel type is a :class:`DataError` naming ``path``."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype in (np.float32, np.float64):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    raise DataError(f"{path}: unsupported pixel type {array.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Read a photo as float32 RGB ``(H, W, 3)`` in ``[0, 1]``.

    Grey images are repeated to 3 channels, the alpha channel of RGBA is dropped (photos
    carry no meaningful alpha), 16-bit images keep their precision.
    """
    path = Path(path)
    array = read_raw(path)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    elif array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    else:
        raise DataError(f"{path}: unsupported image shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(f"{path}: the image has no pixels")
    return to_unit_float(array, path)


@dataclass(frozen=True)
class PhotoLayout:
    """How a photo file holds its pixels (:func:`read_photo`), to write a result the same way
    (:func:`write_photo`): pixel type, a 2-D (grey) array or not, and its alpha plane."""

    dtype: np.dtype
    ndim: int
    alpha: np.ndarray | None
    """``(H, W, 1)``, the file's own alpha values, or None."""


def read_photo(path: str | Path) -> tuple[torch.Tensor, PhotoLayout]:
    """Read a photo keeping its format: ``(colour (C, H, W) float32 in [0, 1], layout)``.

    ``C`` is 3 (RGB) or 1 (grey); the alpha of RGBA is set aside in the layout, untouched.
    Any bit depth (8, 16, float); :func:`write_photo` writes a result back in the same format.
    """
    path = Path(path)
    raw = read_raw(path)
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] not in (1, 3, 4)):
        raise DataError(f"{path}: unsupported image shape {raw.shape}")
    if raw.shape[0] < 1 or raw.shape[1] < 1:
        raise DataError(f"{path}: the image has no pixels")
    planes = raw[:, :, None] if raw.ndim == 2 else raw
    alpha = planes[:, :, 3:].copy() if planes.shape[2] == 4 else None
    colour = planes[:, :, 2::-1] if planes.shape[2] >= 3 else planes  # BGR(A) -> RGB
    colour = to_unit_float(np.ascontiguousarray(colour), path)
    return to_chw_tensor(colour), PhotoLayout(raw.dtype, raw.ndim, alpha)


def read_image_tensor(path: str | Path) -> torch.Tensor:
    """:func:`read_image` as a float32 tensor ``(3, H, W)`` in ``[0, 1]``."""
    return to_chw_tensor(read_image(path))


def to_chw_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` -> float32 tensor ``(C, H, W)``; ``(H, W)`` -> ``(1, H, W)``."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 2:
        return torch.from_numpy(array)[None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def load_npy(path: str | Path) -> np.ndarray:
    """A ``.npy`` array (no pickles); a file NumPy cannot read is a :class:`DataError`."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from exc


def read_gray(path: str | Path) -> np.ndarray:
    """Read a single-channel map (mask or label) as its raw integer/float values ``(H, W)``.

    Multi-channel files must hold equal channels (as SYNDOF's 3-channel label PNGs do);
    the first channel is returned. No scaling is applied: 16-bit values stay as they are.
    """
    path = Path(path)
    array = read_raw(path)
    if array.ndim == 3:
        if array.shape[2] == 4:
            array = array[:, :, :3]
        array = array[:, :, 0] if array.shape[2] >= 1 else array
    return array


def read_mask(path: str | Path, threshold: float = 0.5) -> np.ndarray:
    """Read a binary mask as ``bool (H, W)``: values above ``threshold`` of the type's max."""
    path = Path(path)
    array = read_gray(path)
    if array.dtype == np.uint8:
        top = 255.0
    elif array.dtype == np.uint16:
        top = 65535.0
    else:
        top = float(np.nanmax(array)) if array.size else 1.0
        top = top if top > 1.0 else 1.0
    return array.astype(np.float32) > threshold * top


# ------------------------------------------------------------------ dataset folder layouts


def require_dir(path: Path, what: str, layout: str) -> Path:
    """``path`` if it is a folder, else :class:`DataError` naming it, ``what`` it should be
    and the dataset's expected ``layout``."""
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist; expected layout: {layout}")
    if not path.is_dir():
        raise DataError(f"{path}: {what} is not a folder; expected layout: {layout}")
    return path


def list_images(folder: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """Image files (by extension) and the other files of ``folder``, both sorted; hidden
    files are left out."""
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if is_image_file(p)]
    others = [p for p in files if not is_image_file(p)]
    return images, others


def find_partner(folder: Path, stem: str, extensions: tuple[str, ...]) -> Path | None:
    """The first ``folder/stem.ext`` that exists, trying each extension in lower then upper
    case (an image's mask or label file); ``None`` when there is none."""
    for ext in extensions:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def check_same_size(image: np.ndarray, other: np.ndarray, image_path: Path,
                    other_path: Path) -> None:
    """:class:`DataError` naming ``other_path`` when its ``(H, W)`` differs from its image's."""
    if image.shape[:2] != other.shape[:2]:
        raise DataError(
            f"{other_path}: size {other.shape[1]}x{other.shape[0]} (WxH) differs from its image "
            f"{image_path} ({image.shape[1]}x{image.shape[0]})"
        )


# ---------------------------------------------------------------------------------- writing


def write_png16(path: str | Path, array: np.ndarray, channels: int = 1) -> None:
    """Write a non-negative array as a 16-bit PNG (values rounded and clipped to 0..65535)."""
    values = np.clip(np.rint(np.asarray(array, dtype=np.float64)), 0, 65535).astype(np.uint16)
    if channels == 3:
        values = np.repeat(values[:, :, None], 3, axis=2)
    _imwrite(path, values)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write float RGB ``(H, W, 3)`` in ``[0, 1]`` (or uint8) as an 8-bit image."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    if rgb.ndim == 3:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    _imwrite(path, rgb)


def _imwrite(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    ok, buffer = cv2.imencode(path.suffix or ".png", array)
    if not ok:
        raise DataError(f"{path}: could not encode the image as {path.suffix or '.png'}")
    with atomic_outputs(path) as (temporary,):
        buffer.tofile(str(temporary))


_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_outputs(*paths: str | Path) -> Iterator[list[Path]]:
    """Write ``paths`` all or nothing: yields one temporary path per output, in the output's
    folder with its suffix (writers that add or read the extension, such as ``numpy.save``,
    behave the same); when the block ends they are renamed onto the outputs (``os.replace``),
    and if it raises (full disk, any error, Ctrl-C) they are removed. An output's name
    therefore only ever holds a complete file, and a run killed outright leaves at most a hidden
    ``.dmenet-*`` file. Nested use is fine (an image writer inside a group of outputs).

    Raises:
        OutputWriteError: the block failed with an ``OSError``: one line naming the folder
            (full disk or quota) or the file (any other reason, e.g. no permission).
    """
    outputs = [Path(p) for p in paths]
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    temporaries = [out.with_name(f".dmenet-{token}-{i}{out.suffix}") for i, out in enumerate(outputs)]
    # folders made here are removed again on failure, deepest first
    created = sorted({d for out in outputs for d in (out.parent, *out.parent.parents)
                      if not d.exists()}, key=lambda d: len(d.parts), reverse=True)
    try:
        for out in outputs:
            out.parent.mkdir(parents=True, exist_ok=True)
        yield temporaries
        for temporary, out in zip(temporaries, outputs):
            os.replace(temporary, out)
    except BaseException as exc:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: another output may have landed there
        # a nested writer's error names its output, which is one of these temporaries
        nested = isinstance(exc, OutputWriteError) and exc.filename in map(str, temporaries)
        if isinstance(exc, OSError) and (nested or not isinstance(exc, OutputWriteError)):
            raise _write_error(exc, outputs, temporaries) from exc
        raise


def _write_error(exc: OSError, outputs: list[Path], temporaries: list[Path]) -> OutputWriteError:
    """One line for a failed write: the folder when the disk is full, else the file."""
    failed = str(exc.filename or "")
    out = next((o for o, t in zip(outputs, temporaries) if failed in (str(o), str(t))), outputs[0])
    if exc.errno in _FULL:
        error = OutputWriteError(f"{out.parent}: no space left on the device; {out.name} was not "
                                 "written (free some space or write elsewhere)")
    else:
        error = OutputWriteError(f"{out}: could not be written ({exc.strerror or exc})")
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, str(out)
    return error


def write_photo(path: str | Path, colour: torch.Tensor, layout: PhotoLayout) -> None:
    """Write ``colour (C, H, W)`` in ``[0, 1]`` in the format of the photo :func:`read_photo`
    read (``layout``): its pixel type (rounded to 8 / 16 bits, float kept), grey or RGB, its alpha."""
    planes = colour.detach().float().cpu().permute(1, 2, 0).numpy()
    if layout.dtype == np.uint8:
        planes = np.clip(np.rint(planes * 255.0), 0, 255).astype(np.uint8)
    elif layout.dtype == np.uint16:
        planes = np.clip(np.rint(planes * 65535.0), 0, 65535).astype(np.uint16)
    else:
        planes = planes.astype(layout.dtype)
    if planes.shape[2] == 3:
        planes = planes[:, :, ::-1]  # RGB -> BGR
    if layout.alpha is not None:
        planes = np.concatenate([planes, layout.alpha], axis=2)
    _imwrite(path, np.ascontiguousarray(planes[:, :, 0] if layout.ndim == 2 else planes))


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty output folder unless ``overwrite``; create it otherwise."""
    from dmenet.errors import OutputExistsError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out}: the folder is not empty; pass --overwrite to write into it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output file unless ``overwrite``."""
    from dmenet.errors import OutputExistsError

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
