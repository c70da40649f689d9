"""The check that the data a command evaluates, predicts on or resumes with matches the
checkpoint it loads: channels, classes (their count, names and order), the data set and the
image size the weights were trained with."""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace

from semiseg_caw.checkpoints import CheckpointError
from semiseg_caw.data import SemiSegDataModule
from semiseg_caw.warn import warn


def check_data_matches_checkpoint(
    ckpt_path: str,
    subcommand: str,
    data_config: Namespace,
    datamodule: SemiSegDataModule,
    trained_data: dict[str, Any],
    trained_hparams: dict[str, Any],
    trained_class_names: list[str],
) -> None:
    """Options the weights depend on must be the ones they were trained with.

    ``data_config`` is the command's data options, ``datamodule`` the data module built from
    them; the ``trained_*`` arguments are what the checkpoint holds (its data options,
    hyper-parameters and class names)."""
    channels = trained_data.get("in_channels")
    if channels is not None and channels != data_config.in_channels:
        raise CheckpointError(
            f"data.in_channels is {data_config.in_channels} but {ckpt_path} was trained "
            f"with {channels}: pass --data.in_channels {channels}"
        )
    classes = trained_hparams.get("num_classes")
    if classes is not None and classes != datamodule.num_classes:
        raise CheckpointError(
            f"the data has {datamodule.num_classes} classes "
            f"({', '.join(datamodule.class_names)}) but {ckpt_path} was trained with "
            f"{classes}: set data.dataset, data.classes or data.include_normal as in training"
        )
    names, trained_names = list(datamodule.class_names), trained_class_names
    if subcommand != "predict" and trained_names and names != trained_names:
        # Same count, other names or order: class metrics would compare the wrong labels.
        raise CheckpointError(
            f"the data's classes are [{', '.join(names)}] but {ckpt_path} was trained on "
            f"[{', '.join(trained_names)}], in this order: label the data with these names "
            f"(for a manifest: --data.classes '[{', '.join(trained_names)}]')"
        )
    dataset = trained_data.get("dataset")
    if data_config.dataset == "synthetic" and dataset not in (None, "synthetic"):
        # Its classes match BUSI's, so nothing else would stop it scoring generated images.
        raise CheckpointError(
            f"{ckpt_path} was trained on {dataset} images but data.dataset is synthetic "
            "(the default when no data options are given): give the data options it was "
            f"trained with (--data.dataset {dataset} and its --data.root); without "
            "--config, validate, test and predict take them from the checkpoint"
        )
    size = trained_data.get("image_size")
    if size is not None and size != data_config.image_size and subcommand == "fit":
        raise CheckpointError(
            f"data.image_size is {data_config.image_size} but {ckpt_path} was trained at "
            f"{size} px: a resumed run goes on as it started, so pass --data.image_size {size} "
            "(or train a new run in its own --trainer.default_root_dir)"
        )
    if size is not None and size != data_config.image_size:
        warn(
            f"data.image_size is {data_config.image_size} but {ckpt_path} was trained at "
            f"{size} px; pass --data.image_size {size} to evaluate as trained",
            UserWarning,
        )
