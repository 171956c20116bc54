"""Per-photo outputs of inference, written once for ``dmenet infer`` and ``dmenet predict``.

For a photo named ``NAME`` the output folder receives:

* ``NAME_sigma_px.npy``: float32 ``(H, W)``, the defocus map as the Gaussian blur sigma in
  pixels of the input photo (the exact numbers; load with ``numpy.load``);
* ``NAME_sigma_px_x1000.png``: the same map as a 16-bit grey PNG holding
  ``round(1000 * sigma_px)`` (so 7 px is stored as 7000; the scale is also in the JSON);
* ``NAME_sigma_color.png``: an 8-bit colour picture of the map (``inferno``, black = sharp,
  fixed range ``0 .. 7 px`` so that pictures of different photos compare);
* ``NAME_defocus.json``: the units, the PNG scale, the label space of the checkpoint that
  produced the map, the photo's size and simple statistics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmenet.data.io import atomic_outputs, check_output_file, write_image, write_png16
from dmenet.errors import OutputExistsError
from dmenet.labels import SIGMA_MAX_PX
from dmenet.visualize import colorize

__all__ = [
    "PNG_SIGMA_SCALE",
    "OUTPUT_SUFFIXES",
    "output_paths",
    "check_outputs_free",
    "refuse_existing",
    "prepare_output",
    "colorize",
    "write_defocus_outputs",
]

PNG_SIGMA_SCALE: float = 1000.0
"""The 16-bit PNG stores ``round(PNG_SIGMA_SCALE * sigma_px)`` (max 65.535 px)."""

OUTPUT_SUFFIXES: dict[str, str] = {
    "npy": "_sigma_px.npy",
    "png16": "_sigma_px_x1000.png",
    "color": "_sigma_color.png",
    "json": "_defocus.json",
}


def output_paths(out_dir: str | Path, name: str,
                 suffixes: dict[str, str] | None = None) -> dict[str, Path]:
    """Where the outputs of the photo ``name`` go (``name`` may hold ``/`` for subfolders);
    ``suffixes`` (kind -> suffix) default to :data:`OUTPUT_SUFFIXES`."""
    out_dir = Path(out_dir)
    return {kind: out_dir / f"{name}{suffix}"
            for kind, suffix in (OUTPUT_SUFFIXES if suffixes is None else suffixes).items()}


def refuse_existing(paths: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse, before any work is done, when any of these output files exists; creates nothing.

    The tools (infer, magnify, depth, deblur) check their outputs with this first and make the
    folders only when they write (:func:`prepare_output`), so a run whose inputs all fail leaves
    nothing behind.

    Raises:
        OutputExistsError: naming the first existing files, unless ``overwrite``.
    """
    if overwrite:
        return
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing:
        shown = ", ".join(str(p) for p in existing[:3])
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise OutputExistsError(f"outputs exist: {shown}{more}; pass --overwrite to replace them")


def prepare_output(path: str | Path, overwrite: bool) -> Path:
    """Just before writing ``path``: refuse it if it exists (unless ``overwrite``), make its folder."""
    return check_output_file(path, overwrite)


def check_outputs_free(out_dir: str | Path, names: Sequence[str], overwrite: bool,
                       suffixes: dict[str, str] | None = None) -> None:
    """:func:`refuse_existing` for the outputs of these photos in ``out_dir`` (the files of
    :func:`output_paths` with these ``suffixes``); creates nothing."""
    refuse_existing([p for name in names for p in output_paths(out_dir, name, suffixes).values()],
                    overwrite)


def write_defocus_outputs(
    out_dir: str | Path,
    name: str,
    sigma_px: np.ndarray | torch.Tensor,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the four outputs of one photo; returns their paths.

    Args:
        sigma_px: ``(H, W)`` (or ``(1, H, W)`` / ``(1, 1, H, W)``) defocus sigma in pixels.
        meta: extra JSON fields (source photo, checkpoint, label space ...).

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is false (nothing is written).
        OutputWriteError: the files could not be written (e.g. a full disk); none is left.
    """
    if isinstance(sigma_px, torch.Tensor):
        sigma_px = sigma_px.detach().float().cpu().numpy()
    sigma_px = np.asarray(sigma_px, dtype=np.float32)
    while sigma_px.ndim > 2 and sigma_px.shape[0] == 1:
        sigma_px = sigma_px[0]
    if sigma_px.ndim != 2:
        raise ValueError(f"sigma_px must be (H, W), got {sigma_px.shape}")
    paths = output_paths(out_dir, name)
    for path in paths.values():  # all or nothing: check every file before writing one
        check_output_file(path, overwrite)
    finite = sigma_px[np.isfinite(sigma_px)]
    record = {
        "name": name,
        "unit": "pixels: standard deviation of the local Gaussian defocus blur (sigma_px)",
        "height_px": int(sigma_px.shape[0]),
        "width_px": int(sigma_px.shape[1]),
        "files": {
            "npy": paths["npy"].name,
            "png16": paths["png16"].name,
            "color": paths["color"].name,
        },
        "png16_scale": PNG_SIGMA_SCALE,
        "png16_meaning": f"sigma_px = png_value / {PNG_SIGMA_SCALE:g}",
        "color_range_px": [0.0, SIGMA_MAX_PX],
        "colormap": "inferno",
        "sigma_px_min": float(finite.min()) if finite.size else None,
        "sigma_px_mean": float(finite.mean()) if finite.size else None,
        "sigma_px_max": float(finite.max()) if finite.size else None,
    }
    record.update(meta or {})
    # the four files appear together or not at all (a full disk leaves none of them)
    with atomic_outputs(*paths.values()) as temporaries:
        temporary = dict(zip(paths, temporaries))
        np.save(temporary["npy"], sigma_px, allow_pickle=False)
        write_png16(temporary["png16"], sigma_px * PNG_SIGMA_SCALE)
        write_image(temporary["color"], colorize(sigma_px))
        temporary["json"].write_text(json.dumps(record, indent=2) + "\n")
    return paths
