"""C, content preservation (SPEC section 3): a frozen VGG19 compares prediction and label.

Both maps ``(N, 1, H, W)`` (``y``) are repeated to 3 channels, ImageNet-normalised like an image
and passed through VGG19 up to relu4_4 ("conv4_4, l = 4"); the loss is the MSE of the features.
C is frozen: parameters without gradients, always in eval mode, in no optimiser. Gradients flow
through it into the prediction (and so into B), never into C.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from dmenet.modules.spec import Part
from dmenet.modules.vgg import VGG19_LAYER_INDEX, ImageNetNormalize, vgg19_features
from dmenet.registry import CONTENT_LOSSES

__all__ = ["ContentLoss"]


@CONTENT_LOSSES.register("vgg19_conv4_4")
class ContentLoss(Part):
    """C: ``(pred_y (N,1,H,W), label_y (N,1,H,W)) -> scalar`` MSE of frozen VGG19 features.

    Args:
        weights: ``"imagenet"`` (paper), a local torchvision VGG19 state_dict, or ``None`` (tests).
        layer: the VGG19 layer whose output is compared (default ``relu4_4``).
    """

    def __init__(self, weights: str | Path | None = "imagenet", layer: str = "relu4_4") -> None:
        super().__init__()
        if layer not in VGG19_LAYER_INDEX:
            raise ValueError(
                f"unknown VGG19 layer {layer!r}; choose one of {sorted(VGG19_LAYER_INDEX)}"
            )
        self.normalize = ImageNetNormalize()
        self.features = vgg19_features(weights)[: VGG19_LAYER_INDEX[layer] + 1]
        self.features.requires_grad_(False)
        self.features.eval()

    def train(self, mode: bool = True) -> ContentLoss:
        # frozen network: never leaves eval mode (Lightning calls .train() on the whole model)
        return super().train(False)

    def _embed(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 4 or y.shape[1] != 1:
            raise ValueError(f"C expects maps of shape (N, 1, H, W), got {tuple(y.shape)}")
        return self.features(self.normalize(y.repeat(1, 3, 1, 1)))

    def forward(self, pred_y: torch.Tensor, label_y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._embed(label_y)
        return F.mse_loss(self._embed(pred_y), target)
