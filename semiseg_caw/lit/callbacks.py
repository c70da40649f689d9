"""Callbacks: a W&B panel of validation images, and the resolved CLI config in the logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """First channel of a normalised (C, H, W) image, stretched to 0..255 for display."""
    x = image[0].float()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
    return (x * 255).round().byte().cpu().numpy()


def _dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    inter = (pred * target).sum().item()
    total = pred.sum().item() + target.sum().item()
    return 1.0 if total == 0 else 2 * inter / total


def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class ValidationImageLogger(Callback):
    """Log a fixed set of validation images to W&B every ``every_n_epochs`` epochs.

    Each image carries ground truth, prediction and (for SemiSegCAW) the
    thresholded auxiliary map as mask overlays; a table lists per-image Dice.
    Does nothing unless the trainer logs to W&B; runs on the first process only.

    Args:
        num_images: how many validation images (the first ones, in loader order).
        every_n_epochs: log every this many epochs (and after the last one).
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 10) -> None:
        super().__init__()
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("num_images and every_n_epochs must be at least 1")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.samples: list[dict[str, Any]] = []

    def _active(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero or _wandb_logger(trainer) is None:
            return False
        epoch = trainer.current_epoch + 1
        max_epochs = trainer.max_epochs
        last = max_epochs is not None and max_epochs > 0 and epoch >= max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples = []

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer) or len(self.samples) >= self.num_images:
            return
        limit = self.num_images - len(self.samples)
        self.samples += panel_samples(pl_module, batch, trainer.precision_plugin, limit)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer) or not self.samples:
            return
        import wandb

        labels = {1: "lesion"}
        table = wandb.Table(columns=["id", "overlay", "dice"])
        images = []
        for s in self.samples:
            masks = {
                "ground_truth": {"mask_data": s["truth"], "class_labels": labels},
                "prediction": {"mask_data": s["pred"], "class_labels": labels},
            }
            if "aux" in s:
                masks["auxiliary_map"] = {"mask_data": s["aux"], "class_labels": labels}
            image = wandb.Image(s["image"], masks=masks, caption=f"{s['id']} dice={s['dice']:.3f}")
            images.append(image)
            table.add_data(s["id"], image, s["dice"])
        _wandb_logger(trainer).experiment.log(
            {
                "val/examples": images,
                "val/per_image_dice": table,
                "trainer/global_step": trainer.global_step,
            }
        )
        self.samples = []


@torch.no_grad()
def panel_samples(
    pl_module: L.LightningModule, batch: dict[str, Any], precision: Any, limit: int
) -> list[dict[str, Any]]:
    """The panel entries of a validation batch's first ``limit`` images: image, ground truth,
    prediction and Dice, and the thresholded auxiliary map where the model has one.

    The prediction is the one the validation metrics score (``evaluate``: ``flip_tta`` and
    ``keep_largest_lesion`` applied), under ``precision`` (the trainer's plugin) as in a
    validation step."""
    inputs = precision.convert_input(batch)
    aux_map = getattr(pl_module, "aux_map", None)  # SemiSegCAW's
    with precision.forward_context():
        mask_logits, _ = pl_module.evaluate(inputs)
        aux = aux_map(inputs) if aux_map is not None else None
    pred = (torch.sigmoid(mask_logits.float()) >= 0.5).float()  # (B, 1, H, W)
    samples = []
    for i in range(min(limit, batch["image"].shape[0])):
        sample = {
            "id": batch["id"][i],
            "image": _to_uint8(batch["image"][i]),
            "truth": batch["mask"][i, 0].byte().cpu().numpy(),
            "pred": pred[i, 0].byte().cpu().numpy(),
            "dice": _dice(pred[i], batch["mask"][i]),
        }
        if aux is not None:
            sample["aux"] = (aux[i, 0].float() >= 0.5).byte().cpu().numpy()
        samples.append(sample)
    return samples


def unused_name(folder: Path, stem: str, suffix: str = ".yaml") -> str:
    """``stem.yaml`` when ``folder`` has none, else the first free ``stem-2.yaml``, ..."""
    name, n = f"{stem}{suffix}", 1
    while (folder / name).exists():
        n += 1
        name = f"{stem}-{n}{suffix}"
    return name


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save the resolved CLI config to the log folder and into every logger's hyper-parameters.

    The whole config (trainer, seed, callbacks, model, data) goes under the
    ``config`` hyper-parameter; a W&B run also gets the YAML file itself
    (``files/cli_config.yaml``), so that ``wandb sync`` uploads it with the run.
    """

    resumes = False  # set by the CLI when the fit continues a run from its checkpoint

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # config.yaml is the training run's record: validate/test/predict in the same folder
        # write theirs beside it (config-test.yaml, ...) instead of over it.
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn
        if stage != "fit":
            self.config_filename = f"config-{stage}.yaml"
        if stage == "predict" and _prediction_writer(trainer) is not None:
            return  # saved beside the predictions, once their folder is checked
        if stage in ("validate", "test") and not self.already_saved and trainer.log_dir:
            # Each evaluation keeps its record: a second test writes config-test-2.yaml.
            self.config_filename = unused_name(Path(trainer.log_dir), f"config-{stage}")
        if stage == "fit" and self.resumes and not self.already_saved and trainer.log_dir:
            # A resumed fit keeps the record of the run it continues (config-resume.yaml).
            self.config_filename = unused_name(Path(trainer.log_dir), "config-resume")
        super().setup(trainer, pl_module, stage)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The config of a prediction run goes with its outputs (the folder the writer
        checked in its ``setup``), not into the folder the command ran from."""
        writer = _prediction_writer(trainer)
        if writer is None or self.already_saved:
            return
        if trainer.is_global_zero:
            path = Path(writer.out) / self.config_filename
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True)
            self.save_config(trainer, pl_module, "predict")
        self.already_saved = True

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
        wandb_logger = _wandb_logger(trainer)
        run = wandb_logger.experiment if wandb_logger is not None else None
        if run is not None and not getattr(run, "disabled", True):
            # Not files/config.yaml: W&B keeps its own run config under that name.
            path = Path(run.dir) / "cli_config.yaml"
            path.write_text(text)
            run.save(str(path), base_path=run.dir, policy="now")


def _prediction_writer(trainer: L.Trainer) -> Any:
    """The trainer's ``PredictionWriter``, or None."""
    from semiseg_caw.lit.writer import PredictionWriter

    return next((c for c in trainer.callbacks if isinstance(c, PredictionWriter)), None)
