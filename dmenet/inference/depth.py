"""``dmenet depth``: relative depth from the estimated defocus map (SPEC section 6).

Assumptions, all from the thin-lens model of :mod:`dmenet.data.thin_lens`:

* the blur is defocus only (no motion blur, no soft textures), the paper's rule
  ``sigma = c / 4`` links B's sigma to the circle of confusion ``c``, and
  ``c(x) = alpha * |x - S1| / x`` for a point at distance ``x`` when the lens focuses at ``S1``;
* a defocus map alone cannot tell in front of the focal plane from behind it, so the user says
  which side the scene is on: ``--focus near`` (default: the lens focused on the nearest thing,
  everything else lies behind the focal plane, the usual portrait / macro photo) or
  ``--focus far`` (focused on the background, everything else lies in front of it);
* then ``S1 / x = 1 - c / alpha`` (near) or ``S1 / x = 1 + c / alpha`` (far): the inverse depth
  relative to the focus distance is an affine function of sigma. ``alpha`` (px) is the lens and
  sensor constant; unknown for a random photo, it defaults to ``C_MAX_PX`` (28 px), the
  training data's largest CoC, so that B's largest sigma (7 px) lies at infinity (near focus)
  or at half the focus distance (far focus). Give ``--alpha-px`` when the camera is known
  (``alpha = m1 * m2 * F / N``, see :mod:`dmenet.data.thin_lens`).

So the depth ORDER and the relative inverse depth are what the map supports; absolute depth
needs alpha and ``--focus-mm``. Outputs next to ``--out FILE`` (a colour picture, near = bright):
``NAME_depth_rel.npy`` (float32 ``x / S1``; ``inf`` at infinity), ``NAME_depth_mm.npy`` when
``--focus-mm`` is given, and ``NAME_depth.json`` with the assumptions used (``--out
photo_depth.png`` and ``--out photo.png`` both give ``photo_depth_rel.npy``; see
:func:`sidecar_paths`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmenet.errors import DMENetError
from dmenet.labels import C_MAX_PX

__all__ = ["main", "build_parser", "coc_per_sigma", "inverse_depth_rel", "depth_rel"]

FOCUS_SIDES = ("near", "far")


def coc_per_sigma() -> float:
    """CoC diameter (px) per unit of sigma under the paper's rule (thin_lens.sigma_from_coc)."""
    from dmenet.data.thin_lens import sigma_from_coc

    return 1.0 / float(sigma_from_coc(torch.tensor(1.0), "paper"))


def inverse_depth_rel(sigma_px: np.ndarray, focus: str = "near", alpha_px: float = C_MAX_PX) -> np.ndarray:
    """``S1 / x`` (focus distance over depth) of every pixel, ``(H, W)`` float32, ``>= 0``.

    Near focus: ``1 - c / alpha`` clipped at 0 (a CoC beyond ``alpha`` cannot occur behind the
    focal plane; it is read as infinitely far). Far focus: ``1 + c / alpha``.
    """
    if focus not in FOCUS_SIDES:
        raise DMENetError(f"--focus must be one of {FOCUS_SIDES}, got {focus!r}")
    if not alpha_px > 0:
        raise DMENetError(f"--alpha-px must be > 0, got {alpha_px}")
    ratio = coc_per_sigma() * np.asarray(sigma_px, dtype=np.float64) / alpha_px
    inv = 1.0 - ratio if focus == "near" else 1.0 + ratio
    return np.clip(inv, 0.0, None).astype(np.float32)


def depth_rel(sigma_px: np.ndarray, focus: str = "near", alpha_px: float = C_MAX_PX) -> np.ndarray:
    """``x / S1``: depth in units of the focus distance, ``(H, W)`` float32 (``inf`` = infinity)."""
    inv = inverse_depth_rel(sigma_px, focus, alpha_px)
    with np.errstate(divide="ignore"):
        return (1.0 / inv).astype(np.float32)


def build_parser() -> argparse.ArgumentParser:
    from dmenet.inference.infer import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="dmenet depth",
        description="Relative depth from the defocus map of one photo (thin lens; see the "
        "assumptions in the documentation: the focus side must be given).",
    )
    parser.add_argument("image", metavar="IMAGE", help="the photo")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="colour picture of the depth (near = bright); .npy and .json beside it")
    parser.add_argument("--focus", choices=FOCUS_SIDES, default="near",
                        help="near: focused on the nearest subject, the rest lies behind (default); "
                        "far: focused on the background, the rest lies in front")
    parser.add_argument("--alpha-px", type=float, default=C_MAX_PX,
                        help=f"thin-lens CoC constant alpha in px (default {C_MAX_PX:g}, the "
                        "training data's largest CoC)")
    parser.add_argument("--focus-mm", type=float, default=None,
                        help="focus distance in mm, if known: also writes STEM_depth_mm.npy")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def sidecar_paths(out: Path) -> dict[str, Path]:
    """The files beside the picture ``out``: ``NAME_depth_rel.npy``, ``NAME_depth_mm.npy`` and
    ``NAME_depth.json``, where ``NAME_depth`` is the picture's stem when it already ends in
    ``depth`` (``--out photo_depth.png``) and ``NAME`` is the stem otherwise (``--out photo.png``)."""
    stem = str(out.with_suffix(""))
    base = stem if stem.endswith("depth") else f"{stem}_depth"
    return {
        "picture": out,
        "depth_rel": Path(f"{base}_rel.npy"),
        "depth_mm": Path(f"{base}_mm.npy"),
        "json": Path(f"{base}.json"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dmenet.data.io import atomic_outputs, read_image_tensor, write_image
    from dmenet.inference.infer import make_estimator
    from dmenet.inference.writer import prepare_output, refuse_existing
    from dmenet.visualize import colorize

    out = Path(args.out)
    if not out.suffix:
        raise DMENetError(f"{out}: give the picture's file name with an extension (e.g. .png)")
    paths = sidecar_paths(out)
    wanted = [k for k in paths if k != "depth_mm" or args.focus_mm is not None]
    refuse_existing([paths[key] for key in wanted], args.overwrite)  # creates nothing yet
    image = read_image_tensor(args.image)
    estimator = make_estimator(args, progress_tiles=True)
    sigma = estimator(image)
    inv = inverse_depth_rel(sigma, args.focus, args.alpha_px)
    rel = depth_rel(sigma, args.focus, args.alpha_px)
    lo, hi = float(inv.min()), float(inv.max())
    for key in wanted:
        prepare_output(paths[key], args.overwrite)
    record = dict(estimator.describe)
    record.update({
        "source": str(args.image),
        "focus_side": args.focus,
        "alpha_px": args.alpha_px,
        "model": "thin lens: c = alpha |x - S1| / x, sigma = c / 4; S1/x = 1 -/+ c/alpha",
        "depth_rel": {"file": paths["depth_rel"].name, "meaning": "x / S1 (depth over focus distance)"},
        "picture": {"file": out.name, "meaning": "inverse depth S1/x, min-max over the photo, "
                    "magma colour map, near = bright", "range": [lo, hi]},
        "caveat": "only the depth order and relative inverse depth are determined by the "
                  "defocus map; absolute values need the true alpha and focus distance",
    })
    if args.focus_mm is not None:
        record["depth_mm"] = {"file": paths["depth_mm"].name, "focus_mm": args.focus_mm}
    # the picture and its files appear together or not at all
    with atomic_outputs(*(paths[key] for key in wanted)) as temporaries:
        temporary = dict(zip(wanted, temporaries))
        write_image(temporary["picture"], colorize(inv, lo, hi if hi > lo else lo + 1.0, cmap="magma"))
        np.save(temporary["depth_rel"], rel, allow_pickle=False)
        if args.focus_mm is not None:
            np.save(temporary["depth_mm"], (rel * args.focus_mm).astype(np.float32),
                    allow_pickle=False)
        temporary["json"].write_text(json.dumps(record, indent=2) + "\n")
    print(f"dmenet depth: wrote {out} and {paths['depth_rel'].name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
