"""Stage 1 runs under the trainer settings of the fit it belongs to (``stages.INHERITED``):
how often it validates, and a debugging run's one batch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from semiseg_caw import SemiSegCAW, SemiSegDataModule, fit_stage1

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


def stage1(tmp_path: Path, **trainer_kwargs) -> tuple[SemiSegCAW, Path | None, dict]:
    """A stage 1 of 2 epochs under ``trainer_kwargs``: the model, the returned checkpoint
    and the auxiliary model's weights before it."""
    data = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, class_only=6)
    model = SemiSegCAW(num_classes=data.num_classes, aux_encoder="test_resnet")
    before = {k: v.clone() for k, v in model.net.aux_model.state_dict().items()}
    kwargs = {**QUIET, **trainer_kwargs}
    best = fit_stage1(model, data, tmp_path, max_epochs=2, trainer_kwargs=kwargs)
    return model, best, before


def test_stage1_validates_as_often_as_stage2_is_told_to(tmp_path: Path) -> None:
    stage1(
        tmp_path,
        log_every_n_steps=1,
        limit_train_batches=4,
        limit_val_batches=1,
        val_check_interval=0.5,
    )
    with open(tmp_path / "stage1" / "logs" / "version_0" / "metrics.csv") as handle:
        validated = [row["step"] for row in csv.DictReader(handle) if row.get("val/dice")]
    assert validated == ["1", "3", "5", "7"]  # twice in each of 2 epochs, not once


def test_a_fast_dev_run_hands_its_one_step_over_in_memory(tmp_path: Path) -> None:
    model, best, before = stage1(tmp_path, fast_dev_run=1)
    assert best is None and model.stage1_loaded  # no checkpoint written, weights handed over
    after = model.net.aux_model.state_dict()
    assert not all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(tmp_path.rglob("*.ckpt"))


def test_a_run_without_checkpoints_hands_stage1_s_final_weights_over(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="its final weights, not its best on validation"):
        model, best, before = stage1(
            tmp_path, enable_checkpointing=False, limit_train_batches=1, limit_val_batches=1
        )
    assert best is None and model.stage1_loaded
    after = model.net.aux_model.state_dict()
    assert not all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(tmp_path.rglob("*.ckpt"))
