"""Describe a part as plain data and rebuild it: the one mechanism for B, D, C, S.

A part's description is ``{"class_path": "pkg.module.Class", "init_args": {...}}`` (the
LightningCLI / jsonargparse form, so it can be pasted into a config). The LightningModule stores
one per part in its hyper-parameters, checkpoints store them next to the weights, and
``dmenet convert-official`` writes them for the converted parts; all three use :func:`describe`
and :func:`build`.

* :class:`Part`: the base class of every part (B, D, C, S and the classical estimators); it
  records the constructor's arguments (after defaults) as ``self.init_args``, so no class keeps
  a hand-written copy.
* :func:`describe`: ``module -> spec``; arguments named ``weights`` (pretrained weights to
  download or read) are stored as ``None``: the checkpoint holds the trained weights.
* :func:`build`: ``spec -> module``. With a ``state_dict`` the module is built on the ``meta``
  device (no random initialisation, no memory) and the weights are assigned strictly
  (``load_state_dict(assign=True)``): a missing, unexpected or misshaped tensor is an error.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmenet.errors import DMENetError

__all__ = ["PART_NAMES", "Part", "build", "class_path_of", "describe", "load_strictly", "plain_data"]

PART_NAMES: tuple[str, ...] = (
    "blur_estimator",
    "domain_discriminator",
    "content_loss",
    "sharpness_calibrator",
)
"""The parts of DMENet (B, D, C, S), by the names the LightningModule and checkpoints use."""

_DEPTH = "_part_init_depth"


def class_path_of(obj: Any) -> str:
    """``pkg.module.Class`` of a class or an instance (the form configs and checkpoints use)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def plain_data(value: Any, where: str = "value") -> Any:
    """``value`` as plain data (None, bool, int, float, str, lists, str-keyed dicts).

    Paths become strings and tuples lists, so that a spec survives YAML, jsonargparse and
    ``torch.load(weights_only=True)``; anything else is an error naming ``where``.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: plain_data(v, f"{where}.{k}") for k, v in value.items()}
    raise DMENetError(f"{where}: {type(value).__name__} is not plain data; a part's constructor "
                      "arguments must be numbers, strings, lists or dicts to be saved")


class Part(nn.Module):
    """Base class of a part that remembers how it was built: ``self.init_args``.

    The arguments of the outermost ``__init__`` (subclasses included), after defaults, as plain
    data. Subclass it and write ``__init__`` as usual.
    """

    init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__dict__["__init__"]
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: nn.Module, *args: Any, **kw: Any) -> None:
            depth = self.__dict__.get(_DEPTH, 0)
            object.__setattr__(self, _DEPTH, depth + 1)
            try:
                init(self, *args, **kw)
            finally:
                object.__setattr__(self, _DEPTH, depth)
            if depth == 0:
                del self.__dict__[_DEPTH]
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded: dict[str, Any] = {}
                for name, value in list(bound.arguments.items())[1:]:
                    kind = signature.parameters[name].kind
                    if kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(value)
                    elif kind is inspect.Parameter.VAR_POSITIONAL:
                        raise TypeError(f"{cls.__name__}: *{name} cannot be recorded; use named arguments")
                    else:
                        recorded[name] = value
                self.init_args = plain_data(recorded, f"{cls.__name__} argument")

        cls.__init__ = recording_init  # type: ignore[method-assign]


def describe(module: nn.Module) -> dict[str, Any]:
    """Plain-data description ``{"class_path", "init_args"}`` of ``module`` (weights -> None)."""
    if not isinstance(module, Part):
        raise DMENetError(
            f"{class_path_of(module)} does not record its constructor arguments, so a checkpoint "
            "could not rebuild it: derive it from dmenet.modules.spec.Part"
        )
    init_args = plain_data(dict(module.init_args), f"{class_path_of(module)}.init_args")
    if "weights" in init_args:
        init_args["weights"] = None
    return {"class_path": class_path_of(module), "init_args": init_args}


def _resolve_class(spec: Any, role: str) -> tuple[type, dict[str, Any]]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str) \
            or "." not in spec["class_path"]:
        raise DMENetError(f"{role}: expected {{'class_path': ..., 'init_args': ...}}, got {spec!r}")
    class_path = spec["class_path"]
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise DMENetError(f"{role}: cannot import {class_path} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise DMENetError(f"{role}: {class_path} is not a torch.nn.Module")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise DMENetError(f"{role}: init_args of {class_path} must be a mapping, got {init_args!r}")
    unknown = set(init_args) - set(inspect.signature(cls).parameters)
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD
                           for p in inspect.signature(cls).parameters.values()):
        raise DMENetError(f"{role}: {class_path} has no argument(s) {sorted(unknown)}")
    return cls, dict(init_args)


def load_strictly(module: nn.Module, state_dict: Mapping[str, torch.Tensor], role: str,
                  assign: bool = False) -> nn.Module:
    """``module.load_state_dict(state_dict)``, strict, with an error that names the tensors."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
                 for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        parts = []
        for what, names in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)):
            if names:
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                parts.append(f"{len(names)} {what}: {', '.join(names[:3])}{more}")
        raise DMENetError(f"{role}: the weights do not fit {class_path_of(module)}: {'; '.join(parts)}")
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return module


def build(spec: Mapping[str, Any], role: str,
          state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Instantiate ``spec``; with ``state_dict``, built on ``meta`` and the weights assigned.

    Raises:
        DMENetError: the class cannot be imported, is no ``nn.Module``, does not take the
            arguments, or (with ``state_dict``) the weights do not fit it exactly.
    """
    cls, init_args = _resolve_class(spec, role)
    if state_dict is None:
        return cls(**init_args)
    with torch.device("meta"):  # nothing is initialised: every tensor comes from state_dict
        module = cls(**init_args)
    load_strictly(module, state_dict, role, assign=True)
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise DMENetError(f"{role}: {class_path_of(module)} has tensors that neither its "
                          f"constructor nor the weights set: {left[:3]}")
    return module
