"""What cannot work stops a run before it trains, naming the problem: a bad stage-1
checkpoint, a misspelt, mistyped or unusable option, a split without the images it needs,
an unwritable folder, evaluating without trained weights; and no command writes over an
earlier run's files."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from fit_args import eval_args, fit_args

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule
from semiseg_caw.checkpoints import CheckpointError, load_submodule
from semiseg_caw.cli import main

# -- checkpoints -------------------------------------------------------------------------


class Foreign:
    """An object that ``torch.load(weights_only=True)`` must refuse to unpickle."""


def bad_checkpoint(kind: str, folder: Path, good: Path) -> tuple[Path, str]:
    """A stage-1 checkpoint that cannot be used, and the reason the error must give."""
    path = folder / f"{kind}.ckpt"
    if kind == "missing":
        return path, "does not exist"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "could not be read"
    if kind == "not_torch":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
        return path, "could not be read"
    if kind == "pickled_code":
        torch.save({"state_dict": {}, "payload": Foreign()}, path)
        return path, "could not be read"
    if kind == "no_state_dict":
        torch.save({"weights": torch.zeros(3)}, path)
        return path, "not a Lightning checkpoint"
    if kind == "stage2":
        model = SemiSegCAW(aux_encoder="resnet10t")
        torch.save({"state_dict": model.state_dict()}, path)
        return path, "does not fit the configured model"
    if kind == "three_channels":
        module = ClassElevateSeg(num_classes=2, in_channels=3, encoder="resnet10t")
        torch.save({"state_dict": module.state_dict()}, path)
        return path, "other shapes than the configured model"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "truncated",
        "not_torch",
        "pickled_code",
        "no_state_dict",
        "stage2",
        "three_channels",
    ],
)
def test_bad_stage1_checkpoint_stops_the_run_before_training(kind, tmp_path, stage1_ckpt):
    path, reason = bad_checkpoint(kind, tmp_path, stage1_ckpt)
    root = tmp_path / "run"
    with pytest.raises(CheckpointError, match=reason) as info:
        main(fit_args(root, f"--model.init_args.stage1_checkpoint={path}"))
    assert str(path) in str(info.value)
    assert not list(root.rglob("*.ckpt")) and not (root / "stage1").exists()


def test_a_checkpoint_in_torchs_older_file_format_loads_as_well(tmp_path, stage1_ckpt):
    """Checkpoints are read memory-mapped, which torch allows only for its zip format; a file
    in the format before it (torch < 1.6) is read whole instead, not refused."""
    saved = torch.load(stage1_ckpt, weights_only=True)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(saved, legacy, _use_new_zipfile_serialization=False)
    for path in (stage1_ckpt, legacy):
        module = ClassElevateSeg(num_classes=2, encoder="resnet10t")
        load_submodule(module, path, prefix="")
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved["state_dict"][key]), (path.name, key)


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--data.batchsize=4", r"unrecognized arguments: --data\.batchsize=4"),
        (
            "--data.batch_size=four",
            r'key "data\.batch_size":\s+Expected a <class .int.>\. Got value: four',
        ),
        ("--model.init_args.lr=fast", r'key "lr":\s+Expected a <class .float.>\. Got value: fast'),
        (
            "--model.init_args.backbone=resnet",
            r'key "backbone":\s+Expected .*unext.*Got value: resnet',
        ),
    ],
)
def test_misspelt_or_mistyped_option_names_the_key(option, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(fit_args(tmp_path, option))
    assert re.search(message, capsys.readouterr().err)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.init_args.stage1_epochs=0", r"stage1_epochs must be >= 1 \(or null\), got 0"),
        ("--data.image_size=48", r"data.image_size must be a multiple of 32, got 48 \(e.g. 32\)"),
    ],
)
def test_a_value_no_run_can_use_stops_it_before_training(option, message, tmp_path, stage1_ckpt):
    s1 = f"--model.init_args.stage1_checkpoint={stage1_ckpt}"
    with pytest.raises(ValueError, match=message):
        main(fit_args(tmp_path, s1, option))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_label_budget_larger_than_the_train_split_is_refused(tmp_path, stage1_ckpt):
    s1 = f"--model.init_args.stage1_checkpoint={stage1_ckpt}"
    with pytest.raises(ValueError, match=r"asks for 500 class-only images .* only 28 images"):
        main(fit_args(tmp_path, s1, "--data.class_only=500"))
    assert not list(tmp_path.rglob("*.ckpt"))


def write_split(tmp_path: Path, move: str) -> Path:
    """The in-memory split of the synthetic data, with some val images moved to train."""
    dm = SemiSegDataModule(image_size=32, synthetic_samples=40)
    dm.setup("fit")
    split = {name: [s.id for s in dm.splits[name]] for name in dm.splits}
    labels = {s.id: s.label for name in dm.splits for s in dm.splits[name]}
    gone = split["val"] if move == "all" else [i for i in split["val"] if labels[i] == 1]
    split["train"] += gone
    split["val"] = [i for i in split["val"] if i not in gone]
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    return path


@pytest.mark.parametrize(
    ("move", "message"),
    [
        ("all", r"the val split is empty \(train: 32 \(benign 16, malignant 16\); val: 0; test: 8"),
        ("malignant", r"the val split has no image of class malignant \(.*val: 2 \(benign 2, "),
    ],
)
def test_empty_split_or_missing_class_is_refused_with_the_numbers(move, message, tmp_path):
    split = write_split(tmp_path, move)
    dm = SemiSegDataModule(image_size=32, synthetic_samples=40, split_file=str(split))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setup warns of an empty split
        dm.setup("fit")
    dm.train_dataloader()
    with pytest.raises(ValueError, match=message):
        dm.val_dataloader()


# -- output folders ----------------------------------------------------------------------


def test_unwritable_run_folder_fails_before_any_training(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    with pytest.raises(PermissionError, match=r"run folder .*afile/out is not writable"):
        main(fit_args(blocker / "out", "--model.init_args.stage1_epochs=1"))
    assert blocker.read_text() == "a file, not a folder"
    assert list(tmp_path.iterdir()) == [blocker]


def test_unwritable_checkpoint_folder_fails_before_any_training(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=r"checkpoint folder .*afile/ckpts"):
        main(fit_args(tmp_path / "run", f"--checkpoint.dirpath={blocker / 'ckpts'}"))
    assert not (tmp_path / "run" / "stage1").exists()


def test_a_new_run_never_overwrites_an_earlier_runs_files(tmp_path, stage1_ckpt):
    s1 = f"--model.init_args.stage1_checkpoint={stage1_ckpt}"
    main(fit_args(tmp_path, s1, epochs=1))
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = {p: p.read_bytes() for p in (last, tmp_path / "config.yaml")}
    # Another fit in the same folder is refused, before it reads any data ...
    with pytest.raises(FileExistsError, match=r"already holds the checkpoints of an earlier run"):
        main(fit_args(tmp_path, s1, "--config=configs/baselines/full.yaml"))
    # ... and test/predict keep their config beside the run's, not over it.
    main(eval_args("test", tmp_path, f"--ckpt_path={last}"))
    assert {p: p.read_bytes() for p in before} == before
    first_test = (tmp_path / "config-test.yaml").read_bytes()
    # A second test keeps the first one's record.
    main(eval_args("test", tmp_path, f"--ckpt_path={last}", "--model.init_args.flip_tta=true"))
    assert (tmp_path / "config-test.yaml").read_bytes() == first_test
    assert "flip_tta: true" in (tmp_path / "config-test-2.yaml").read_text()
    # Resuming (the finished run: nothing left to train) is what `--ckpt_path last` is for.
    main(fit_args(tmp_path, s1, "--ckpt_path=last", epochs=1))


def test_evaluating_needs_trained_weights_that_fit_the_data(tmp_path, stage1_ckpt, capsys):
    s1 = f"--model.init_args.stage1_checkpoint={stage1_ckpt}"
    main(fit_args(tmp_path, s1, epochs=1))
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    with pytest.raises(CheckpointError, match=r"`semiseg-caw test` needs --ckpt_path"):
        main(eval_args("test", tmp_path))
    with pytest.raises(CheckpointError, match=r"--ckpt_path last: no last\*\.ckpt in .*other"):
        main(
            eval_args(
                "validate",
                tmp_path,
                f"--trainer.default_root_dir={tmp_path / 'other'}",
                "--ckpt_path=last",
            )
        )
    with pytest.raises(CheckpointError, match=r"data.in_channels is 3 but .* trained with 1"):
        main(eval_args("test", tmp_path, "--data.in_channels=3", f"--ckpt_path={best}"))
    with pytest.raises(CheckpointError, match=r"the data has 3 classes .* trained with 2"):
        main(eval_args("test", tmp_path, "--data.include_normal=true", f"--ckpt_path={best}"))
    with pytest.warns(UserWarning, match=r"data.image_size is 64 but .* trained at 32 px"):
        main(eval_args("test", tmp_path, "--data.image_size=64", f"--ckpt_path={best}"))
    # A best checkpoint has no optimiser state: runs resume from last.ckpt.
    with pytest.raises(SystemExit):
        main(fit_args(tmp_path, s1, f"--ckpt_path={best}"))
    assert "holds weights only (a best checkpoint)" in capsys.readouterr().err


def test_evaluating_a_run_s_checkpoint_keeps_its_records_in_the_run_folder(
    tmp_path, stage1_ckpt, monkeypatch
):
    """`test --ckpt_path <run>/checkpoints/x.ckpt` without a root folder: the config record
    goes beside the run's, not into the working directory."""
    run = tmp_path / "run"
    main(fit_args(run, f"--model.init_args.stage1_checkpoint={stage1_ckpt}", epochs=1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    last = run / "checkpoints" / "last.ckpt"
    main(
        ["test", f"--ckpt_path={last}", "--trainer.limit_test_batches=1", "--trainer.logger=false"]
    )
    assert (run / "config-test.yaml").is_file() and not list(elsewhere.iterdir())
    # A root folder given on the command line wins.
    main(["test", f"--ckpt_path={last}", "--trainer.limit_test_batches=1",
          "--trainer.logger=false", f"--trainer.default_root_dir={elsewhere}"])  # fmt: skip
    assert (elsewhere / "config-test.yaml").is_file()
