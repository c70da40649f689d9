"""The ``semiseg-caw`` command: LightningCLI over the package's modules and data module."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from semiseg_caw.data import SemiSegDataModule
from semiseg_caw.lit.base import SegmentationTask
from semiseg_caw.lit.callbacks import ValidationImageLogger
from semiseg_caw.lit.semiseg import SemiSegCAW
from semiseg_caw.lit.stages import fit_stage1
from semiseg_caw.lit.writer import PredictionWriter

WANDB_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "semiseg-caw"},
}


class SemiSegCLI(LightningCLI):
    """LightningCLI that links data to model, keeps best and last checkpoints, and runs stage 1."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.in_channels", "model.init_args.in_channels", apply_on="instantiate"
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ValidationImageLogger, "image_logger")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/dice",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}",
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        root = config.trainer.default_root_dir or "."
        # A fixed checkpoint folder, so that `--ckpt_path last` finds the last run's files.
        if config.get("checkpoint") and config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        # W&B files (and the saved config) go under the run's folder, not the working directory.
        logger = config.trainer.get("logger")
        if logger and "WandbLogger" in str(logger.get("class_path", "")):
            if logger.init_args.get("save_dir") in (None, "."):
                logger.init_args.save_dir = str(root)

    def before_predict(self) -> None:
        # Outputs go to disk through the writer; holding them all would grow without bound.
        if self.config_init.predict.get("return_predictions") is None:
            self.config_init.predict.return_predictions = False

    def before_fit(self) -> None:
        model = self.model
        if not isinstance(model, SemiSegCAW) or model.hparams.aux_source == "none":
            return
        if model.hparams.stage1_checkpoint or self.config.fit.get("ckpt_path"):
            return  # stage 1 given, or a stage-2 run being resumed
        trainer_cfg = self.config.fit.trainer
        fit_stage1(
            model,
            self.datamodule,
            root_dir=trainer_cfg.default_root_dir or ".",
            max_epochs=model.hparams.stage1_epochs or self.trainer.max_epochs,
            trainer_kwargs=dict(trainer_cfg),
            wandb=isinstance(self.trainer.logger, WandbLogger),
        )


def main(args: list[str] | None = None, run: bool = True) -> SemiSegCLI:
    """Build (and by default run) the CLI; returns it so that callers can inspect the run."""
    # Offline unless the user asks otherwise: no account needed, `wandb sync` uploads later.
    os.environ.setdefault("WANDB_MODE", "offline")
    return SemiSegCLI(
        SegmentationTask,
        SemiSegDataModule,
        subclass_mode_model=True,
        trainer_defaults={"logger": WANDB_LOGGER},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def run() -> None:
    """Entry point of ``semiseg-caw`` and ``python -m semiseg_caw``."""
    main()
