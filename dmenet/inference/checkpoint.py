"""Load B for inference from a checkpoint, with the label space that says what its output means.

Two kinds of files are read, both with ``torch.load(weights_only=True)`` (no code runs while
loading; a file that needs full unpickling is refused unless the caller trusts it):

* a Lightning checkpoint of :class:`dmenet.lightning_model.DMENet` (``dmenet fit``): B's
  weights are the ``state_dict`` entries ``blur_estimator.*``; ``hyper_parameters`` holds
  ``label_space`` (``"ours"`` for our training) and, when present, B's ``class_path`` /
  ``init_args``;
* an inference checkpoint written by ``dmenet convert-official`` (or
  :func:`save_inference_checkpoint`): ``{"dmenet_inference_checkpoint": 1, "blur_estimator":
  {"class_path", "init_args"}, "state_dict", "label_space", "sigma_max_px", "padding_mode",
  "aux_hidden_channels", "source", "notes"}``, plain data only.

B's shape that the weights need (auxiliary heads or not, number of refinement blocks, widths of
the auxiliary heads) is read from the weights themselves, so a checkpoint rebuilds its own B.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmenet.errors import DMENetError
from dmenet.labels import LABEL_SPACES, SIGMA_MAX_PX, to_sigma_px

__all__ = [
    "FORMAT_KEY",
    "DefocusPredictor",
    "LoadedCheckpoint",
    "build_blur_estimator",
    "load_checkpoint",
    "load_predictor",
    "prepare_for_inference",
    "save_inference_checkpoint",
]

FORMAT_KEY = "dmenet_inference_checkpoint"
DEFAULT_CLASS_PATH = "dmenet.modules.blur_estimator.BlurEstimator"
B_PREFIX = "blur_estimator."


class DefocusPredictor(nn.Module):
    """B plus what its output means: ``image (N, 3, H, W)`` in ``[0, 1]`` -> ``y (N, 1, H, W)``.

    ``sigma_px(y)`` converts ``y`` to the defocus sigma in pixels through the checkpoint's label
    space (:func:`dmenet.labels.to_sigma_px`, the one place for the conventions).
    """

    def __init__(
        self, blur_estimator: nn.Module, label_space: str = "ours", sigma_max_px: float = SIGMA_MAX_PX
    ) -> None:
        super().__init__()
        if label_space not in LABEL_SPACES:
            raise DMENetError(f"unknown label space {label_space!r}; known: {', '.join(LABEL_SPACES)}")
        self.blur_estimator = blur_estimator
        self.label_space = label_space
        self.sigma_max_px = float(sigma_max_px)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.blur_estimator(image)
        return out.y if hasattr(out, "y") else out

    def sigma_px(self, y: torch.Tensor) -> torch.Tensor:
        """``y (N, 1, H, W)`` -> sigma in pixels ``(N, 1, H, W)``."""
        return to_sigma_px(y, self.label_space, self.sigma_max_px)


class SigmaOutput(nn.Module):
    """``image -> (y, sigma_px)``: a predictor with both outputs (for ONNX export)."""

    def __init__(self, predictor: DefocusPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.predictor(image)
        return y, self.predictor.sigma_px(y)


@dataclass
class LoadedCheckpoint:
    """What a checkpoint says about B."""

    state_dict: dict[str, torch.Tensor]
    class_path: str
    init_args: dict[str, Any]
    label_space: str
    sigma_max_px: float
    padding_mode: str
    path: str
    kind: str  # "lightning" or "inference"
    record: dict[str, Any]


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


def _plain(value: Any) -> Any:
    """Hyper-parameter containers (dict-like namespaces) -> dicts, for lookups."""
    if isinstance(value, dict):
        return value
    if hasattr(value, "__dict__") and not isinstance(value, nn.Module):
        return dict(vars(value))
    return value


def _find_b_config(hparams: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """B's class path and init args recorded in the hyper-parameters, if any."""
    for key in ("blur_estimator", "model", "b"):
        entry = _plain(hparams.get(key))
        if isinstance(entry, dict) and "class_path" in entry:
            return str(entry["class_path"]), dict(_plain(entry.get("init_args")) or {})
        if isinstance(entry, str) and entry:
            from dmenet.registry import BLUR_ESTIMATORS, load_all

            load_all()
            if entry in BLUR_ESTIMATORS:
                return BLUR_ESTIMATORS.class_path(entry), {}
            if "." in entry:
                return entry, {}
        if isinstance(entry, nn.Module):
            cls = type(entry)
            return f"{cls.__module__}.{cls.__qualname__}", dict(getattr(entry, "init_args", {}) or {})
    return DEFAULT_CLASS_PATH, {}


def load_checkpoint(path: str | Path, trust: bool = False) -> LoadedCheckpoint:
    """Read B's weights, class and label space from a Lightning or an inference checkpoint.

    Raises:
        DMENetError: a missing or unreadable file, or one without B's weights.
    """
    path = Path(path)
    if not path.is_file():
        raise DMENetError(f"{path}: checkpoint not found")
    data = _torch_load(path, trust)
    if not isinstance(data, dict):
        raise DMENetError(f"{path}: not a dmenet checkpoint (found a {type(data).__name__})")
    if data.get(FORMAT_KEY):
        b = data.get("blur_estimator") or {}
        return LoadedCheckpoint(
            state_dict=dict(data["state_dict"]),
            class_path=str(b.get("class_path", DEFAULT_CLASS_PATH)),
            init_args=dict(b.get("init_args") or {}),
            label_space=str(data.get("label_space", "ours")),
            sigma_max_px=float(data.get("sigma_max_px", SIGMA_MAX_PX)),
            padding_mode=str(data.get("padding_mode", "zeros")),
            path=str(path),
            kind="inference",
            record={k: v for k, v in data.items() if k != "state_dict"},
        )
    state = data.get("state_dict")
    if not isinstance(state, dict):
        raise DMENetError(f"{path}: no 'state_dict' in the file; is it a dmenet checkpoint?")
    b_state = {k[len(B_PREFIX):]: v for k, v in state.items() if k.startswith(B_PREFIX)}
    if not b_state:
        raise DMENetError(
            f"{path}: the checkpoint has no 'blur_estimator.*' weights (B); "
            "is it a dmenet training checkpoint?"
        )
    hparams = dict(_plain(data.get("hyper_parameters")) or {})
    class_path, init_args = _find_b_config(hparams)
    label_space = str(hparams.get("label_space") or "ours")
    sigma_max = float(hparams.get("sigma_max_px") or SIGMA_MAX_PX)
    return LoadedCheckpoint(
        state_dict=b_state,
        class_path=class_path,
        init_args=init_args,
        label_space=label_space,
        sigma_max_px=sigma_max,
        padding_mode=str(hparams.get("padding_mode") or "zeros"),
        path=str(path),
        kind="lightning",
        record={"epoch": data.get("epoch"), "global_step": data.get("global_step")},
    )


def _import(class_path: str) -> Any:
    module_name, _, attr = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DMENetError(f"cannot import B's class {class_path!r} named by the checkpoint") from exc


def shape_args_from_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """B's constructor arguments that the weights themselves determine."""
    args: dict[str, Any] = {}
    refine = {int(m.group(1)) for k in state if (m := re.match(r"refine\.(\d+)\.", k))}
    if refine or any(k.startswith("head.") for k in state):
        args["n_refine_blocks"] = (max(refine) + 1) if refine else 0
    args["aux_heads"] = any(k.startswith("aux_heads.") for k in state)
    return args


def aux_hidden_channels(state: dict[str, torch.Tensor]) -> list[int] | None:
    """Widths of the auxiliary heads' hidden convs, from their weights (None: no aux heads)."""
    widths = {}
    for key, value in state.items():
        m = re.match(r"aux_heads\.(\d+)\.conv1\.weight$", key)
        if m:
            widths[int(m.group(1))] = int(value.shape[0])
    return [widths[i] for i in sorted(widths)] if widths else None


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "constant_", "ones_", "zeros_", "xavier_uniform_", "xavier_normal_",
    "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_",
)


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Build modules without their random initialisation (their weights are loaded next).

    Initialising VGG19 (with the classifier torchvision builds and B drops) costs seconds and
    touches 0.5 GB; uninitialised tensors cost nothing until written. Only used where a strict
    state_dict load follows.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def build_blur_estimator(
    class_path: str,
    init_args: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    padding_mode: str = "zeros",
) -> nn.Module:
    """Build B (never downloads weights), shaped to fit ``state_dict``.

    With a ``state_dict`` the random initialisation is skipped: the caller must load it strictly.
    """
    cls = _import(class_path)
    args = dict(init_args)
    args["weights"] = None  # the checkpoint has the weights; no ImageNet download
    if state_dict is not None and class_path == DEFAULT_CLASS_PATH:
        args.update(shape_args_from_state(state_dict))
    with skip_weight_init() if state_dict is not None else contextlib.nullcontext():
        try:
            model = cls(**args)
        except TypeError:
            model = cls(**{k: v for k, v in args.items() if k == "weights"})
    if state_dict is not None:
        widths = aux_hidden_channels(state_dict)
        heads = getattr(model, "aux_heads", None)
        if widths is not None and heads is not None:
            current = [int(h.conv1.out_channels) for h in heads]
            if current != widths:
                from dmenet.modules.blur_estimator import AuxHead

                in_ch = [int(h.conv1.in_channels) for h in heads]
                model.aux_heads = nn.ModuleList(AuxHead(c, w) for c, w in zip(in_ch, widths))
    set_padding_mode(model, padding_mode)
    return model


def set_padding_mode(model: nn.Module, padding_mode: str) -> None:
    """Set the padding mode of every padded conv (the official weights expect ``replicate``)."""
    if padding_mode not in ("zeros", "replicate", "reflect", "circular"):
        raise DMENetError(f"unknown padding mode {padding_mode!r}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and any(p > 0 for p in _padding(module)):
            module.padding_mode = padding_mode
            module._reversed_padding_repeated_twice = [p for p in reversed(_padding(module)) for _ in range(2)]


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    pad = conv.padding
    if isinstance(pad, str):
        return tuple(k // 2 for k in conv.kernel_size)
    return tuple(pad)


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
    model = build_blur_estimator(ckpt.class_path, ckpt.init_args, ckpt.state_dict, ckpt.padding_mode)
    missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise DMENetError(
            f"{path}: the weights do not fit {ckpt.class_path}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]})"
        )
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


def save_inference_checkpoint(
    path: str | Path,
    blur_estimator: nn.Module,
    label_space: str = "ours",
    sigma_max_px: float = SIGMA_MAX_PX,
    padding_mode: str = "zeros",
    source: str = "",
    notes: str = "",
) -> Path:
    """Write B as an inference checkpoint (plain data: loads with ``weights_only=True``)."""
    cls = type(blur_estimator)
    init_args = {k: v for k, v in dict(getattr(blur_estimator, "init_args", {}) or {}).items()
                 if k != "weights"}
    record = {
        FORMAT_KEY: 1,
        "blur_estimator": {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in blur_estimator.state_dict().items()},
        "label_space": label_space,
        "sigma_max_px": float(sigma_max_px),
        "padding_mode": padding_mode,
        "aux_hidden_channels": aux_hidden_channels(blur_estimator.state_dict()),
        "source": source,
        "notes": notes,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    return path
