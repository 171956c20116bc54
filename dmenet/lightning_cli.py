"""LightningCLI for ``dmenet fit|validate|test|predict``.

Besides Lightning's own behaviour, :class:`DMENetCLI`

* refuses a missing or unreadable ``--ckpt_path`` with one line naming the file, and a GPU
  accelerator on a machine without one with one line saying how to run on the CPU;
* turns ``--trainer.strategy ddp`` (and ``ddp_spawn`` / ``ddp_fork``) into its
  ``..._find_unused_parameters_true`` form, and says so: each batch makes two backward passes
  (D's, then B + S's), each leaving some parameters without a gradient;
* runs ``test`` on a run's checkpoint (``RUN/checkpoints/X.ckpt``) inside that run:
  the report goes to ``RUN/results/X/<set>/`` and no new logger version is opened.

:func:`quiet_lightning` hides the messages of Lightning and torch that a dmenet user cannot act
on (listed in :data:`UNACTIONABLE_WARNINGS`); ``dmenet``'s commands run inside it, and inside
:func:`finishing_its_wandb_run`, so that each command's W&B run ends with the command.

Parts may be named by their registry name (``dmenet list``) wherever a class path is accepted:
``--model.blur_estimator light_resnet18``, ``--model.domain_discriminator.class_path dmenet``,
or in a config file ``model: {blur_estimator: light_resnet18}`` /
``model: {blur_estimator: {class_path: light_resnet18, init_args: {...}}}``. The names are
replaced by the class paths before jsonargparse sees them (command-line arguments here, config
files in the ``"dmenet"`` parser mode: OmegaConf loading plus the same replacement), so
``--print_config`` shows full class paths and the saved configs need no registry to be read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace, get_loader, set_loader
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from dmenet.devices import check_accelerator
from dmenet.errors import DMENetError
from dmenet.runs import run_dir

UNACTIONABLE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # dmenet passes its own argv to LightningCLI on purpose (the `dmenet` command, tests)
    (r"LightningCLI's args parameter is intended to run from within Python", UserWarning),
    # C's VGG19 is frozen, so it is in eval mode on purpose
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
    # inside Lightning's own pytree helper (torch >= 2.10 deprecates LeafSpec)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
"""(message regex, category) of warnings that dmenet's commands do not show."""

UNACTIONABLE_INFO: tuple[str, ...] = ("try installing [litlogger]",)
"""Substrings of Lightning's info lines that dmenet's commands do not show (advertising)."""

# ckpt_path values Lightning resolves itself
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")

# strategy names whose DDP must look for parameters without a gradient (see the module docstring)
_UNUSED_PARAMETER_STRATEGIES = {
    "ddp": "ddp_find_unused_parameters_true",
    "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
    "ddp_fork": "ddp_fork_find_unused_parameters_true",
    "ddp_notebook": "ddp_notebook_find_unused_parameters_true",
}


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in UNACTIONABLE_INFO)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide :data:`UNACTIONABLE_WARNINGS` and :data:`UNACTIONABLE_INFO` inside the block; every
    other warning and message is shown as usual."""
    from lightning_utilities.core import rank_zero

    info_filter = _DropInfo()
    loggers = {rank_zero.log, logging.getLogger("lightning.pytorch.utilities.rank_zero")}
    with warnings.catch_warnings():
        for pattern, category in UNACTIONABLE_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        for logger in loggers:
            logger.addFilter(info_filter)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(info_filter)


@contextlib.contextmanager
def finishing_its_wandb_run() -> Iterator[None]:
    """Finish the W&B run that the block started, when it ends (marked failed if it raised).

    A ``dmenet`` process finishes its run at exit anyway; in-process callers (a notebook, the
    tests) otherwise leave it open, and Lightning's next WandbLogger would log into it. A run
    that was already open before the block is left alone.
    """
    before = _wandb_run()
    failed = True
    try:
        yield
        failed = False
    finally:
        run = _wandb_run()
        if run is not None and run is not before:
            run.finish(exit_code=1 if failed else 0)


def _wandb_run() -> Any:
    wandb = sys.modules.get("wandb")  # not imported: no run
    return getattr(wandb, "run", None) if wandb is not None else None


def check_ckpt_path(value: str | os.PathLike | None) -> None:
    """Refuse a ``--ckpt_path`` that is not a readable checkpoint file, naming it (one line).

    Lightning's keywords (``last``, ``best``, ``hpc``, ``registry...``) are left to Lightning.
    """
    if value is None:
        return
    text = str(value)
    if text in LIGHTNING_CKPT_KEYWORDS or text.startswith("registry:"):
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise DMENetError(f"--ckpt_path {text}: no such file")
    if not path.is_file():
        raise DMENetError(f"--ckpt_path {text}: not a file")
    if zipfile.is_zipfile(path):  # torch.save's format: a zip holding data.pkl
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("data.pkl") for name in archive.namelist()):
                return
        raise DMENetError(f"--ckpt_path {text}: a zip file, but not a PyTorch checkpoint")
    import torch  # a legacy (non-zip) torch file, or a broken one

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read it is the same user-facing problem
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DMENetError(
            f"--ckpt_path {text}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}"
        ) from None


def run_of_checkpoint(ckpt_path: str | os.PathLike | None) -> Path | None:
    """The run folder of ``RUN/checkpoints/X.ckpt`` (a folder with the run's config, hparams or
    metrics), or ``None`` for a checkpoint elsewhere."""
    if ckpt_path is None or str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS:
        return None
    path = Path(ckpt_path).expanduser().absolute()
    if path.parent.name != "checkpoints":
        return None
    run = path.parent.parent
    markers = ("config.yaml", "hparams.yaml", "metrics.csv")
    return run if any((run / name).is_file() for name in markers) else None


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
        given = kwargs.get("args")
        self._command_line: list[str] = (
            [str(a) for a in given] if isinstance(given, Sequence) and not isinstance(given, str)
            else sys.argv[1:]
        )
        super().__init__(DMENet, DMENetDataModule, *args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
        elif args is None:  # the process's own command line
            self.config = parser.parse_args(resolve_argv_part_names(sys.argv[1:]))
        else:
            super().parse_arguments(parser, resolve_argv_part_names(args))
        subcommand = self.config.get("subcommand")
        if subcommand:  # before Lightning reads the file's hyperparameters, or seeds anything
            check_ckpt_path(self.config[subcommand].get("ckpt_path"))
            check_accelerator(self.config[subcommand].trainer.get("accelerator"))

    def _given(self, option: str) -> bool:
        return any(a == option or a.startswith(option + "=") for a in self._command_line)

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        if not subcommand:
            return
        config = self.config[subcommand]
        self._select_unused_parameter_strategy(config)
        if subcommand == "test":
            self._test_inside_run(config)

    def _select_unused_parameter_strategy(self, config) -> None:
        strategy = config.trainer.get("strategy")
        if isinstance(strategy, str) and strategy in _UNUSED_PARAMETER_STRATEGIES:
            config.trainer.strategy = _UNUSED_PARAMETER_STRATEGIES[strategy]
            if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
                print(
                    f"dmenet: --trainer.strategy {strategy} -> {config.trainer.strategy} (each batch "
                    "makes two backward passes, D's then B + S's, and each leaves some parameters "
                    "without a gradient)",
                    file=sys.stderr,
                )

    def _test_inside_run(self, config) -> None:
        run = run_of_checkpoint(config.get("ckpt_path"))
        if run is None:
            return
        report = run / "results" / Path(str(config.ckpt_path)).stem
        if not self._given("--model.results_dir"):
            config.model.results_dir = str(report)
        if not self._given("--trainer.default_root_dir"):
            config.trainer.default_root_dir = str(report)  # the saved config goes there too
        if not self._given("--trainer.logger"):
            config.trainer.logger = False  # a logger would open a new version of the run
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"dmenet test: report in {config.model.results_dir}/<set>/ (inside the run of "
                  f"{config.ckpt_path}; no new logger version)", file=sys.stderr)
