"""The ``dmenet`` command: LightningCLI subcommands plus tool subcommands.

``dmenet fit|validate|test|predict`` go to LightningCLI (``--config`` repeatable, later files
override earlier ones, ``--print_config``, ``--ckpt_path``). The tool subcommands are plain
argparse programs, each in the module that implements it, exposing ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

LIGHTNING_SUBCOMMANDS: dict[str, str] = {
    "fit": "train a model (B, BD, BDC or BDCS by config) with validation",
    "validate": "run the validation set(s) once, e.g. on a checkpoint (--ckpt_path)",
    "test": "evaluate on a test set; writes results/<set>/ metrics, tables and PR plots",
    "predict": "write defocus maps for the configured prediction inputs",
}

# name -> (module implementing `main(argv)`, one-line help)
TOOL_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "syndof": ("dmenet.data.export", "SYNDOF synthesis tools: 'dmenet syndof export' writes a dataset"),
    "infer": ("dmenet.inference.infer", "defocus maps (sigma in px) for photos of any size"),
    "magnify": ("dmenet.inference.magnify", "defocus magnification: re-blur a photo with k * sigma"),
    "depth": ("dmenet.inference.depth", "relative depth map from the estimated defocus map"),
    "deblur": ("dmenet.inference.deblur", "all-in-focus photos: deconvolution with the defocus map"),
    "export": ("dmenet.inference.onnx_export", "export B to ONNX with dynamic height and width"),
    "convert-official": (
        "dmenet.official",
        "convert the public TensorLayer DMENet_BDCS.npz into a dmenet checkpoint",
    ),
    "weights": ("dmenet.weights", "the published weights by name (--ckpt dmenet_bdcs): "
                "origin, licence, URLs, cache"),
    "list": ("dmenet.cli", "list the registered subnetworks (B, D, C, S) and their class paths"),
}


def _top_level_help() -> str:
    lines = [
        "usage: dmenet <command> [options]",
        "",
        "Defocus map estimation from a single photo (DMENet, CVPR 2019).",
        "",
        "training and evaluation (LightningCLI; --config is repeatable, later files win):",
    ]
    for name, text in LIGHTNING_SUBCOMMANDS.items():
        lines.append(f"  {name:<18}{text}")
    lines += ["", "tools:"]
    for name, (_, text) in TOOL_SUBCOMMANDS.items():
        lines.append(f"  {name:<18}{text}")
    lines += [
        "",
        "Run 'dmenet <command> --help' for a command's options.",
        "Examples: dmenet infer photo.jpg (the published weights, fetched once)",
        "          dmenet fit --config configs/quickstart.yaml",
    ]
    return "\n".join(lines)


def list_main(argv: Sequence[str] | None = None) -> int:
    """``dmenet list``: every registered part, its registry name and its class path."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="dmenet list",
        description="List the registered subnetworks: registry names and class paths.",
    )
    parser.parse_args(argv)
    from dmenet.registry import ALL_REGISTRIES, PART_REGISTRIES

    print("Choose a part by registry name or class path, e.g. --model.blur_estimator light_resnet18")
    print("(in a config: model: {blur_estimator: light_resnet18} or class_path: <name or path>).\n")
    for kind, registry in ALL_REGISTRIES.items():
        option = f"--model.{kind}" if kind in PART_REGISTRIES else "--model.blur_estimator"
        print(f"{kind}  ({registry.description}; {option} NAME)")
        for name in registry.names():
            print(f"  {name:<28}{registry.class_path(name)}")
    return 0


def run_lightning_cli(args: Sequence[str]) -> None:
    """Run LightningCLI on ``args`` (e.g. ``["fit", "--config", "x.yaml"]``).

    It runs in a copy of the current ``contextvars`` context: jsonargparse leaves its parser in a
    context variable, which would otherwise keep the run's model and Trainer alive after it
    (hundreds of MB per run in a notebook or a test session).
    """
    import contextvars

    from dmenet.lightning_cli import DMENetCLI, finishing_its_wandb_run, quiet_lightning

    with quiet_lightning(), finishing_its_wandb_run():
        contextvars.copy_context().run(DMENetCLI, args=list(args))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_level_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from dmenet import __version__

        print(f"dmenet {__version__}")
        return 0
    command = argv[0]
    from dmenet.errors import DMENetError, OutputWriteError

    try:
        if command in TOOL_SUBCOMMANDS:
            if command == "list":
                return list_main(argv[1:])
            module = importlib.import_module(TOOL_SUBCOMMANDS[command][0])
            return int(module.main(argv[1:]) or 0)
        if command in LIGHTNING_SUBCOMMANDS:
            os.environ.setdefault("WANDB_SILENT", "true")
            run_lightning_cli(argv)
            return 0
    except (DMENetError, OutputWriteError) as exc:  # one clear line, no traceback
        print(f"dmenet {command}: error: {exc}", file=sys.stderr)
        return 2
    print(_top_level_help(), file=sys.stderr)
    print(f"\ndmenet: error: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
