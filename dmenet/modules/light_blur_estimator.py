"""A lighter B: a ResNet18 U-Net (torchvision encoder), registered beside the paper's VGG19 B.

It proves the plugin design end to end: it returns the same :class:`BlurEstimate` (``y``, five
auxiliary maps H/16 .. H, the 64-channel full-resolution ``feature`` that D sees), so D, C, S
and the LightningModule work with it unchanged. About 13.8 M parameters instead of the paper B's
26.9 M, and much faster on a CPU.

Choose it in a config::

    model:
      blur_estimator:
        class_path: dmenet.modules.light_blur_estimator.LightBlurEstimator
        init_args:
          weights: imagenet
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dmenet.errors import DMENetError
from dmenet.modules.blocks import ConvBNLReLU, crop_to_scale, pad_to_multiple, upsample_concat
from dmenet.modules.blur_estimator import AuxHead
from dmenet.modules.contracts import BlurEstimate
from dmenet.modules.spec import Part
from dmenet.modules.vgg import ImageNetNormalize
from dmenet.registry import BLUR_ESTIMATORS

__all__ = ["LightBlurEstimator", "resnet18_backbone"]


def resnet18_backbone(weights: str | Path | None = "imagenet") -> nn.Module:
    """torchvision ResNet18 with ``"imagenet"`` weights, a local state_dict path, or ``None``."""
    from torchvision.models import ResNet18_Weights, resnet18

    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random", "")):
        return resnet18(weights=None)
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    path = Path(weights)
    if not path.is_file():
        raise DMENetError(
            f"{path}: ResNet18 weights file not found (use 'imagenet', a torchvision ResNet18 "
            "state_dict file, or null for random initialisation)"
        )
    net = resnet18(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state))
    except Exception as exc:  # noqa: BLE001
        raise DMENetError(f"{path}: not a torchvision ResNet18 state_dict ({exc})") from exc
    return net


@BLUR_ESTIMATORS.register("light_resnet18")
class LightBlurEstimator(Part):
    """ResNet18 U-Net B. Input ``(N, 3, H, W)`` in ``[0, 1]``, any size (padded to x32, cropped)."""

    size_multiple = 32

    def __init__(self, weights: str | Path | None = "imagenet", aux_heads: bool = True) -> None:
        super().__init__()
        net = resnet18_backbone(weights)
        self.normalize = ImageNetNormalize()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)  # 64, H/2
        self.pool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        # decoder: up x2, concat skip, one conv; H/32 -> H/16 -> H/8 -> H/4 -> H/2 -> H
        self.decoder4 = ConvBNLReLU(512 + 256, 256)  # H/16
        self.decoder3 = ConvBNLReLU(256 + 128, 128)  # H/8
        self.decoder2 = ConvBNLReLU(128 + 64, 64)  # H/4
        self.decoder1 = ConvBNLReLU(64 + 64, 64)  # H/2
        self.decoder0 = ConvBNLReLU(64 + 3, 64)  # H: the image itself is the full-resolution skip
        self.aux_heads = (
            nn.ModuleList(AuxHead(c, 32) for c in (256, 128, 64, 64, 64)) if aux_heads else None
        )
        self.head = nn.Sequential(ConvBNLReLU(64, 32), nn.Conv2d(32, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, image: torch.Tensor) -> BlurEstimate:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"B expects an image of shape (N, 3, H, W), got {tuple(image.shape)}")
        x, size_hw = pad_to_multiple(image, self.size_multiple)
        xn = self.normalize(x)
        s1 = self.stem(xn)
        s2 = self.layer1(self.pool(s1))
        s3 = self.layer2(s2)
        s4 = self.layer3(s3)
        s5 = self.layer4(s4)
        d4 = self.decoder4(upsample_concat(s5, s4))
        d3 = self.decoder3(upsample_concat(d4, s3))
        d2 = self.decoder2(upsample_concat(d3, s2))
        d1 = self.decoder1(upsample_concat(d2, s1))
        d0 = self.decoder0(upsample_concat(d1, xn))
        aux: list[torch.Tensor] = []
        if self.aux_heads is not None:
            for head, feat, down in zip(self.aux_heads, (d4, d3, d2, d1, d0), (16, 8, 4, 2, 1)):
                aux.append(crop_to_scale(head(feat), size_hw, down))
        y = self.head(d0)
        return BlurEstimate(
            y=crop_to_scale(y, size_hw, 1), aux=aux, feature=crop_to_scale(d0, size_hw, 1)
        )
