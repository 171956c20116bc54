"""The Python API: ``dmenet.load(...)`` and :class:`DefocusEstimator`.

    import dmenet
    estimator = dmenet.load("dmenet_bdcs", device="cpu")  # the published weights (cached)
    sigma_px = estimator.predict("photo.jpg")          # (H, W) float32 NumPy, sigma in px

It runs exactly what ``dmenet infer`` runs (:func:`dmenet.inference.infer.make_estimator`:
the checkpoint's B through :func:`dmenet.checkpoint.load_predictor`, big photos in
overlapping tiles by :mod:`dmenet.tiling`), so ``predict`` equals the ``.npy`` that
``dmenet infer`` writes for the same photo and options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmenet.errors import DataError, DMENetError

__all__ = ["DefocusEstimator", "load"]

CLASSICAL = ("zhuo_sim",)
"""Names :func:`load` accepts instead of a checkpoint path (estimators without weights)."""


def load(
    checkpoint: str | Path,
    device: str | torch.device = "auto",
    **options: Any,
) -> DefocusEstimator:
    """A defocus estimator from named weights, a checkpoint file, or ``"zhuo_sim"`` (the
    classical baseline).

    Args:
        checkpoint: the name of published weights (``"dmenet_bdcs"``: fetched, converted and
            cached on first use, :mod:`dmenet.weights`), a ``dmenet fit`` checkpoint
            (``.ckpt``), the output of ``dmenet convert-official``, or ``"zhuo_sim"``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        **options: ``dmenet infer``'s options by their Python names, with its defaults:
            ``tile`` (``"auto"``, a side in px, or 0 = never tile), ``overlap``, ``memory_gb``,
            ``half``, ``reference_path``, ``trust_checkpoint``.

    Raises:
        DMENetError: a missing or unreadable checkpoint, a bad device or option (one line).
    """
    from dmenet.inference.infer import build_parser, make_estimator
    from dmenet.weights import NAMED_WEIGHTS, is_named

    name = str(checkpoint)
    # infer's own defaults, so that predict() equals `dmenet infer` with the same options
    args = build_parser().parse_args(["photo", "--out", "unused"])
    unknown = sorted(set(options) - set(vars(args)) - {"paths", "out", "recursive", "overwrite"})
    if unknown or {"paths", "out", "recursive", "overwrite", "ckpt", "estimator"} & set(options):
        raise DMENetError(f"dmenet.load: unknown option(s) {', '.join(sorted(options))}")
    vars(args).update(options)
    args.device = str(device)
    if name in CLASSICAL:
        args.estimator, args.ckpt = name, None
    elif is_named(name):
        args.estimator, args.ckpt = "b", name
    else:
        if not Path(name).expanduser().is_file():
            raise DMENetError(f"{name}: no such checkpoint file (or use one of "
                              f"{', '.join([*NAMED_WEIGHTS, *CLASSICAL])})")
        args.estimator, args.ckpt = "b", str(Path(name).expanduser())
    return DefocusEstimator(make_estimator(args))


class DefocusEstimator:
    """``predict(image) -> sigma in px``, the height and width of the image.

    Accepted images:

    * a path (``str`` / ``Path``) to a photo: read as ``dmenet infer`` reads it;
    * a NumPy array ``(H, W, 3)`` RGB or ``(H, W)`` grey (``(H, W, 4)``: alpha dropped), uint8
      (``/ 255``), uint16 (``/ 65535``) or float in ``[0, 1]``;
    * a PIL image (any mode PIL can convert to RGB; 16-bit grey keeps its precision);
    * a torch tensor ``(N, 3, H, W)`` or ``(3, H, W)``, float in ``[0, 1]`` (or uint8).

    Returns float32 sigma in px: NumPy ``(H, W)`` for a path, an array or a PIL image; a torch
    tensor ``(N, 1, H, W)`` (or ``(1, H, W)``) on the input's device for a tensor.

    Attributes:
        describe: what the estimator is (checkpoint, label space, device, tiling).
    """

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator  # dmenet.inference.infer.SigmaEstimator
        self.describe: dict = dict(estimator.describe)

    def __repr__(self) -> str:
        what = self.describe.get("checkpoint") or self.describe.get("estimator")
        return f"DefocusEstimator({what!s}, device={self.describe.get('device', 'cpu')})"

    def predict(self, image: Any) -> np.ndarray | torch.Tensor:
        """Sigma in px of ``image`` (see the class docstring for what is accepted)."""
        if isinstance(image, torch.Tensor):
            return self._predict_tensor(image)
        return self._estimator(_to_chw(image))

    __call__ = predict

    def _predict_tensor(self, image: torch.Tensor) -> torch.Tensor:
        batched = image.ndim == 4
        if not batched:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[1] != 3:
            raise DataError(f"a tensor image must be (N, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        elif not image.is_floating_point():
            raise DataError(f"a tensor image must be float in [0, 1] or uint8, got {image.dtype}")
        sigma = torch.stack([
            self._estimator.tensor(one.detach().float().clamp(0.0, 1.0)) for one in image
        ])[:, None]
        sigma = sigma.to(device=image.device, dtype=torch.float32)
        return sigma if batched else sigma[0]


def _to_chw(image: Any) -> torch.Tensor:
    """A path, a NumPy array or a PIL image -> float32 ``(3, H, W)`` in ``[0, 1]``."""
    from dmenet.data.io import read_image_tensor, to_unit_float

    if isinstance(image, (str, Path)):
        return read_image_tensor(image)
    if type(image).__module__.startswith("PIL."):
        image = _pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise DataError(
            f"cannot read an image from {type(image).__name__}: give a path, a NumPy array, "
            "a PIL image or a torch tensor"
        )
    array = image
    if array.ndim == 3 and array.shape[2] in (1, 4):
        array = array[:, :, :1] if array.shape[2] == 1 else array[:, :, :3]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(f"an image array must be (H, W, 3) or (H, W), got {image.shape}")
    if array.dtype.kind == "f":
        top = float(np.nanmax(array)) if array.size else 0.0
        if top > 1.0 + 1e-3:
            raise DataError(
                f"a float image must be in [0, 1], its maximum is {top:g} (divide 8-bit values by 255)"
            )
        array = array.astype(np.float32, copy=False)
    rgb = to_unit_float(np.ascontiguousarray(array), Path("image array"))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _pil_to_array(image: Any) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":  # 32-bit integer grey, as PIL opens most 16-bit PNGs
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("RGB"))
