"""Procedural RGB-D scenes for the embedded SYNDOF source: no download, unlimited variety.

A scene is a textured background plane (fronto-parallel or slanted) plus a few textured
shapes (rectangles, discs, ellipses, triangles) at random depths, painted far to near so
nearer shapes occlude farther ones. Textures are random crops of scikit-image's bundled
photos (all shipped with the package, available offline), sometimes tinted or flipped.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["TEXTURE_PHOTOS", "texture_bank", "make_scene"]

TEXTURE_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "brick", "grass", "gravel",
    "moon", "page", "text", "immunohistochemistry", "retina", "cell", "colorwheel",
)


@lru_cache(maxsize=1)
def texture_bank() -> tuple[np.ndarray, ...]:
    """The bundled photos as float32 RGB ``(H, W, 3)`` in [0, 1] (loaded once)."""
    from skimage import data

    photos = []
    for name in TEXTURE_PHOTOS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            img = np.asarray(loader())
        except Exception:  # a photo missing from this scikit-image build: skip it
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
        photos.append(np.clip(img.astype(np.float32) / scale, 0.0, 1.0))
    if not photos:
        raise RuntimeError("scikit-image ships none of the texture photos")
    return tuple(photos)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random ``(h, w, 3)`` crop of a random photo, resized, maybe flipped and tinted."""
    import cv2

    photo = texture_bank()[int(rng.integers(len(texture_bank())))]
    ph, pw = photo.shape[:2]
    # crop a window of the target aspect at a random scale, then resize to (h, w)
    scale = rng.uniform(0.3, 1.0)
    ch = max(4, int(min(ph, pw * h / max(w, 1)) * scale))
    cw = max(4, int(ch * w / max(h, 1)))
    cw, ch = min(cw, pw), min(ch, ph)
    y0 = int(rng.integers(0, ph - ch + 1))
    x0 = int(rng.integers(0, pw - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    tex = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        tex = tex[:, ::-1]
    if rng.random() < 0.3:
        tex = np.clip(tex * rng.uniform(0.6, 1.2, size=3).astype(np.float32), 0.0, 1.0)
    return np.ascontiguousarray(tex, dtype=np.float32)


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    ry, rx = rng.uniform(0.08, 0.35) * h, rng.uniform(0.08, 0.35) * w
    kind = int(rng.integers(4))
    if kind == 0:  # rectangle
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    if kind == 1:  # disc
        r = min(ry, rx)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:  # rotated ellipse
        a = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    # triangle: inside three half-planes
    pts = np.stack([rng.uniform(0, w, 3), rng.uniform(0, h, 3)], axis=1)
    inside = np.ones((h, w), dtype=bool)
    sign = None
    for i in range(3):
        (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % 3]
        side = (x2 - x1) * (yy - y1) - (y2 - y1) * (xx - x1)
        sign = np.sign(side.sum()) if sign is None else sign
        inside &= side * sign >= 0
    return inside


def make_scene(size: tuple[int, int] = (240, 320), seed: int = 0,
               near_mm: float = 500.0, far_mm: float = 20000.0,
               num_shapes: tuple[int, int] = (2, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    """One procedural scene: ``image (3, H, W)`` float32 in [0, 1], ``depth_mm (1, H, W)``.

    Deterministic in ``seed``. The background lies in the far half of ``[near_mm, far_mm]``
    (slanted half the time, like a floor or a wall seen at an angle); shapes are
    fronto-parallel planes at random depths in front of it.
    """
    h, w = int(size[0]), int(size[1])
    if h < 2 or w < 2:
        raise ValueError(f"scene size must be at least 2x2, got {size}")
    rng = np.random.default_rng(seed)
    image = _texture(rng, h, w)
    log_near, log_far = np.log(near_mm), np.log(far_mm)
    back = float(np.exp(rng.uniform((log_near + log_far) / 2, log_far)))
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gy, gx = rng.uniform(-1, 1, 2)
        tilt = (gy * (yy / h - 0.5) + gx * (xx / w - 0.5)) * rng.uniform(0.2, 0.9)
        depth = (back * np.exp(tilt)).astype(np.float32)
    else:
        depth = np.full((h, w), back, dtype=np.float32)
    n = int(rng.integers(num_shapes[0], num_shapes[1] + 1))
    depths = np.exp(rng.uniform(log_near, np.log(back), n))
    for d in sorted(depths, reverse=True):  # far to near: nearer shapes occlude
        mask = _shape_mask(rng, h, w)
        if not mask.any():
            continue
        image[mask] = _texture(rng, h, w)[mask]
        depth[mask] = d
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return img, torch.from_numpy(depth)[None]
