"""Load parts and their label space from a checkpoint: B for inference, B/D/S to fine-tune.

Two kinds of files are read, both with ``torch.load(weights_only=True)`` (no code runs while
loading; a file that needs full unpickling is refused unless the caller trusts it):

* a Lightning checkpoint of :class:`dmenet.lightning_model.DMENet` (``dmenet fit``): the weights
  are its ``state_dict`` (``blur_estimator.*``, ``domain_discriminator.*`` ...); its
  ``hyper_parameters`` hold each part's ``{"class_path", "init_args"}`` under the part's name
  and ``label_space`` (``"ours"`` for our training);
* a weights checkpoint (``dmenet convert-official``, :func:`save_checkpoint`): plain data only,
  ``{"dmenet_checkpoint": 2, "parts": {name: {"class_path", "init_args"}}, "state_dict"
  (the same keys as DMENet's), "label_space", "sigma_max_px", "source", "converted", "notes"}``.

Either way a part is rebuilt from its recorded description alone
(:func:`dmenet.modules.spec.build`: built on the meta device, weights assigned strictly).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmenet.errors import DMENetError
from dmenet.labels import SIGMA_MAX_PX, check_label_space, to_sigma_px
from dmenet.modules.spec import PART_NAMES, build, describe

__all__ = [
    "FORMAT_KEY",
    "DefocusPredictor",
    "LoadedCheckpoint",
    "load_checkpoint",
    "load_predictor",
    "prepare_for_inference",
    "save_checkpoint",
    "save_inference_checkpoint",
]

FORMAT_KEY = "dmenet_checkpoint"
FORMAT_VERSION = 2
_FORMAT_V1_KEY = "dmenet_inference_checkpoint"  # B only, aux heads folded; no longer read
class DefocusPredictor(nn.Module):
    """B plus what its output means: ``image (N, 3, H, W)`` in ``[0, 1]`` -> ``y (N, 1, H, W)``.

    ``sigma_px(y)`` converts ``y`` to the defocus sigma in pixels through the checkpoint's label
    space (:func:`dmenet.labels.to_sigma_px`, the one place for the conventions).
    """

    def __init__(
        self, blur_estimator: nn.Module, label_space: str = "ours", sigma_max_px: float = SIGMA_MAX_PX
    ) -> None:
        super().__init__()
        check_label_space(label_space)
        self.blur_estimator = blur_estimator
        self.label_space = label_space
        self.sigma_max_px = float(sigma_max_px)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.blur_estimator(image)
        return out.y if hasattr(out, "y") else out

    def sigma_px(self, y: torch.Tensor) -> torch.Tensor:
        """``y (N, 1, H, W)`` -> sigma in pixels ``(N, 1, H, W)``."""
        return to_sigma_px(y, self.label_space, self.sigma_max_px)


@dataclass
class LoadedCheckpoint:
    """What a checkpoint holds: the parts it describes, their weights, what ``y`` means.

    ``state_dict`` has DMENet's keys (``"<part>.<tensor>"``); ``parts`` maps each part whose
    weights are in the file to its ``{"class_path", "init_args"}``.
    """

    parts: dict[str, dict[str, Any]]
    state_dict: dict[str, torch.Tensor]
    label_space: str
    sigma_max_px: float
    path: str
    kind: str  # "lightning" or "weights"
    record: dict[str, Any]

    def part_state(self, name: str) -> dict[str, torch.Tensor]:
        """The weights of part ``name``, without the ``"<name>."`` prefix."""
        prefix = f"{name}."
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def build(self, name: str) -> nn.Module:
        """Part ``name`` rebuilt from its description, with the file's weights (strict)."""
        if name not in self.parts:
            raise DMENetError(f"{self.path}: the checkpoint has no {name} "
                              f"(it has: {', '.join(self.parts) or 'none'})")
        return build(self.parts[name], f"{self.path}: {name}", self.part_state(name))


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc).lower():
            raise DMENetError(f"{path}: not a readable PyTorch checkpoint ({message})") from exc
        if not trust:
            raise DMENetError(
                f"{path}: the checkpoint holds Python objects besides weights, and loading them "
                "would run code from the file. If you trust its source, pass --trust-checkpoint."
            ) from exc
    except (EOFError, OSError, ValueError) as exc:
        raise DMENetError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise DMENetError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def _label_space(value: Any, path: Path) -> str:
    return check_label_space(str(value), f"label space in {path}")


def load_checkpoint(path: str | Path, trust: bool = False) -> LoadedCheckpoint:
    """Read the parts, weights and label space of a Lightning or a weights checkpoint file
    (names of published weights are resolved before, by
    :func:`dmenet.weights.resolve_checkpoint`).

    Raises:
        DMENetError: a missing or unreadable file, or one without B's description and weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DMENetError(f"{path}: checkpoint not found")
    data = _torch_load(path, trust)
    if not isinstance(data, dict):
        raise DMENetError(f"{path}: not a dmenet checkpoint (found a {type(data).__name__})")
    if data.get(_FORMAT_V1_KEY):
        raise DMENetError(f"{path}: written by an older dmenet (B only, aux heads of another "
                          "shape); convert the original file again with dmenet convert-official")
    state = data.get("state_dict")
    if not isinstance(state, dict):
        raise DMENetError(f"{path}: no 'state_dict' in the file; is it a dmenet checkpoint?")
    if data.get(FORMAT_KEY) == FORMAT_VERSION:
        parts = {name: dict(spec) for name, spec in dict(data.get("parts") or {}).items()}
        kind, label_space = "weights", data.get("label_space", "ours")
        sigma_max = float(data.get("sigma_max_px", SIGMA_MAX_PX))
        record = {k: v for k, v in data.items() if k not in ("state_dict", "parts")}
    else:
        hparams = dict(data.get("hyper_parameters") or {})
        parts = {name: dict(hparams[name]) for name in PART_NAMES if isinstance(hparams.get(name), Mapping)}
        kind, label_space = "lightning", hparams.get("label_space", "ours")
        sigma_max = SIGMA_MAX_PX
        record = {"epoch": data.get("epoch"), "global_step": data.get("global_step")}
    if "blur_estimator" not in parts or not any(k.startswith("blur_estimator.") for k in state):
        raise DMENetError(
            f"{path}: the checkpoint has no description or no 'blur_estimator.*' weights of B; "
            "is it a dmenet checkpoint (dmenet fit, dmenet convert-official)?"
        )
    return LoadedCheckpoint(
        parts=parts,
        state_dict=dict(state),
        label_space=_label_space(label_space, path),
        sigma_max_px=sigma_max,
        path=str(path),
        kind=kind,
        record=record,
    )


def load_predictor(
    path: str | Path,
    device: torch.device | str = "cpu",
    trust: bool = False,
    label_space: str | None = None,
    fast: bool = True,
) -> DefocusPredictor:
    """B from a checkpoint, in eval mode on ``device``, wrapped with its label space.

    Args:
        trust: allow full unpickling when the file is not plain weights (runs code from it).
        label_space: override the checkpoint's label space (rarely needed).
        fast: :func:`prepare_for_inference` (drop auxiliary heads, fold BatchNorm).
    """
    ckpt = load_checkpoint(path, trust)
    model = ckpt.build("blur_estimator")
    if fast:
        prepare_for_inference(model)
    predictor = DefocusPredictor(model, label_space or ckpt.label_space, ckpt.sigma_max_px)
    predictor.checkpoint = ckpt  # type: ignore[attr-defined]  (provenance for outputs)
    predictor.requires_grad_(False)
    return predictor.eval().to(device)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Make an eval-mode B cheaper to run, without changing its output ``y`` (in place).

    * the auxiliary heads are dropped (their predictions only serve the training loss);
    * every BatchNorm that directly follows a conv in a ``Sequential`` is folded into the conv
      (in eval mode BatchNorm is a per-channel affine map), saving a pass over each feature map.

    The model can no longer load a training state_dict afterwards.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    if getattr(model, "aux_heads", None) is not None:
        model.aux_heads = None
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return model


def save_checkpoint(
    path: str | Path,
    parts: Mapping[str, nn.Module],
    label_space: str = "ours",
    sigma_max_px: float = SIGMA_MAX_PX,
    source: str = "",
    notes: str = "",
    converted: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``parts`` (B required; D, S ...) as a weights checkpoint (plain data: it loads with
    ``weights_only=True``), with the label space of B's output and what the file came from."""
    if "blur_estimator" not in parts:
        raise DMENetError("save_checkpoint: the parts must include 'blur_estimator'")
    unknown = sorted(set(parts) - set(PART_NAMES))
    if unknown:
        raise DMENetError(f"save_checkpoint: unknown part names {unknown}; known: {', '.join(PART_NAMES)}")
    _label_space(label_space, Path(path))
    record = {
        FORMAT_KEY: FORMAT_VERSION,
        "parts": {name: describe(part) for name, part in parts.items()},
        "state_dict": {f"{name}.{k}": v.detach().cpu().contiguous()
                       for name, part in parts.items() for k, v in part.state_dict().items()},
        "label_space": label_space,
        "sigma_max_px": float(sigma_max_px),
        "source": source,
        "converted": dict(converted or {}),
        "notes": notes,
    }
    from dmenet.data.io import atomic_outputs

    path = Path(path)
    with atomic_outputs(path) as (temporary,):
        torch.save(record, temporary)
    return path


def save_inference_checkpoint(path: str | Path, blur_estimator: nn.Module, **kwargs: Any) -> Path:
    """:func:`save_checkpoint` of B alone (what ``dmenet infer`` needs)."""
    return save_checkpoint(path, {"blur_estimator": blur_estimator}, **kwargs)
