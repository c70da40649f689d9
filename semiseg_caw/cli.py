"""The ``semiseg-caw`` command: LightningCLI over the package's modules and data module."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from semiseg_caw import __version__
from semiseg_caw.checkpoint_match import check_data_matches_checkpoint
from semiseg_caw.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    EpochSeeding,
    LastCheckpoint,
    checkpoint_writer,
    read_checkpoint,
)
from semiseg_caw.cli_fit import CHECKPOINT_KEYS, FitCommand
from semiseg_caw.command_line import (
    best_checkpoint_in,
    check_config_files,
    checkpoint_defaults,
    last_checkpoints_in,
    missing_checkpoint,
    model_options_given,
    no_last_checkpoint,
    require_a_model,
)
from semiseg_caw.data import SemiSegDataModule
from semiseg_caw.data.io import DataValidationError
from semiseg_caw.lit.base import SegmentationTask
from semiseg_caw.lit.callbacks import LoggerSaveConfigCallback, ValidationImageLogger
from semiseg_caw.lit.stages import drop_anonymous_setting
from semiseg_caw.lit.writer import PredictionWriter
from semiseg_caw.models.class_elevate import PretrainedWeightsError
from semiseg_caw.parse_errors import explain
from semiseg_caw.run_folder import refuse_other_task

DESCRIPTION = (
    "SemiSeg-CAW: semi-supervised ultrasound lesion segmentation. `fit` trains stage 1 "
    "(ClassElevateSeg) and then stage 2 (SemiSegCAW); `semiseg-caw fit --model.help "
    "SemiSegCAW` lists the model's options. Logs to W&B offline unless WANDB_MODE=online."
)

WANDB_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "semiseg-caw"},
}


class SemiSegArgumentParser(LightningArgumentParser):
    """Reports a parse error in two lines (see ``parse_errors``) instead of after the usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # raised to a caller that handles it, or debugging
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        options = [action.dest for action in parser._actions]
        sys.stderr.write(
            f"{prog}: error: {explain(message, options)}\n(`{prog} --help` lists the options)\n"
        )
        self.exit(2)


class SemiSegCLI(FitCommand, LightningCLI):
    """LightningCLI that links data to model, keeps best and last checkpoints, and runs stage 1."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.in_channels", "model.init_args.in_channels", apply_on="instantiate"
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")  # the best, on val/dice
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")  # for resuming
        parser.add_lightning_class_args(ValidationImageLogger, "image_logger")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        # A run resumed with `--ckpt_path last` then repeats the uninterrupted run's draws.
        parser.add_lightning_class_args(EpochSeeding, "epoch_seeding")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/dice",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # last_checkpoint keeps last.ckpt current
                # For test, predict, export and stage 1: a third of the bytes (no AdamW
                # moments); runs resume from last.ckpt, which has everything.
                "checkpoint.save_weights_only": True,
                "checkpoint.filename": "best-{epoch:03d}",
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # A checkpoint read for its defaults is kept for _parse_ckpt_path, not read twice.
        self._read_ahead: dict[str, dict] = {}

        def read(path: str) -> dict:
            self._read_ahead[str(path)] = read_checkpoint(path)
            return self._read_ahead[str(path)]

        self._model_given = model_options_given(args)
        require_a_model(args)
        check_config_files(args)
        with warnings.catch_warnings():
            # Lightning warns when both sys.argv and args hold arguments: here args are
            # sys.argv's own, with a checkpoint's defaults added (or a caller's, e.g. from
            # a notebook whose sys.argv holds the kernel's), so the warning only misleads.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().parse_arguments(parser, checkpoint_defaults(args, read))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # A rich progress bar, unless the config turns bars off or chooses its own.
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs.setdefault("callbacks", [*callbacks, RichProgressBar()])
        # Checkpoints written in place atomically, unless the config chooses how.
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:
            drop_anonymous_setting(logger)
        return trainer

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        # A run that asks for no checkpoints gets none: the best and last checkpoints this
        # command adds are left out (Lightning refuses them beside enable_checkpointing).
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        root = config.trainer.default_root_dir or "."
        # A fixed checkpoint folder, so that `--ckpt_path last` finds the last run's files.
        for key in CHECKPOINT_KEYS:
            if config.get(key) and config[key].dirpath is None:
                config[key].dirpath = str(Path(root) / "checkpoints")
        # Lightning logs nothing while predicting: a logger would only leave an empty run
        # (a wandb/ folder in the working directory, by default).
        if self.subcommand == "predict":
            config.trainer.logger = False
        # Logs (W&B, CSV, TensorBoard; and the saved config beside them) go under the run's
        # folder, not the working directory, unless a save_dir is given.
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if not logger or not hasattr(logger, "get") or not logger.get("class_path"):
                continue  # true/false, or a logger object made in Python
            if logger.get("init_args") is None:
                logger.init_args = Namespace()
            if logger.init_args.get("save_dir") in (None, "."):
                logger.init_args.save_dir = str(root)
            # A resumed fit logs on in the W&B run it continues, unless a run is named.
            args = logger.init_args
            wandb = logger.class_path.rsplit(".", 1)[-1] == "WandbLogger"
            if wandb and self.subcommand == "fit" and not (args.get("id") or args.get("version")):
                args.id = self._resumed_wandb_run(root)

    def _parse_ckpt_path(self) -> None:
        """Take the model's settings from ``--ckpt_path``, as LightningCLI does, but also for
        checkpoints whose hyper-parameters name no class (stage 1 trained inside ``fit``):
        Lightning would parse those against the abstract base task and fail."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        self._ckpt_data: dict[str, Any] = {}  # the checkpoint's data options, when read here
        self._ckpt_hparams: dict[str, Any] = {}
        self._ckpt_class_names: list[str] = []
        read_ahead, self._read_ahead = getattr(self, "_read_ahead", {}), {}  # not kept all run
        if path == "best" and sub != "fit":  # with --config: the run's best file, read below
            path = self._best_checkpoint(self.config[sub])
        if path in (None, "last", "best", "hpc") or str(path).startswith("registry"):
            return super()._parse_ckpt_path()  # Lightning's own names, resolved later
        try:  # read_checkpoint names the file: missing, corrupt or foreign
            ckpt = read_ahead.get(str(path)) or read_checkpoint(path)
        except CheckpointError as err:
            self.parser.error(str(err))
        if sub == "fit" and "optimizer_states" not in ckpt:
            self.parser.error(
                f"{path} holds weights only (a best checkpoint): resume a run with "
                "--ckpt_path last, which has the optimiser's state too"
            )
        refuse_other_task(path, ckpt, self.config[sub].model.get("class_path"), sub)
        self._remember_checkpoint(ckpt)
        hparams = dict(self._ckpt_hparams)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        hparams.pop("_class_path", None)
        class_path = checkpoint_writer(ckpt) or self.config[sub].model.get("class_path")
        model = {"class_path": class_path, "dict_kwargs": hparams}
        # Model options given on the command line (e.g. --model.init_args.flip_tta true) win
        # over the checkpoint's, as data options do in checkpoint_defaults.
        init_args = self.config[sub].model.get("init_args") or {}
        given = {k: init_args[k] for k in getattr(self, "_model_given", ()) if k in init_args}
        try:
            self.config = self.parser.parse_object({sub: {"model": model}}, self.config)
        except SystemExit:
            sys.stderr.write(f"The hyper-parameters in checkpoint {path} do not fit {class_path}\n")
            raise
        for key, value in given.items():
            self.config[sub].model.init_args[key] = value

    def _best_checkpoint(self, config: Namespace) -> str:
        """``--ckpt_path best`` of an evaluating command given ``--config``: the run's best
        checkpoint file, put in its place."""
        root = config.trainer.default_root_dir or "."
        folder = config.get("checkpoint") and config.checkpoint.dirpath
        try:
            config.ckpt_path = str(best_checkpoint_in(folder or Path(root) / "checkpoints"))
        except CheckpointError as err:
            self.parser.error(str(err))
        return config.ckpt_path

    def _remember_checkpoint(self, ckpt: dict) -> None:
        """Keep what the data is checked against: the checkpoint's data options,
        hyper-parameters and class names."""
        self._ckpt_data = dict(ckpt.get("datamodule_hyper_parameters") or {})
        self._ckpt_hparams = dict(ckpt.get("hyper_parameters") or {})
        self._ckpt_class_names = list(ckpt.get("class_names") or [])
        self._ckpt_epoch = ckpt.get("epoch")  # the epoch it was written in (from 0)

    def _read_a_checkpoint(self) -> bool:
        """Whether a checkpoint was read that the data can be checked against."""
        return bool(getattr(self, "_ckpt_data", None) or getattr(self, "_ckpt_class_names", None))

    def before_validate(self) -> None:
        self._check_evaluated_checkpoint()
        self._make_log_folders()

    def before_test(self) -> None:
        self._check_evaluated_checkpoint()
        self._make_log_folders()

    def _make_log_folders(self) -> None:
        """The loggers' folders, made before they start: W&B warns "git root ... does not
        exist" for a save_dir not yet made (a new --trainer.default_root_dir)."""
        for logger in self.trainer.loggers:
            if getattr(logger, "save_dir", None):
                Path(logger.save_dir).mkdir(parents=True, exist_ok=True)

    def _run_subcommand(self, subcommand: str) -> None:
        with warnings.catch_warnings():
            # A fit writes into a folder holding checkpoints only when it resumes that run
            # (before_fit refuses any other), which Lightning warns of as "Checkpoint
            # directory ... exists and is not empty" at every resume, in either stage.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            # before_fit says when `--ckpt_path last` finds nothing to continue; Lightning's
            # warning then hints at `ModelCheckpoint(save_last=True)`, which this command has.
            warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but')
            if subcommand != "fit":
                # Evaluating a full checkpoint (last.ckpt) from another folder restores its
                # ModelCheckpoint state, and Lightning warns that the state's paths are not
                # reloaded: this command writes no checkpoint, so they are not needed.
                warnings.filterwarnings("ignore", message="The dirpath has changed from")
            return super()._run_subcommand(subcommand)

    def before_predict(self) -> None:
        self._check_evaluated_checkpoint()
        # Outputs go to disk through the writer; holding them all would grow without bound.
        if self.config_init.predict.get("return_predictions") is None:
            self.config_init.predict.return_predictions = False

    def _check_evaluated_checkpoint(self) -> None:
        """validate/test/predict evaluate trained weights: without them Lightning would
        quietly use the untrained model's."""
        sub = self.subcommand
        ckpt_path = self.config[sub].get("ckpt_path")
        if ckpt_path is None:
            raise missing_checkpoint(sub)
        if ckpt_path == "last" and not self._last_checkpoints():
            raise no_last_checkpoint(self.config[sub].get("last_checkpoint").dirpath)
        # Read by _parse_ckpt_path; not a `last` given with --config, the run's own config.
        if self._read_a_checkpoint():
            self._check_data_matches_checkpoint(ckpt_path)

    def _check_data_matches_checkpoint(self, ckpt_path: str) -> None:
        """Options the weights depend on must be the ones they were trained with."""
        check_data_matches_checkpoint(
            ckpt_path,
            self.subcommand,
            self.config[self.subcommand].data,
            self.datamodule,
            self._ckpt_data,
            self._ckpt_hparams,
            self._ckpt_class_names,
        )

    def _last_checkpoints(self) -> list[Path]:
        """The files ``--ckpt_path last`` would resume from (Lightning looks for ``last*``)."""
        config = self.config[self.subcommand]
        dirpath = config.get("last_checkpoint") and config.last_checkpoint.dirpath
        return last_checkpoints_in(dirpath) if dirpath else []


def main(args: list[str] | None = None, run: bool = True) -> SemiSegCLI:
    """Build (and by default run) the CLI; returns it so that callers can inspect the run."""
    # Offline unless the user asks otherwise: no account needed, `wandb sync` uploads later.
    # Put back after a run, so that a notebook's own W&B runs are not made offline too (with
    # run=False the caller's trainer logs later, and needs it still).
    ours = run and "WANDB_MODE" not in os.environ
    os.environ.setdefault("WANDB_MODE", "offline")
    earlier_run = _active_wandb_run()
    try:
        cli = SemiSegCLI(
            SegmentationTask,
            SemiSegDataModule,
            subclass_mode_model=True,
            parser_class=SemiSegArgumentParser,
            trainer_defaults={"logger": WANDB_LOGGER},
            # Lightning's default (true) seeds 0 as well, warning "No seed found" with its own
            # file's path at every command given no seed: the same seed, without the noise.
            seed_everything_default=0,
            save_config_callback=LoggerSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            # The main parser's (subcommands are keyed by name): `semiseg-caw --version`.
            parser_kwargs={"description": DESCRIPTION, "version": __version__},
            args=args,
            run=run,
        )
    finally:
        # One W&B run per command, also when main() runs again here: the run this command
        # started ends with it, whether it succeeded or failed (a failed command's run left
        # open would take the next command's logs); a caller's own run is left alone.
        started = _active_wandb_run()
        if run and started is not None and started is not earlier_run:
            sys.modules["wandb"].finish()
        if ours:
            os.environ.pop("WANDB_MODE", None)
    return cli


def _active_wandb_run() -> Any:
    """The W&B run in progress in this process, if W&B is loaded at all."""
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


# Errors that say what a user got wrong (a path, a file, a value, a checkpoint): the
# command prints the message without a traceback, unless SEMISEG_CAW_TRACEBACK=1.
USER_ERRORS = (
    CheckpointError,
    DataValidationError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    PretrainedWeightsError,
    ValueError,
    MisconfigurationException,  # Lightning's, for trainer options that cannot work
)


def _unwrapped(err: BaseException) -> BaseException:
    """The error a class raised, when jsonargparse wrapped it while instantiating the class:
    its wrapper lists every union subtype and dumps the whole config around that message."""
    while isinstance(err.__cause__, USER_ERRORS):
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        raised_in = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
        if not raised_in.startswith("jsonargparse"):
            break
        err = err.__cause__
    return err


class _DropLightningTips(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing ..." notices (an advert for another
    package, printed at every trainer's start: twice per fit)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_upstream_notices() -> None:
    """Silence, for the command, what other packages print at every run that its users
    cannot act on: Lightning's tips, and torch's FutureWarning about Lightning's use of
    ``LeafSpec`` (a matter between those two packages). Errors and every other warning stay."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropLightningTips())
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )


def run() -> None:
    """Entry point of ``semiseg-caw`` and ``python -m semiseg_caw``."""
    quiet_upstream_notices()
    try:
        main()
    except SIGTERMException:  # a SystemExit of status 0: a script would take it for success
        sys.stderr.write(
            f"{_process()}semiseg-caw: stopped by SIGTERM; continue the run with --ckpt_path "
            "last and the same --trainer.default_root_dir\n"
        )
        sys.exit(143)  # 128 + SIGTERM, as a shell reports it
    except Exception as caught:
        user_error = isinstance(caught, USER_ERRORS) or _wandb_usage_error(caught)
        if not user_error or os.environ.get("SEMISEG_CAW_TRACEBACK") == "1":
            raise
        err = _unwrapped(caught)
        if _wandb_usage_error(err):  # e.g. no API key: W&B logs online only when asked to
            online = os.environ.get("WANDB_MODE") == "online"
            why = " (WANDB_MODE=online asks for online logging; without it, offline)"
            err = f"W&B: {err}{why if online else ''}"
        sys.stderr.write(
            f"{_process()}semiseg-caw: error: {err}\n"
            "(SEMISEG_CAW_TRACEBACK=1 shows where it was raised)\n"
        )
        sys.exit(2)


def _wandb_usage_error(err: BaseException) -> bool:
    """W&B's error for a mistake of its user (online logging without an API key), checked
    without importing W&B, which only a run that logs to it has done."""
    errors = sys.modules.get("wandb.errors")
    return errors is not None and isinstance(err, errors.UsageError)


def _process() -> str:
    """``[rank: N] `` in a DDP run's other processes, as Lightning marks their lines: each
    process meets the same error in the data or options, and says so."""
    rank = rank_zero_only.rank
    return f"[rank: {rank}] " if rank else ""
