"""LightningCLI for ``dmenet fit|validate|test|predict``.

Parts may be named by their registry name (``dmenet list``) wherever a class path is accepted:
``--model.blur_estimator light_resnet18``, ``--model.domain_discriminator.class_path dmenet``,
or in a config file ``model: {blur_estimator: light_resnet18}`` /
``model: {blur_estimator: {class_path: light_resnet18, init_args: {...}}}``. The names are
replaced by the class paths before jsonargparse sees them (command-line arguments here, config
files in the ``"dmenet"`` parser mode: OmegaConf loading plus the same replacement), so
``--print_config`` shows full class paths and the saved configs need no registry to be read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace, get_loader, set_loader
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from dmenet.runs import run_dir

PARSER_MODE = "dmenet"
"""jsonargparse parser mode of :class:`DMENetCLI`: ``omegaconf`` plus registry names."""


def part_registries(kind: str) -> list:
    """The registries whose names ``--model.<kind>`` accepts (B's slot also takes the
    classical estimators, which share B's interface)."""
    from dmenet.registry import CLASSICAL_ESTIMATORS, PART_REGISTRIES

    return [PART_REGISTRIES[kind]] + ([CLASSICAL_ESTIMATORS] if kind == "blur_estimator" else [])


def part_class_path(kind: str, value: Any) -> Any:
    """``value`` with a registry name of a ``kind`` part (``"blur_estimator"`` ...) replaced by
    its class path; anything else (a class path, a class name, true / false) is returned as is.

    A bare word that is neither a registered name nor a registered class's name is a typo:
    :class:`~dmenet.errors.ConfigError` listing the known names.
    """
    from dmenet.errors import ConfigError

    if not isinstance(value, str) or "." in value or value.lower() in ("true", "false", "null", "none"):
        return value
    registries = part_registries(kind)
    for registry in registries:
        if value in registry:
            return registry.class_path(value)
    if value in {r.get(name).__name__ for r in registries for name in r.names()}:
        return value  # a class name: jsonargparse resolves it
    close = [c for r in registries if (c := r.closest(value))]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    known = ", ".join(name for r in registries for name in r.names())
    raise ConfigError(
        f"--model.{kind}: unknown name {value!r}.{hint} Known names: {known} (or give a class_path)"
    )


def resolve_config_part_names(config: Any) -> Any:
    """A loaded config (dict) with the parts under ``model:`` (or at the top level of a model
    config) named by registry name rewritten to class paths, in place; returns it."""
    from dmenet.registry import PART_REGISTRIES

    if not isinstance(config, dict):
        return config
    for section in (config, config.get("model")):
        if not isinstance(section, dict):
            continue
        for kind in PART_REGISTRIES:
            value = section.get(kind)
            if isinstance(value, dict) and "class_path" in value:
                value["class_path"] = part_class_path(kind, value["class_path"])
            elif kind in section:
                section[kind] = part_class_path(kind, value)
    return config


def resolve_argv_part_names(args: Sequence[str]) -> list[str]:
    """Command-line arguments with ``--model.<part>[.class_path] NAME`` (or ``=NAME``) rewritten
    to class paths."""
    from dmenet.registry import PART_REGISTRIES

    options = {f"--model.{kind}{suffix}": kind for kind in PART_REGISTRIES for suffix in ("", ".class_path")}
    out = list(args)
    for i, arg in enumerate(out):
        option, eq, value = arg.partition("=")
        if option not in options:
            continue
        if eq:
            out[i] = f"{option}={part_class_path(options[option], value)}"
        elif i + 1 < len(out):
            out[i + 1] = part_class_path(options[arg], out[i + 1])
    return out


def _omegaconf_loader():
    try:
        return get_loader("omegaconf")
    except KeyError:  # jsonargparse registers it on first use
        ArgumentParser(parser_mode="omegaconf").parse_string("{}")
        return get_loader("omegaconf")


def _load_with_part_names(text: str) -> Any:
    return resolve_config_part_names(_omegaconf_loader()(text))


set_loader(PARSER_MODE, _load_with_part_names, (yaml.YAMLError,))


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config once per run, into the run's own folder, and into the logger.

    Lightning's default writes ``config.yaml`` to ``trainer.log_dir``, which for W&B is the
    shared ``save_dir``: a second run would overwrite the first one's. Here every run keeps its
    own copy, and the resolved config is also sent to the logger (the W&B run config).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_filename
        if path.exists():  # a resumed run in the same folder keeps both configs
            stem = path.stem
            n = 1
            while (folder / f"{stem}.{n}.yaml").exists():
                n += 1
            path = folder / f"{stem}.{n}.yaml"
        self.parser.save(self.config, str(path), skip_none=False, overwrite=False, multifile=False)
        if trainer.logger is not None:
            resolved = self.parser.dump(self.config, skip_none=False)
            if isinstance(trainer.logger, WandbLogger):
                import yaml

                trainer.logger.experiment.config.update(
                    {"cli": yaml.safe_load(resolved)}, allow_val_change=True
                )
            else:
                trainer.logger.log_hyperparams({"cli_config_file": str(path)})


class DMENetCLI(LightningCLI):
    """LightningCLI with dmenet's model and DataModule.

    ``--config`` is repeatable (later files override earlier ones); configs choose subnetworks
    by ``class_path`` / ``init_args`` or by registry name (module docstring). W&B runs offline
    unless ``WANDB_MODE`` says otherwise (sync later with ``wandb sync``).
    """

    def __init__(self, *args, **kwargs) -> None:
        from dmenet.data.datamodule import DMENetDataModule
        from dmenet.lightning_model import DMENet

        os.environ.setdefault("WANDB_MODE", "offline")
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("parser_kwargs", {"parser_mode": PARSER_MODE})
        super().__init__(DMENet, DMENetDataModule, *args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
        elif args is None:  # the process's own command line
            self.config = parser.parse_args(resolve_argv_part_names(sys.argv[1:]))
        else:
            super().parse_arguments(parser, resolve_argv_part_names(args))
