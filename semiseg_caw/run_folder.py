"""Guarding a run's folder: one fit at a time in it (a lock held until the command ends), no
checkpoint written by another task than the configured one, and no empty folders left by a
fit that failed before writing anything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    import fcntl  # POSIX: the lock that keeps a second fit out of a run folder
except ImportError:  # Windows: no lock
    fcntl = None

from semiseg_caw.checkpoints import CheckpointError, checkpoint_writer, import_class
from semiseg_caw.lit.checkpointing import can_load
from semiseg_caw.lit.semiseg import SemiSegCAW


def refuse_other_task(path: Any, ckpt: dict, class_path: str | None, subcommand: str) -> None:
    """Refuse a checkpoint written by another task than the configured one (``--model`` or
    the config's): Lightning would otherwise use the checkpoint's class without a word."""
    writer = checkpoint_writer(ckpt)
    task = import_class(class_path) if class_path else None
    if task is None or can_load(task, writer):
        return
    wrote = writer.rsplit(".", 1)[-1]
    message = f"{path} was written by {wrote}, but the model is {task.__name__}"
    if subcommand == "fit" and issubclass(task, SemiSegCAW):
        raise CheckpointError(
            f"{message}: to continue a run stopped in stage 1, give --ckpt_path last with "
            "that run's --trainer.default_root_dir; to start stage 2 from these stage-1 "
            f"weights, give --model.init_args.stage1_checkpoint {path}"
        )
    also = "" if subcommand == "fit" else ", or leave out --model and --config"
    raise CheckpointError(f"{message}: pass --model {wrote}{also}")


def lock_run_folder(root: str | Path) -> int | None:
    """Hold an exclusive lock on the run folder until the command ends (the returned
    descriptor is closed): a second fit in it would mix its checkpoints and config with
    this one's. None where the platform has no lock."""
    if fcntl is None:
        return None
    descriptor = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise FileExistsError(
            f"another fit is running in {root}: wait for it to end, or give this run its own "
            "--trainer.default_root_dir"
        ) from None
    return descriptor


def remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file, deepest first."""
    if not folder.is_dir():
        return
    for path, _, _ in os.walk(folder, topdown=False):  # a folder's children come first
        try:
            os.rmdir(path)  # fails, and is left, when anything is still inside
        except OSError:
            pass
