"""Fixtures of the inference tests: a random-weight B whose output varies, checkpoints, photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F


def calibrate_batchnorm(model: torch.nn.Module, size_px: int = 64, seed: int = 0) -> torch.nn.Module:
    """Set every BatchNorm's running statistics from one batch of smooth random images.

    A randomly initialised B with default statistics outputs an almost constant map (sigmoid
    of tiny values); with calibrated statistics its activations have unit scale, so its output
    varies across the photo and comparisons (tiled vs untiled, ONNX vs PyTorch) mean something.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        images = F.avg_pool2d(torch.rand(2, 3, size_px, size_px, generator=generator), 5, 1, 2)
        model(images)
    return model.eval()


@pytest.fixture(scope="session")
def random_b() -> torch.nn.Module:
    """The paper's B (random VGG19 init, no download) with calibrated BatchNorm, eval mode."""
    from dmenet.modules.blur_estimator import BlurEstimator

    torch.manual_seed(0)
    return calibrate_batchnorm(BlurEstimator(weights=None))


@pytest.fixture(scope="session")
def lightning_ckpt(random_b, tmp_path_factory) -> Path:
    """A real Lightning checkpoint of DMENet (B only: D, C, S off) written by a Trainer."""
    import lightning as L

    from dmenet.lightning_model import DMENet

    model = DMENet(blur_estimator=random_b, domain_discriminator=False, content_loss=False,
                   sharpness_calibrator=False, vgg_weights=None)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "b.ckpt"
    trainer.save_checkpoint(path)
    return path


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like float RGB image (H, W, 3) in [0, 1]: smooth regions and edges."""
    rng = np.random.default_rng(seed)
    img = rng.random((height, width, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    img[:, : width // 2] = cv2.GaussianBlur(img[:, : width // 2], (0, 0), 3.0)
    return np.clip((img - img.min()) / (np.ptp(img) + 1e-6), 0, 1)


@pytest.fixture()
def photo_folder(tmp_path) -> Path:
    """Photos in the formats users have: 8-bit jpg/png/webp/tiff, 16-bit png, grey, RGBA."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rgb = smooth_rgb(40, 56)
    bgr8 = (cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) * 255).round().astype(np.uint8)
    cv2.imwrite(str(folder / "a.jpg"), bgr8)
    cv2.imwrite(str(folder / "b.png"), bgr8[:36, :50])
    cv2.imwrite(str(folder / "c.webp"), bgr8[:30])
    cv2.imwrite(str(folder / "d.tiff"), (cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) * 65535).astype(np.uint16))
    cv2.imwrite(str(folder / "grey16.png"), (rgb[:, :, 0] * 65535).astype(np.uint16))
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([bgr8, np.full(bgr8.shape[:2], 128, np.uint8)]))
    return folder


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An inference checkpoint of :class:`TinyB` in the released label space."""
    from dmenet.checkpoint import save_inference_checkpoint
    from tests.inference.tiny_b import TinyB

    torch.manual_seed(0)
    model = calibrate_batchnorm(TinyB())
    return save_inference_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.ckpt", model,
                                     label_space="released", source="tests")
