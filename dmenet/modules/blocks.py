"""Small building blocks shared by B, D and S (conv + BatchNorm + LeakyReLU, padding helpers)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
"""LeakyReLU slope of every decoder/discriminator activation (SPEC section 3)."""

PADDING_MODES: tuple[str, ...] = ("replicate", "zeros")
"""Padding of B's 3x3 convs: ``"replicate"`` (edge replication, what the reference's 1-px
TensorFlow ``SYMMETRIC`` padding is) or ``"zeros"`` (what torchvision's ImageNet VGG19 saw)."""


def check_padding_mode(padding_mode: str) -> str:
    """``padding_mode`` if it is one of :data:`PADDING_MODES`, else a ``ValueError`` naming them."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode {padding_mode!r}: choose one of {', '.join(PADDING_MODES)}")
    return padding_mode


class ConvBNLReLU(nn.Sequential):
    """``conv(k x k) -> BatchNorm -> LeakyReLU(0.2)``; module names ``conv``, ``bn``.

    ``padding_mode``: how the ``k // 2`` pixels of padding are filled (:data:`PADDING_MODES`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        # the conv has no bias: the BatchNorm that follows has its own shift
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False,
            padding_mode=check_padding_mode(padding_mode),
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def upsample_concat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling of ``x``, concatenated with the skip feature along channels."""
    return torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(N, C, H, W)`` at the bottom/right (edge replication) to a multiple of ``multiple``.

    Returns the padded tensor and the original ``(H, W)`` to crop back to.
    """
    h, w = x.shape[-2:]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h or pad_w:
        # replicate, not reflect: reflection fails on images smaller than the padding
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (h, w)


def crop_to_scale(x: torch.Tensor, size_hw: tuple[int, int], downsample: int) -> torch.Tensor:
    """Crop a padded map at ``1/downsample`` resolution back to ``ceil(size / downsample)``."""
    h = math.ceil(size_hw[0] / downsample)
    w = math.ceil(size_hw[1] / downsample)
    return x[..., :h, :w]
