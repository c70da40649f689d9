"""Running stage 1 (ClassElevateSeg) ahead of stage 2 with the same data and trainer settings."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from semiseg_caw.checkpoints import AtomicCheckpointIO, LastCheckpoint, wandb_run_id
from semiseg_caw.lit.class_elevate import ClassElevateSeg
from semiseg_caw.lit.semiseg import SemiSegCAW
from semiseg_caw.warn import warn

# Trainer settings that stage 1 inherits from the stage-2 configuration. Both stages run
# under one strategy: a DDP run's processes are started once, by stage 1, and reused.
INHERITED = (
    "accelerator",
    "strategy",
    "devices",
    "num_nodes",
    "sync_batchnorm",
    "use_distributed_sampler",
    "precision",
    "deterministic",
    "benchmark",
    "limit_train_batches",
    "limit_val_batches",
    "num_sanity_val_steps",
    "log_every_n_steps",
    "gradient_clip_val",
    "accumulate_grad_batches",
    "enable_progress_bar",
    "enable_model_summary",
    "check_val_every_n_epoch",
    "val_check_interval",
    "fast_dev_run",  # a debugging run checks stage 1 on a batch too, not all its epochs
    "enable_checkpointing",  # a run that saves no checkpoint, in either stage
)


def stage1_module(model: SemiSegCAW, normal_class: int | None = None) -> ClassElevateSeg:
    """The ClassElevateSeg that fits ``model``'s auxiliary network."""
    hp = model.hparams
    return ClassElevateSeg(
        num_classes=hp.num_classes,
        in_channels=hp.in_channels,
        encoder=hp.aux_encoder,
        normal_class=normal_class,
        loss_weights=hp.stage1_loss_weights,
        presence_topk=hp.stage1_presence_topk,
        pretrained=hp.stage1_pretrained,
        cuda_graphs=hp.cuda_graphs,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        min_lr=hp.min_lr,
        max_bad_steps=hp.max_bad_steps,
        balance_classes=hp.balance_classes,
        flip_tta=hp.flip_tta,
        keep_largest_lesion=hp.keep_largest_lesion,
    )


def _fresh(value: Any) -> Any:
    """A setting given as ``class_path`` + ``init_args`` (e.g. a strategy): a new instance."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict) and "class_path" in value:
        from lightning.pytorch.cli import instantiate_class

        return instantiate_class((), value)
    return value


def stage1_checkpoint_dir(root_dir: str | Path) -> Path:
    """Where ``fit_stage1`` saves stage 1's checkpoints for a run in ``root_dir``."""
    return Path(root_dir) / "stage1" / "checkpoints"


def refuse_earlier_stage1(root_dir: str | Path) -> None:
    """A new stage 1 would overwrite an earlier one's last.ckpt (its only resumable state)
    and put its best checkpoint beside the other model's: raise FileExistsError instead."""
    earlier = sorted(stage1_checkpoint_dir(root_dir).glob("*.ckpt"))
    if earlier:
        raise FileExistsError(
            f"{root_dir} already holds the checkpoints of an earlier stage 1 ({earlier[0]}"
            f"{', ...' if len(earlier) > 1 else ''}): continue it with "
            "fit_stage1(..., resume=True), or give this run its own root_dir"
        )


def check_stage1_request(
    model: Any, max_epochs: int, trainer_kwargs: dict[str, Any] | None
) -> None:
    """Name what cannot work before stage 1 trains, not after: a model without an auxiliary
    ClassElevateSeg, a stage 1 without an end, a trainer option that does not exist."""
    if not isinstance(model, SemiSegCAW):
        raise TypeError(
            f"fit_stage1 trains the auxiliary model of a SemiSegCAW, got {type(model).__name__}"
            " (a ClassElevateSeg alone trains with lightning.Trainer.fit)"
        )
    if model.net.aux_model is None:
        raise ValueError("aux_source is 'none': this SemiSegCAW has no stage 1 to train")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(
            f"stage 1 needs a number of epochs >= 1, got {max_epochs} (on the command line: "
            "--model.init_args.stage1_epochs; stage 2's max_steps or max_time do not bound it)"
        )
    given = {key.split(".")[0] for key in trainer_kwargs or {}}  # a Namespace's: "logger.x"
    unknown = given - set(inspect.signature(L.Trainer).parameters)
    if unknown:
        raise ValueError(f"trainer_kwargs holds options Trainer does not take: {sorted(unknown)}")


def fit_stage1(
    model: SemiSegCAW,
    datamodule: L.LightningDataModule,
    root_dir: str | Path,
    max_epochs: int,
    trainer_kwargs: dict[str, Any] | None = None,
    wandb: bool = False,
    resume: bool = False,
    last_checkpoint_interval_s: float = 30.0,
) -> Path | None:
    """Train ClassElevateSeg, load its best-on-validation weights into ``model``, return the file.

    With ``resume``, a stage 1 killed earlier under the same ``root_dir`` continues from its
    ``stage1/checkpoints/last.ckpt`` (one that had finished is not trained again); without
    it, a ``root_dir`` holding an earlier stage 1's checkpoints is refused.
    ``last_checkpoint_interval_s`` is its ``last.ckpt``'s ``LastCheckpoint.min_interval_s``
    (the CLI passes its ``--last_checkpoint.min_interval_s``). Under the trainer options
    ``fast_dev_run`` or ``enable_checkpointing=False``, which write no checkpoint, the
    weights it ends with (not its best on validation) are loaded and None is returned.
    """
    check_stage1_request(model, max_epochs, trainer_kwargs)
    if not resume and rank_zero_only.rank == 0:  # DDP's other ranks start during the fit
        refuse_earlier_stage1(root_dir)
    root = Path(root_dir) / "stage1"
    folder = stage1_checkpoint_dir(root_dir)
    last = folder / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    checkpoint = ModelCheckpoint(
        dirpath=folder,
        filename="best-{epoch:03d}",
        monitor="val/dice",
        mode="max",
        save_weights_only=True,  # as the CLI's best checkpoints; last.ckpt resumes
    )
    if wandb:  # W&B warns "git root ... does not exist" for a save_dir not yet made
        root.mkdir(parents=True, exist_ok=True)
    logger = (
        WandbLogger(
            project="semiseg-caw",
            name="stage1",
            save_dir=str(root),
            job_type="stage1",
            offline=os.environ.get("WANDB_MODE") is None,  # offline unless asked, as the CLI
            id=wandb_run_id(ckpt_path) if ckpt_path else None,  # a resumed stage 1's run
        )
        if wandb
        else CSVLogger(root, name="logs")
    )
    drop_anonymous_setting(logger)
    kwargs = {
        k: _fresh(v) for k, v in (trainer_kwargs or {}).items() if k in INHERITED and v is not None
    }
    saves = kwargs.get("enable_checkpointing") is not False
    if not saves and not kwargs.get("fast_dev_run") and rank_zero_only.rank == 0:
        warn(
            "enable_checkpointing is false: stage 1 saves no checkpoint, and stage 2 starts "
            "from its final weights, not its best on validation",
            UserWarning,
        )
    trainer = L.Trainer(
        max_epochs=max_epochs,
        default_root_dir=root,
        callbacks=[checkpoint, LastCheckpoint(folder, last_checkpoint_interval_s)] if saves else [],
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )
    names = list(getattr(datamodule, "class_names", []))
    stage1 = stage1_module(model, names.index("normal") if "normal" in names else None)
    trainer.fit(stage1, datamodule=datamodule, ckpt_path=ckpt_path)
    if wandb:
        import wandb as wandb_lib

        wandb_lib.finish()  # stage 2 starts a run of its own
    if trainer.fast_dev_run or not saves:  # no checkpoint: the weights handed over in memory
        model.net.aux_model.load_state_dict(stage1.net.state_dict())
        model.stage1_loaded = True
        return None
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if best and not Path(best).is_file():
        best = best_on_disk(folder, best)
    if not best:
        raise RuntimeError(f"stage 1 wrote no checkpoint under {root}")
    model.load_stage1(best)
    return Path(best)


def best_on_disk(folder: Path, recorded: str) -> str:
    """The best checkpoint when the one a resumed stage 1 restored is gone: a run killed
    after writing a new best (which deletes the previous one) but before its last.ckpt
    recorded it. That newer file is the best the folder holds."""
    found = sorted(folder.glob("best-*.ckpt"))
    if not found:
        raise FileNotFoundError(
            f"stage 1's best checkpoint {recorded} is gone, and {folder} holds no other"
        )
    warn(
        f"stage 1's best checkpoint {recorded} is gone (a run killed after replacing it): "
        f"using {found[-1].name}, the newest best checkpoint in {folder}",
        UserWarning,
    )
    return str(found[-1])


def drop_anonymous_setting(logger: Any) -> None:
    """Take the ``anonymous`` setting out of a WandbLogger's ``wandb.init`` arguments.

    Lightning always passes one (None unless asked), and recent W&B (0.31 here) warns about any value
    ("The anonymous setting has no effect") at every run's start; a logger given
    ``anonymous=True`` keeps it. Other loggers are left alone."""
    init = getattr(logger, "_wandb_init", None)  # a WandbLogger's; other loggers have none
    if isinstance(init, dict) and init.get("anonymous", "") is None:
        del init["anonymous"]
