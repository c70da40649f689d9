"""``fit_stage1`` from Python refuses a root_dir that holds an earlier stage 1's checkpoints,
as the CLI does, unless asked to resume: it would overwrite that run's last.ckpt."""

from __future__ import annotations

from pathlib import Path

import pytest

from semiseg_caw import SemiSegCAW, SemiSegDataModule, fit_stage1
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
