"""``dmenet magnify``: defocus magnification (SPEC section 6, paper section 7.3).

The photo is re-blurred, layer by layer, with a spatially varying Gaussian of
``sigma' = k * sigma`` where ``sigma`` is the estimated defocus map, using the same layered
renderer that synthesises SYNDOF (:func:`dmenet.data.syndof.render_from_sigma`, with its
occlusion fill), so blur does not leak across depth edges in the wrong direction.

Assumptions:

* the blur in the photo is defocus (B's sigma in pixels of this photo);
* the layers are composited far to near by the depth order of :mod:`dmenet.inference.depth`,
  which needs the focus side: ``--focus near`` (default; focused on the nearest subject, so
  more blur = farther) or ``--focus far`` (focused on the background, more blur = nearer);
* Gaussian blurs add in quadrature: re-blurring with ``k * sigma`` (the paper's recipe) leaves a
  total blur of ``sigma * sqrt(1 + k^2)``. With ``--total`` the re-blur is
  ``sigma * sqrt(k^2 - 1)`` instead, so the total blur is ``k * sigma`` (needs ``k >= 1``).

Writes the magnified photo to ``--out FILE`` (8-bit) and ``STEM_magnify.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmenet.errors import DMENetError

__all__ = ["main", "build_parser", "magnify", "reblur_sigma_px"]


def reblur_sigma_px(sigma_px: np.ndarray, factor: float, total: bool = False) -> np.ndarray:
    """The re-blur sigma (px): ``k * sigma``, or ``sqrt(k^2 - 1) * sigma`` with ``total``."""
    if not factor > 0:
        raise DMENetError(f"--factor must be > 0, got {factor}")
    if total:
        if factor < 1:
            raise DMENetError("--total needs --factor >= 1 (blur cannot be removed by blurring)")
        scale = math.sqrt(factor * factor - 1.0)
    else:
        scale = factor
    return (np.asarray(sigma_px, dtype=np.float32) * scale).astype(np.float32)


def magnify(
    image: torch.Tensor,
    sigma_px: np.ndarray,
    factor: float,
    focus: str = "near",
    total: bool = False,
    aperture: str = "gaussian",
    gamma: float | None = None,
) -> torch.Tensor:
    """Re-blur ``image (3, H, W)`` in ``[0, 1]`` with its defocus map scaled by ``factor``.

    Returns ``(3, H, W)`` in ``[0, 1]``.
    """
    from dmenet.data.syndof import render_from_sigma
    from dmenet.inference.depth import inverse_depth_rel

    reblur = reblur_sigma_px(sigma_px, factor, total)
    # larger order = farther: the negated inverse depth
    order = -inverse_depth_rel(sigma_px, focus)
    out = render_from_sigma(
        image[None].float(),
        torch.from_numpy(reblur)[None, None],
        torch.from_numpy(np.ascontiguousarray(order))[None, None],
        aperture=aperture,
        gamma=gamma,
    )
    return out[0].clamp(0.0, 1.0)


def build_parser() -> argparse.ArgumentParser:
    from dmenet.inference.infer import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="dmenet magnify",
        description="Defocus magnification: re-blur a photo with k times its estimated defocus "
        "map (layered, with occlusion handling), exaggerating its shallow depth of field.",
    )
    parser.add_argument("image", metavar="IMAGE", help="the photo")
    add_model_arguments(parser)
    parser.add_argument("--factor", "-k", type=float, required=True, help="k: re-blur sigma = k * sigma")
    parser.add_argument("--out", required=True, metavar="FILE", help="the magnified photo (.png, .jpg ...)")
    parser.add_argument("--focus", choices=("near", "far"), default="near",
                        help="which side of the focal plane the scene lies on (sets the layer "
                        "order): near = focused on the nearest subject (default)")
    parser.add_argument("--total", action="store_true",
                        help="make the TOTAL blur k * sigma (re-blur with sqrt(k^2 - 1) * sigma)")
    parser.add_argument("--aperture", choices=("gaussian", "disc"), default="gaussian",
                        help="blur kernel of the re-blur (disc: a pillbox of diameter 4 sigma)")
    parser.add_argument("--gamma", type=float, default=None,
                        help="blur in linear light, decoding the photo with this gamma (e.g. 2.2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dmenet.data.io import atomic_outputs, read_image_tensor, write_image
    from dmenet.inference.infer import make_estimator
    from dmenet.inference.writer import prepare_output, refuse_existing

    out = Path(args.out)
    if not out.suffix:
        raise DMENetError(f"{out}: give the output file name with an extension (e.g. .png)")
    sidecar = Path(f"{out.with_suffix('')}_magnify.json")
    reblur_sigma_px(np.zeros(1), args.factor, args.total)  # validate before the slow part
    refuse_existing([out, sidecar], args.overwrite)  # creates nothing yet
    image = read_image_tensor(args.image)
    estimator = make_estimator(args, progress_tiles=True)
    sigma = estimator(image)
    result = magnify(image, sigma, args.factor, args.focus, args.total, args.aperture, args.gamma)
    for path in (out, sidecar):
        prepare_output(path, args.overwrite)
    record = dict(estimator.describe)
    record.update({
        "source": str(args.image),
        "factor": args.factor,
        "reblur": "sqrt(k^2 - 1) * sigma (total blur k * sigma)" if args.total
        else "k * sigma (total blur sigma * sqrt(1 + k^2))",
        "focus_side": args.focus,
        "aperture": args.aperture,
        "gamma": args.gamma,
        "sigma_px_max": float(np.max(sigma)) if sigma.size else None,
        "renderer": "dmenet.data.syndof.render_from_sigma (layered, far to near, occlusion fill)",
    })
    with atomic_outputs(out, sidecar) as (out_temporary, sidecar_temporary):
        write_image(out_temporary, result.permute(1, 2, 0).numpy())
        sidecar_temporary.write_text(json.dumps(record, indent=2) + "\n")
    print(f"dmenet magnify: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
