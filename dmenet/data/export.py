"""``dmenet syndof export``: write a SYNDOF dataset from an RGB-D source.

Layout (the released SYNDOF's, at the source's size), for each sample ``NAME``:

* ``image/NAME.png``            the defocused photo, 8-bit RGB;
* ``blur_map/NAME.png``         16-bit, 3 equal channels, ``round(10 * sigma_px)``
  (label space ``"ours"``: ``y = value / 10 / SIGMA_MAX_PX``, see :mod:`dmenet.labels`);
* ``blur_map_binary/NAME.png``  8-bit, 255 = blurred (CoC > 1 px);
* ``blur_map_norm/NAME.png``    8-bit min-max normalised sigma (for looking at only);
* ``depth_decomposed/NAME.png`` 8-bit layer map (far = dark, near = bright);
* ``camera/NAME.json``          the camera and rendering parameters of the sample.

Example::

    dmenet syndof export --source embedded:8 --out syndof_out --num 16 --seed 0
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
import torch

from dmenet.data.io import atomic_outputs, check_output_dir, write_image, write_png16
from dmenet.devices import resolve_device
from dmenet.errors import DataError
from dmenet.labels import C_MAX_PX, PNG_LABEL_SCALE

SUBFOLDERS = ("image", "blur_map", "blur_map_binary", "blur_map_norm", "depth_decomposed",
              "camera")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmenet syndof",
        description="SYNDOF synthesis tools (thin-lens layered defocus from RGB-D images).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser(
        "export", prog="dmenet syndof export",
        help="write a SYNDOF dataset (image/, blur_map/, ... , camera/) from an RGB-D source",
        description="Render defocused images and their defocus maps from an RGB-D source and "
                    "write them in the released SYNDOF layout (blur_map = round(10 * sigma_px)).",
    )
    ex.add_argument("--source", required=True, metavar="KIND:PATH",
                    help="sintel:PATH, synthia:PATH, middlebury:PATH, folder:PATH, or embedded "
                         "(embedded:N for N procedural scenes)")
    ex.add_argument("--out", required=True, help="output folder (refused if not empty)")
    ex.add_argument("--num", type=int, default=None,
                    help="number of samples (default: one per source image; cycles the source "
                         "with new cameras when larger)")
    ex.add_argument("--seed", type=int, default=0, help="random seed (cameras)")
    ex.add_argument("--max-coc", type=float, default=C_MAX_PX,
                    help=f"largest circle of confusion c_max in px (default {C_MAX_PX:g})")
    ex.add_argument("--focus-mm", type=float, default=None,
                    help="fix the focus distance S1 (mm); without --coc-scale the largest CoC "
                         "in each image is exactly c_max")
    ex.add_argument("--coc-scale", type=float, default=None,
                    help="fix the CoC scale alpha (px): c = alpha * |x - S1| / x")
    ex.add_argument("--mode", choices=("paper", "reference"), default="paper",
                    help="paper (default) or reference: the official generator's camera "
                         "sampling (unless --focus-mm fixes the camera) AND its rendering "
                         "(29 x 29 kernel, symmetric border, its layering and occlusion fill)")
    ex.add_argument("--renderer", choices=("auto", "batched", "tiled", "loop"), default="auto",
                    help="auto (default: tiled on the CPU, batched on a GPU), batched (tensor "
                         "operations over the layers, any device), tiled (CPU, the exact fill "
                         "before every layer) or loop (the straightforward per-layer loop, "
                         "slowest)")
    ex.add_argument("--sigma-rule", choices=("paper", "reference"), default="paper",
                    help="sigma = c / 4 (paper) or (c - 1) / 4 where c > 1 (reference)")
    ex.add_argument("--max-layers", type=int, default=350,
                    help="at most this many CoC layers; neighbouring layers merge beyond it "
                         "(default 350, the generator's cap; fewer renders faster)")
    ex.add_argument("--depth-scale", type=float, default=1.0,
                    help="folder source: multiply the depth files by this to get mm")
    ex.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                    help="embedded source: size of the procedural scenes")
    ex.add_argument("--device", default="cpu",
                    help="cpu (default) or cuda (renders on the GPU with the batched renderer)")
    ex.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return parser


def _sampler_settings(args: argparse.Namespace) -> dict:
    if args.focus_mm is not None:
        return {"mode": "fixed", "focus_mm": args.focus_mm, "alpha_px": args.coc_scale}
    return {"mode": args.mode, "alpha_px": args.coc_scale}


def export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dmenet.data.rgbd import make_rgbd_source
    from dmenet.data.syndof import SyndofRenderer
    from dmenet.labels import SIGMA_MAX_PX

    if args.num is not None and args.num < 1:
        raise DataError(f"--num must be >= 1, got {args.num}")
    if args.max_layers < 1:
        raise DataError(f"--max-layers must be >= 1, got {args.max_layers}")
    if not args.max_coc > 0:
        raise DataError(f"--max-coc must be > 0 px, got {args.max_coc}")
    device = resolve_device(args.device)
    source = make_rgbd_source(args.source, depth_scale_to_mm=args.depth_scale,
                              size=tuple(args.size), seed=args.seed)
    settings = _sampler_settings(args)
    renderer = SyndofRenderer(c_max_px=args.max_coc, sigma_rule=args.sigma_rule,
                              render_mode=args.mode, renderer=args.renderer,
                              max_layers=args.max_layers, **settings)
    out = check_output_dir(args.out, args.overwrite)
    for folder in SUBFOLDERS:
        (out / folder).mkdir(exist_ok=True)
    num = len(source) if args.num is None else args.num
    for i in tqdm(range(num), desc="syndof export", unit="image", disable=None):
        item = source[i % len(source)]
        name = f"{i:05d}_{item['name']}"
        # one generator per sample: sample i is the same whatever --num or device
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
        image = item["image"][None].to(device)
        depth = item["depth_mm"][None].to(device)
        try:
            result = renderer(image, depth, generator=generator)
        except DataError as exc:
            raise DataError(f"{args.source} item {item['name']!r}: {exc}") from exc
        rgb = result.image[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        sigma = result.sigma_px[0, 0].cpu().numpy()
        lo, hi = float(sigma.min()), float(sigma.max())
        norm = (sigma - lo) / (hi - lo) if hi > lo else np.zeros_like(sigma)
        layers = result.layer_id[0, 0].cpu().numpy().astype(np.float32)
        n = int(result.num_layers[0])
        near_bright = (n - 1 - layers) / max(n - 1, 1)
        meta = {
            "name": name, "source": args.source, "source_item": item["name"],
            "height": int(sigma.shape[0]), "width": int(sigma.shape[1]),
            "camera_mode": settings["mode"], "sigma_rule": args.sigma_rule,
            "render_mode": args.mode, "renderer": args.renderer,
            **result.camera.sample(0),
            "c_max_px": args.max_coc, "sigma_max_px": SIGMA_MAX_PX,
            "num_layers": n, "sigma_px_max_in_image": hi,
            "blur_map": {"label_space": "ours", "png_value": "round(10 * sigma_px)",
                         "scale": PNG_LABEL_SCALE},
            "seed": args.seed,
        }
        # a sample's files appear together or not at all (an interrupted export keeps whole
        # samples only)
        files = [out / folder / f"{name}{'.json' if folder == 'camera' else '.png'}"
                 for folder in SUBFOLDERS]
        with atomic_outputs(*files) as temporaries:
            temporary = dict(zip(SUBFOLDERS, temporaries))
            write_image(temporary["image"], rgb)
            write_png16(temporary["blur_map"], PNG_LABEL_SCALE * sigma, channels=3)
            write_image(temporary["blur_map_binary"],
                        (result.binary[0, 0].cpu().numpy() * 255).astype(np.uint8))
            write_image(temporary["blur_map_norm"], (norm * 255).round().astype(np.uint8))
            write_image(temporary["depth_decomposed"], (near_bright * 255).round().astype(np.uint8))
            temporary["camera"].write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {num} samples to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        return export(args)
    return 2  # pragma: no cover - argparse requires a subcommand


if __name__ == "__main__":
    raise SystemExit(main())
