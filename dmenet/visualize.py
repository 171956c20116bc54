"""Pictures of defocus maps, written once: colour mapping and the image panels runs log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmenet.labels import SIGMA_MAX_PX

DEFAULT_CMAP = "inferno"


def colorize(
    values: np.ndarray, vmin: float = 0.0, vmax: float = SIGMA_MAX_PX, cmap: str = DEFAULT_CMAP
) -> np.ndarray:
    """Map ``(H, W)`` values to an RGB picture ``(H, W, 3)`` uint8 over ``[vmin, vmax]``."""
    from matplotlib import colormaps

    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    span = max(vmax - vmin, 1e-12)
    index = np.clip((np.asarray(values, dtype=np.float32) - vmin) / span * 255.0 + 0.5, 0, 255)
    return lut[index.astype(np.uint8)]


PANEL_MIN_HEIGHT_PX = 256
"""Panels are upscaled (by a whole factor, nearest neighbour) to at least this height."""

_TITLE_BAR_PX = 22
_COLOUR_BAR_PX = 64


def _label_tile(tile: np.ndarray, title: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 with a title bar of white text on black above it."""
    import cv2

    height, width = tile.shape[:2]
    bar = np.zeros((_TITLE_BAR_PX, width, 3), np.uint8)
    scale = 0.45
    (text_w, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = max(2, (width - text_w) // 2)
    cv2.putText(bar, title, (x, _TITLE_BAR_PX - 7), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], axis=0)


def sigma_colour_bar(height_px: int, vmax_px: float = SIGMA_MAX_PX, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """A vertical colour bar ``(height_px, 64, 3)`` uint8: ``0 px`` at the bottom, ``vmax_px`` at the top,
    with tick labels in px."""
    import cv2

    values = np.linspace(vmax_px, 0.0, height_px, dtype=np.float32)[:, None].repeat(14, axis=1)
    bar = np.zeros((height_px, _COLOUR_BAR_PX, 3), np.uint8)
    bar[:, 4:18] = colorize(values, 0.0, vmax_px, cmap)
    for fraction in (0.0, 0.5, 1.0):
        row = int(round((1.0 - fraction) * (height_px - 1)))
        cv2.line(bar, (18, row), (22, row), (255, 255, 255), 1)
        text = f"{fraction * vmax_px:g}"
        y = min(max(row + 4, 10), height_px - 3)
        cv2.putText(bar, text, (24, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return bar


def defocus_panel(
    image: torch.Tensor, prediction_y: torch.Tensor, label_y: torch.Tensor | None = None,
    min_height_px: int = PANEL_MIN_HEIGHT_PX, prediction_space: str = "ours",
    label_space: str = "ours",
) -> torch.Tensor:
    """One titled picture of a sample: ``photo | label | prediction | error`` and a colour bar.

    ``image (3, H, W)`` in ``[0, 1]``; ``prediction_y``, ``label_y``: ``(1, H, W)`` in their label
    spaces (``prediction_space``, ``label_space``; ``"ours"``: ``y = sigma / SIGMA_MAX_PX``),
    converted with :func:`dmenet.labels.to_sigma_px`. The maps are shown as sigma in px on one colour scale
    (``0 .. SIGMA_MAX_PX``, the bar on the right); ``error`` is ``|prediction - label|`` in px on
    the same scale. Without a label: ``photo | prediction``. Tiles are upscaled by a whole factor
    (nearest neighbour) to at least ``min_height_px`` rows. Returns ``(3, H', W')`` float in
    ``[0, 1]`` on the CPU.
    """
    from dmenet.labels import to_sigma_px

    def sigma_px(y: torch.Tensor, space: str) -> np.ndarray:
        return to_sigma_px(y.detach().float().cpu(), space).clamp(0, SIGMA_MAX_PX).squeeze(0).numpy()

    photo = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    sigma_pred = sigma_px(prediction_y, prediction_space)
    tiles = [("photo", (photo * 255.0 + 0.5).astype(np.uint8))]
    if label_y is not None:
        sigma_label = sigma_px(label_y, label_space)
        tiles.append(("label (sigma px)", colorize(sigma_label)))
    tiles.append(("prediction (sigma px)", colorize(sigma_pred)))
    if label_y is not None:
        tiles.append(("error |pred - label| px", colorize(np.abs(sigma_pred - sigma_label))))
    height = photo.shape[0]
    factor = max(1, -(-int(min_height_px) // max(height, 1)))
    row = []
    for title, tile in tiles:
        if factor > 1:
            tile = tile.repeat(factor, axis=0).repeat(factor, axis=1)
        row.append(_label_tile(tile, title))
        row.append(np.zeros((row[-1].shape[0], 2, 3), np.uint8))  # a thin black gap
    bar = sigma_colour_bar(height * factor)
    row.append(_label_tile(bar, "px"))
    picture = np.concatenate(row, axis=1)
    return torch.from_numpy(picture).permute(2, 0, 1).float() / 255.0


PANEL_CAPTION = (
    "photo | label sigma (px) | prediction sigma (px) | error |prediction - label| (px); "
    f"colour scale 0..{SIGMA_MAX_PX:g} px"
)


def log_panels(
    logger: Any, key: str, panels: list[torch.Tensor], step: int, captions: list[str] | None = None,
    out_dir: str | Path | None = None,
) -> list[Path]:
    """Write panels as PNGs under ``out_dir`` (if given) and send them to the logger.

    W&B gets ``wandb.Image`` panels (``WandbLogger.log_image``), TensorBoard ``add_image``;
    other loggers only get the files.
    """
    from torchvision.utils import save_image

    paths: list[Path] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, panel in enumerate(panels):
            suffix = "" if len(panels) == 1 else f"_{i}"
            path = out_dir / f"iter_{step:07d}{suffix}.png"
            save_image(panel, path)
            paths.append(path)
    if logger is None or not panels:
        return paths
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    captions = captions or [PANEL_CAPTION] * len(panels)
    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=list(panels), step=step, caption=captions)
    elif isinstance(logger, TensorBoardLogger):
        for i, panel in enumerate(panels):
            logger.experiment.add_image(f"{key}/{i}", panel, step)
    return paths
