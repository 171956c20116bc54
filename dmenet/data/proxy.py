"""The proxy real domain of the embedded default: NOT real photos.

With no dataset downloaded, the real streams I_r and I_b (and the ``"proxy"`` evaluation set)
come from here. They are rendered from procedural RGB-D scenes like SYNDOF, but *differently*,
so that a domain gap exists for domain adaptation (D, L_adv) to close, as it does between
SYNDOF and real photos:

=====================  ===================================  ==================================
                        SYNDOF stream (I_s)                  proxy real domain (I_r, I_b)
=====================  ===================================  ==================================
scenes                  embedded scenes, training seeds      other seeds, no motorcycle,
                                                             colour-graded (white balance,
                                                             saturation, exposure)
point spread function   Gaussian                             disc (uniform aperture)
intensity space         sRGB values (as the reference)       linear light (gamma 2.2)
sensor                  none                                 shot + read noise (linear light)
file                    lossless                             JPEG, quality drawn in a range
=====================  ===================================  ==================================

The true blur is known, so every proxy image also carries dense labels (``sigma_px``,
``label``) and the binary sharp mask I_b trains S with (1 = sharp, where the CoC is at most
:data:`dmenet.labels.BINARY_COC_THRESHOLD_PX`); real CUHK / Flickr photos carry only what
they carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dmenet.errors import ConfigError, DataError

__all__ = ["ProxyLook", "ProxyRealDomain", "add_sensor_noise", "colour_grade", "jpeg_roundtrip"]


def colour_grade(
    linear: torch.Tensor,
    generator: torch.Generator | None = None,
    white_balance: float = 0.15,
    saturation: tuple[float, float] = (0.7, 1.4),
    exposure: tuple[float, float] = (0.7, 1.3),
) -> torch.Tensor:
    """A random per-image camera look on linear RGB ``(N, 3, H, W)``: white-balance gains
    (each channel x ``1 +- white_balance``), saturation and exposure factors. Clipped to [0, 1]."""
    n = linear.shape[0]

    def uniform(low: float, high: float, shape: Sequence[int]) -> torch.Tensor:
        r = torch.rand(tuple(shape), generator=generator, dtype=torch.float32)
        return (low + (high - low) * r).to(linear.device)

    gains = uniform(1 - white_balance, 1 + white_balance, (n, 3, 1, 1))
    graded = linear * gains
    grey = graded.mean(dim=1, keepdim=True)
    graded = grey + (graded - grey) * uniform(*saturation, (n, 1, 1, 1))
    return (graded * uniform(*exposure, (n, 1, 1, 1))).clamp(0.0, 1.0)


def add_sensor_noise(
    linear: torch.Tensor,
    generator: torch.Generator | None = None,
    shot: tuple[float, float] = (1e-4, 2e-3),
    read_std: tuple[float, float] = (2e-3, 1e-2),
) -> torch.Tensor:
    """Heteroscedastic sensor noise on linear RGB ``(N, 3, H, W)``: variance
    ``shot * x + read_std**2`` with per-image ``shot`` and ``read_std`` drawn uniformly."""
    n = linear.shape[0]
    a = shot[0] + (shot[1] - shot[0]) * torch.rand((n, 1, 1, 1), generator=generator)
    b = read_std[0] + (read_std[1] - read_std[0]) * torch.rand((n, 1, 1, 1), generator=generator)
    std = (a.to(linear) * linear.clamp(min=0) + b.to(linear) ** 2).sqrt()
    noise = torch.randn(linear.shape, generator=generator).to(linear)
    return (linear + std * noise).clamp(0.0, 1.0)


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode one sRGB image ``(3, H, W)`` in ``[0, 1]`` as JPEG at ``quality`` and decode it."""
    rgb = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always has a JPEG encoder
        raise DataError("OpenCV could not encode a JPEG")
    decoded = cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(decoded.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class ProxyLook:
    """How the proxy real domain is rendered: the ingredients of its gap to SYNDOF (module
    docstring). ``--data.proxy`` of the DataModule (e.g. ``--data.proxy.noise false``).

    Args:
        aperture: point spread function of :func:`dmenet.data.syndof.render_from_sigma`
            (``"disc"``; ``"gaussian"`` removes that part of the gap).
        gamma: rendering in linear light with this display gamma (``None``: on sRGB values).
        noise: add sensor noise (:func:`add_sensor_noise`).
        jpeg_quality: ``[low, high]`` JPEG quality range (1 to 100); ``None`` keeps images
            lossless.
        grade: random camera look (:func:`colour_grade`).
        c_max_px: largest CoC of the sampled cameras (``None``: the paper's 28 px).
        render_batch: images rendered together (random draws follow these batches, so
            another value gives other images).
    """

    aperture: Literal["disc", "gaussian"] = "disc"
    gamma: float | None = 2.2
    noise: bool = True
    jpeg_quality: tuple[int, int] | None = (60, 95)
    grade: bool = True
    c_max_px: float | None = None
    render_batch: int = 8

    def __post_init__(self) -> None:
        if self.aperture not in ("disc", "gaussian"):
            raise ConfigError(f"--data.proxy.aperture {self.aperture!r}: choose disc or gaussian")
        if self.gamma is not None and not self.gamma > 0:
            raise ConfigError(f"--data.proxy.gamma must be > 0 (or null), got {self.gamma}")
        if self.jpeg_quality is not None:
            quality = tuple(int(q) for q in self.jpeg_quality)
            if len(quality) != 2 or not 1 <= quality[0] <= quality[1] <= 100:
                raise ConfigError(f"--data.proxy.jpeg_quality must be [low, high] with "
                                  f"1 <= low <= high <= 100 (or null), got {list(self.jpeg_quality)}")
            object.__setattr__(self, "jpeg_quality", quality)
        if self.c_max_px is not None and not self.c_max_px > 0:
            raise ConfigError(f"--data.proxy.c_max_px must be > 0 (or null), got {self.c_max_px}")
        if self.render_batch < 1:
            raise ConfigError(f"--data.proxy.render_batch must be >= 1, got {self.render_batch}")


class ProxyRealDomain(Dataset):
    """Proxy "real" photos rendered from procedural RGB-D scenes (see the module docstring).

    Rendered once, at construction, and kept in memory (a few MB at the default sizes).

    Args:
        num_images: number of images.
        size: side (px) of the square scenes.
        seed: seed of the scenes and of every random draw (other seeds than the SYNDOF stream).
        look: how they are rendered (:class:`ProxyLook`; ``None``: its defaults).
        set_name: the ``"set"`` entry of each item.

    Items: ``{"image" (3,H,W), "sigma_px" (1,H,W), "label" (1,H,W) y, "sharp_mask" (1,H,W)
    1 = sharp, "name", "set"}``.
    """

    def __init__(
        self,
        num_images: int = 32,
        size: int = 256,
        seed: int = 30_013,
        look: ProxyLook | None = None,
        set_name: str = "proxy",
    ) -> None:
        if num_images < 1:
            raise DataError(f"the proxy real domain needs at least one image, got {num_images}")
        self.num_images = int(num_images)
        self.size = int(size)
        self.seed = int(seed)
        self.look = look if look is not None else ProxyLook()
        self.set_name = set_name
        self.items = self._render_all()

    def _render_all(self) -> list[dict]:
        from dmenet.data.rgbd import EmbeddedRGBD
        from dmenet.data.syndof import render_from_sigma
        from dmenet.data.thin_lens import (
            CameraSampler,
            binary_from_coc,
            clean_depth_mm,
            sigma_from_coc,
        )
        from dmenet.labels import C_MAX_PX, sigma_to_y

        look, render_batch = self.look, self.look.render_batch
        scenes = EmbeddedRGBD(
            num_scenes=self.num_images, size=(self.size, self.size), seed=self.seed,
            include_motorcycle=False,
        )
        generator = torch.Generator().manual_seed(self.seed)
        sampler = CameraSampler("paper", c_max_px=look.c_max_px or C_MAX_PX)
        gamma = look.gamma or 1.0
        items: list[dict] = []
        for start in range(0, self.num_images, render_batch):
            chunk = [scenes[i] for i in range(start, min(start + render_batch, self.num_images))]
            image = torch.stack([c["image"] for c in chunk]).float()
            depth = clean_depth_mm(torch.stack([c["depth_mm"] for c in chunk]).float())
            # cameras first, so that switching a gap ingredient off keeps the same labels
            camera = sampler.sample(depth, generator)
            signed = camera.signed_coc_px(depth, c_max_px=sampler.c_max_px)
            coc = signed.abs()
            if look.grade:
                linear = colour_grade(image.clamp(0, 1) ** gamma, generator)
                image = linear ** (1.0 / gamma)
            sigma_px = sigma_from_coc(coc)
            with torch.no_grad():
                blurred = render_from_sigma(
                    image, sigma_px, signed, aperture=look.aperture, gamma=look.gamma
                ).clamp(0.0, 1.0)
            if look.noise:
                blurred = add_sensor_noise(blurred ** gamma, generator) ** (1.0 / gamma)
            for j, scene in enumerate(chunk):
                picture = blurred[j]
                if look.jpeg_quality:
                    low, high = look.jpeg_quality
                    quality = int(torch.randint(low, high + 1, (1,), generator=generator))
                    picture = jpeg_roundtrip(picture, quality)
                index = start + j
                items.append({
                    "image": picture.contiguous(),
                    "sigma_px": sigma_px[j].contiguous(),
                    "label": sigma_to_y(sigma_px[j]).clamp(0.0, 1.0).contiguous(),
                    "sharp_mask": (1.0 - binary_from_coc(coc[j])).contiguous(),
                    "name": f"{self.set_name}_{index:04d}_{scene.get('name', '')}".rstrip("_"),
                    "set": self.set_name,
                })
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]
