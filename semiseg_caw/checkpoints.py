"""Checkpoints: loading stage-1 weights safely, and resuming a killed run exactly.

Loading names the file and the problem when it fails (:class:`CheckpointError`).
:class:`AtomicCheckpointIO` writes every checkpoint so that a kill mid-write keeps the
previous file. :class:`LastCheckpoint` keeps ``last.ckpt`` the latest state; the tasks store the W&B run
in every checkpoint (``WANDB_RUN_KEY``, read by :func:`wandb_run_id`) so that a resumed fit
logs on in it. :class:`EpochSeeding` makes a
run resumed from an epoch-end checkpoint (``--ckpt_path last``) draw the same shuffles,
augmentations and dropout masks as the uninterrupted run would have, which Lightning's
checkpoints alone do not (they hold no random state).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import pickle
import random
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import RandomSampler


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, foreign or of another shape."""


TASK_CLASS_KEY = "semiseg_caw_task"  # checkpoint entry: class path of the task that wrote it
WANDB_RUN_KEY = "wandb_run_id"  # checkpoint entry: the W&B run it was written in


def checkpoint_writer(ckpt: dict) -> str | None:
    """The class path of the task that wrote ``ckpt``: its own entry, else the CLI's record
    of the model (``_class_path`` among the hyper-parameters)."""
    return ckpt.get(TASK_CLASS_KEY) or (ckpt.get("hyper_parameters") or {}).get("_class_path")


def import_class(class_path: str) -> type | None:
    """The class a class path names; None when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):  # ValueError: no module part
        return None
    return found if isinstance(found, type) else None


def read_checkpoint(path: str | Path) -> dict:
    """Read a Lightning checkpoint without executing code from it (``weights_only``); its
    tensors are memory-mapped, read from the file when used."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.rglob("*.ckpt"))[:3]
        raise CheckpointError(
            f"checkpoint {path} is a folder; give a .ckpt file"
            + (f", e.g. {', '.join(map(str, inside))}" if inside else " (it holds none)")
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # Memory-mapped where torch allows it (its zip format, which Lightning writes): the
    # checks that read a checkpoint before Lightning loads it again need its metadata, and
    # loading weights from it copies them, so its tensors need not be read into memory.
    mmap = zipfile.is_zipfile(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for truncated / foreign files
        # torch's text for an unpickling failure suggests weights_only=False: not for us.
        detail = "" if isinstance(err, pickle.UnpicklingError) else f": {err}"
        raise CheckpointError(
            f"checkpoint {path} could not be read (truncated, corrupt, not a torch file, or "
            f"holding objects other than tensors and plain values){detail}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def wandb_run_id(path: str | Path) -> str | None:
    """The W&B run a checkpoint was written in (``WANDB_RUN_KEY``), without reading its
    tensors (memory-mapped); None when it names none or cannot be read (the fit that
    resumes from it reads it again and names the problem)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for truncated / foreign files
        return None
    run_id = ckpt.get(WANDB_RUN_KEY) if isinstance(ckpt, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None


def load_submodule(module: nn.Module, path: str | Path, prefix: str) -> None:
    """Load the weights stored under ``prefix`` in a Lightning checkpoint into ``module``.

    Raises ``CheckpointError`` when the checkpoint holds no such weights or their names or
    shapes don't fit.
    """
    ckpt = read_checkpoint(path)
    state = {
        key[len(prefix) :]: value
        for key, value in ckpt["state_dict"].items()
        if key.startswith(prefix)
    }
    if not state:
        raise CheckpointError(
            f"checkpoint {path} holds no weights under '{prefix}': is it a ClassElevateSeg "
            "(stage-1) checkpoint?"
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            "(another encoder?)"
        )
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise CheckpointError(
            f"checkpoint {path} has other shapes than the configured model (other input "
            f"channels or classes?): {'; '.join(wrong[:3])}"
        )
    module.load_state_dict(state)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint file beside its destination and renames it into place, so that
    a run killed mid-write keeps the previous file whole.

    Lightning writes through a temporary file in ``$TMPDIR`` moved into place with
    ``shutil.move``: where ``$TMPDIR`` is another filesystem than the run folder (a node's
    local disk, a tmpfs) that move is a copy over the old file, and a kill during it leaves
    ``last.ckpt`` cut short, losing the state a resumed run needs. Paths with a protocol
    (``s3://``, ...) keep Lightning's way.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.partial"):  # left by a killed write
            stale.unlink(missing_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)  # atomic within one filesystem
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        _fsync_folder(path.parent)  # the rename too survives a power cut, not only a kill


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk (POSIX; where a folder cannot be opened, nothing)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LastCheckpoint(ModelCheckpoint):
    """Keeps ``last.ckpt`` the latest training state, which ``--ckpt_path last`` resumes.

    Written at the end of an epoch unless the previous write is less than
    ``min_interval_s`` old, and always when training ends, so a killed run trains again at
    most about ``min_interval_s`` plus the epoch it was in. Needed because beside a
    monitored ``ModelCheckpoint(save_last=True)``, Lightning 2.6 writes ``last.ckpt`` only
    when the monitored metric improves: a resumed run went back to its best epoch and
    trained everything after it again.

    Args:
        dirpath: Folder of ``last.ckpt`` (the CLI's default: the run's ``checkpoints/``).
        min_interval_s: Least seconds between two writes at epoch ends (0: every epoch);
            the final epoch is always written. For fast epochs: a SemiSeg-CAW checkpoint
            (auxiliary model and its AdamW moments) is 175 MB, 0.2-0.6 s to write: much of
            a sub-second GPU epoch.

    A fit stopped by Ctrl-C or SIGTERM is told (on stderr) which epoch ``last.ckpt`` holds,
    so that the user knows what resuming will repeat.
    """

    def __init__(self, dirpath: str | Path | None = None, min_interval_s: float = 30.0) -> None:
        if not min_interval_s >= 0:  # NaN too (inf is fine: the first and final epochs only)
            raise ValueError(f"min_interval_s must be 0 or more, got {min_interval_s}")
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,  # overwrite last.ckpt, never last-v1.ckpt
        )
        self.min_interval_s = min_interval_s
        self._written_at = -math.inf
        self.written_epochs: int | None = None  # epochs done in the last write of this fit

    def _save_none_monitor_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        recent = time.monotonic() - self._written_at < self.min_interval_s
        # Every process must agree: saving waits for all of them (a barrier).
        if trainer.strategy.broadcast(recent, src=0) and not _last_epoch(trainer):
            return
        super()._save_none_monitor_checkpoint(trainer, monitor_candidates)
        self._written_at = time.monotonic()
        self.written_epochs = trainer.current_epoch + 1

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        stopped = isinstance(exception, KeyboardInterrupt | SIGTERMException)
        if stopped and trainer.is_global_zero and self.dirpath is not None:
            last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            sys.stderr.write(stop_notice(trainer, last, self.written_epochs))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A stop the last epoch's end did not foresee (e.g. max_time): write the state now.
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # skips a state already written
            self._written_at = -math.inf
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


def stop_notice(trainer: L.Trainer, last: Path, written_epochs: int | None) -> str:
    """What a fit stopped by the user or the system leaves to continue from."""
    where = f"training stopped in epoch {trainer.current_epoch + 1}"
    if trainer.max_epochs not in (None, -1):
        where += f" of {trainer.max_epochs}"
    if written_epochs is not None:
        kept = f"{last} holds the state after epoch {written_epochs}"
    elif last.is_file():
        kept = f"{last} holds the state this fit started from"
    else:
        return f"semiseg-caw: {where}; no {last.name} was written yet: a new fit starts over\n"
    return f"semiseg-caw: {where}; {kept}: --ckpt_path last continues from there\n"


def _last_epoch(trainer: L.Trainer) -> bool:
    """Whether training stops after the epoch now ending."""
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    return (
        trainer.should_stop  # early stopping, or a callback's request
        or (max_epochs not in (None, -1) and trainer.current_epoch + 1 >= max_epochs)
        or (max_steps not in (None, -1) and trainer.global_step >= max_steps)
    )


def epoch_seed(base_seed: int, epoch: int) -> int:
    """A 32-bit seed for one epoch of a run seeded with ``base_seed``."""
    return int(np.random.SeedSequence([base_seed, epoch]).generate_state(1)[0])


class EpochSeeding(Callback):
    """Reseeds every random stream of training from (seed, epoch) as each epoch starts.

    With a seed set (``seed_everything``), epoch ``e`` draws its shuffling, its
    augmentations and its dropout masks from ``epoch_seed(seed, e)`` alone, so a run
    killed and resumed from an epoch-end checkpoint trains exactly as the run that was
    never stopped (given ``deterministic`` kernels). Without a seed it does nothing.

    Exact with ``num_workers=0``: workers seed their augmentations from the loader's own
    stream. A resume from a mid-epoch checkpoint (``every_n_train_steps``) continues
    with other random draws for the rest of that epoch.
    """

    @staticmethod
    def _seed(trainer: L.Trainer) -> int | None:
        base = os.environ.get("PL_GLOBAL_SEED")
        return None if base is None else epoch_seed(int(base), trainer.current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Called before the epoch's first batch is drawn; the loader's iterator may already
        # exist (a resumed run creates it earlier), but samplers draw lazily.
        seed = self._seed(trainer)
        if seed is None:
            return
        loader = trainer.train_dataloader
        for dl in loader if isinstance(loader, (list, tuple)) else [loader]:
            sampler = getattr(dl, "sampler", None)
            if isinstance(sampler, RandomSampler):
                sampler.generator = torch.Generator().manual_seed(seed)
            batch_sampler = getattr(dl, "batch_sampler", None)
            if hasattr(batch_sampler, "seed"):
                batch_sampler.seed = seed  # e.g. MixedBatchSampler: seeded per run otherwise
            dataset = getattr(dl, "dataset", None)
            if hasattr(dataset, "reseed"):
                dataset.reseed(seed)  # the augmentation pipeline's own generator

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        # The global streams (dropout, ...) once the loader has made its own draws, which
        # happen at different moments in a fresh and in a resumed run.
        if batch_idx != 0:
            return
        seed = self._seed(trainer)
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed)  # noqa: NPY002 (the legacy stream, as seed_everything)
            torch.manual_seed(seed)
