"""``dmenet deblur``: all-in-focus photos by spatially varying deconvolution (SPEC section 6).

    dmenet deblur photos/ --ckpt model.ckpt --out sharp/
    dmenet deblur photo.jpg --estimator zhuo_sim --out sharp/
    dmenet infer photos/ --ckpt model.ckpt --out maps/ && dmenet deblur photos/ --sigma-map maps/ --out sharp/

The defocus map (Gaussian sigma in px per pixel) comes from B (``--ckpt``), from Zhuo & Sim
(``--estimator zhuo_sim``) or from a file (``--sigma-map``: a ``.npy`` / float TIFF / PFM in px,
or a 16-bit PNG holding ``1000 * sigma`` as ``dmenet infer`` writes it; a folder of
``NAME_sigma_px.npy`` / ``NAME_sigma_px_x1000.png`` serves several photos). The method is
:func:`dmenet.inference.deconvolution.deblur`.

Per photo ``NAME`` the output folder gets ``NAME_deblurred.png`` (``.tiff`` for TIFF inputs) in
the input's bit depth and channels (:func:`dmenet.data.io.write_photo`: grey stays grey, RGBA
keeps its alpha untouched, 16-bit stays 16-bit, float TIFF stays float), and, with
``--save-map``, the map used as ``dmenet infer``'s four files (:mod:`dmenet.inference.writer`;
the JSON also records the deblurring settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmenet.errors import DataError, DMENetError
from dmenet.inference.deconvolution import DEFAULT_LAMBDA, check_sigma_map, deblur

__all__ = ["DEBLURRED_SUFFIX", "read_sigma_map", "main", "build_parser"]

DEBLURRED_SUFFIX: str = "_deblurred"
_TIFF = (".tif", ".tiff")


def read_sigma_map(path: str | Path) -> np.ndarray:
    """A defocus map file as float32 sigma in px ``(H, W)``.

    ``.npy`` and float images (TIFF) and ``.pfm`` hold px; 16-bit images hold
    ``png16_scale * sigma`` (1000, or the scale in the ``NAME_defocus.json`` that ``dmenet
    infer`` writes beside its ``NAME_sigma_px_x1000.png``). 8-bit images are refused (too coarse).
    """
    from dmenet.data.io import load_npy, read_gray
    from dmenet.inference.writer import OUTPUT_SUFFIXES, PNG_SIGMA_SCALE

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such sigma map file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = load_npy(path)
        if not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{path}: the array holds {array.dtype}, not numbers")
        return np.asarray(array, dtype=np.float32)
    if suffix == ".pfm":
        from dmenet.data.rgbd import read_pfm

        return read_pfm(path)
    array = read_gray(path)
    if array.dtype == np.uint16:
        scale = PNG_SIGMA_SCALE
        if path.name.endswith(OUTPUT_SUFFIXES["png16"]):
            sidecar = path.with_name(path.name[: -len(OUTPUT_SUFFIXES["png16"])] + OUTPUT_SUFFIXES["json"])
            if sidecar.is_file():
                try:
                    scale = float(json.loads(sidecar.read_text()).get("png16_scale", scale))
                except (ValueError, AttributeError, TypeError):
                    pass
        return array.astype(np.float32) / scale
    if array.dtype in (np.float32, np.float64):
        return array.astype(np.float32)
    raise DataError(f"{path}: a {array.dtype} image cannot hold sigma in px; give a .npy / float "
                    f"TIFF in px or a 16-bit PNG of 1000 * sigma (dmenet infer's _sigma_px_x1000.png)")


def _map_for(source: Path, name: str, count: int) -> Path:
    """The map file of photo ``name``: ``source`` itself, or its match in the folder ``source``."""
    from dmenet.inference.writer import OUTPUT_SUFFIXES

    if source.is_dir():
        for kind in ("npy", "png16"):
            candidate = source / f"{name}{OUTPUT_SUFFIXES[kind]}"
            if candidate.is_file():
                return candidate
        raise DataError(f"{source}: no {name}{OUTPUT_SUFFIXES['npy']} or "
                        f"{name}{OUTPUT_SUFFIXES['png16']} for this photo")
    if count > 1:
        raise DMENetError(f"--sigma-map {source} is one map but {count} photos were given; give a "
                          "folder of NAME_sigma_px.npy maps (what 'dmenet infer --out' writes)")
    return source


def _output_suffixes(path: Path, save_map: bool) -> dict[str, str]:
    from dmenet.inference.writer import OUTPUT_SUFFIXES

    ext = ".tiff" if path.suffix.lower() in _TIFF else ".png"
    suffixes = {"deblurred": f"{DEBLURRED_SUFFIX}{ext}"}
    if save_map:
        suffixes.update(OUTPUT_SUFFIXES)
    return suffixes


def build_parser() -> argparse.ArgumentParser:
    from dmenet.inference.infer import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="dmenet deblur",
        description="All-in-focus photos: spatially varying non-blind deconvolution (Gaussian PSF "
        "of the defocus map, Krishnan & Fergus hyper-Laplacian prior).",
        epilog="Map source: --ckpt (B), --estimator zhuo_sim, or --sigma-map. Outputs per photo "
        "NAME: NAME_deblurred.png (.tiff for TIFF inputs) in the input's bit depth; with "
        "--save-map also dmenet infer's four map files. Example: dmenet deblur photos/ "
        "--ckpt model.ckpt --out sharp/",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="photo files, folders or glob patterns (jpg, png, tiff, webp; 8 or 16 bit)")
    add_model_arguments(parser)
    parser.add_argument("--sigma-map", metavar="FILE",
                        help="use this defocus map instead of estimating one: .npy / float TIFF / "
                        ".pfm in px, or a 16-bit PNG of 1000 * sigma (dmenet infer's output); a "
                        "folder of NAME_sigma_px.npy (or NAME_sigma_px_x1000.png) for several photos")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA,
                        help=f"data weight (default {DEFAULT_LAMBDA:g}; smaller = smoother, for "
                        "estimated maps and noisy photos: 100-420 with --estimator zhuo_sim)")
    parser.add_argument("--reference", action="store_true",
                        help="the reference's own method instead (32 hard quantile bins, no "
                        "edge-safe map, no isolation), for comparison")
    parser.add_argument("--save-map", action="store_true",
                        help="also write the sigma map used (dmenet infer's four files)")
    parser.add_argument("--recursive", action="store_true", help="also read subfolders of folders")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    if args.sigma_map and (args.ckpt or args.estimator == "zhuo_sim"):
        raise DMENetError("give one map source: --sigma-map, --ckpt or --estimator zhuo_sim")
    if args.sigma_map and not Path(args.sigma_map).exists():
        raise DMENetError(f"--sigma-map {args.sigma_map}: no such file or folder")
    if not args.lam > 0:
        raise DMENetError(f"--lambda must be > 0, got {args.lam}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_options(args)
    from tqdm.auto import tqdm

    from dmenet.data.io import read_photo, write_photo
    from dmenet.inference.infer import (
        PHOTO_ERRORS,
        failure_reason,
        gather_inputs,
        make_estimator,
        report_failures,
        resolve_device,
    )
    from dmenet.inference.writer import check_outputs_free, output_paths, write_defocus_outputs

    items, failures = gather_inputs(args.paths, args.recursive)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DMENetError(f"{out_dir}: exists and is not a folder")
    for path, name in items:
        check_outputs_free(out_dir, [name], args.overwrite, _output_suffixes(path, args.save_map))
    device = resolve_device(args.device)
    map_source = Path(args.sigma_map) if args.sigma_map else None
    estimator = None
    if items and map_source is None:
        estimator = make_estimator(args, progress_tiles=len(items) == 1)
    elif map_source is not None and map_source.is_file():
        _map_for(map_source, "", len(items))
    settings = {"lambda": args.lam, "method": "reference" if args.reference else "default"}

    written = 0
    bar = tqdm(items, desc="dmenet deblur", unit="photo", disable=None)
    for path, name in bar:
        bar.set_postfix_str(path.name, refresh=False)
        steps = None
        try:
            colour, layout = read_photo(path)
            start = time.perf_counter()
            if map_source is not None:
                map_path = _map_for(map_source, name, len(items))
                sigma = check_sigma_map(read_sigma_map(map_path), colour.shape[1:], str(map_path))
                meta = {"estimator": "file", "sigma_map": str(map_path)}
            else:
                assert estimator is not None
                rgb = colour if colour.shape[0] == 3 else colour.expand(3, -1, -1)
                sigma = check_sigma_map(estimator(rgb), colour.shape[1:], str(path))
                meta = dict(estimator.describe)
            steps = tqdm(desc=f"deblurring {path.name}", unit="step", leave=False,
                         disable=None, position=1)

            def progress(done: int, total: int, steps=steps) -> None:
                steps.total = total
                steps.n = done
                steps.refresh()

            result = deblur(colour, sigma, lam=args.lam, reference=args.reference, device=device,
                            progress=progress)
            paths = output_paths(out_dir, name, _output_suffixes(path, args.save_map))
            meta.update({"source": str(path), "seconds": round(time.perf_counter() - start, 3),
                         "deblur": settings, "deblurred": paths["deblurred"].name})
            if args.save_map:
                write_defocus_outputs(out_dir, name, sigma, overwrite=args.overwrite, meta=meta)
            write_photo(paths["deblurred"], result, layout)
            written += 1
        except PHOTO_ERRORS as exc:
            failures.append((str(path), failure_reason(exc)))
        finally:
            if steps is not None:
                steps.close()
    bar.close()
    return report_failures("dmenet deblur", f"wrote {written} deblurred photo(s) to {out_dir}",
                           failures)


if __name__ == "__main__":
    sys.exit(main())
