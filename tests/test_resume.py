"""A killed or stopped run loses nothing: resumed with ``--ckpt_path last`` it trains to
the uninterrupted run's result (stage 1 or 2), says how to continue after SIGTERM or Ctrl-C,
refuses what it cannot continue, and a checkpoint write cut short keeps the previous file."""

from __future__ import annotations

import os
import random
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
from fit_args import fit_args, read, small_data, small_model
from lightning.pytorch.callbacks import Callback

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule
from semiseg_caw.checkpoints import CheckpointError, EpochSeeding, epoch_seed
from semiseg_caw.cli import main

REPO = Path(__file__).resolve().parents[1]


class KillAfter(Callback):
    """Kills its own process (SIGKILL: no clean-up of any kind) after a given batch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def spawn(args: list[str], tmp: Path) -> subprocess.Popen:
    """``python -m semiseg_caw ARGS``, its temporary files in ``tmp``: killed, it cannot
    remove them (W&B makes two folders on import)."""
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
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


def checkpoint_state(ckpt: dict) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return state


# -- a run killed in stage 2 resumes to the uninterrupted result ----------------------


def test_killed_stage2_run_resumes_to_the_uninterrupted_result(tmp_path, stage1_ckpt):
    # Stage 2 for 2 epochs from a given stage-1 model, once whole and once killed by
    # SIGKILL in its second epoch, after the first epoch's last.ckpt was written.
    kill = '{"class_path": "test_resume.KillAfter", "init_args": {"epoch": 1, "batch": 0}}'
    stage1 = f"--model.init_args.stage1_checkpoint={stage1_ckpt}"
    killed = spawn(fit_args(tmp_path / "b", stage1, f"--trainer.callbacks+={kill}"), tmp_path)
    main(fit_args(tmp_path / "a", stage1))  # meanwhile, the whole run in this process
    code, output = finish(killed)
    assert code == -signal.SIGKILL, output[-3000:]
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert read(last)["epoch"] == 0

    # Resumed without the stage-1 file: only the stage-2 checkpoint can hold the
    # auxiliary model, and stage 1 must not be trained again.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(fit_args(tmp_path / "b", "--ckpt_path=last"))
    assert not [w for w in caught if "is not empty" in str(w.message)]  # its own folder
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
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="min_interval_s"):
            LastCheckpoint(tmp_path, min_interval_s=bad)


def test_epoch_seed_depends_on_seed_and_epoch_only():
    # The same in every process and on every machine: a resumed run draws what the
    # uninterrupted one drew (numpy's SeedSequence is stable across versions).
    assert epoch_seed(3, 1) == 457190280
    assert len({epoch_seed(3, 0), epoch_seed(3, 1), epoch_seed(4, 0)}) == 3


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


# -- resuming: stage 1, the run folder, what cannot be continued -------------------------


def test_resume_last_before_stage2_saved_anything_trains_stage1_first(tmp_path):
    # What a job script that always passes `--ckpt_path last` meets on its first start,
    # or after a kill during stage 1: no stage-2 checkpoint, so stage 1 must run first.
    stage1 = "--model.init_args.stage1_epochs=1"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=1))
    said = [str(w.message) for w in caught if "last" in str(w.message)]
    # Where it looked, not Lightning's hint to set ModelCheckpoint(save_last=True).
    assert said == [
        f"--ckpt_path last: no last.ckpt in {tmp_path / 'checkpoints'} nor in "
        f"{tmp_path / 'stage1' / 'checkpoints'}: this fit starts a new run"
    ]
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=1))
    assert not [w for w in caught if "is not empty" in str(w.message)]  # stage 1's folder
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


def test_resuming_with_fewer_epochs_than_trained_says_what_to_give(tmp_path):
    stage1 = "--model.init_args.stage1_epochs=1"
    main(fit_args(tmp_path, stage1, epochs=3))
    with pytest.raises(ValueError, match=r"written in epoch 3, more than --trainer.max_epochs=1"):
        main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=1))
    main(fit_args(tmp_path, stage1, "--ckpt_path=last", epochs=3))  # as many: nothing left


# -- stopped by a signal ----------------------------------------------------------------


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


# -- checkpoint writes ------------------------------------------------------------------


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
