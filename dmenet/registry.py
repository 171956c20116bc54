"""Registries of swappable parts (timm style): a name -> constructor map filled by a decorator.

Configs choose parts by ``class_path`` (LightningCLI's way); the registries serve
``dmenet list``, error messages that list the known names, and tests that are parametrised
over every registered part.

>>> from dmenet.registry import BLUR_ESTIMATORS
>>> @BLUR_ESTIMATORS.register("my_b")
... class MyB(torch.nn.Module): ...
>>> BLUR_ESTIMATORS.create("my_b")
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """A named map from part names to constructors (classes or factory functions)."""

    def __init__(self, kind: str, description: str = "") -> None:
        self.kind = kind
        self.description = description
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@REGISTRY.register("name")`` (default name: the object's ``__name__``)."""

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            if key in self._entries and self._entries[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is already registered to {self._entries[key]!r}")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """The constructor registered as ``name``; a typo gets an error listing the known names."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the part registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def class_path(self, name: str) -> str:
        """Full dotted path of a registered part, as a LightningCLI ``class_path``."""
        obj = self.get(name)
        return f"{obj.__module__}.{obj.__qualname__}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


BLUR_ESTIMATORS = Registry("blur_estimator", "B: image (N, 3, H, W) in [0, 1] -> defocus map")
DOMAIN_DISCRIMINATORS = Registry("domain_discriminator", "D: B's stage-0 feature -> domain logits")
CONTENT_LOSSES = Registry("content_loss", "C: frozen perceptual loss between prediction and label")
SHARPNESS_CALIBRATORS = Registry("sharpness_calibrator", "S: 1x1 convs on B's output -> sharpness logits")
CLASSICAL_ESTIMATORS = Registry(
    "classical_estimator", "non-learned estimators with B's interface, for evaluation in place of B"
)

ALL_REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (
        BLUR_ESTIMATORS, DOMAIN_DISCRIMINATORS, CONTENT_LOSSES, SHARPNESS_CALIBRATORS,
        CLASSICAL_ESTIMATORS,
    )
}


def load_all() -> None:
    """Import every module that registers parts, so the registries are complete."""
    import dmenet.evaluation.zhuo_sim  # noqa: F401  (registers "zhuo_sim")
    import dmenet.modules  # noqa: F401  (registers on import)


def list_parts() -> dict[str, list[str]]:
    """Every registry's names: ``{"blur_estimator": [...], ...}``."""
    load_all()
    return {kind: reg.names() for kind, reg in ALL_REGISTRIES.items()}
