"""What the package's tasks write into checkpoints and check when loading one.

A checkpoint names the task class that wrote it, the class names it learnt, the image
size it was trained at and its W&B run; loading refuses a checkpoint of another task, a setting the task does
not have, or a file that is no Lightning checkpoint, each with an error that says so.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from semiseg_caw.checkpoints import (
    TASK_CLASS_KEY,
    WANDB_RUN_KEY,
    CheckpointError,
    import_class,
    read_checkpoint,
)

try:  # Lightning's: refuses a call on an instance, which would not load into it
    from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
except ImportError:  # a private name; without it, a plain classmethod
    _restricted_classmethod = classmethod

if TYPE_CHECKING:
    from typing_extensions import Self

# ``load_from_checkpoint``'s own keyword arguments; every other one overrides a setting.
LIGHTNING_LOAD_OPTIONS = ("map_location", "hparams_file", "strict", "weights_only")


def can_load(task: type, writer: str | None) -> bool:
    """Whether ``task`` may load a checkpoint written by ``writer`` (a class path, in any
    of its import forms): the same class or one it derives from. A checkpoint that names no
    writer, or a class outside this package, is not judged here."""
    if not writer or not writer.startswith("semiseg_caw."):
        return True
    written_by = import_class(writer)  # None: a class this version does not have
    return written_by is not None and issubclass(task, written_by)


def check_lightning_checkpoint(path: str | Path) -> None:
    """Raise a ``CheckpointError`` naming the file unless it is a Lightning checkpoint."""
    checkpoint = read_checkpoint(path)  # a folder, a missing, corrupt or foreign file
    if "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint (no 'pytorch-lightning_version'): "
            "write one with trainer.save_checkpoint or a ModelCheckpoint; a bare state dict "
            "loads with model.load_state_dict(...)"
        )


def _is_local_path(path: Any) -> bool:
    """A file path, not a URL (``https://``, ``s3://``: fsspec's) nor an open file."""
    return isinstance(path, (str, Path)) and "://" not in str(path)


class TaskCheckpoints(L.LightningModule):
    """Saving and loading, for ``SegmentationTask``: it keeps ``class_names`` and
    ``trained_image_size``, which checkpoints carry."""

    class_names: list[str] | None
    trained_image_size: int | None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        datamodule = getattr(self._trainer, "datamodule", None)
        names = self.class_names or getattr(datamodule, "class_names", None)
        if names:  # predictions on other data still name the classes the model learnt
            checkpoint["class_names"] = list(names)
        # Which task wrote it, for checkpoints made outside the CLI (stage 1 inside `fit`,
        # a plain Trainer): their hyper-parameters don't name a class, and the CLI needs one.
        checkpoint[TASK_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        # The W&B run, so that a fit resumed from this file logs on in the same run.
        for logger in self._trainer.loggers if self._trainer is not None else []:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[WANDB_RUN_KEY] = logger.version

    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **settings: Any,
    ) -> Self:
        """Lightning's ``load_from_checkpoint`` (``settings`` override the saved
        hyper-parameters, e.g. ``flip_tta=True``), with clear errors instead of raw ones: a
        setting that is no init argument of the class is refused, not silently dropped, and
        a local file that is not a Lightning checkpoint is named (``CheckpointError``).

        The check reads the file once more (as ``weights_only``); a file loaded with
        ``weights_only=False``, which may hold any object, is left to Lightning."""
        cls._refuse_unknown_settings(settings)
        if weights_only is not False and _is_local_path(checkpoint_path):
            check_lightning_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=weights_only,
            **settings,
        )

    @classmethod
    def _refuse_unknown_settings(cls, settings: dict[str, Any]) -> None:
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return  # a subclass that takes any keyword
        known = [name for name in parameters if name != "self"]
        for name in settings:
            if name not in known:
                close = difflib.get_close_matches(name, [*known, *LIGHTNING_LOAD_OPTIONS], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(
                    f"{cls.__name__}.load_from_checkpoint got the keyword {name!r}, which is "
                    f"not a setting of {cls.__name__}{hint}; its settings are the arguments "
                    f"of {cls.__name__}(...)"
                )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the weights are loaded: name the right class instead of listing
        # thousands of unexpected keys. A subclass may load its base class's checkpoint.
        writer = checkpoint.get(TASK_CLASS_KEY)
        if not can_load(type(self), writer):
            raise CheckpointError(
                f"this checkpoint was written by {writer.rsplit('.', 1)[-1]}, not "
                f"{type(self).__name__}: load it with {writer.rsplit('.', 1)[-1]}"
                ".load_from_checkpoint"
            )
        super().on_load_checkpoint(checkpoint)
        self.class_names = checkpoint.get("class_names") or self.class_names
        size = (checkpoint.get("datamodule_hyper_parameters") or {}).get("image_size")
        self.trained_image_size = size if isinstance(size, int) else self.trained_image_size
