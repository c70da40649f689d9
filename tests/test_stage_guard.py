"""``fit_stage1`` from Python refuses a root_dir that holds an earlier stage 1's checkpoints,
as the CLI does, unless asked to resume: it would overwrite that run's last.ckpt; and what
cannot work (no auxiliary model, no end, an unknown trainer option) before it trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule, fit_stage1
from semiseg_caw.lit.stages import stage1_checkpoint_dir

TINY = dict(
    accelerator="cpu",
    limit_train_batches=1,
    limit_val_batches=1,
    num_sanity_val_steps=0,
    enable_progress_bar=False,
    enable_model_summary=False,
)


def run_stage1(root: Path, resume: bool = False) -> Path:
    data = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, class_only=6)
    model = SemiSegCAW(num_classes=data.num_classes, aux_encoder="test_resnet")
    return fit_stage1(model, data, root, max_epochs=1, trainer_kwargs=TINY, resume=resume)


def checkpoints_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.ckpt"))}


def test_a_second_stage1_in_one_root_dir_is_refused_unless_resumed(tmp_path: Path) -> None:
    root = tmp_path / "py"
    best = run_stage1(root)
    folder = stage1_checkpoint_dir(root)
    earlier = checkpoints_in(folder)
    assert set(earlier) == {"best-epoch=000.ckpt", "last.ckpt"}
    with pytest.raises(FileExistsError) as refused:
        run_stage1(root)
    message = str(refused.value)
    assert str(root) in message and "earlier stage 1" in message
    assert "resume=True" in message and "root_dir" in message
    assert checkpoints_in(folder) == earlier  # neither overwritten nor joined by a -v1
    # Resuming a finished stage 1 trains nothing again and hands back its best weights.
    assert run_stage1(root, resume=True) == best
    assert set(checkpoints_in(folder)) == set(earlier)


@pytest.mark.parametrize(
    ("model", "epochs", "trainer_kwargs", "error", "message"),
    [
        ("stage1", 1, TINY, TypeError, "trains the auxiliary model of a SemiSegCAW, got Class"),
        ("no-aux", 1, TINY, ValueError, "aux_source is 'none': this SemiSegCAW has no stage 1"),
        ("semiseg", -1, TINY, ValueError, "stage 1 needs a number of epochs >= 1, got -1"),
        ("semiseg", 1, {"limit_train_batch": 2}, ValueError, r"\['limit_train_batch'\]"),
    ],
)
def test_stage1_that_cannot_work_is_refused_before_it_trains(
    model: str, epochs: int, trainer_kwargs: dict, error: type, message: str, tmp_path: Path
) -> None:
    data = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, class_only=6)
    built = {
        "stage1": lambda: ClassElevateSeg(encoder="test_resnet"),
        "no-aux": lambda: SemiSegCAW(aux_source="none"),
        "semiseg": lambda: SemiSegCAW(aux_encoder="test_resnet"),
    }[model]()
    with pytest.raises(error, match=message):
        fit_stage1(built, data, tmp_path, max_epochs=epochs, trainer_kwargs=trainer_kwargs)
    assert not (tmp_path / "stage1").exists()  # nothing trained, nothing written


@pytest.mark.parametrize(("mode", "offline"), [(None, True), ("online", False)])
def test_stage1_logs_to_wandb_offline_unless_told_otherwise(
    mode: str | None, offline: bool, tmp_path: Path, monkeypatch
) -> None:
    # As the CLI: no account needed (online, wandb would ask for an API key here). The
    # logger's settings are checked: W&B itself keeps process-wide state from earlier tests.
    from semiseg_caw.lit import stages

    made: list[dict] = []

    def recorded(**kwargs):
        made.append(kwargs)
        return stages.CSVLogger(kwargs["save_dir"])  # no W&B run from a test

    monkeypatch.setattr(stages, "WandbLogger", recorded)
    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    data = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, class_only=6)
    model = SemiSegCAW(num_classes=data.num_classes, aux_encoder="test_resnet")
    fit_stage1(model, data, tmp_path / "run", max_epochs=1, trainer_kwargs=TINY, wandb=True)
    assert [m["offline"] for m in made] == [offline]


def test_evaluating_a_semiseg_caw_without_stage1_weights_warns(tmp_path: Path) -> None:
    import lightning as L

    data = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, class_only=6)
    model = SemiSegCAW(num_classes=data.num_classes, aux_encoder="test_resnet")
    trainer = L.Trainer(logger=False, default_root_dir=tmp_path, limit_test_batches=1, **TINY)
    with pytest.warns(UserWarning, match="testing a SemiSegCAW whose auxiliary ClassElevateSeg"):
        trainer.test(model, datamodule=data)
