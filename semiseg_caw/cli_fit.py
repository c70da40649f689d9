"""What ``semiseg-caw fit`` adds around Lightning's fit: a run folder that is writable,
locked and not an earlier run's; a resumed run checked against its checkpoint; stage 1
trained (or continued) before stage 2; and no empty folders left by a fit that failed."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from semiseg_caw.checkpoints import CheckpointError, read_checkpoint, wandb_run_id
from semiseg_caw.command_line import last_checkpoints_in
from semiseg_caw.lit.callbacks import LoggerSaveConfigCallback
from semiseg_caw.lit.semiseg import SemiSegCAW
from semiseg_caw.lit.stages import fit_stage1, stage1_checkpoint_dir
from semiseg_caw.lit.writer import check_writable
from semiseg_caw.run_folder import lock_run_folder, refuse_other_task, remove_empty_folders
from semiseg_caw.warn import warn

# The two checkpoint callbacks: the best on val/dice, and last.ckpt for resuming.
CHECKPOINT_KEYS = ("checkpoint", "last_checkpoint")
STAGE1_SETTINGS = (
    "stage1_epochs",
    "stage1_loss_weights",
    "stage1_presence_topk",
    "stage1_pretrained",
)  # used by a stage 1 run in fit


class FitCommand:
    """The ``fit`` hooks of ``SemiSegCLI`` (a LightningCLI): mixed in before it, and using
    its config, model, trainer and data module, and its checkpoint reading
    (``_last_checkpoints``, ``_remember_checkpoint``, ``_check_data_matches_checkpoint``)."""

    def before_fit(self) -> None:
        # Fail now when the run could not save its checkpoints, not after hours of training.
        config = self.config.fit
        root = config.trainer.default_root_dir or "."
        check_writable(root, "run folder (trainer.default_root_dir)")
        if rank_zero_only.rank == 0:  # DDP's other ranks run in the same folder
            self._folder_lock = lock_run_folder(root)
        for key in CHECKPOINT_KEYS:
            if config.get(key) and config[key].dirpath:
                check_writable(config[key].dirpath, "checkpoint folder")
        if self.trainer.max_epochs == 0:  # stage 1 alone may be what is wanted: a warning
            warn(
                "trainer.max_epochs is 0: this fit trains no epoch (of stage 2) and writes no "
                "checkpoint of it",
                UserWarning,
            )
        ckpt_path = config.get("ckpt_path")
        # DDP's other ranks start later, when rank 0 may have written already.
        if rank_zero_only.rank == 0 and not self._continues_own_run(ckpt_path, root):
            self._refuse_earlier_run(root)
        continues_stage1 = self._check_resumed_checkpoint(ckpt_path)
        # A run continued from its (stage-2) checkpoint, not one that starts stage 2 afresh.
        resumes = bool(ckpt_path) and (ckpt_path != "last" or bool(self._last_checkpoints()))
        if resumes:
            self._check_epochs_left()
        elif ckpt_path == "last" and not continues_stage1 and rank_zero_only.rank == 0:
            self._warn_nothing_to_continue(root)
        for callback in self.trainer.callbacks:
            if isinstance(callback, LoggerSaveConfigCallback):
                # Either way the run's config.yaml is kept: config-resume.yaml beside it.
                callback.resumes = resumes or continues_stage1
        model = self.model
        if not isinstance(model, SemiSegCAW) or model.hparams.aux_source == "none":
            return
        if resumes:
            self._warn_stage1_settings_unused(model)
            return  # its checkpoint holds the auxiliary model
        # `--ckpt_path last` before stage 2 saved anything (a new run, or one killed in
        # stage 1): Lightning starts stage 2 afresh, so stage 1 runs first, continuing from
        # its own last checkpoint when it has one.
        if model.hparams.stage1_checkpoint:
            # Load it now: a bad file stops the run before any data is read (CheckpointError).
            model.load_stage1(model.hparams.stage1_checkpoint)
            return
        trainer_cfg = self.config.fit.trainer
        fit_stage1(
            model,
            self.datamodule,
            root_dir=trainer_cfg.default_root_dir or ".",
            max_epochs=model.hparams.stage1_epochs or self.trainer.max_epochs,
            trainer_kwargs=dict(trainer_cfg),
            wandb=isinstance(self.trainer.logger, WandbLogger),
            resume=ckpt_path == "last",  # a run killed in stage 1 continues stage 1
            last_checkpoint_interval_s=self.config.fit.last_checkpoint.min_interval_s,
        )

    def _warn_nothing_to_continue(self, root: str) -> None:
        """``--ckpt_path last`` without a last.ckpt: set and forgotten in a job script, or a
        mistyped run folder. Say where it looked."""
        folder = self.config.fit.get("last_checkpoint") and self.config.fit.last_checkpoint.dirpath
        looked = [str(folder or Path(root) / "checkpoints")]
        model = self.model
        if isinstance(model, SemiSegCAW) and model.hparams.aux_source != "none":
            if not model.hparams.stage1_checkpoint:
                looked.append(str(stage1_checkpoint_dir(root)))
        warn(
            f"--ckpt_path last: no last.ckpt in {' nor in '.join(looked)}: this fit starts "
            "a new run",
            UserWarning,
        )

    def _run_subcommand(self, subcommand: str) -> None:
        # A fit that writes nothing (one that fails before, on a missing data folder or a
        # bad image; a `--trainer.fast_dev_run`) leaves none of the empty run folders it
        # created; files, and folders that were there before, stay.
        new = [f for f in self._run_folders() if not f.exists()] if subcommand == "fit" else []
        try:
            super()._run_subcommand(subcommand)
        finally:
            for folder in new:
                remove_empty_folders(folder)
            if getattr(self, "_folder_lock", None) is not None:
                os.close(self._folder_lock)  # closing the folder releases its lock
                self._folder_lock = None

    def _run_folders(self) -> list[Path]:
        """The folders a fit creates: the run's, its checkpoint folders and stage 1's."""
        config = self.config.fit
        root = Path(config.trainer.default_root_dir or ".")
        dirpaths = [config[k].dirpath for k in CHECKPOINT_KEYS if config.get(k)]
        return [root, stage1_checkpoint_dir(root).parent, *(Path(d) for d in dirpaths if d)]

    def _check_epochs_left(self) -> None:
        """A run resumed with fewer max_epochs than it has trained: Lightning's error counts
        epochs from 0 and does not say what to give."""
        written_in, max_epochs = getattr(self, "_ckpt_epoch", None), self.trainer.max_epochs
        if written_in is None or max_epochs in (None, -1) or max_epochs >= written_in:
            return
        raise ValueError(
            f"the checkpoint to continue was written in epoch {written_in + 1}, more than "
            f"--trainer.max_epochs={max_epochs}: give the run's max_epochs (or more) to "
            "continue it"
        )

    def _warn_stage1_settings_unused(self, model: SemiSegCAW) -> None:
        """A resumed stage 2 does not train stage 1 again: stage-1 settings changed since
        the run started do nothing, and the run's hyper-parameters would say otherwise."""
        trained = getattr(self, "_ckpt_hparams", {})
        changed = [
            f"{key} {trained[key]} -> {model.hparams.get(key)}"
            for key in STAGE1_SETTINGS
            if key in trained and trained[key] != model.hparams.get(key)
        ]
        if changed:
            warn(
                f"this fit continues stage 2; its stage 1 has finished, so changed stage-1 "
                f"settings are not used ({', '.join(changed)}): start a new run (its own "
                "--trainer.default_root_dir) to train stage 1 with them",
                UserWarning,
            )

    def _check_resumed_checkpoint(self, ckpt_path: str | None) -> bool:
        """A resumed run's data must be what its checkpoint was trained on, and its model
        the checkpoint's, before anything (config.yaml, checkpoints) is written over.
        Whether the fit continues a stage 1 killed before stage 2 saved anything."""
        if ckpt_path == "last":
            last = self._last_checkpoints()
            if not last:
                stage1 = self._check_stage1_resumable()  # stage 1 continues, or a new run
                if stage1 is not None:  # its data must be stage 1's, as stage 2's above
                    self._remember_checkpoint(stage1[1])
                    self._check_data_matches_checkpoint(str(stage1[0]))
                return stage1 is not None
            try:
                ckpt = read_checkpoint(last[-1])
            except CheckpointError as err:
                raise CheckpointError(f"--ckpt_path last: {err}") from err
            refuse_other_task(last[-1], ckpt, self.config.fit.model.get("class_path"), "fit")
            self._remember_checkpoint(ckpt)
            ckpt_path = str(last[-1])
        if self._read_a_checkpoint():
            self._check_data_matches_checkpoint(ckpt_path)
        return False

    def _check_stage1_resumable(self) -> tuple[Path, dict] | None:
        """``--ckpt_path last`` before stage 2 saved a last.ckpt: stage 2 starts afresh and
        stage 1 continues from its own last.ckpt (returned, with its contents; None when
        there is none). Best checkpoints without a last one would be trained over from
        scratch beside them: refused, as a new fit in the folder is."""
        root = self.config.fit.trainer.default_root_dir or "."
        folders = self._checkpoint_folders(root)[:-1]  # stage 2's
        model = self.model
        stage1 = None
        if isinstance(model, SemiSegCAW) and model.hparams.aux_source != "none":
            if not model.hparams.stage1_checkpoint:
                stage1 = stage1_checkpoint_dir(root)
                folders.append(stage1)
        found = None
        for folder in folders:
            last = last_checkpoints_in(folder)
            if last:
                ckpt = read_checkpoint(last[-1])  # a truncated file is named, not a traceback
                if folder == stage1:
                    found = (last[-1], ckpt)
                continue
            best = sorted(folder.glob("*.ckpt"))
            if best:
                raise CheckpointError(
                    f"--ckpt_path last: {folder} holds {best[0].name} but no last.ckpt to "
                    "continue from; reuse a stage-1 model with --model.init_args."
                    "stage1_checkpoint, or give this run its own --trainer.default_root_dir"
                )
        return found

    def _continues_own_run(self, ckpt_path: str | None, root: str) -> bool:
        """Whether ``--ckpt_path`` resumes the run in ``root`` (``last``, or a file in its
        checkpoint folders): another run's file must not write into a folder holding an
        earlier run."""
        if ckpt_path is None:
            return False
        if ckpt_path == "last":
            return True
        return Path(ckpt_path).resolve().parent in {
            f.resolve() for f in self._checkpoint_folders(root)
        }

    def _checkpoint_folders(self, root: str) -> list[Path]:
        """Where this run keeps checkpoints: stage 2's folders and stage 1's."""
        config = self.config.fit
        folders = {config[k].dirpath for k in CHECKPOINT_KEYS if config.get(k)} - {None}
        return [*(Path(f) for f in sorted(folders)), stage1_checkpoint_dir(root)]

    def _refuse_earlier_run(self, root: str) -> None:
        """A new run would overwrite an earlier one's last.ckpt (its only resumable state)
        and put its best checkpoints beside the other model's."""
        earlier = sorted(p for f in self._checkpoint_folders(root) for p in f.glob("*.ckpt"))
        if earlier:
            raise FileExistsError(
                f"{root} already holds the checkpoints of an earlier run ({earlier[0]}"
                f"{', ...' if len(earlier) > 1 else ''}): continue it with --ckpt_path last, "
                "or give this run its own --trainer.default_root_dir"
            )

    def _resumed_wandb_run(self, root: str) -> str | None:
        """The W&B run in which the checkpoint this fit continues was written: None for a
        new run, or one started from another run's checkpoint."""
        ckpt_path = self.config.fit.get("ckpt_path")
        if not self._continues_own_run(ckpt_path, root):
            return None
        if ckpt_path == "last":
            last = self._last_checkpoints()
            return wandb_run_id(last[-1]) if last else None
        return wandb_run_id(ckpt_path)
