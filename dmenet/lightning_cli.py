"""LightningCLI for ``dmenet fit|validate|test|predict``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


class DMENetCLI(LightningCLI):
    """LightningCLI with dmenet's model and DataModule.

    ``--config`` is repeatable (later files override earlier ones); committed configs choose
    subnetworks by ``class_path`` / ``init_args``.
    """

    def __init__(self, *args, **kwargs) -> None:
        from dmenet.data.datamodule import DMENetDataModule
        from dmenet.lightning_model import DMENet

        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        super().__init__(DMENet, DMENetDataModule, *args, **kwargs)
