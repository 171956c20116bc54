"""dmenet: defocus map estimation from a single photo (DMENet, CVPR 2019) in PyTorch.

    import dmenet
    estimator = dmenet.load("model.ckpt", device="cpu")   # or dmenet.load("zhuo_sim")
    sigma_px = estimator.predict("photo.jpg")              # (H, W) float32, sigma in px

See :mod:`dmenet.api`. Everything heavy (torch, Lightning, Kornia) is imported lazily, on first
use of :func:`load`, so ``import dmenet`` stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dmenet.errors import DataError, DMENetError

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time see __getattr__
    from dmenet.api import DefocusEstimator, load

__version__ = "0.1.0"

__all__ = ["DMENetError", "DataError", "DefocusEstimator", "__version__", "load"]

_LAZY = {"load": "dmenet.api", "DefocusEstimator": "dmenet.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmenet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
