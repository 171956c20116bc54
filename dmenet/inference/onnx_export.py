"""``dmenet export``: B to ONNX with dynamic batch, height and width.

    dmenet export --ckpt model.ckpt --out dmenet.onnx

The ONNX model has one input ``image`` ``(N, 3, H, W)`` float32 RGB in ``[0, 1]`` (any ``H``,
``W``) and two outputs: ``y`` ``(N, 1, H, W)`` (the network's normalised output) and
``sigma_px`` ``(N, 1, H, W)``, the defocus sigma in pixels (the axes are named ``batch``,
``height``, ``width`` in the file), already converted from the
checkpoint's label space. It is B as ``dmenet infer`` runs it (auxiliary heads dropped,
BatchNorm folded) without tiling: tile big photos yourself (see ``dmenet.tiling``).

Export uses ``torch.export`` (the dynamo-based ONNX exporter) with symbolic height and width.
B pads its input to a multiple of 16 with a data-dependent branch, which an exported graph
cannot keep; :class:`ExportWrapper` therefore does that padding in a shape-generic way (pad by
15 pixels, then keep ``ceil(H / 16) * 16`` rows) before calling B, and crops the output back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dmenet.errors import DMENetError

__all__ = ["DYNAMIC_AXIS_NAMES", "ExportWrapper", "export_onnx", "main", "name_dynamic_axes"]


class ExportWrapper(nn.Module):
    """``image (N, 3, H, W)`` -> ``(y, sigma_px)``, both ``(N, 1, H, W)``, for any H, W.

    Pads at the bottom/right by edge replication, as B itself does
    (``dmenet.modules.blocks.pad_to_multiple``), so the result equals B's.
    """

    def __init__(self, predictor: nn.Module, multiple: int = 16) -> None:
        super().__init__()
        self.predictor = predictor
        self.multiple = multiple

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.multiple
        height, width = image.shape[2], image.shape[3]
        padded_h = (height + m - 1) // m * m
        padded_w = (width + m - 1) // m * m
        x = F.pad(image, (0, m - 1, 0, m - 1), mode="replicate")[:, :, :padded_h, :padded_w]
        y = self.predictor(x)[:, :, :height, :width]
        return y, self.predictor.sigma_px(y)


def export_onnx(predictor: nn.Module, out: str | Path, example_hw: tuple[int, int] = (64, 96)) -> Path:
    """Export ``predictor`` (a :class:`~dmenet.checkpoint.DefocusPredictor`) to ``out`` (written
    under a temporary name and renamed: an export that fails leaves no file)."""
    from torch.export import Dim

    from dmenet.data.io import atomic_outputs

    out = Path(out)
    wrapper = ExportWrapper(predictor.float().eval().cpu()).eval()
    # batch 2: an example batch of 1 would make torch.export specialise N to 1
    example = torch.rand(2, 3, *example_hw)
    dynamic = {"image": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic, strict=False)
        onnx_program = torch.onnx.export(
            program, (example,), dynamo=True, input_names=["image"],
            output_names=["y", "sigma_px"], external_data=False, optimize=True, verbose=False,
        )
    if onnx_program is None:
        raise DMENetError("the ONNX exporter returned nothing")
    with atomic_outputs(out) as (temporary,):
        onnx_program.save(str(temporary), external_data=False)
        name_dynamic_axes(temporary)
    return out


DYNAMIC_AXIS_NAMES: dict[int, str] = {0: "batch", 2: "height", 3: "width"}
"""Names of the input's dynamic axes in the ONNX file (the exporter calls them ``s0``, ``s1`` ...)."""


def name_dynamic_axes(path: str | Path) -> None:
    """Rename the exporter's symbolic sizes to :data:`DYNAMIC_AXIS_NAMES` in every input, output
    and intermediate shape of the ONNX file at ``path`` (in place).

    ``torch.export`` cannot take the names itself: a named ``Dim`` makes it check that any
    height works, and B's padding to a multiple of 16 makes it suggest ``height = 16 * k``.
    """
    import onnx

    model = onnx.load(str(path))
    image = model.graph.input[0].type.tensor_type.shape.dim
    renames = {image[i].dim_param: name for i, name in DYNAMIC_AXIS_NAMES.items()
               if i < len(image) and image[i].dim_param}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if value.type.HasField("tensor_type"):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in renames:
                    dim.dim_param = renames[dim.dim_param]
    onnx.save(model, str(path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dmenet export",
        description="Export B from a checkpoint to ONNX (input 'image' (N,3,H,W) RGB in [0,1], "
        "dynamic N, H, W; outputs 'y' and 'sigma_px' (sigma in pixels)).",
    )
    parser.add_argument("--ckpt", required=True, help="a dmenet checkpoint (or convert-official output)")
    parser.add_argument("--out", required=True, metavar="model.onnx", help="the ONNX file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint that holds Python objects (runs code from it)")
    args = parser.parse_args(argv)
    from dmenet.checkpoint import load_predictor
    from dmenet.data.io import check_output_file
    from dmenet.weights import resolve_checkpoint

    out = check_output_file(args.out, args.overwrite)
    predictor = load_predictor(resolve_checkpoint(args.ckpt), device="cpu",
                               trust=args.trust_checkpoint)
    export_onnx(predictor, out)
    print(f"dmenet export: wrote {out} (label space {predictor.label_space!r}; outputs y and "
          "sigma_px in pixels)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
