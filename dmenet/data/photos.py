"""Users' photos as a dataset: files, folders and glob patterns, any size, no ground truth."""

from __future__ import annotations

import glob
from pathlib import Path

from torch.utils.data import Dataset

from dmenet.data.io import is_image_file, read_image_tensor
from dmenet.errors import DataError

__all__ = ["expand_paths", "deduplicate_names", "ImagePathsDataset"]

_GLOB_CHARS = set("*?[")


def expand_paths(paths: list[str] | str, recursive: bool = False) -> list[tuple[Path, str]]:
    """Expand files, folders and glob patterns into ``(image file, output name)`` pairs.

    A folder contributes its image files (by extension; subfolders too when ``recursive``), in
    sorted order. A file given explicitly is kept whatever its extension, so that an unreadable
    file is reported by name later rather than silently skipped. The output name is the file's
    stem, or its path relative to the folder given (``sub/img``) for folder members; clashes
    get ``-2``, ``-3`` ... appended. Duplicates of the same file are dropped.

    Raises:
        DataError: a path that does not exist, a pattern that matches nothing, or a folder
            without images.
    """
    if isinstance(paths, str):
        paths = [paths]
    found: list[tuple[Path, str]] = []
    for entry in paths:
        entry_str = str(entry)
        path = Path(entry_str).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and is_image_file(p))
            if not files:
                raise DataError(f"{path}: the folder holds no images ({', '.join(_exts())})")
            found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in files]
        elif path.is_file():
            found.append((path, path.stem))
        elif _GLOB_CHARS & set(entry_str):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            files = [m for m in matches if m.is_file() and is_image_file(m)]
            if not files:
                raise DataError(f"{entry_str}: the pattern matches no image files")
            found += [(p, p.stem) for p in files]
        else:
            raise DataError(f"{entry_str}: no such file or folder")
    return deduplicate_names(found)


def _exts() -> list[str]:
    from dmenet.data.io import IMAGE_EXTENSIONS

    return list(IMAGE_EXTENSIONS)


def deduplicate_names(found: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    seen_files: set[Path] = set()
    used: set[str] = set()
    out: list[tuple[Path, str]] = []
    for path, name in found:
        key = path.resolve()
        if key in seen_files:
            continue
        seen_files.add(key)
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name}-{n}"
        used.add(unique)
        out.append((path, unique))
    return out


class ImagePathsDataset(Dataset):
    """Photos from files, folders and globs, for prediction.

    Items: ``{"image": (3, H, W) float32 RGB in [0, 1], "name": str, "set": "predict",
    "path": str}``. Grey and RGBA photos become RGB; 8- and 16-bit files keep their precision
    (read with :func:`dmenet.data.io.read_image`). Sizes differ between photos, so batch them
    with ``batch_size=1``.
    """

    def __init__(self, paths: list[str] | str, recursive: bool = False) -> None:
        self.items = expand_paths(paths, recursive)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, name = self.items[index]
        return {"image": read_image_tensor(path), "name": name, "set": "predict", "path": str(path)}
