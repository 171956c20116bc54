"""Datasets by name: the seeded splits of the generated data and the evaluation sets.

The embedded procedural scenes and the proxy real domain are generated from seeds; each split
(training, validation, test) has its own seed, so their images never coincide. The evaluation
sets (:data:`EVAL_SETS`, batch size 1: image sizes differ):

* ``"embedded"``: held-out embedded scenes rendered once with SYNDOF (dense labels and binary
  sharp masks, :class:`~dmenet.data.synthetic.RenderedEvalSet`);
* ``"proxy"``: the held-out proxy real domain (also fully labelled);
* ``"syndof"``: released SYNDOF test files (``syndof_test_root``);
* ``"cuhk"``: CUHK blur detection (``cuhk_root``, split ``cuhk_test_split``);
* ``"rtf"``: RTF (``rtf_root`` at ``rtf_noise``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from dmenet.data.proxy import ProxyLook, ProxyRealDomain
from dmenet.data.rgbd import EmbeddedRGBD
from dmenet.data.syndof import SyndofRenderer
from dmenet.data.synthetic import RenderedEvalSet, RGBDView
from dmenet.errors import DataError

__all__ = ["EVAL_SETS", "embedded_split", "evaluation_set", "proxy_split", "rgbd_training_source"]

EVAL_SETS: tuple[str, ...] = ("embedded", "proxy", "syndof", "cuhk", "rtf")

# training, validation and test scenes never coincide
EMBEDDED_SEEDS = {"train": 0, "val": 10_007, "test": 20_011}
PROXY_SEEDS = {"real": 30_013, "blur": 40_009, "val": 50_021, "test": 60_013}


def embedded_split(split: str, count: int, size_px: int) -> EmbeddedRGBD:
    """``count`` embedded scenes of ``size_px`` square for ``split`` (``"train"``, ``"val"``,
    ``"test"``); the motorcycle scene only in training."""
    return EmbeddedRGBD(num_scenes=count, size=(size_px, size_px), seed=EMBEDDED_SEEDS[split],
                        include_motorcycle=(split == "train"))


def rgbd_training_source(source: str, count: int, size_px: int) -> RGBDView:
    """The RGB-D source of training synthesis as :class:`~dmenet.data.synthetic.RGBDView`:
    ``"embedded"`` (or ``""``): ``count`` embedded training scenes, kept in memory (generating
    one costs about 0.2 s); ``"kind:path"``: :func:`dmenet.data.rgbd.make_rgbd_source`."""
    if source in ("", "embedded"):
        return RGBDView(embedded_split("train", count, size_px), cache=True)
    from dmenet.data.rgbd import make_rgbd_source

    return RGBDView(make_rgbd_source(source))


def proxy_split(role: str, count: int, size_px: int, look: ProxyLook) -> ProxyRealDomain:
    """``count`` proxy real-domain images for ``role`` (``"real"``, ``"blur"``, ``"val"``,
    ``"test"``)."""
    return ProxyRealDomain(num_images=count, size=size_px, seed=PROXY_SEEDS[role], look=look)


def evaluation_set(name: str, split: str, options: Mapping[str, Any], renderer: SyndofRenderer,
                   look: ProxyLook) -> Dataset:
    """The evaluation set ``name`` (:data:`EVAL_SETS`); ``split`` (``"val"`` or ``"test"``)
    picks the held-out embedded / proxy scenes. ``options``: the DataModule's arguments by name
    (roots, splits, sizes).

    Raises:
        DataError: an unknown name, or a set whose root option is not set.
    """
    from dmenet.data.real import RTF, CUHKBlurDetection
    from dmenet.data.syndof_files import ReleasedSyndof

    if name == "embedded":
        source = RGBDView(embedded_split(split, options["embedded_eval_scenes"],
                                         options["embedded_size"]))
        return RenderedEvalSet(source, "embedded", EMBEDDED_SEEDS[split], renderer)
    if name == "proxy":
        return proxy_split(split, options["embedded_eval_scenes"], options["embedded_size"], look)
    roots = {"syndof": "syndof_test_root", "cuhk": "cuhk_root", "rtf": "rtf_root"}
    if name not in roots:
        raise DataError(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")
    root = options[roots[name]]
    if not root:
        raise DataError(f"the {name!r} evaluation set needs --data.{roots[name]}")
    if name == "syndof":
        return ReleasedSyndof(root, options["syndof_label_space"], "gt")
    if name == "cuhk":
        return CUHKBlurDetection(root, options["cuhk_test_split"], options["cuhk_mask_polarity"])
    return RTF(root, str(options["rtf_noise"]))
