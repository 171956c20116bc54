"""How far can deblurring a SYNDOF render go? The renderer itself, inverted.

Once its layers are fixed, every step of the SYNDOF renderer (each layer's blur, the
over-compositing, the un-premultiplying and the Laplace occlusion fill in front of the focus)
is linear in the image. :class:`RenderOperator` is that linear map for the layers of a real
render (the true depth order, the true fill), with its exact transpose, so K&F's objective can
be minimised with the renderer as the blur model (:func:`half_quadratic_cg`, the solver of
``dmenet deblur``). No deblurring from a sigma map can know more than this operator: it holds
the depth order and the hidden-background fill, which a sigma map does not determine. So its
gain over the defocused input bounds what ``dmenet deblur`` with the ground-truth map can
reach on these renders (up to the solver's settings, which this script also varies).

Renders: the sources of ``bench/bench_deblur.py`` (longest side ``--max-side``), the same camera
rule (focus at the 30 % depth quantile, largest CoC ``--c-max``), the loop renderer with
layers every ``--coc-step`` px of CoC (0.5: at most 57 layers, so each operator application
takes a second), 8 bits. Columns: (a) the input, (b) ``dmenet deblur``'s default with the
ground-truth map, (e) the renderer inverted with ``dmenet deblur``'s solver settings
(lambda 1000, 8 CG steps, beta < 256), (e+) with a larger data weight and more steps.

    python bench/bench_deblur_bound.py                 # writes docs/benchmarks/deblur_bound.{json,md}
    python bench/bench_deblur_bound.py --quick         # two sources, one camera
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_deblur  # noqa: E402  (the sources and metrics of the deblurring benchmark)

OUT_DIR = bench_deblur.OUT_DIR


class _LaplaceSolve(torch.autograd.Function):
    """``A^-1 b`` for the fill's Laplace matrix ``A`` (symmetric: the transpose is itself)."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, lu) -> torch.Tensor:
        ctx.lu = lu
        return torch.from_numpy(lu.solve(b.detach().double().numpy())).to(b.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return torch.from_numpy(ctx.lu.solve(g.double().contiguous().numpy())).to(g.dtype), None


def _blur_near(x: torch.Tensor, taps: torch.Tensor | None, box: tuple[int, int, int, int]):
    """``x (1, C, H, W)`` blurred by the renderer's blur (:func:`dmenet.data.syndof.blur_stack`,
    paper mode: its border rule) with the 1-D ``taps``, on the output pixels within the kernel
    radius of ``box`` ``(y0, y1, x0, x1)`` (outside it a layer's blur is 0). Returns ``(crop,
    output box)``."""
    from dmenet.data.syndof import blur_stack
    from dmenet.data.syndof.kernels import BORDERS, border_index

    h, w = x.shape[-2:]
    if taps is None:
        return x[..., box[0]:box[1], box[2]:box[3]], box
    r = len(taps) // 2
    y0, y1, x0, x1 = max(0, box[0] - r), min(h, box[1] + r), max(0, box[2] - r), min(w, box[3] + r)
    rows = border_index(torch.arange(y0 - r, y1 + r), h, BORDERS["paper"])
    cols = border_index(torch.arange(x0 - r, x1 + r), w, BORDERS["paper"])
    return blur_stack(x.index_select(2, rows).index_select(3, cols), taps[None]), (y0, y1, x0, x1)


class RenderOperator:
    """The SYNDOF render (``render_mode="paper"``, Gaussian aperture) of fixed layers as a linear
    map of the image, assembled from the renderer's pieces (:mod:`dmenet.data.syndof`: its blur,
    compositing, fill region and Laplace system): ``layer_id (H, W)`` long (0 = farthest),
    ``sigmas_px`` per layer, the fill before every layer after ``fill_after``
    (:func:`dmenet.data.syndof.layers.fill_start_index`).

    ``apply(x (C, H, W))`` equals :func:`dmenet.data.syndof.render_defocus` (``renderer="loop"``)
    of ``x`` with these layers (tested); ``adjoint(v)`` is its exact transpose (by automatic
    differentiation of ``apply``, which is linear). Everything that depends only on the layers
    (masks, fill regions and their factorised Laplace systems, the composited alpha) is computed
    once; each layer is blurred only near its pixels.
    """

    def __init__(self, layer_id: torch.Tensor, sigmas_px: list[float], fill_after: int):
        from dmenet.data.syndof import gaussian_blur, gaussian_kernel1d
        from dmenet.data.syndof.composite import MASK_EPS, over, unpremultiply
        from dmenet.data.syndof.fill import fill_region, laplace_factor, laplace_system
        from dmenet.data.syndof.kernels import BORDERS, kernel_radius

        self.h, self.w = h, w = layer_id.shape
        lid = layer_id[None, None]
        alpha = torch.zeros(1, 1, h, w)
        self.steps = []
        for i, sigma in enumerate(sigmas_px):
            step: dict = {}
            blurs = kernel_radius(sigma) > 0
            taps = torch.from_numpy(gaussian_kernel1d(sigma)).float() if blurs else None
            if i > fill_after:
                step["unpremultiply"] = alpha
                alpha = unpremultiply(torch.zeros_like(alpha), alpha)[1]
                union = lid < i
                region = fill_region(union, gaussian_blur(union.float(), sigma,
                                                          border=BORDERS["paper"]))[0, 0]
                if blurs and bool(region.any()):
                    ys, xs = torch.nonzero(region, as_tuple=True)
                    deg, nb, known, ny, nx = laplace_system(ys, xs, h, w)
                    lu = laplace_factor(deg, nb)
                    u = union[0, 0].float()
                    step["fill"] = (ys * w + xs, known.float(), ny, nx, lu, u)
                    filled = torch.from_numpy(lu.solve((u[ny, nx] * known.float()).sum(0).double().numpy()))
                    alpha = alpha.clone()
                    alpha[0, 0, ys, xs] = filled.float()
            m = (lid == i).float()
            ys, xs = torch.nonzero(m[0, 0], as_tuple=True)
            if ys.numel():
                box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
                mb, out_box = _blur_near(m, taps, box)
                keep = (mb >= MASK_EPS).float()
                mb = mb * keep
                y0, y1, x0, x1 = out_box
                step.update(mask=m, taps=taps, box=box, out_box=out_box, mb=mb, keep=keep)
                nothing = torch.zeros_like(mb).expand(1, 3, *mb.shape[-2:])
                inner = over(nothing, alpha[..., y0:y1, x0:x1], torch.cat([nothing, mb], 1))[1]
                alpha = F.pad(inner, (x0, w - x1, y0, h - y1)) + alpha * self._outside(out_box)
            self.steps.append(step)
        self.alpha = alpha

    def _outside(self, box: tuple[int, int, int, int]) -> torch.Tensor:
        y0, y1, x0, x1 = box
        outside = torch.ones(1, 1, self.h, self.w)
        outside[..., y0:y1, x0:x1] = 0.0
        return outside

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        from dmenet.data.syndof.composite import over, resolve, unpremultiply

        x = x[None]
        acc = torch.zeros_like(x)
        c = x.shape[1]
        for step in self.steps:
            if "unpremultiply" in step:
                acc = unpremultiply(acc, step["unpremultiply"])[0]
            if "fill" in step:
                index, known, ny, nx, lu, u = step["fill"]
                b = ((acc[0] * u)[:, ny, nx] * known).sum(1).T.contiguous()  # (n, C)
                acc = acc.reshape(c, -1).index_copy(1, index, _LaplaceSolve.apply(b, lu).T)
                acc = acc.reshape(x.shape)
            if "mask" in step:
                colour, (y0, y1, x0, x1) = _blur_near(x * step["mask"], step["taps"], step["box"])
                mb = step["mb"]
                inner = over(acc[..., y0:y1, x0:x1], torch.zeros_like(mb),
                             torch.cat([colour * step["keep"], mb], 1))[0]
                acc = F.pad(inner, (x0, self.w - x1, y0, self.h - y1)) + acc * self._outside(
                    step["out_box"])
        return resolve(acc, self.alpha, x)[0]

    def adjoint(self, v: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(v, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.apply(x), x, v)
        return g


def render_with_operator(image: np.ndarray, depth: np.ndarray, c_max_px: float,
                         coc_step_px: float):
    """The benchmark's camera rule: ``(sharp (3, H, W), 8-bit render (3, H, W), sigma_px
    (H, W), RenderOperator, PSNR (dB) of the operator on the sharp source against the float
    render)`` of one source."""
    from dmenet.data.syndof import render_defocus
    from dmenet.data.syndof.layers import fill_start_index, fill_start_value, layers_from_depth
    from dmenet.data.thin_lens import Camera, clean_depth_mm, max_defocus_ratio, sigma_from_coc
    from dmenet.labels import C_MAX_PX

    img = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    d = clean_depth_mm(torch.from_numpy(depth)[None, None])
    focus = torch.quantile(d.flatten()[:: max(1, d.numel() // 1_000_000)], 0.3).reshape(1)
    camera = Camera(focus, c_max_px / max_defocus_ratio(d, focus))
    out = render_defocus(img, d, camera, coc_step_px=coc_step_px, renderer="loop")
    layers, values = layers_from_depth(d, camera, "paper", coc_step_px, 350, C_MAX_PX)
    n = int(layers.num_layers[0])
    sigmas = [float(s) for s in sigma_from_coc(values[0, :n].abs(), "paper")]
    start = fill_start_value(values, layers.num_layers)
    fill_after = int(fill_start_index(values, layers.num_layers, start)[0])
    op = RenderOperator(layers.layer_id[0, 0], sigmas, fill_after)
    rendered = torch.round(out.image[0].clamp(0, 1) * 255.0) / 255.0
    exact = float(-10 * torch.log10(((op.apply(img[0]) - out.image[0]) ** 2).mean().clamp(min=1e-30)))
    return img[0], rendered, out.sigma_px[0, 0], op, exact


SETTINGS = {"e": {"lam": 1000.0, "cg_iters": 8, "beta_max": 256.0},
            "e+": {"lam": 10000.0, "cg_iters": 16, "beta_max": 4096.0}}
"""(e): ``dmenet deblur``'s solver settings; (e+): a 10x data weight (the render is noise-free
but for 8-bit rounding), more CG steps and a longer continuation."""


def invert_render(y: torch.Tensor, op: RenderOperator, lam: float, cg_iters: int,
                  beta_max: float) -> torch.Tensor:
    from dmenet.inference.deconvolution import beta_schedule, half_quadratic_cg

    x = half_quadratic_cg(op.apply, op.adjoint, y, y.clone(), lam, cg_iters=cg_iters,
                          betas=beta_schedule(beta_max=beta_max))
    return x.clamp(0.0, 1.0)


def run(args) -> dict:
    from dmenet.inference.deblur import deblur

    rows = []
    for c_max in args.c_max:
        for name, image, depth in bench_deblur.sources(args.scenes, args.max_side, not args.no_shared):
            if args.only and not any(t in name for t in args.only):
                continue
            sharp, y, sigma, op, exact = render_with_operator(image, depth, c_max, args.coc_step)
            mask = bench_deblur.away_from_edges(sigma.numpy())
            row = {"name": name, "c_max_px": c_max, "size": list(sigma.shape),
                   "layers": len(op.steps), "input": bench_deblur.metrics(y, sharp, mask)}
            row["operator_vs_render_psnr"] = exact
            t = time.perf_counter()
            row["default"] = bench_deblur.metrics(deblur(y, sigma), sharp, mask)
            row["default"]["seconds"] = round(time.perf_counter() - t, 1)
            for key in args.settings:
                t = time.perf_counter()
                row[key] = bench_deblur.metrics(invert_render(y, op, **SETTINGS[key]), sharp, mask)
                row[key]["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(f"{name[:28]:28s} c_max {c_max:g} ({row['layers']} layers): input "
                  f"{row['input']['psnr']:.2f}  " + "  ".join(
                      f"{k} {row[k]['psnr'] - row['input']['psnr']:+.2f}" for k in
                      ["default", *args.settings]) + " dB", flush=True)
            if args.partial:
                Path(args.partial).write_text(json.dumps(rows, indent=1) + "\n")
    return {"rows": rows, "settings": {k: SETTINGS[k] for k in args.settings},
            "coc_step_px": args.coc_step, "max_side": args.max_side}


def markdown(result: dict) -> str:
    q = result["quality"]
    keys = ["default", *q["settings"]]
    names = {"default": "(b) `dmenet deblur`, GT map", "e": "(e) the renderer inverted",
             "e+": "(e+) the renderer inverted, lambda 10000"}
    lines = [f"Run {result['when']} on {result['machine']}; renders with layers every "
             f"{q['coc_step_px']:g} px of CoC, longest side {q['max_side']}.", "",
             "Gain over the 8-bit input (dB PSNR against the sharp source):"]
    for c_max in sorted({r["c_max_px"] for r in q["rows"]}, reverse=True):
        rows = [r for r in q["rows"] if r["c_max_px"] == c_max]
        lines += ["", f"Largest CoC {c_max:g} px (sigma up to {c_max / 4:g} px):", "",
                  "| image | layers | operator vs render | (a) input | "
                  + " | ".join(names[k] for k in keys) + " |",
                  "|---|---|---|---|" + "---|" * len(keys)]
        for r in rows:
            lines.append(f"| {r['name']} | {r['layers']} | {r['operator_vs_render_psnr']:.0f} dB | "
                         f"{r['input']['psnr']:.2f} dB | " + " | ".join(
                f"{r[k]['psnr'] - r['input']['psnr']:+.2f}" for k in keys) + " |")
        lines.append("| **mean** | | | | " + " | ".join(
            f"**{np.mean([r[k]['psnr'] - r['input']['psnr'] for r in rows]):+.2f}**" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenes", type=int, default=8, help="procedural scenes (plus the motorcycle)")
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--coc-step", type=float, default=0.5, help="layer step (px of CoC)")
    parser.add_argument("--c-max", type=float, nargs="+", default=[28.0, 12.0])
    parser.add_argument("--settings", nargs="+", default=["e", "e+"], choices=list(SETTINGS))
    parser.add_argument("--no-shared", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="TEXT")
    parser.add_argument("--out", default=str(OUT_DIR))
    parser.add_argument("--partial", help="also write the rows so far to this JSON file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="only merge earlier runs' deblur_bound.json files (rows in this order, "
                             "a later row replacing an earlier one of the same image and camera)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = {(r["name"], r["c_max_px"]): r for p in parts for r in p["quality"]["rows"]}
        result = dict(parts[0], when=", ".join(dict.fromkeys(p["when"] for p in parts)))
        result["quality"] = dict(parts[0]["quality"], rows=list(rows.values()))
    else:
        result = None
    if args.quick:
        args.scenes, args.max_side, args.c_max, args.only = 1, 128, args.c_max[:1], ["scene", "motorcycle"]
    if result is None:
        result = {"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
                             f"cores, torch {torch.__version__}, 1 thread",
                  "quality": run(args)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "deblur_bound.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "deblur_bound.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
