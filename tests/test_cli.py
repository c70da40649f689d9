"""Every config in configs/ through the real CLI entry point, on tiny synthetic data."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from fit_args import TINY_DATA, quick_trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from semiseg_caw.checkpoints import CheckpointError
from semiseg_caw.cli import SemiSegCLI, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASET_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "stage1.yaml")
DELTA_CONFIGS = sorted(CONFIGS.glob("*/*.yaml")) + [CONFIGS / "stage1.yaml"]


def tiny(tmp_path: Path, epochs: int = 1) -> list[str]:
    """Overrides that shrink any config to seconds on a CPU, on synthetic data."""
    return [
        *TINY_DATA,
        *quick_trainer(epochs),
        "--trainer.limit_test_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]


def stage1_epochs(config: Path) -> list[str]:
    """Stage-1 overrides: one epoch, and timm's tiny test ResNet as encoder to save time."""
    text = config.read_text()
    if "class_path: semiseg_caw.ClassElevateSeg" in text:
        return ["--model.init_args.encoder=test_resnet"]
    if "aux_source: none" in text:
        return []
    return ["--model.init_args.stage1_epochs=1", "--model.init_args.aux_encoder=test_resnet"]


def options_of(config: Path) -> dict[str, object]:
    """A config file's settings as dotted option names (``model.init_args.lr``) and values."""

    def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out |= leaves(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value
        return out

    return leaves(yaml.safe_load(config.read_text()) or {})


def fit_cases(configs: list[Path]) -> list[Path]:
    """The configs whose fits differ under ``tiny``: without those that set only what it
    overrides (e.g. a label budget), and one of any that set the same as another."""
    overridden = {a.split("=")[0].removeprefix("--") for a in tiny(Path("x"))}
    seen, cases = [], []
    for config in configs:
        kept = {k: v for k, v in options_of(config).items() if k not in overridden}
        if kept and kept not in seen:
            seen.append(kept)
            cases.append(config)
    return cases


@pytest.mark.parametrize(
    "config", DATASET_CONFIGS + DELTA_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_config_option_reaches_the_parsed_config(config: Path, tmp_path: Path) -> None:
    # What the fits below cannot see: the options `tiny` overrides (data set, label budget).
    base = [] if config in DATASET_CONFIGS else [f"--config={CONFIGS / 'demo.yaml'}"]
    args = [*base, f"--config={config}", f"--trainer.default_root_dir={tmp_path}"]
    parsed = main([*args, "--trainer.logger=false"], run=False).config
    for key, value in options_of(config).items():
        if key == "trainer.default_root_dir":
            continue  # given here
        option, _, entry = key.rpartition(".")
        # A dict option's entry (model.init_args.stage1_loss_weights.cam) is read from it.
        got = parsed[key] if key.count(".") < 3 else parsed[option][entry]
        if key.endswith("class_path"):
            assert str(got).rsplit(".", 1)[-1] == str(value).rsplit(".", 1)[-1], key
        elif isinstance(value, str) and not isinstance(got, str):
            assert got == pytest.approx(float(value)), key  # 3e-3 (YAML 1.1 reads a string)
        else:
            assert got == value, key


def test_fit_cases_leave_out_only_fits_another_case_repeats() -> None:
    budgets = sorted((CONFIGS / "budgets").glob("*.yaml"))
    balanced = [CONFIGS / "ablations" / f"{n}.yaml" for n in ("balanced-classes", "imtl")]
    assert fit_cases(budgets) == []  # a label budget only: tiny sets its own
    assert fit_cases([*balanced, CONFIGS / "ablations" / "balanced-classes-stage2.yaml"]) == (
        balanced
    )
    assert fit_cases(DATASET_CONFIGS) == [CONFIGS / "busi.yaml", CONFIGS / "demo.yaml"]


@pytest.mark.parametrize("config", fit_cases(DATASET_CONFIGS), ids=lambda p: p.name)
def test_dataset_config_fits(config: Path, tmp_path: Path) -> None:
    main(["fit", f"--config={config}", *tiny(tmp_path), *stage1_epochs(config)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "stage1" / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize(
    "delta", fit_cases(DELTA_CONFIGS), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_delta_config_fits(delta: Path, tmp_path: Path) -> None:
    demo = CONFIGS / "demo.yaml"
    main(["fit", f"--config={demo}", f"--config={delta}", *tiny(tmp_path), *stage1_epochs(delta)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_validate_and_test_from_checkpoint(tmp_path: Path) -> None:
    demo = str(CONFIGS / "demo.yaml")
    small = [*tiny(tmp_path), *stage1_epochs(CONFIGS / "demo.yaml")]
    main(["fit", f"--config={demo}", *small])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    cli = main(["test", f"--config={demo}", *small, f"--ckpt_path={ckpt}"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("test/dice", "test/iou", "test/dice_per_image"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test/dice"] == pytest.approx(
        2 * metrics["test/iou"] / (1 + metrics["test/iou"]), abs=1e-5
    )
    # A model option on the command line wins over the checkpoint's (the weights stay).
    cli = main(
        ["validate", f"--config={demo}", *small, f"--ckpt_path={ckpt}", "--model.flip_tta", "true"]
    )
    assert cli.model.hparams.flip_tta is True and cli.model.hparams.stage1_epochs == 1
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in cli.model.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)
    # The best checkpoint has the weights only (no AdamW moments: a third of the bytes) and
    # tests the same way; last.ckpt has everything a resumed run needs.
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    assert "optimizer_states" not in torch.load(best, weights_only=True)
    assert "optimizer_states" in torch.load(ckpt, weights_only=True)
    cli = main(["test", f"--config={demo}", *small, f"--ckpt_path={best}"])
    best_metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert best_metrics == pytest.approx(metrics)  # one epoch: the same weights as last.ckpt
    # With neither a config nor a model, the checkpoint's class and data options are taken.
    quick = [
        "--trainer.limit_test_batches=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = main(["test", f"--ckpt_path={best}", *quick])
    assert type(cli.model).__name__ == "SemiSegCAW"
    assert (cli.datamodule.image_size, cli.datamodule.synthetic_samples) == (32, 40)
    assert 0.0 <= float(cli.trainer.callback_metrics["test/dice"]) <= 1.0
    assert cli.model.hparams.flip_tta is False
    cli = main(["test", f"--ckpt_path={best}", "--model.init_args.flip_tta=true", *quick])
    assert cli.model.hparams.flip_tta is True
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 50), 60 * i, dtype=np.uint8)).save(images / f"{i}.png")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*trained at")  # predicted at 32 px
        warnings.filterwarnings("error", message="No seed found")  # no seed given: 0, quietly
        cli = main(["predict", f"--ckpt_path={best}", f"--data.predict_dir={images}", *quick])
    assert len((tmp_path / "predictions" / "predictions.csv").read_text().splitlines()) == 3
    # Its config goes with the predictions, not into the folder the command ran from.
    assert (tmp_path / "predictions" / "config-predict.yaml").is_file()
    assert not (tmp_path / "config-predict.yaml").exists()
    assert cli.trainer.loggers == []  # predicting logs nothing: no empty W&B run
    # --model alone names the class; the data options still come from the checkpoint.
    cli = main(["test", "--model=SemiSegCAW", f"--ckpt_path={best}", *quick])
    assert cli.datamodule.image_size == 32
    # `--ckpt_path last` is the run's newest last*.ckpt: its class and options, as for a path.
    cli = main(["test", "--ckpt_path=last", *quick])
    assert type(cli.model).__name__ == "SemiSegCAW" and cli.datamodule.image_size == 32
    # `--ckpt_path best` is the run's best checkpoint (Lightning's `best` needs a fit in the
    # same process), with or without the run's config; the config records the file.
    cli = main(["test", "--ckpt_path=best", *quick])
    assert cli.datamodule.image_size == 32 and cli.config.test.ckpt_path == str(best)
    assert {k: float(v) for k, v in cli.trainer.callback_metrics.items()} == best_metrics
    cli = main(["test", f"--config={demo}", *small, "--ckpt_path=best"])
    assert cli.config.test.ckpt_path == str(best)
    # last.ckpt (the whole state) tested into another folder: Lightning's note that the
    # checkpoint callback's paths are not reloaded (none is written) is not given, and the
    # loggers' folder is made before they start (W&B warns of a missing "git root").
    other = [*quick[:-1], f"--trainer.default_root_dir={tmp_path / 'other'}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["test", f"--ckpt_path={ckpt}", *other])
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    cli = SimpleNamespace(trainer=SimpleNamespace(loggers=[CSVLogger(tmp_path / "other2")]))
    SemiSegCLI._make_log_folders(cli)  # what validate and test do before the loggers start
    assert (tmp_path / "other2").is_dir()
    # The stage-1 checkpoint that `fit` wrote tests on its own too, although it was made
    # outside the CLI (its hyper-parameters name no class; the checkpoint records it).
    stage1 = sorted((tmp_path / "stage1" / "checkpoints").glob("best-*.ckpt"))[-1]
    stage1_cfg = str(CONFIGS / "stage1.yaml")
    cli = main(
        [
            "test",
            f"--config={demo}",
            f"--config={stage1_cfg}",
            *tiny(tmp_path),
            f"--ckpt_path={stage1}",
        ]
    )
    assert type(cli.model).__name__ == "ClassElevateSeg"
    assert cli.model.hparams.encoder == "test_resnet"  # from the checkpoint, not the default
    assert 0.0 <= float(cli.trainer.callback_metrics["test/dice"]) <= 1.0
    # Older checkpoints without that record: the configured class is taken.
    raw = torch.load(stage1, weights_only=True)
    del raw["semiseg_caw_task"]
    torch.save(raw, tmp_path / "old.ckpt")
    args = [f"--config={demo}", f"--config={stage1_cfg}", *tiny(tmp_path)]
    cli = main(["test", *args, f"--ckpt_path={tmp_path / 'old.ckpt'}"])
    assert type(cli.model).__name__ == "ClassElevateSeg"


def test_ckpt_path_best_names_the_files_when_a_run_kept_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("best-epoch=003.ckpt", "best-epoch=007.ckpt", "last.ckpt"):
        (folder / name).write_bytes(b"")
    message = "holds 2 best checkpoints (best-epoch=003.ckpt, best-epoch=007.ckpt); give the"
    root = f"--trainer.default_root_dir={tmp_path}"
    with pytest.raises(CheckpointError) as refused:  # without a config: before parsing
        main(["test", "--ckpt_path=best", root])
    assert message in str(refused.value)
    with pytest.raises(SystemExit):  # with one: a parser error, as for a missing file
        main(["test", f"--config={CONFIGS / 'demo.yaml'}", "--ckpt_path=best", root])
    assert message in capsys.readouterr().err


def test_no_arguments_ask_for_a_command_and_version_prints_the_package_s(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import semiseg_caw

    with pytest.raises(SystemExit) as stopped:
        main([])  # read the command line's options (none) without failing on them
    assert stopped.value.code == 2
    assert 'expected "subcommand" to be one of {fit,validate,test,predict}' in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {semiseg_caw.__version__}")


def test_help_lists_only_concrete_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "known subclasses: semiseg_caw.ClassElevateSeg, semiseg_caw.SemiSegCAW)" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"not a checkpoint", "could not be read")],
)
def test_bad_ckpt_path_is_named_before_anything_runs(
    content: bytes | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "model.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    with pytest.raises(SystemExit):
        main(["test", f"--config={CONFIGS / 'demo.yaml'}", *tiny(tmp_path), f"--ckpt_path={ckpt}"])
    assert f"checkpoint {ckpt} {message}" in capsys.readouterr().err
    # Without --config the model comes from the checkpoint: the error names the checkpoint,
    # not the missing --model.
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} {message}"):
        main(["test", f"--ckpt_path={ckpt}"])


def test_a_csv_logger_writes_under_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    # Not in the working directory (where a second run's logs would land beside the first's).
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    logger = "--trainer.logger=lightning.pytorch.loggers.CSVLogger"
    cli = main([f"--config={CONFIGS / 'demo.yaml'}", *tiny(run), logger], run=False)
    assert Path(cli.trainer.logger.save_dir) == run


def test_the_command_names_a_user_error_without_a_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "semiseg_caw",
        "fit",
        f"--config={CONFIGS / 'demo.yaml'}",
        "--data.dataset=busi",
        f"--data.root={tmp_path / 'nowhere'}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "semiseg-caw: error: BUSI root folder not found" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # the failed fit leaves no empty run folder


@pytest.mark.parametrize(("rank", "prefix"), [(0, ""), (1, "[rank: 1] ")])
def test_a_ddp_process_other_than_the_first_marks_its_error_with_its_rank(
    rank: int, prefix: str, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    import semiseg_caw.cli as cli

    def fails() -> None:
        raise ValueError("data.root not found")

    monkeypatch.setattr(cli, "main", fails)
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.delenv("SEMISEG_CAW_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as stopped:
        cli.run()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(f"{prefix}semiseg-caw: error: data.root not found")


def test_w_and_b_online_without_an_api_key_is_a_user_error(
    monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb.errors

    import semiseg_caw.cli as cli

    def fails(error: Exception) -> None:
        def main() -> None:
            raise error

        monkeypatch.setattr(cli, "main", main)

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("SEMISEG_CAW_TRACEBACK", raising=False)
    fails(wandb.errors.UsageError("No API key configured. Use `wandb login` to log in."))
    with pytest.raises(SystemExit) as stopped:
        cli.run()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(
        "semiseg-caw: error: W&B: No API key configured. Use `wandb login` to log in. "
        "(WANDB_MODE=online asks for online logging; without it, offline)"
    )
    monkeypatch.delenv("WANDB_MODE")  # a logger set online in the config: no word on the mode
    with pytest.raises(SystemExit):
        cli.run()
    assert capsys.readouterr().err.startswith(
        "semiseg-caw: error: W&B: No API key configured. Use `wandb login` to log in.\n"
    )
    fails(RuntimeError("a fault of the package"))  # not the user's: its traceback is shown
    with pytest.raises(RuntimeError, match="a fault of the package"):
        cli.run()


def test_a_failed_fit_keeps_what_was_in_its_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "notes").mkdir(parents=True)
    (run / "notes" / "plan.txt").write_text("kept")
    (run / "empty").mkdir()
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *tiny(run), "--data.dataset=busi"]
    with pytest.raises(Exception, match="BUSI root folder not found"):
        main([*args, f"--data.root={tmp_path / 'nowhere'}", "--trainer.logger=false"])
    # The folders the fit created (checkpoints/, stage1/) are gone; what was there stays.
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == ["empty", "notes", "notes/plan.txt"]


def test_fast_dev_run_runs_a_batch_of_each_stage_and_leaves_no_run_folder(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *tiny(run), "--trainer.logger=false"]
    cli = main([*args, "--model.init_args.aux_encoder=test_resnet", "--trainer.fast_dev_run=1"])
    # Stage 1 ran under fast_dev_run too (one batch, no checkpoint, not its 6 epochs) and
    # handed its weights over in memory.
    assert cli.model.stage1_loaded and cli.model.hparams.stage1_checkpoint is None
    assert cli.trainer.global_step == 1
    assert not run.exists()  # nothing written, so no empty folders either


def test_enable_checkpointing_false_trains_both_stages_and_writes_no_checkpoint(
    tmp_path: Path,
) -> None:
    """Lightning refused the command's own checkpoint callbacks beside the option."""
    run = tmp_path / "run"
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *tiny(run), "--trainer.logger=false"]
    with pytest.warns(UserWarning, match="stage 1 saves no checkpoint"):
        cli = main(
            [
                *args,
                "--model.init_args.aux_encoder=test_resnet",
                "--model.init_args.stage1_epochs=1",
                "--trainer.enable_checkpointing=false",
            ]
        )
    assert cli.model.stage1_loaded and cli.trainer.current_epoch == 1
    assert not any(run.rglob("*.ckpt")) and (run / "config.yaml").is_file()


def test_an_invalid_model_option_is_named_without_jsonargparse_s_wrapping(
    tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from semiseg_caw.cli import run

    argv = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *tiny(tmp_path), "--model.init_args.lr=-1"]
    monkeypatch.setattr(sys, "argv", ["semiseg-caw", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert (
        "semiseg-caw: error: need 0 <= min_lr <= lr and lr a finite number > 0, got lr=-1.0" in err
    )
    assert "Union subtypes" not in err and "Namespace(" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--data.imag_size=32"],
            "unrecognized arguments: --data.imag_size=32; 'data.imag_size': did you mean "
            "'data.image_size'?",
        ),
        (
            ["--config=TYPO"],
            "Subcommand 'fit' does not accept option 'trainer.max_epoch'; 'trainer.max_epoch': "
            "did you mean 'trainer.max_epochs'?",
        ),
        (
            ["--model.init_args.flip_ta=true"],
            "model semiseg_caw.SemiSegCAW: Option 'flip_ta' is not accepted (did you mean "
            "'flip_tta'?)",
        ),
        (
            ["--model.init_args.backbone=malu"],
            'model semiseg_caw.SemiSegCAW: Parser key "backbone":\n  Expected a '
            "typing.Literal['malunet', 'unext']. Got value: malu\n",
        ),
        (["--model=SemiSegCAX"], "--model SemiSegCAX: not a model; SemiSegCAW, ClassElevateSeg"),
    ],
)
def test_a_mistyped_option_gets_a_short_error_naming_the_option_meant(
    args: list[str], message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Not jsonargparse's 200 lines of usage, and not the model union's list of subtypes."""
    import sys

    from semiseg_caw.cli import run

    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_epoch: 3\n")  # a config file's key, not an argument
    args = [a.replace("TYPO", str(typo)) for a in args]
    argv = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *args, *tiny(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["semiseg-caw", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"semiseg-caw fit: error: {message}")
    assert err.endswith("(`semiseg-caw fit --help` lists the options)\n")
    assert len(err.splitlines()) <= 4 and "Subtypes" not in err and "usage:" not in err


def test_checkpoint_defaults_drop_the_trained_data_sets_own_options_for_another() -> None:
    from semiseg_caw.cli import checkpoint_defaults

    busi = {
        "hyper_parameters": {"_class_path": "semiseg_caw.SemiSegCAW"},
        "datamodule_hyper_parameters": {
            "dataset": "busi",
            "root": "../shared/data/busi",
            "split_file": "configs/splits/busi.json",
            "class_only": 100,
            "image_size": 96,
            "classes": None,
        },
    }

    def args(*extra: str) -> list[str]:
        return checkpoint_defaults(["test", "--ckpt_path", "x.ckpt", *extra], lambda _: busi)

    same = args("--data.root=/elsewhere/busi")
    assert "--data.split_file=configs/splits/busi.json" in same and "--data.class_only=100" in same
    assert "--data.root=/elsewhere/busi" in same and "--data.root=../shared/data/busi" not in same
    external = args("--data.dataset", "manifest", "--data.root=ext.csv")
    assert '--data.classes=["benign", "malignant"]' in external
    assert "--data.image_size=96" in external and "--model=semiseg_caw.SemiSegCAW" in external
    assert not [a for a in external if a.startswith(("--data.split_file", "--data.class_only"))]
    assert "--data.root=../shared/data/busi" not in external
    # Classes given on the command line win: the checkpoint's are not added after them.
    given = args("--data.dataset=manifest", "--data.classes=[a, b]")
    assert '--data.classes=["benign", "malignant"]' not in given


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit"], r"`semiseg-caw fit` needs a model: a config \(--config configs/busi.yaml"),
        (["fit", "--data.dataset=busi"], "needs a model"),
        (["fit", "--ckpt_path=last"], r"to continue a run, give its config too \(--config <run>"),
        (["test", "--data.image_size=32"], r"`semiseg-caw test` needs --ckpt_path"),
        (["predict"], r"`semiseg-caw predict` needs --ckpt_path"),
        (["test", "--ckpt_path="], r"`semiseg-caw test` needs --ckpt_path"),  # an unset variable
        (
            ["test", "--ckpt_path=last", "--trainer.default_root_dir=/nowhere"],
            r"--ckpt_path last: no last\*\.ckpt in /nowhere/checkpoints; give "
            "--trainer.default_root_dir of the run",
        ),
        (
            ["predict", "--ckpt_path=best", "--trainer.default_root_dir=/nowhere"],
            r"--ckpt_path best: no best\*\.ckpt in /nowhere/checkpoints; give "
            "--trainer.default_root_dir of the run",
        ),
    ],
)
def test_a_command_without_a_model_says_what_to_give(args: list[str], message: str) -> None:
    with pytest.raises((ValueError, CheckpointError), match=message):
        main(args)


def test_a_checkpoint_of_another_model_data_or_run_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    import shutil

    demo = f"--config={CONFIGS / 'demo.yaml'}"
    small = [*tiny(tmp_path / "a"), *stage1_epochs(CONFIGS / "demo.yaml")]
    main(["fit", demo, *small])
    run_a = tmp_path / "a"
    best = next((run_a / "checkpoints").glob("best-*.ckpt"))
    stage1_last = run_a / "stage1" / "checkpoints" / "last.ckpt"
    quick = ["--trainer.limit_test_batches=1", "--trainer.accelerator=cpu"]
    quick += ["--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run_a}"]
    # --model naming another task than the checkpoint's: not silently replaced by it.
    with pytest.raises(CheckpointError, match="written by SemiSegCAW, but the model is Class"):
        main(["test", "--model=ClassElevateSeg", f"--ckpt_path={best}", *quick])
    with pytest.raises(CheckpointError, match=r"give --model.init_args.stage1_checkpoint .*last"):
        main(["fit", demo, *tiny(tmp_path / "b"), f"--ckpt_path={stage1_last}"])
    assert not (tmp_path / "b").exists()
    # `last` with --model still takes the checkpoint's data options (32 px, not 256).
    cli = main(["test", "--model=SemiSegCAW", "--ckpt_path=last", *quick])
    assert cli.datamodule.image_size == 32
    # A model trained on real images is not scored on generated ones.
    raw = torch.load(best, weights_only=True)
    raw["datamodule_hyper_parameters"]["dataset"] = "busi"
    torch.save(raw, tmp_path / "busi.ckpt")
    with pytest.raises(CheckpointError, match="trained on busi images but data.dataset is synth"):
        main(["test", demo, *tiny(tmp_path / "c"), f"--ckpt_path={tmp_path / 'busi.ckpt'}"])
    with pytest.raises(CheckpointError, match=r"is a folder; give a \.ckpt file, e\.g\. "):
        main(["test", f"--ckpt_path={run_a}", *quick])
    # Another run's last.ckpt does not continue into a folder holding an earlier run...
    shutil.copytree(run_a, tmp_path / "copy")
    config_a = (run_a / "config.yaml").read_text()
    resume_copy = f"--ckpt_path={tmp_path / 'copy' / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(FileExistsError, match="already holds the checkpoints of an earlier run"):
        main(["fit", demo, *tiny(run_a, epochs=2), resume_copy])
    # ...and a resumed run's data must be its checkpoint's: refused before config.yaml is
    # written over.
    with pytest.raises(CheckpointError, match="data.in_channels is 3 but .*last.ckpt was trained"):
        main(["fit", demo, *tiny(run_a, epochs=2), "--data.in_channels=3", "--ckpt_path=last"])
    assert (run_a / "config.yaml").read_text() == config_a
    # Its own last.ckpt, named by its path, continues the run.
    own = f"--ckpt_path={run_a / 'checkpoints' / 'last.ckpt'}"
    cli = main(["fit", demo, *tiny(run_a, epochs=2), own])
    assert cli.trainer.current_epoch == 2


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--trainer.default_root_dir=FILE", "run folder (trainer.default_root_dir) FILE is not"),
        ("--trainer.max_epochs=-5", "`max_epochs` must be a non-negative integer or -1"),
    ],
)
def test_os_and_lightning_option_errors_are_named_without_a_traceback(
    option: str, message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    import sys

    from semiseg_caw.cli import run

    afile = tmp_path / "afile"
    afile.write_text("")
    argv = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *tiny(tmp_path / "run")]
    argv += [option.replace("FILE", str(afile)), "--trainer.logger=false"]
    monkeypatch.setattr(sys, "argv", ["semiseg-caw", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    assert f"semiseg-caw: error: {message.replace('FILE', str(afile))}" in capsys.readouterr().err


def test_a_model_option_before_its_class_and_a_broken_yaml_file_are_named(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import sys

    from semiseg_caw.cli import run

    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: 3\n bad: [\n")
    demo = f"--config={CONFIGS / 'demo.yaml'}"
    cases = [
        (["--model.init_args.stage1_epochs=1", demo], "--model.init_args.stage1_epochs came "),
        ([demo, "--config", str(broken)], f"config file {broken} is not valid YAML: "),
    ]
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["semiseg-caw", "fit", *args])
        with pytest.raises(SystemExit) as exit_info:
            run()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Union subtypes" not in err
    assert f'in "{broken}", line 3' in err


def test_unavailable_pretrained_weights_are_named_without_jsonargparse_s_wrapping(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import sys

    from semiseg_caw.cli import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and no cached weights on a fresh machine
    argv = ["fit", "--model=ClassElevateSeg", "--model.init_args.pretrained=true"]
    argv += [f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    monkeypatch.setattr(sys, "argv", ["semiseg-caw", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("semiseg-caw: error: could not load pretrained weights for encoder")
    assert "Union subtypes" not in err and "Namespace(" not in err


def test_arguments_given_from_python_do_not_warn_about_sys_argv(tmp_path, monkeypatch) -> None:
    """A notebook's sys.argv holds the kernel's arguments; the CLI's own re-parse adds a
    checkpoint's defaults to sys.argv's: neither is the mistake Lightning warns about."""
    import sys

    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel.json"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["--config", str(CONFIGS / "demo.yaml"), *tiny(tmp_path)], run=False)
    assert not [w for w in caught if "args parameter" in str(w.message)]


def test_the_command_drops_lightning_s_tips_and_torch_s_leafspec_notice(caplog) -> None:
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info
    from torch.utils._pytree import LeafSpec

    from semiseg_caw.cli import quiet_upstream_notices

    quiet_upstream_notices()
    quiet_upstream_notices()  # once more: one filter, not two
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing something")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what pytest sets; the command's filter goes first
        quiet_upstream_notices()
        LeafSpec()
        warnings.warn("other futures still show", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["other futures still show"]
