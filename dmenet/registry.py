"""Registries of swappable parts (timm style): a name -> constructor map filled by a decorator.

Configs and the command line choose a part by its registry name (``--model.blur_estimator
light_resnet18``, resolved to its class path by :mod:`dmenet.lightning_cli`) or by a full
``class_path`` (LightningCLI's way). The registries also serve ``dmenet list``, error
messages that list the known names, and tests parametrised over every registered part.

Each registry names the modules that register into it (``locations``, as in mmengine) and
imports them on its first lookup, so it is complete whenever it is asked, and this module
imports nothing from dmenet (the parts import it, never the reverse: no import circle).

>>> from dmenet.registry import BLUR_ESTIMATORS
>>> @BLUR_ESTIMATORS.register("my_b")
... class MyB(torch.nn.Module): ...
>>> BLUR_ESTIMATORS.create("my_b")
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any


class Registry:
    """A named map from part names to constructors (classes or factory functions).

    Args:
        kind: what the parts are (``"blur_estimator"``); also the LightningModule argument
            that takes them.
        description: one line for ``dmenet list``.
        locations: modules whose import registers the shipped parts; imported on the first
            lookup (``get``, ``names``, ``in`` ...), not when this module is imported.
    """

    def __init__(self, kind: str, description: str = "", locations: Sequence[str] = ()) -> None:
        self.kind = kind
        self.description = description
        self.locations = tuple(locations)
        self._entries: dict[str, Callable[..., Any]] = {}
        self._loaded = not self.locations

    def load(self) -> None:
        """Import the modules that register this registry's parts (once)."""
        if not self._loaded:
            self._loaded = True  # first: a location may look itself up while it is imported
            for module in self.locations:
                importlib.import_module(module)

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
        self.load()
        if name not in self._entries:
            close = self.closest(name)
            hint = f" Did you mean {close!r}?" if close else ""
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}")
        return self._entries[name]

    def closest(self, name: str) -> str | None:
        """The registered name closest to a mistyped ``name``, if any is close."""
        self.load()
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        return close[0] if close else None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the part registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def class_path(self, name: str) -> str:
        """Full dotted path of a registered part, as a LightningCLI ``class_path``."""
        obj = self.get(name)
        return f"{obj.__module__}.{obj.__qualname__}"

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


_PARTS = ("dmenet.modules",)
BLUR_ESTIMATORS = Registry(
    "blur_estimator", "B: image (N, 3, H, W) in [0, 1] -> defocus map", _PARTS
)
DOMAIN_DISCRIMINATORS = Registry(
    "domain_discriminator", "D: B's stage-0 feature -> domain logits", _PARTS
)
CONTENT_LOSSES = Registry(
    "content_loss", "C: frozen perceptual loss between prediction and label", _PARTS
)
SHARPNESS_CALIBRATORS = Registry(
    "sharpness_calibrator", "S: 1x1 convs on B's output -> sharpness logits", _PARTS
)
CLASSICAL_ESTIMATORS = Registry(
    "classical_estimator",
    "non-learned estimators with B's interface, for evaluation in place of B",
    ("dmenet.evaluation.zhuo_sim",),
)

PART_REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (BLUR_ESTIMATORS, DOMAIN_DISCRIMINATORS, CONTENT_LOSSES, SHARPNESS_CALIBRATORS)
}
"""The registries of DMENet's four parts, by the LightningModule argument that takes them."""

ALL_REGISTRIES: dict[str, Registry] = {**PART_REGISTRIES, CLASSICAL_ESTIMATORS.kind: CLASSICAL_ESTIMATORS}


def load_all() -> None:
    """Import every module that registers parts (each registry also does so on its first lookup)."""
    for registry in ALL_REGISTRIES.values():
        registry.load()


def list_parts() -> dict[str, list[str]]:
    """Every registry's names: ``{"blur_estimator": [...], ...}``."""
    load_all()
    return {kind: reg.names() for kind, reg in ALL_REGISTRIES.items()}
