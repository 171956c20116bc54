"""The device a user asks for: a GPU that this machine does not have is one line saying so and
how to run on the CPU, for the tools (``--device``) and for training (``--trainer.accelerator``).
"""

from __future__ import annotations

from typing import Any

import torch

from dmenet.errors import DMENetError

__all__ = ["check_accelerator", "no_gpu", "resolve_device"]


def no_gpu(option: str, value: str, what: str = "CUDA") -> DMENetError:
    """The error for ``option value`` asking for a GPU (``what``) that is not there."""
    return DMENetError(f"{option} {value}: this machine has no {what} GPU; run on the CPU "
                       f"with {option} cpu")


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``auto`` -> CUDA if available else the CPU; anything else must be a usable torch device.

    Raises:
        DMENetError: not a device name, or a CUDA device on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DMENetError(f"{option} {name!r}: not a device name ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise no_gpu(option, name)
    return device


def check_accelerator(accelerator: Any, option: str = "--trainer.accelerator") -> None:
    """Refuse a Trainer ``accelerator`` of ``gpu``, ``cuda`` or ``mps`` that this machine does
    not have (Lightning would end in a MisconfigurationException traceback); other values
    (``cpu``, ``auto``, an Accelerator instance ...) are left to Lightning."""
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "cuda" and not cuda:
        raise no_gpu(option, accelerator)
    if name == "mps" and not mps:
        raise no_gpu(option, accelerator, "Apple MPS")
    if name == "gpu" and not (cuda or mps):
        raise no_gpu(option, accelerator, "CUDA or Apple MPS")
