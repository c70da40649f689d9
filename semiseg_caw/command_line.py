"""The command line before it is parsed: what it names, and the defaults a checkpoint gives
``validate``, ``test`` and ``predict`` (its task class and data options), so that a trained
model is evaluated as it was trained without repeating its options."""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from semiseg_caw.checkpoints import CheckpointError, checkpoint_writer, read_checkpoint
from semiseg_caw.data import SemiSegDataModule
from semiseg_caw.data.samples import class_names_for


def command_line(args: Any) -> list[str] | None:
    """The arguments as a list (``sys.argv``'s when None); None for a dict of settings."""
    return None if isinstance(args, dict) else list(sys.argv[1:] if args is None else args)


def options_named(argv: list[str]) -> set[str]:
    """The options on a command line, without their values: ``--data.root``, ``-c``, ..."""
    return {str(a).split("=", 1)[0] for a in argv if str(a).startswith("-")}


def missing_checkpoint(subcommand: str) -> CheckpointError:
    return CheckpointError(
        f"`semiseg-caw {subcommand}` needs --ckpt_path: a checkpoint written by `fit` (e.g. "
        "RUN/checkpoints/best-epoch=NNN.ckpt, or `best` or `last` for that file of the run "
        "in --trainer.default_root_dir)"
    )


def no_last_checkpoint(folder: str | Path) -> CheckpointError:
    return CheckpointError(
        f"--ckpt_path last: no last*.ckpt in {folder}; give --trainer.default_root_dir "
        "of the run that wrote it, or the checkpoint's path"
    )


def last_checkpoints_in(folder: str | Path) -> list[Path]:
    """The ``last*.ckpt`` files ``--ckpt_path last`` chooses from, oldest first (Lightning
    takes the newest)."""
    return sorted(Path(folder).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)


def best_checkpoint_in(folder: str | Path) -> Path:
    """The file ``--ckpt_path best`` means: the run's one best-on-validation checkpoint,
    ``best*.ckpt`` in its checkpoint folder. (Lightning's own ``best`` is the best of a fit
    in the same process, which a command that only evaluates never has.)"""
    found = sorted(Path(folder).glob("best*.ckpt"))
    if not found:
        raise CheckpointError(
            f"--ckpt_path best: no best*.ckpt in {folder}; give --trainer.default_root_dir "
            "of the run that wrote it, or the checkpoint's path"
        )
    if len(found) > 1:
        raise CheckpointError(
            f"--ckpt_path best: {folder} holds {len(found)} best checkpoints "
            f"({', '.join(p.name for p in found)}); give the one to use as --ckpt_path"
        )
    return found[0]


def _checkpoint_folder(argv: list[str], callback: str) -> Path:
    """The folder of the ``checkpoint`` or ``last_checkpoint`` files a command line means:
    ``--<callback>.dirpath``, by default ``<trainer.default_root_dir>/checkpoints``."""
    root = _option_value(argv, "--trainer.default_root_dir") or "."
    return Path(_option_value(argv, f"--{callback}.dirpath") or Path(root) / "checkpoints")


def newest_last_checkpoint(argv: list[str]) -> Path:
    """The file ``--ckpt_path last`` means, in the checkpoint folder (by default
    ``<trainer.default_root_dir>/checkpoints``)."""
    folder = _checkpoint_folder(argv, "last_checkpoint")
    found = last_checkpoints_in(folder)
    if not found:
        raise no_last_checkpoint(folder)
    return found[-1]


def check_config_files(args: Any) -> None:
    """Name the config file that is not valid YAML: the parser's message says only
    ``in "<unicode string>", line 3``, which does not tell two configs apart."""
    argv = command_line(args) or []
    for option, value in _with_next(argv):
        if option in ("--config", "-c"):
            path = value
        elif option.startswith("--config="):
            path = option.split("=", 1)[1]
        else:
            continue
        if path is None or not Path(path).is_file():
            continue  # missing files are named by the parser
        with open(path, encoding="utf-8") as handle:
            try:
                yaml.safe_load(handle)
            except yaml.YAMLError as err:  # its marks name the file, line and column
                raise ValueError(f"config file {path} is not valid YAML: {err}") from err


def require_a_model(args: Any) -> None:
    """Name what is missing where parsing would only say ``required: fit.model``: a command
    given no config, no ``--model`` and (to evaluate) no checkpoint to take the model from."""
    argv = command_line(args)
    if not argv or argv[0] not in ("fit", "validate", "test", "predict"):
        return
    given = options_named(argv)
    if argv[0] != "fit" and _option_value(argv, "--ckpt_path") == "":  # e.g. --ckpt_path=$UNSET
        raise missing_checkpoint(argv[0])
    enough = {"-h", "--help", "--print_config", "-c", "--config"}
    if argv[0] != "fit":
        enough.add("--ckpt_path")  # only evaluating takes its model from the checkpoint
    if given & enough or any(g.startswith("--model") for g in given):
        return
    if argv[0] != "fit":
        raise missing_checkpoint(argv[0])
    resume = (
        "; to continue a run, give its config too (--config <run>/config.yaml --ckpt_path last)"
        if "--ckpt_path" in given
        else ""
    )
    raise ValueError(
        "`semiseg-caw fit` needs a model: a config (--config configs/busi.yaml; "
        "configs/demo.yaml to try it on synthetic images) or --model SemiSegCAW (or "
        f"ClassElevateSeg) with --data options{resume}"
    )


# Data options that belong to the data set a checkpoint was trained on: not carried over
# when the command names another data set (e.g. a manifest of external test images).
DATASET_OPTIONS = {
    "root",
    "split_file",
    "classes",
    "include_normal",
    "ddti_unlabelled",
    "class_only",
    "budget_mode",
    "synthetic_samples",
}


def _with_next(argv: list[str]) -> list[tuple[str, str | None]]:
    """Each argument with the one after it (None after the last; nothing for no arguments)."""
    return list(zip(argv, [*argv[1:], None][: len(argv)], strict=True))


def _option_value(argv: list[str], name: str) -> str | None:
    """The value of ``name`` given as ``name=value`` or ``name value`` (the last one wins)."""
    value = None
    for arg, following in _with_next(argv):
        if arg == name:
            value = following
        elif arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
    return value


def checkpoint_defaults(args: Any, read: Callable[[str], dict] = read_checkpoint) -> Any:
    """``validate``, ``test`` or ``predict`` with ``--ckpt_path`` and no ``--config``: the
    task class (unless ``--model`` names one) and the data options come from the checkpoint
    (what it was trained with), each unless given on the command line; for ``last``, the
    run's newest last checkpoint is put in its place and read, for ``best`` its best. When
    ``--data.dataset`` names another data set, the checkpoint's data-set options (root,
    split file, label budget, ...) are not carried over, and a manifest's classes are the
    checkpoint's.
    A checkpoint in a run's ``checkpoints/`` folder also gives ``trainer.default_root_dir``
    (the run's folder, when writable), so that the command's records go beside the run's.
    Other arguments unchanged. ``read`` reads the checkpoint."""
    argv = command_line(args)
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return args
    given = options_named(argv)
    if given & {"--config", "-c"}:
        return args
    path = _option_value(argv, "--ckpt_path")
    ckpt = None
    if path in ("last", "best"):
        # The file itself, so that it is read as a path is: its class, model and data options.
        if path == "last":
            path = str(newest_last_checkpoint(argv))
        else:
            path = str(best_checkpoint_in(_checkpoint_folder(argv, "checkpoint")))
        argv = [*argv, f"--ckpt_path={path}"]  # the last one given wins
    if path:
        try:
            ckpt = read(path)
        except CheckpointError:
            if "--model" not in given:
                raise  # parsing would only say that --model is missing
            # else named when the checkpoint is read again, after parsing
    class_path = ckpt and checkpoint_writer(ckpt)
    if not class_path:
        return argv
    extra = [] if "--model" in given else [f"--model={class_path}"]
    run_folder = Path(path).resolve().parent.parent  # <run>/checkpoints/<file>
    in_a_run = Path(path).resolve().parent.name == "checkpoints"
    if "--trainer.default_root_dir" not in given and in_a_run and os.access(run_folder, os.W_OK):
        # The command's config record and logs go beside the run's own, not into the
        # working directory.
        extra.append(f"--trainer.default_root_dir={run_folder}")
    trained = dict(ckpt.get("datamodule_hyper_parameters") or {})
    dataset = _option_value(argv, "--data.dataset")
    if dataset is not None and dataset != trained.get("dataset"):
        names = list(ckpt.get("class_names") or trained.get("classes") or [])
        if not names and trained.get("dataset"):
            names = class_names_for(trained["dataset"], bool(trained.get("include_normal")))
        trained = {k: v for k, v in trained.items() if k not in DATASET_OPTIONS}
        if dataset == "manifest" and names:
            trained["classes"] = names
    options = inspect.signature(SemiSegDataModule).parameters  # a checkpoint's may be gone
    for key, value in trained.items():
        if key in options and f"--data.{key}" not in given:
            extra.append(f"--data.{key}={value if isinstance(value, str) else json.dumps(value)}")
    return [argv[0], *extra, *argv[1:]]


def model_options_given(args: Any) -> set[str]:
    """The model's init arguments named on the command line: ``--model.init_args.NAME`` or
    ``--model.NAME`` (with ``=value`` or a separate value)."""
    argv = command_line(args)
    if argv is None:
        return set()
    names = set()
    for key in options_named(argv):
        for prefix in ("--model.init_args.", "--model."):
            if key.startswith(prefix):
                names.add(key.removeprefix(prefix).split(".", 1)[0])
                break
    return names - {"class_path", "init_args", "dict_kwargs"}
