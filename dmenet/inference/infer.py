"""``dmenet infer``: defocus maps (sigma in pixels) for photos of any size, without ground truth.

    dmenet infer photo.jpg                      # the published weights (dmenet_bdcs), maps in .
    dmenet infer photos/ more/*.jpg one.png --ckpt model.ckpt --out maps/

Per photo it writes ``NAME_sigma_px.npy`` (float32 sigma in pixels), ``NAME_sigma_px_x1000.png``
(16-bit, ``value / 1000`` = sigma in pixels), ``NAME_sigma_color.png`` and ``NAME_defocus.json``
(see :mod:`dmenet.inference.writer`). Big photos are processed in overlapping tiles
(:mod:`dmenet.tiling`) so memory stays bounded. A photo that cannot be read or
processed is reported by name, the others are still processed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dmenet.devices import resolve_device
from dmenet.errors import DMENetError
from dmenet.tiling import DEFAULT_MEMORY_GB, DEFAULT_OVERLAP_PX

__all__ = ["main", "build_parser", "resolve_device", "SigmaEstimator", "make_estimator",
           "failure_reason", "gather_inputs", "report_failures"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmenet infer",
        description="Estimate defocus maps (Gaussian blur sigma in pixels) for photos of any size.",
        epilog="Outputs per photo NAME: NAME_sigma_px.npy (float32 sigma in px), "
        "NAME_sigma_px_x1000.png (16-bit, value/1000 = sigma in px), NAME_sigma_color.png, "
        "NAME_defocus.json. Examples: dmenet infer photo.jpg (the published weights dmenet_bdcs, "
        "maps in the current folder); dmenet infer photos/ --ckpt model.ckpt --out maps/",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="photo files, folders or glob patterns (jpg, png, tiff, webp; 8 or 16 bit)")
    add_model_arguments(parser)
    parser.add_argument("--out", default=".", help="output folder (default: the current folder)")
    parser.add_argument("--recursive", action="store_true", help="also read subfolders of folders")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser, estimator_choice: bool = True) -> None:
    """The options every tool that runs B shares (infer, magnify, depth)."""
    parser.add_argument("--ckpt", help="checkpoint: the name of published weights (default "
                        "dmenet_bdcs, fetched and cached on first use; see 'dmenet weights'), a "
                        "dmenet training checkpoint (.ckpt) or the output of 'dmenet convert-official'")
    if estimator_choice:
        parser.add_argument("--estimator", choices=("b", "zhuo_sim"), default="b",
                            help="b: the checkpoint's network (default); zhuo_sim: the classical "
                            "Zhuo & Sim estimator (no checkpoint, CPU, slow on big photos)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--half", action="store_true", help="float16 on a GPU (faster, ~1e-3 less exact)")
    parser.add_argument("--tile", type=_tile_arg, default="auto",
                        help="tile side in px for big photos; auto (default): the biggest tile that "
                        "fits --memory-gb; 0 = never tile; peak memory grows with its square")
    parser.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB,
                        help=f"peak memory budget for --tile auto (default {DEFAULT_MEMORY_GB:g})")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP_PX,
                        help=f"tile overlap in px (default {DEFAULT_OVERLAP_PX}; smaller is faster, "
                        "less exact)")
    parser.add_argument("--reference-path", action="store_true",
                        help="run B's reference forward instead of the fast inference path "
                        "(dmenet.inference.fast; same output within 1e-4, slower)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow loading a checkpoint that holds Python objects (runs code from "
                        "the file; only for files you trust)")


def _tile_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a tile size: {value!r} (px, 0 or auto)") from None


class SigmaEstimator:
    """One photo ``(3, H, W)`` in ``[0, 1]`` -> sigma in pixels ``(H, W)`` float32 numpy.

    ``describe`` holds what the outputs record about it (checkpoint, label space ...).
    """

    def __init__(self, fn: Callable[[torch.Tensor], np.ndarray], describe: dict) -> None:
        self.fn = fn
        self.describe = describe
        self.predictor = None

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        return self.fn(image)

    def tensor(self, image: torch.Tensor) -> torch.Tensor:
        """``(3, H, W)`` -> sigma in px ``(H, W)`` as a float32 torch tensor (on the CPU)."""
        return torch.from_numpy(np.asarray(self(image), dtype=np.float32))


def make_estimator(args: argparse.Namespace, progress_tiles: bool = False) -> SigmaEstimator:
    """Build the estimator the options ask for (B from ``--ckpt`` or Zhuo & Sim)."""
    if getattr(args, "estimator", "b") == "zhuo_sim":
        from dmenet.evaluation.zhuo_sim import estimate_sigma_px

        def zhuo(image: torch.Tensor) -> np.ndarray:
            rgb = image.permute(1, 2, 0).cpu().numpy().astype(np.float64)
            return np.asarray(estimate_sigma_px(rgb), dtype=np.float32)

        return SigmaEstimator(zhuo, {"estimator": "zhuo_sim", "label_space": None})

    from dmenet.checkpoint import load_predictor
    from dmenet.tiling import auto_tile_px, predict_image, return_freed_maps_to_os
    from dmenet.weights import DEFAULT_WEIGHTS, describe_weights, is_named, resolve_checkpoint

    if not args.ckpt:
        args.ckpt = DEFAULT_WEIGHTS
        print(f"dmenet: no --ckpt given: using the published weights {DEFAULT_WEIGHTS} "
              "(see 'dmenet weights'; --ckpt FILE for another model)", file=sys.stderr)

    device = resolve_device(args.device)
    if args.half and device.type != "cuda":
        raise DMENetError("--half needs a GPU (--device cuda); on the CPU float32 is used")
    tile = getattr(args, "tile", "auto")
    if tile != "auto" and (tile < 0 or args.overlap < 0 or (tile > 0 and args.overlap >= tile)):
        raise DMENetError(f"--tile {tile} / --overlap {args.overlap}: need 0 <= overlap < tile")
    return_freed_maps_to_os()  # the peak memory that --memory-gb budgets for (dmenet.tiling)
    predictor = load_predictor(resolve_checkpoint(args.ckpt), device=device,
                               trust=args.trust_checkpoint)
    if not getattr(args, "reference_path", False):
        from dmenet.inference.fast import fast_predictor

        predictor = fast_predictor(predictor)
    path = "fast" if getattr(predictor, "fast_path", False) else "reference"
    memory_gb = getattr(args, "memory_gb", DEFAULT_MEMORY_GB)
    dtype = torch.float16 if args.half else torch.float32
    predictor = predictor.to(dtype)

    def run(batch: torch.Tensor) -> torch.Tensor:
        return predictor(batch.to(device=device, dtype=dtype)).float()

    def b(image: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            side = (auto_tile_px(image.shape[-2], image.shape[-1], memory_gb, path, args.overlap)
                    if tile == "auto" else tile)
            y = predict_image(run, image, tile=side, overlap=args.overlap, device=device,
                              progress=progress_tiles)
            sigma = predictor.sigma_px(y.float())
        return sigma[0, 0].cpu().numpy().astype(np.float32)

    ckpt = getattr(predictor, "checkpoint", None)
    describe = {
        "estimator": "b",
        "checkpoint": args.ckpt if is_named(args.ckpt) else str(Path(args.ckpt).resolve()),
        "label_space": predictor.label_space,
        "device": str(device),
        "dtype": "float16" if args.half else "float32",
        "inference_path": path,  # "fast" (dmenet.inference.fast) or "reference"
        "tile_px": tile,
        "overlap_px": args.overlap,
    }
    if ckpt is not None and ckpt.record.get("source"):
        describe["converted_from"] = ckpt.record["source"]
    if is_named(args.ckpt):
        describe["weights"] = describe_weights(args.ckpt)
    estimator = SigmaEstimator(b, describe)
    estimator.predictor = predictor
    return estimator


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm.auto import tqdm

    from dmenet.data.io import read_image_tensor
    from dmenet.inference.writer import check_outputs_free, write_defocus_outputs

    items, failures = gather_inputs(args.paths, args.recursive)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DMENetError(f"{out_dir}: exists and is not a folder")
    check_outputs_free(out_dir, [name for _, name in items], args.overwrite)
    estimator = make_estimator(args, progress_tiles=len(items) == 1) if items else None
    # nothing is created before a photo's maps are written: if every input fails, no folder

    written = 0
    bar = tqdm(items, desc="dmenet infer", unit="photo", disable=None)
    for path, name in bar:
        bar.set_postfix_str(path.name, refresh=False)
        assert estimator is not None
        try:
            image = read_image_tensor(path)
            start = time.perf_counter()
            sigma = estimator(image)
            meta = dict(estimator.describe)
            meta.update({"source": str(path), "seconds": round(time.perf_counter() - start, 3)})
            write_defocus_outputs(out_dir, name, sigma, overwrite=args.overwrite, meta=meta)
            written += 1
        except PHOTO_ERRORS as exc:
            failures.append((str(path), failure_reason(exc)))
    bar.close()
    summary = (f"wrote defocus maps of {written} photo(s) to {out_dir}" if written
               else f"no photo could be processed; {out_dir} was not created")
    return report_failures("dmenet infer", summary, failures)


def gather_inputs(paths: Sequence[str], recursive: bool) -> tuple[list[tuple[Path, str]],
                                                                   list[tuple[str, str]]]:
    """Expand every entry (file, folder, glob) on its own: ``(items, failures)``, where an entry
    that cannot be expanded is a failure ``(entry, message)`` and the others still count."""
    from dmenet.data.photos import deduplicate_names, expand_paths

    failures: list[tuple[str, str]] = []
    items: list[tuple[Path, str]] = []
    for entry in paths:
        try:
            items += expand_paths([entry], recursive=recursive)
        except DMENetError as exc:
            failures.append((entry, str(exc)))
    return deduplicate_names(items), failures


PHOTO_ERRORS = (DMENetError, RuntimeError, MemoryError, ValueError)
"""What one photo may raise without stopping the others (e.g. out of memory on one photo)."""


def failure_reason(exc: BaseException) -> str:
    """The failure line of one photo: a user error as it is, anything else by its type and
    the first line of its message."""
    if isinstance(exc, DMENetError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def report_failures(prog: str, summary: str, failures: list[tuple[str, str]]) -> int:
    """Print the summary line and each failed input; the exit status (1 if any failed)."""
    print(f"{prog}: {summary}", file=sys.stderr)
    if failures:
        print(f"{prog}: {len(failures)} input(s) failed:", file=sys.stderr)
        for where, why in failures:
            print(f"  {why}" if why.startswith(where) else f"  {where}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
