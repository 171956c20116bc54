"""The label convention, written once.

dmenet's networks predict ``y = sigma_px / SIGMA_MAX_PX`` in ``[0, 1]``, where ``sigma_px`` is
the standard deviation (in pixels) of the local Gaussian defocus blur, and
``SIGMA_MAX_PX = C_MAX_PX / 4`` with the paper's largest circle of confusion ``C_MAX_PX = 28``.

Other label spaces met in the wild (SPEC section 2 and 5):

* ``"released"``: the SYNDOF dataset released with DMENet stores ``10 * x`` in 16-bit PNGs,
  where ``x`` is a CoC-like value with maximum 15; DMENet reads ``y = x / 15``. The public
  DMENet_BDCS checkpoint outputs ``y`` in this space and its sigma is
  ``max(0, (15 * y - 1) / 2)``.
* ``"generator"``: the current SYNDOF generator stores ``10 * sigma`` with
  ``sigma = (c - 1) / 4`` and ``c_max = 29``, read as ``y = sigma / 7``.
* ``"ours"``: ``y = sigma / SIGMA_MAX_PX`` (7 px by default).

Every conversion between spaces goes through :func:`to_sigma_px` / :func:`from_sigma_px`;
:func:`convert_y` chains them. The data pipelines deliver labels in :data:`DATA_LABEL_SPACE`;
training converts them once (:func:`training_label`) into the label space of the model, so
L_B, L_aux and L_C compare prediction and label in the same space (a fine-tune of the public
weights trains in ``"released"``). Every option that names a space is checked by
:func:`check_label_space`.
"""

from __future__ import annotations

from typing import Literal

import torch

from dmenet.errors import ConfigError

C_MAX_PX: float = 28.0
"""Largest circle-of-confusion diameter in pixels (paper)."""

SIGMA_MAX_PX: float = C_MAX_PX / 4.0
"""Largest Gaussian sigma in pixels; the network's ``y = 1``."""

BINARY_COC_THRESHOLD_PX: float = 1.0
"""A pixel counts as blurred in the binary map when its CoC exceeds this (reference: c > 1)."""

PNG_LABEL_SCALE: float = 10.0
"""Released SYNDOF ``blur_map/*.png`` store ``round(10 * value)`` as 16-bit integers."""

LabelSpace = Literal["ours", "released", "generator"]
_SPACE_MEANINGS = {
    "ours": "dmenet's y = sigma_px / SIGMA_MAX_PX",
    "released": "the SYNDOF dataset released with DMENet and its public checkpoint",
    "generator": "files of the current SYNDOF generator",
}
LABEL_SPACES: tuple[str, ...] = tuple(_SPACE_MEANINGS)

DATA_LABEL_SPACE: str = "ours"
"""The label space of every ``"label"`` the data pipelines deliver (``y = sigma_px / 7``)."""

# largest value of each space's stored quantity, so that y = value / max
_RELEASED_X_MAX = 15.0
_GENERATOR_SIGMA_MAX = 7.0


def sigma_to_y(sigma_px: torch.Tensor, sigma_max_px: float = SIGMA_MAX_PX) -> torch.Tensor:
    """Normalise a sigma map (pixels) into the network's label ``y = sigma / sigma_max``."""
    return sigma_px / sigma_max_px


def check_label_space(space: object, option: str = "label space") -> str:
    """``space`` if it names a label space, else :class:`~dmenet.errors.ConfigError` naming
    ``option`` (e.g. ``"--data.syndof_label_space"``) and every accepted value."""
    if space not in LABEL_SPACES:
        choices = ", ".join(f"{name!r} ({_SPACE_MEANINGS[name]})" for name in LABEL_SPACES)
        raise ConfigError(f"unknown {option} {space!r}: choose one of {choices}")
    return space


def to_sigma_px(y, space: str = "ours", sigma_max_px: float = SIGMA_MAX_PX):
    """Convert a normalised output/label ``y`` of label space ``space`` into sigma in pixels.

    Works on tensors and numpy arrays.
    """
    check_label_space(space)
    if space == "ours":
        return y * sigma_max_px
    if space == "released":
        # public DMENet_BDCS checkpoint: sigma = max(0, (15 y - 1) / 2)
        s = (_RELEASED_X_MAX * y - 1.0) / 2.0
        return s.clip(min=0) if hasattr(s, "clip") else max(0.0, s)
    return y * _GENERATOR_SIGMA_MAX


def from_sigma_px(sigma_px, space: str = "ours", sigma_max_px: float = SIGMA_MAX_PX):
    """Convert sigma in pixels into the normalised ``y`` of label space ``space``."""
    check_label_space(space)
    if space == "ours":
        return sigma_px / sigma_max_px
    if space == "released":
        return (2.0 * sigma_px + 1.0) / _RELEASED_X_MAX
    return sigma_px / _GENERATOR_SIGMA_MAX


def stored_png_to_y(value, space: str):
    """A released-SYNDOF ``blur_map`` PNG value (``10 * x``) -> normalised ``y`` of that space."""
    check_label_space(space)
    x = value / PNG_LABEL_SCALE
    if space == "released":
        return x / _RELEASED_X_MAX
    if space == "generator":
        return x / _GENERATOR_SIGMA_MAX
    return x / SIGMA_MAX_PX  # "ours": our exporter stores 10 * sigma_px


def stored_png_to_sigma_px(value, space: str):
    """A ``blur_map`` PNG value -> sigma in pixels, through the space's own convention."""
    return to_sigma_px(stored_png_to_y(value, space), space)


def convert_y(y, from_space: str, to_space: str, sigma_max_px: float = SIGMA_MAX_PX):
    """A normalised map ``y`` of label space ``from_space`` as the ``y`` of ``to_space``
    (through sigma in pixels; the identity when both are the same)."""
    check_label_space(from_space)
    check_label_space(to_space)
    if from_space == to_space:
        return y
    return from_sigma_px(to_sigma_px(y, from_space, sigma_max_px), to_space, sigma_max_px)


def training_label(label_y, model_space: str, sigma_max_px: float = SIGMA_MAX_PX):
    """A data label (:data:`DATA_LABEL_SPACE`, ``(N, 1, H, W)``) in the model's label space: what
    L_B, L_aux and L_C compare the prediction with. ``"released"`` maps ``sigma = 0`` to
    ``y = 1/15`` and 7 px to 1."""
    return convert_y(label_y, DATA_LABEL_SPACE, model_space, sigma_max_px)
