"""VGG19: the ImageNet normalisation and the weight loading, written once.

B's encoder and C's perceptual network both come from here. Weights:

* ``"imagenet"``: torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (downloaded once into the
  torch hub cache on a user's machine, the normal torchvision way);
* a path to a local file: a torchvision VGG19 ``state_dict`` (``.pth``), loaded with
  ``weights_only=True`` (keys with or without the ``features.`` prefix);
* ``None``: random initialisation (tests, or training from scratch).

``padding_mode`` fills the 1-px padding of every 3x3 conv: ``"zeros"`` (torchvision, what the
ImageNet weights were trained with) or ``"replicate"`` (the reference DMENet's B).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dmenet.errors import DMENetError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# torchvision's vgg19().features indices of the layers SPEC section 3 names
VGG19_LAYER_INDEX: dict[str, int] = {
    "conv1_2": 2, "relu1_2": 3, "pool1": 4,
    "conv2_2": 7, "relu2_2": 8, "pool2": 9,
    "conv3_4": 16, "relu3_4": 17, "pool3": 18,
    "conv4_4": 25, "relu4_4": 26, "pool4": 27,
    "conv5_4": 34, "relu5_4": 35, "pool5": 36,
}


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` with the ImageNet statistics; input ``(N, 3, H, W)`` in ``[0, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        # constants, not weights: made on the CPU even when a part is built on the meta device
        # (dmenet.modules.spec.build), since no state_dict sets them
        mean = torch.tensor(IMAGENET_MEAN, device="cpu").view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device="cpu").view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _vgg19_conv_layers(padding_mode: str = "zeros") -> nn.Sequential:
    """torchvision's ``vgg19().features`` layout (37 layers, same indices), randomly initialised
    as torchvision does, without building the 120M-parameter classifier (about 0.5 GB we never
    use)."""
    from torchvision.models.vgg import cfgs

    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfgs["E"]:  # "E" is VGG19: channel counts, "M" = 2x2 max-pool
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1,
                                 padding_mode=padding_mode), nn.ReLU(inplace=True)]
            in_channels = int(v)
    features = nn.Sequential(*layers)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return features


def vgg19_features(weights: str | Path | None = "imagenet", padding_mode: str = "zeros") -> nn.Sequential:
    """torchvision's ``vgg19().features`` (37 layers) with the requested weights and padding."""
    from torchvision.models import VGG19_Weights

    features = _vgg19_conv_layers(padding_mode)
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random", "")):
        return features
    if isinstance(weights, str) and weights.lower() == "imagenet":
        # the normal torchvision download into the torch hub cache, then only the conv part
        state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        )
        return features
    path = Path(weights)
    if not path.is_file():
        raise DMENetError(
            f"{path}: VGG19 weights file not found (use 'imagenet', a torchvision VGG19 "
            "state_dict file, or null for random initialisation)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DMENetError(f"{path}: not a loadable PyTorch state_dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = features.load_state_dict(state, strict=False)
    if missing:
        raise DMENetError(f"{path}: VGG19 weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    return features
