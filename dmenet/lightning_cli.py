"""LightningCLI for ``dmenet fit|validate|test|predict``."""

from __future__ import annotations

import os

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from dmenet.runs import run_dir


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

    ``--config`` is repeatable (later files override earlier ones); committed configs choose
    subnetworks by ``class_path`` / ``init_args``. W&B runs offline unless ``WANDB_MODE`` says
    otherwise (sync later with ``wandb sync``).
    """

    def __init__(self, *args, **kwargs) -> None:
        from dmenet.data.datamodule import DMENetDataModule
        from dmenet.lightning_model import DMENet

        os.environ.setdefault("WANDB_MODE", "offline")
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        super().__init__(DMENet, DMENetDataModule, *args, **kwargs)
