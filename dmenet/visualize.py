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


def colorize_tensor(y: torch.Tensor, cmap: str = DEFAULT_CMAP) -> torch.Tensor:
    """``(1, H, W)`` or ``(H, W)`` values in ``[0, 1]`` -> ``(3, H, W)`` float RGB in ``[0, 1]``."""
    rgb = colorize(y.detach().float().squeeze().cpu().numpy(), 0.0, 1.0, cmap)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def defocus_panel(
    image: torch.Tensor, prediction_y: torch.Tensor, label_y: torch.Tensor | None = None
) -> torch.Tensor:
    """One picture of a sample: input | prediction | prediction colour-mapped [| label | label colour-mapped].

    ``image (3, H, W)`` in ``[0, 1]``; ``prediction_y``, ``label_y``: ``(1, H, W)`` in ``[0, 1]``
    (``y = sigma / SIGMA_MAX_PX``). Returns ``(3, H, k * W)`` float in ``[0, 1]`` on the CPU.
    """
    image = image.detach().float().cpu().clamp(0, 1)
    pred = prediction_y.detach().float().cpu().clamp(0, 1)
    tiles = [image, pred.expand(3, -1, -1), colorize_tensor(pred)]
    if label_y is not None:
        label = label_y.detach().float().cpu().clamp(0, 1)
        tiles += [label.expand(3, -1, -1), colorize_tensor(label)]
    return torch.cat(tiles, dim=-1)


PANEL_CAPTION = "input | prediction | prediction (colour) | label | label (colour)"


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
