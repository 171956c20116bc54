"""Where a run's own files go (configs, pictures): one folder per run, never shared."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer


def run_dir(trainer: Trainer) -> Path:
    """The folder that belongs to this run alone.

    W&B: the run's files folder (``<save_dir>/wandb/<run>/files``, uploaded with the run);
    CSV / TensorBoard: the logger's versioned folder (``version_N``); no logger:
    ``default_root_dir``. (``trainer.log_dir`` is W&B's shared ``save_dir``, so two runs
    would write over each other's files there.)
    """
    from lightning.pytorch.loggers import WandbLogger

    logger = trainer.logger
    if isinstance(logger, WandbLogger) and trainer.is_global_zero:
        experiment_dir = getattr(logger.experiment, "dir", None)
        if experiment_dir:  # a disabled W&B run has no folder
            return Path(experiment_dir)
    if logger is not None and logger.log_dir:
        return Path(logger.log_dir)
    return Path(trainer.default_root_dir)
