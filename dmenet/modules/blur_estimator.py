"""B, the blur estimation network (SPEC section 3): a VGG19 U-Net that outputs the defocus map.

Layer by layer (module names are stable; docs/blur_estimator_layers.md lists every conv):

* ``normalize``: ImageNet normalisation (dmenet.modules.vgg, the one place for it).
* ``encoder``: torchvision's ``vgg19().features[:36]`` (conv1_1 .. relu5_4, pools after blocks
  1-4, no pool5), same indices as torchvision, so ``encoder.N.weight`` = ``features.N.weight``.
  Skips after ReLU: conv1_2 (64, H), conv2_2 (128, H/2), conv3_4 (256, H/4), conv4_4 (512, H/8);
  bottleneck conv5_4 (512, H/16).
* ``decoder3`` .. ``decoder0``: nearest x2 upsampling, concatenation with the skip, then 3x3
  conv + BN + LeakyReLU(0.2): 3 x 256, 3 x 128, 3 x 64, 1 x 64.
* ``aux_heads.0`` .. ``aux_heads.4``: at H/16, H/8, H/4, H/2, H (on the bottleneck and the
  outputs of decoder3 .. decoder0): 3x3 conv + BN + LReLU of width 256, 128, 64, 32, 32, then
  3x3 conv to one channel + BN + sigmoid (the reference's layers and widths).
* ``refine.0`` .. ``refine.6``: residual blocks, two 3x3 conv(64)+BN+LReLU plus a 1x1
  conv(64)+BN+LReLU projection shortcut.
* ``head``: conv 64 -> conv 32 -> conv 1 -> sigmoid.

Every 3x3 conv (encoder included) pads by one pixel with ``padding_mode``: ``"replicate"`` by
default, which is the reference's 1-px TensorFlow ``SYMMETRIC`` padding, so the published weights
(``dmenet convert-official``) load into the default B and compute what the reference does;
``"zeros"`` is what torchvision's ImageNet VGG19 was trained with (docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dmenet.modules.blocks import (
    LEAKY_SLOPE,
    ConvBNLReLU,
    check_padding_mode,
    crop_to_scale,
    pad_to_multiple,
    upsample_concat,
)
from dmenet.modules.contracts import BlurEstimate
from dmenet.modules.spec import Part
from dmenet.modules.vgg import VGG19_LAYER_INDEX, ImageNetNormalize, vgg19_features
from dmenet.registry import BLUR_ESTIMATORS

__all__ = ["AUX_HIDDEN_CHANNELS", "AuxHead", "BlurEstimate", "BlurEstimator", "ResidualBlock"]

AUX_HIDDEN_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 32)
"""Hidden widths of the reference's aux heads on the bottleneck, decoder3 .. decoder0 (SPEC 3)."""

# outputs of these encoder layers are kept: four skips and the bottleneck (after ReLU)
_SKIP_LAYERS = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")


class ResidualBlock(nn.Module):
    """Two 3x3 conv+BN+LReLU plus a 1x1 conv+BN+LReLU projection shortcut (``body``, ``shortcut``)."""

    def __init__(self, channels: int = 64, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNLReLU(channels, channels, padding_mode=padding_mode),
            ConvBNLReLU(channels, channels, padding_mode=padding_mode),
        )
        self.shortcut = ConvBNLReLU(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class AuxHead(nn.Sequential):
    """Scale-wise auxiliary prediction (the reference's layers): 3x3 conv + BN + LReLU(0.2) to
    ``hidden_channels`` (``conv1``, ``bn1``), then 3x3 conv to 1 channel + BN + sigmoid
    (``conv2``, ``bn2``). The convs have no bias: the BatchNorm after each has its own shift."""

    def __init__(self, in_channels: int, hidden_channels: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False,
                               padding_mode=padding_mode)
        self.bn1 = nn.BatchNorm2d(hidden_channels)
        self.act1 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(hidden_channels, 1, 3, padding=1, bias=False, padding_mode=padding_mode)
        self.bn2 = nn.BatchNorm2d(1)
        self.sigmoid = nn.Sigmoid()


def _stage(in_channels: int, out_channels: int, n_convs: int, padding_mode: str) -> nn.Sequential:
    layers = [ConvBNLReLU(in_channels, out_channels, padding_mode=padding_mode)]
    layers += [ConvBNLReLU(out_channels, out_channels, padding_mode=padding_mode)
               for _ in range(n_convs - 1)]
    return nn.Sequential(*layers)


@BLUR_ESTIMATORS.register("dmenet_vgg19")
class BlurEstimator(Part):
    """The paper's B: VGG19 U-Net with auxiliary heads, refinement blocks and a sigmoid head.

    Args:
        weights: VGG19 encoder weights: ``"imagenet"`` (torchvision, downloaded once), a local
            torchvision VGG19 state_dict path, or ``None`` (random init; tests).
        aux_heads: build the five auxiliary heads (off for the "no aux" ablation).
        n_refine_blocks: residual refinement blocks after the last upsampling (paper: 7).
        padding_mode: ``"replicate"`` (the reference's padding, default) or ``"zeros"``
            (torchvision's), for every 3x3 conv.

    Input ``(N, 3, H, W)`` in ``[0, 1]`` of any size (padded to a multiple of 16, cropped back).
    """

    size_multiple = 16

    def __init__(
        self,
        weights: str | Path | None = "imagenet",
        aux_heads: bool = True,
        n_refine_blocks: int = 7,
        padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        pad = check_padding_mode(padding_mode)
        self.normalize = ImageNetNormalize()
        self.encoder = vgg19_features(weights, pad)[: VGG19_LAYER_INDEX["pool5"]]
        self.skip_indices: tuple[int, ...] = tuple(VGG19_LAYER_INDEX[name] for name in _SKIP_LAYERS)
        """``encoder`` layers whose outputs :meth:`encode` keeps: the four skips and the bottleneck."""
        self.decoder3 = _stage(512 + 512, 256, 3, pad)
        self.decoder2 = _stage(256 + 256, 128, 3, pad)
        self.decoder1 = _stage(128 + 128, 64, 3, pad)
        self.decoder0 = _stage(64 + 64, 64, 1, pad)
        # inputs of the aux heads, coarse to fine: bottleneck, decoder3 .. decoder0
        self.aux_heads = (
            nn.ModuleList(AuxHead(c, w, pad) for c, w in zip((512, 256, 128, 64, 64), AUX_HIDDEN_CHANNELS))
            if aux_heads else None
        )
        self.refine = nn.Sequential(*(ResidualBlock(64, pad) for _ in range(n_refine_blocks)))
        self.head = nn.Sequential(
            ConvBNLReLU(64, 64, padding_mode=pad),
            ConvBNLReLU(64, 32, padding_mode=pad),
            nn.Conv2d(32, 1, 3, padding=1, padding_mode=pad),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image -> [conv1_2, conv2_2, conv3_4, conv4_4, conv5_4] features (after ReLU)."""
        feats = []
        for index, layer in enumerate(self.encoder):
            x = layer(x)
            if index in self.skip_indices:
                feats.append(x)
        return feats

    def forward(self, image: torch.Tensor) -> BlurEstimate:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"B expects an image of shape (N, 3, H, W), got {tuple(image.shape)}")
        x, size_hw = pad_to_multiple(image, self.size_multiple)
        s0, s1, s2, s3, bottleneck = self.encode(self.normalize(x))
        d3 = self.decoder3(upsample_concat(bottleneck, s3))
        d2 = self.decoder2(upsample_concat(d3, s2))
        d1 = self.decoder1(upsample_concat(d2, s1))
        d0 = self.decoder0(upsample_concat(d1, s0))
        aux: list[torch.Tensor] = []
        if self.aux_heads is not None:
            for head, feat, down in zip(
                self.aux_heads, (bottleneck, d3, d2, d1, d0), (16, 8, 4, 2, 1)
            ):
                aux.append(crop_to_scale(head(feat), size_hw, down))
        y = self.head(self.refine(d0))
        return BlurEstimate(
            y=crop_to_scale(y, size_hw, 1), aux=aux, feature=crop_to_scale(d0, size_hw, 1)
        )
