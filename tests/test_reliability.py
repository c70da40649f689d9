"""Reliability (issue 7): a killed run resumes exactly, bad checkpoints and configurations
stop a run before it trains, non-finite losses never reach the weights, and a run that
cannot write fails at its start."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from fit_args import TINY_DATA, quick_trainer
from lightning.pytorch.callbacks import Callback

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule
from semiseg_caw.checkpoints import CheckpointError, EpochSeeding, epoch_seed
from semiseg_caw.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL_AUX = "--model.init_args.aux_encoder=resnet10t"


class KillAfter(Callback):
    """Kills its own process (SIGKILL: no clean-up of any kind) after a given batch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def fit_args(root: Path, *extra: str, epochs: int = 2) -> list[str]:
    """A stage-2 run of seconds: 2 batches of 4 images of 32 x 32 per epoch."""
    return [
        "fit",
        "--seed_everything=3",
        "--model=semiseg_caw.SemiSegCAW",
        SMALL_AUX,
        *TINY_DATA,
        *quick_trainer(epochs),
        "--trainer.deterministic=true",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        *extra,
    ]


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory) -> Path:
    """An (untrained) ClassElevateSeg checkpoint that fits ``fit_args``' model."""
    path = tmp_path_factory.mktemp("stage1") / "stage1.ckpt"
    torch.manual_seed(0)
    module = ClassElevateSeg(num_classes=2, encoder="resnet10t")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


# -- 1. resume after a kill ---------------------------------------------------------------


def spawn(args: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        "OMP_NUM_THREADS": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "semiseg_caw", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_state(ckpt: dict) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return state


def test_killed_stage2_run_resumes_to_the_uninterrupted_result(tmp_path, stage1_ckpt):
    # Stage 2 for 2 epochs from a given stage-1 model, once whole and once killed by
    # SIGKILL in its second epoch, after the first epoch's last.ckpt was written.
    kill = '{"class_path": "test_reliability.KillAfter", "init_args": {"epoch": 1, "batch": 0}}'
    stage1 = f"--model.init_args.stage1_checkpoint={stage1_ckpt}"
    killed = spawn(fit_args(tmp_path / "b", stage1, f"--trainer.callbacks+={kill}"))
    main(fit_args(tmp_path / "a", stage1))  # meanwhile, the whole run in this process
    code, output = finish(killed)
    assert code == -signal.SIGKILL, output[-3000:]
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert read(last)["epoch"] == 0

    # Resumed without the stage-1 file: only the stage-2 checkpoint can hold the
    # auxiliary model, and stage 1 must not be trained again.
    cli = main(fit_args(tmp_path / "b", "--ckpt_path=last"))
    assert cli.trainer.ckpt_path == str(last)
    assert not (tmp_path / "b" / "stage1").exists()

    resumed, uninterrupted = read(last), read(tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == uninterrupted["epoch"] == 1
    assert resumed["global_step"] == uninterrupted["global_step"] == 4
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    ours, theirs = checkpoint_state(resumed), checkpoint_state(uninterrupted)
    for score in ("current_score", "best_model_score"):
        assert float(ours[score]) == pytest.approx(float(theirs[score]), abs=1e-6)
    # ... and it kept fine-tuning the auxiliary model and training the WGM weights.
    initial = {k[len("net.") :]: v for k, v in read(stage1_ckpt)["state_dict"].items()}
    prefix = "net.aux_model."
    aux = {k[len(prefix) :]: v for k, v in resumed["state_dict"].items() if k.startswith(prefix)}
    assert set(aux) <= set(initial)
    assert any(not torch.equal(v, initial[k]) for k, v in aux.items() if v.is_floating_point())
    log_scales = resumed["state_dict"]["weighting.log_scales"]
    assert not torch.equal(log_scales, torch.zeros_like(log_scales))


@pytest.mark.parametrize(("interval", "written"), [(0.0, [0, 1, 2]), (3600.0, [0, 2])])
def test_last_checkpoint_is_the_final_epoch_though_validation_stopped_improving(
    interval, written, tmp_path, make_trainer
):
    # lr ~0: validation Dice never improves after epoch 0, so Lightning's own save_last
    # beside the best checkpoint would leave last.ckpt at epoch 0 (resuming would repeat
    # epochs 1 and 2). LastCheckpoint writes every epoch at most every `interval` seconds,
    # and the final one always.
    from lightning.pytorch.callbacks import ModelCheckpoint

    from semiseg_caw.checkpoints import LastCheckpoint

    best = ModelCheckpoint(tmp_path, filename="best-{epoch}", monitor="val/dice", mode="max")
    last = LastCheckpoint(tmp_path, min_interval_s=interval)
    epochs = []
    save = last._save_checkpoint
    last._save_checkpoint = lambda trainer, path: (
        epochs.append(trainer.current_epoch),
        save(trainer, path),
    )
    trainer = make_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[best, last])
    L.seed_everything(0)
    trainer.fit(small_model(lr=1e-12, min_lr=0.0), datamodule=small_data())
    assert epochs == written
    assert read(tmp_path / "last.ckpt")["epoch"] == 2
    assert [p.name for p in tmp_path.glob("best-*.ckpt")] == ["best-epoch=0.ckpt"]
    assert trainer.checkpoint_callback is best  # `ckpt_path="best"` still means the best
    with pytest.raises(ValueError, match="min_interval_s"):
        LastCheckpoint(tmp_path, min_interval_s=-1)


def test_epoch_seed_depends_on_seed_and_epoch_only():
    # The same in every process and on every machine: a resumed run draws what the
    # uninterrupted one drew (numpy's SeedSequence is stable across versions).
    assert epoch_seed(3, 1) == 457190280
    assert len({epoch_seed(3, 0), epoch_seed(3, 1), epoch_seed(4, 0)}) == 3


# -- 2. checkpoints -------------------------------------------------------------------------


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


# -- 3. numerical faults --------------------------------------------------------------------


class Snapshots(Callback):
    """The module's whole state (parameters and buffers) before and after each batch."""

    def __init__(self) -> None:
        self.before: list[dict] = []
        self.after: list[dict] = []

    @staticmethod
    def _copy(module) -> dict:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(self._copy(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(self._copy(pl_module))


def poison(model: SemiSegCAW, bad: dict[int, str]) -> None:
    """Make the loss of the given calls non-finite: ``nan``/``inf`` in a loss term, or
    ``image``: NaN pixels, which also reach the BatchNorm statistics."""
    calls = iter(range(10**6))
    terms = model.loss_terms

    def loss_terms(batch):
        kind = bad.get(next(calls))
        if kind == "image":
            batch = {**batch, "image": batch["image"].clone()}
            batch["image"][0, :, :4, :4] = float("nan")
        out = terms(batch)
        if kind in ("nan", "inf"):
            out["bce"] = out["bce"] * float(kind)
        return out

    model.loss_terms = loss_terms


def small_model(**kwargs) -> SemiSegCAW:
    return SemiSegCAW(aux_source="none", loss_terms=["bce", "dice", "ce"], **kwargs)


def small_data() -> SemiSegDataModule:
    return SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, augment=False)


# Two guards: on the device with fused AdamW (the default: no host sync per step; the count
# is read on logging steps and at the end of an epoch), on the host with gradient clipping
# (which needs the foreach optimiser; every loss is checked as it comes).
GUARDS = {"device": {}, "host": {"gradient_clip_val": 1.0}}


@pytest.mark.parametrize("guard", GUARDS)
def test_non_finite_steps_are_skipped_counted_and_checkpointed(guard, tmp_path, make_trainer):
    L.seed_everything(0)
    model = small_model()
    poison(model, {1: "nan", 2: "image", 3: "inf"})
    snapshots = Snapshots()
    trainer = make_trainer(
        limit_train_batches=5, limit_val_batches=0, callbacks=[snapshots], **GUARDS[guard]
    )
    with pytest.warns(RuntimeWarning, match="non-finite training loss") as caught:
        trainer.fit(model, datamodule=small_data())
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert "(3/20 allowed)" in messages[-1]
    if guard == "device":  # read once, at the end of the epoch
        assert messages == [
            "3 non-finite training loss(es) by global step 5; those steps were skipped "
            "(3/20 allowed)"
        ]
    else:
        assert len(messages) == 3
    assert model.bad_steps == 3
    for step, (before, after) in enumerate(zip(snapshots.before, snapshots.after, strict=True)):
        unchanged = all(torch.equal(before[k], after[k]) for k in before if "num_batches" not in k)
        assert unchanged == (step in (1, 2, 3)), step  # good steps do train
        assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    # The count is part of the checkpoint, so a resumed run goes on counting.
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert read(tmp_path / "m.ckpt")["bad_steps"] == 3
    restored = small_model()
    restored.on_load_checkpoint(read(tmp_path / "m.ckpt"))
    assert restored.bad_steps == 3


def test_guarded_buffers_follow_train_and_eval_and_leave_a_frozen_aux_model_out():
    model = SemiSegCAW(aux_mode="frozen").train()
    aux = {id(b) for b in model.net.aux_model.buffers()}
    guarded = model._step_buffers()
    assert guarded and not aux & {id(b) for b in guarded}
    assert model.eval()._step_buffers() == []  # nothing trains in eval mode
    assert len(model.train()._step_buffers()) == len(guarded)
    model.to(torch.float64)  # .to() replaces buffer tensors: the new ones are guarded
    after = [b for b in model._step_buffers() if b.is_floating_point()]
    assert after and len(model._step_buffers()) == len(guarded)
    assert all(b.dtype == torch.float64 for b in after)


@pytest.mark.parametrize(("guard", "count"), [("device", 4), ("host", 3)])
def test_too_many_non_finite_steps_stop_training_with_a_clear_message(guard, count, make_trainer):
    L.seed_everything(0)
    model = small_model(max_bad_steps=2)
    poison(model, dict.fromkeys(range(10), "nan"))
    stop = rf"\({count}/2 allowed\)\. Stopping: lower the learning"
    trainer = make_trainer(
        limit_train_batches=5, limit_val_batches=0, log_every_n_steps=4, **GUARDS[guard]
    )
    with pytest.raises(FloatingPointError, match=stop), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the host guard warns before it stops
        trainer.fit(model, datamodule=small_data())
    assert model.bad_steps == count  # the device count is read on the 4th step, a logging one


# -- 5. bad configuration -------------------------------------------------------------------


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


# -- 6. output safety -----------------------------------------------------------------------


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


def eval_args(command: str, root: Path, *extra: str) -> list[str]:
    """``command`` (validate, test or predict) with ``fit_args``' model and data options."""
    options = [a for a in fit_args(root)[1:] if not a.startswith(("--trainer.max", "--seed"))]
    return [command, *options, "--trainer.limit_test_batches=1", *extra]


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


def test_every_random_stream_is_reseeded_per_epoch(make_trainer):
    # The mechanism behind the exact resume, in-process: two epochs' draws depend on
    # (seed, epoch) and not on what happened before.
    class Draws(Callback):
        def __init__(self) -> None:
            self.draws: list[tuple] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                legacy = np.random.rand()  # noqa: NPY002 (the stream seed_everything seeds)
                self.draws.append((torch.rand(1).item(), legacy, tuple(batch["id"])))

    class Perturb(Callback):  # extra draws after epoch 0: a history that differs
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            torch.rand(7)
            np.random.rand(3)  # noqa: NPY002
            random.random()

    def run(perturb: bool) -> list[tuple]:
        L.seed_everything(5)
        draws = Draws()
        trainer = make_trainer(
            limit_train_batches=2,
            limit_val_batches=0,
            max_epochs=2,
            callbacks=[EpochSeeding(), draws, *([Perturb()] if perturb else [])],
        )
        dm = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40)
        trainer.fit(small_model(), datamodule=dm)
        return draws.draws

    plain, perturbed = run(False), run(True)
    assert perturbed == plain  # epoch 1 draws the same, whatever epoch 0 drew
    assert plain[0] != plain[1]  # and not epoch 0's draws again


def test_resume_last_before_stage2_saved_anything_trains_stage1_first(tmp_path):
    # What a job script that always passes `--ckpt_path last` meets on its first start,
    # or after a kill during stage 1: no stage-2 checkpoint, so stage 1 must run first.
    stage1 = "--model.init_args.stage1_epochs=1"
    cli = main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=1))
    assert cli.trainer.ckpt_path is None  # stage 2 started afresh
    assert cli.model.stage1_loaded
    assert cli.model.hparams.stage1_checkpoint.startswith(str(tmp_path / "stage1"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_run_killed_in_stage1_continues_stage1(tmp_path, monkeypatch):
    """`--ckpt_path last` after a kill in stage 1: stage 1 goes on from its own last
    checkpoint instead of starting over, and a stage 1 that had finished is not rerun."""
    epochs_run = []
    original = ClassElevateSeg.on_train_epoch_start
    monkeypatch.setattr(
        ClassElevateSeg,
        "on_train_epoch_start",
        lambda self: (epochs_run.append(self.current_epoch), original(self)),
    )
    # The "killed" run: stage 1 got through its first epoch only (of two).
    with pytest.warns(UserWarning, match="max_epochs is 0: this fit trains no epoch"):
        main(fit_args(tmp_path, "--model.init_args.stage1_epochs=1", epochs=0))
    assert epochs_run == [0] and not list((tmp_path / "checkpoints").glob("*.ckpt"))
    epochs_run.clear()
    config = (tmp_path / "config.yaml").read_text()
    stage1 = "--model.init_args.stage1_epochs=2"
    # Its data must be what stage 1 trained on, as a resumed stage 2's must.
    with pytest.raises(CheckpointError, match=r"data.image_size is 64 but .* trained at 32 px"):
        main(fit_args(tmp_path, stage1, "--ckpt_path=last", "--data.image_size=64", epochs=1))
    assert epochs_run == []
    cli = main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=1))
    assert epochs_run == [1]  # the second epoch only
    # The run's record is kept; the resumed fit's config goes beside it.
    assert (tmp_path / "config.yaml").read_text() == config
    assert "max_epochs: 1" in (tmp_path / "config-resume.yaml").read_text()
    assert cli.model.stage1_loaded and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # Killed after stage 1 finished but before stage 2 saved: stage 1 is not trained again.
    for written in (tmp_path / "checkpoints").glob("*.ckpt"):
        written.unlink()
    epochs_run.clear()
    cli = main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=1))
    assert epochs_run == []
    assert cli.model.stage1_loaded


def test_resuming_keeps_the_run_s_files_and_refuses_what_it_cannot_continue(tmp_path):
    """A resumed fit keeps the continued run's config; a second fit in a folder while one
    runs, best checkpoints without a last.ckpt, and an unreadable stage-1 last.ckpt are
    refused before anything is trained or written."""
    import shutil

    from semiseg_caw.run_folder import lock_run_folder

    stage1 = "--model.init_args.stage1_epochs=1"
    main(fit_args(tmp_path, stage1, epochs=1))
    config = (tmp_path / "config.yaml").read_text()
    main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=2))
    assert (tmp_path / "config.yaml").read_text() == config
    assert "max_epochs: 2" in (tmp_path / "config-resume.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"data.image_size is 64 but .* trained at 32 px"):
        main(fit_args(tmp_path, stage1, "--ckpt_path=last", "--data.image_size=64", epochs=3))
    # Another fit while one runs in the folder (the lock is what a running fit holds).
    held = lock_run_folder(tmp_path)
    try:
        with pytest.raises(FileExistsError, match="another fit is running in"):
            main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=3))
    finally:
        os.close(held)
    # Best checkpoints but no last.ckpt: not trained over from scratch beside them.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "checkpoints", copy / "checkpoints")
    shutil.copytree(tmp_path / "stage1", copy / "stage1")
    (copy / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"holds best-epoch=\d+\.ckpt but no last\.ckpt"):
        main(fit_args(copy, stage1, "--ckpt_path=last", epochs=3))
    # Killed between the stages, its stage-1 last.ckpt cut short: named, not a traceback.
    for written in (copy / "checkpoints").glob("*.ckpt"):
        written.unlink()
    last1 = copy / "stage1" / "checkpoints" / "last.ckpt"
    last1.write_bytes(last1.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last\.ckpt could not be read"):
        main(fit_args(copy, stage1, "--ckpt_path=last", epochs=3))


def test_sigterm_ends_the_command_with_status_143_and_says_how_to_continue(
    tmp_path, monkeypatch, capsys
):
    """Lightning's SIGTERM exit is a SystemExit of status 0: `fit && test` would go on."""
    import sys

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from semiseg_caw.cli import run

    def stopped(self) -> None:
        raise SIGTERMException

    monkeypatch.setattr(SemiSegCAW, "on_train_start", stopped)
    argv = fit_args(tmp_path, "--model.init_args.stage1_epochs=1")
    monkeypatch.setattr(sys, "argv", ["semiseg-caw", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 143
    assert "stopped by SIGTERM; continue the run with --ckpt_path last" in capsys.readouterr().err


def test_ctrl_c_in_a_fit_says_which_epoch_last_ckpt_holds(tmp_path, monkeypatch, capsys):
    def interrupted_in_the_second_epoch(self) -> None:
        if self.current_epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(SemiSegCAW, "on_train_epoch_start", interrupted_in_the_second_epoch)
    with pytest.raises(SystemExit):  # Lightning's exit after a Ctrl-C
        main(fit_args(tmp_path, "--model.init_args.stage1_epochs=1", epochs=3))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (
        f"training stopped in epoch 2 of 3; {last} holds the state after epoch 1: --ckpt_path "
        "last continues from there"
    ) in capsys.readouterr().err


def test_stage1_in_a_fit_keeps_its_last_ckpt_on_the_cli_s_interval(tmp_path, monkeypatch):
    import semiseg_caw.lit.stages as stages

    intervals = []

    class Recording(stages.LastCheckpoint):
        def __init__(self, dirpath, min_interval_s=30.0) -> None:
            intervals.append(min_interval_s)
            super().__init__(dirpath, min_interval_s)

    monkeypatch.setattr(stages, "LastCheckpoint", Recording)
    stage1 = "--model.init_args.stage1_epochs=1"
    main(fit_args(tmp_path, stage1, "--last_checkpoint.min_interval_s=0", epochs=1))
    assert intervals == [0.0]


def test_a_resumed_stage1_whose_recorded_best_is_gone_takes_the_newest_best(tmp_path):
    from semiseg_caw.lit.stages import best_on_disk

    folder = tmp_path / "stage1" / "checkpoints"
    with pytest.raises(FileNotFoundError, match="is gone, and .* holds no other"):
        best_on_disk(tmp_path, "gone.ckpt")
    folder.mkdir(parents=True)
    for epoch in (3, 12):
        (folder / f"best-epoch={epoch:03d}.ckpt").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"best checkpoint old\.ckpt is gone .* best-epoch=012"):
        assert best_on_disk(folder, "old.ckpt") == str(folder / "best-epoch=012.ckpt")


def test_a_resumed_fit_says_that_changed_stage1_settings_are_not_used(tmp_path):
    main(fit_args(tmp_path, "--model.init_args.stage1_epochs=1", epochs=1))
    with pytest.warns(
        UserWarning, match=r"changed stage-1 settings are not used \(stage1_epochs 1 -> 3\)"
    ):
        main(fit_args(tmp_path, "--model.init_args.stage1_epochs=3", "--ckpt_path=last", epochs=2))


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


def test_resuming_with_fewer_epochs_than_trained_says_what_to_give(tmp_path):
    stage1 = "--model.init_args.stage1_epochs=1"
    main(fit_args(tmp_path, stage1, epochs=3))
    with pytest.raises(ValueError, match=r"written in epoch 3, more than --trainer.max_epochs=1"):
        main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=1))
    main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=3))  # as many: nothing left


def test_a_checkpoint_write_killed_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    """Lightning's write is a copy from $TMPDIR where that is another filesystem: a kill
    during it cut last.ckpt short. The write goes beside the file and is renamed in."""
    import semiseg_caw.checkpoints as checkpoints_module
    from semiseg_caw.checkpoints import AtomicCheckpointIO

    io, last = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, last)
    assert torch.load(last, weights_only=True)["epoch"] == 1

    def killed(obj, f) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints_module.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {}, "epoch": 2}, last)
    assert torch.load(last, weights_only=True)["epoch"] == 1  # the previous state, whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    # A part left by a write killed harder (no cleanup ran) goes at the next write.
    monkeypatch.undo()
    (last.parent / ".last.ckpt.x1.partial").write_bytes(b"half")
    io.save_checkpoint({"state_dict": {}, "epoch": 3}, last)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["epoch"] == 3
    # The file and then its folder are flushed: the rename is on disk too.
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.fstat(fd).st_mode) or real_fsync(fd)
    )
    io.save_checkpoint({"state_dict": {}, "epoch": 4}, last)
    assert [stat.S_ISDIR(mode) for mode in synced] == [False, True]


def test_fit_writes_both_stages_checkpoints_atomically(tmp_path, monkeypatch):
    from semiseg_caw.checkpoints import AtomicCheckpointIO

    written = []
    save = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None) -> None:
        written.append(Path(path).relative_to(tmp_path).as_posix())
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    main(fit_args(tmp_path, "--model.init_args.stage1_epochs=1", epochs=1))
    assert "stage1/checkpoints/last.ckpt" in written and "checkpoints/last.ckpt" in written
    assert any(p.startswith("checkpoints/best-") for p in written)
    assert any(p.startswith("stage1/checkpoints/best-") for p in written)
