"""Use from Python: a loaded model's ``evaluate``, the first-batch check of every loop run,
and ``load_from_checkpoint`` on wrong files and misspelt settings."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule
from semiseg_caw.checkpoints import CheckpointError
from semiseg_caw.lit.base import SegmentationTask
from semiseg_caw.lit.batches import EVAL_KEYS, check_batch

MakeTrainer = Callable[..., L.Trainer]  # the ``make_trainer`` fixture of conftest.py
SIZE = 32


def datamodule() -> SemiSegDataModule:
    return SemiSegDataModule(
        dataset="synthetic", image_size=SIZE, batch_size=4, synthetic_samples=40
    )


def semiseg(**kwargs: Any) -> SemiSegCAW:
    return SemiSegCAW(aux_encoder="test_resnet", **kwargs)


def batch(n: int = 4, **changes: Any) -> dict[str, Any]:
    """A good training batch, with ``changes``."""
    generator = torch.Generator().manual_seed(0)
    good = {
        "image": torch.randn(n, 1, SIZE, SIZE, generator=generator),
        "mask": (torch.rand(n, 1, SIZE, SIZE, generator=generator) > 0.5).float(),
        "has_mask": torch.ones(n, dtype=torch.bool),
        "label": torch.arange(n) % 2,
        "has_label": torch.ones(n, dtype=torch.bool),
    }
    return good | changes


def loader(*batches: Any) -> DataLoader:
    """Batches as they are (no collation)."""
    return DataLoader(list(batches), batch_size=None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SemiSegCAW trained for two steps (BatchNorm statistics of its own), saved by Lightning."""
    folder = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0)
    model = semiseg()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no stage-1 weights: not what these tests are about
        trainer.fit(model, datamodule=datamodule())
    path = folder / "model.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


def module_modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed"


def assert_evaluate_is_inference(model: SegmentationTask, reference: SegmentationTask) -> None:
    """``model`` (in training mode) evaluates as ``reference`` in eval mode does, with no
    gradient, and is left in the modes and state it was in."""
    assert model.training
    reference.eval()
    image = batch()["image"]
    with torch.no_grad():
        expected = reference.evaluate({"image": image})
    modes, state = module_modes(model), state_copy(model)

    mask_logits, class_logits = model.evaluate({"image": image})

    assert torch.equal(mask_logits, expected[0])
    assert torch.equal(class_logits, expected[1])
    assert not mask_logits.requires_grad and not class_logits.requires_grad
    assert_same_state(model, state)  # BatchNorm running statistics untouched
    assert module_modes(model) == modes  # handed back in training mode, frozen parts frozen


@pytest.mark.parametrize("settings", [{}, {"flip_tta": True}], ids=["plain", "flip_tta"])
def test_evaluate_of_a_loaded_model_is_inference_and_changes_nothing(
    checkpoint: Path, settings: dict[str, Any]
) -> None:
    model = SemiSegCAW.load_from_checkpoint(checkpoint, weights_only=True, **settings)
    reference = SemiSegCAW.load_from_checkpoint(checkpoint, weights_only=True, **settings)
    assert_evaluate_is_inference(model, reference)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ClassElevateSeg(encoder="test_resnet"),  # dropout before the class layer
        lambda: semiseg(aux_mode="frozen"),  # its auxiliary model stays in eval mode
        lambda: semiseg(aux_source="layercam"),  # LayerCAM needs gradients inside
    ],
    ids=["ClassElevateSeg", "frozen-aux", "layercam"],
)
def test_evaluate_in_training_mode_is_inference_and_changes_nothing(make) -> None:
    torch.manual_seed(0)
    model = make()
    reference = type(model)(**model.hparams)
    reference.load_state_dict(model.state_dict())
    model.train()
    assert_evaluate_is_inference(model, reference)


def test_each_fit_checks_its_first_batch_again(make_trainer: MakeTrainer) -> None:
    model = ClassElevateSeg(encoder="test_resnet")
    make_trainer(limit_train_batches=2).fit(model, datamodule=datamodule())
    bad = batch(mask=batch()["mask"] * 255)
    with pytest.raises(ValueError, match="0/255"):
        make_trainer().fit(model, train_dataloaders=loader(bad))


def test_each_validation_and_test_checks_its_first_batch_again(make_trainer: MakeTrainer) -> None:
    model = ClassElevateSeg(encoder="test_resnet")
    good, bad = batch(), batch(mask=batch()["mask"] * 255)
    make_trainer().validate(model, loader(good), verbose=False)
    with pytest.raises(ValueError, match="0/255"):
        make_trainer().validate(model, loader(bad), verbose=False)
    make_trainer().test(model, loader(good), verbose=False)
    with pytest.raises(ValueError, match="0/255"):
        make_trainer().test(model, loader(bad), verbose=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.randn(2, 1, SIZE, SIZE), "must be a dict"),
        ((torch.randn(2, 1, SIZE, SIZE),), "must be a dict"),
        ({"mask": torch.zeros(2, 1, SIZE, SIZE)}, "lacks image"),
        ({"image": torch.randn(2, 3, SIZE, SIZE)}, r"\(B, 1, H, W\)"),
        ({"image": torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64)}, "float64"),
    ],
    ids=["tensor", "tuple", "no-image", "channels", "float64"],
)
def test_predict_checks_its_first_batch(bad: Any, message: str, make_trainer: MakeTrainer) -> None:
    model = ClassElevateSeg(encoder="test_resnet")
    with pytest.raises(ValueError, match=message):
        make_trainer().predict(model, loader(bad))


def test_predict_needs_the_image_only(make_trainer: MakeTrainer) -> None:
    model = ClassElevateSeg(encoder="test_resnet")
    (out,) = make_trainer().predict(model, loader({"image": torch.randn(2, 1, SIZE, SIZE)}))
    assert out["mask_prob"].shape == (2, 1, SIZE, SIZE)
    assert out["class_prob"].shape == (2, 2)


BAD_BATCHES = {
    "float64-image": (
        {"image": torch.randn(4, 1, SIZE, SIZE, dtype=torch.float64)},
        r"float64.*float32",
    ),
    "float16-image": ({"image": torch.randn(4, 1, SIZE, SIZE).half()}, r"float16.*float32"),
    "int-image": ({"image": torch.zeros(4, 1, SIZE, SIZE, dtype=torch.int64)}, "int64"),
    "float-has_mask": ({"has_mask": torch.ones(4)}, r"has_mask.*bool.*float32"),
    "float-has_label": ({"has_label": torch.ones(4)}, r"has_label.*bool.*float32"),
    "list-has_mask": ({"has_mask": [True] * 4}, r"has_mask.*tensor.*list"),
    "has_mask-of-2": ({"has_mask": torch.full((4,), 2)}, r"has_mask.*0 and 1"),
    "has_mask-shape": ({"has_mask": torch.ones(4, 1, dtype=torch.bool)}, r"has_mask.*\(4,\)"),
    "label-5": ({"label": torch.tensor([0, 1, 5, -1])}, r"label.*5.*num_classes=2"),
    "label--2": ({"label": torch.tensor([0, -2, 1, -1])}, r"label.*-2.*-1"),
    "float-label": ({"label": torch.full((4,), 1.7)}, r"label.*integer.*float32"),
}


@pytest.mark.parametrize("changes, message", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_a_wrong_training_batch_is_named(
    changes: dict[str, Any], message: str, make_trainer: MakeTrainer
) -> None:
    model = ClassElevateSeg(encoder="test_resnet")
    with pytest.raises(ValueError, match=message):
        make_trainer().fit(model, train_dataloaders=loader(batch(**changes)))


def test_a_label_out_of_range_is_named_in_validation(make_trainer: MakeTrainer) -> None:
    model = ClassElevateSeg(encoder="test_resnet", num_classes=3)
    bad = batch(label=torch.tensor([0, 3, 1, -1]))
    with pytest.raises(ValueError, match=r"3.*num_classes=3"):
        make_trainer().validate(model, loader(bad), verbose=False)


def test_integer_flags_and_labels_and_missing_labels_train(make_trainer: MakeTrainer) -> None:
    model = ClassElevateSeg(encoder="test_resnet")
    good = batch(
        has_mask=torch.tensor([1, 1, 0, 1]),
        has_label=torch.tensor([1, 0, 1, 1], dtype=torch.int32),
        label=torch.tensor([0, -1, 1, 1], dtype=torch.int32),
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer()
    trainer.fit(model, train_dataloaders=loader(good))
    # One step taken with a finite loss, and the weights moved (a skipped step leaves them).
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_model_in_float64_takes_float64_images() -> None:
    good = batch(image=torch.randn(4, 1, SIZE, SIZE, dtype=torch.float64))
    check_batch(good, EVAL_KEYS, 1, num_classes=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        check_batch(good, EVAL_KEYS, 1, num_classes=2)


def not_a_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "garbage":
        path.write_bytes(os.urandom(256))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign-dict":
        torch.save({"weights": torch.zeros(2)}, path)
    elif kind == "list":
        torch.save([1, 2], path)
    elif kind == "state-dict-only":
        torch.save({"state_dict": semiseg().state_dict()}, path)
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("garbage", "could not be read"),
        ("empty", "could not be read"),
        ("foreign-dict", "not a Lightning checkpoint"),
        ("list", "not a Lightning checkpoint"),
        ("state-dict-only", "not a Lightning checkpoint.*pytorch-lightning_version"),
        ("missing", "does not exist"),
        ("folder", "is a folder"),
    ],
)
@pytest.mark.parametrize("task", [SemiSegCAW, ClassElevateSeg])
def test_load_from_checkpoint_names_a_file_that_is_no_checkpoint(
    kind: str, message: str, task: type[SegmentationTask], tmp_path: Path
) -> None:
    path = not_a_checkpoint(kind, tmp_path)
    with pytest.raises(CheckpointError, match=message):
        task.load_from_checkpoint(path, weights_only=True)
    with pytest.raises(CheckpointError, match=message):  # Lightning's default weights_only
        task.load_from_checkpoint(str(path))


def test_load_from_checkpoint_refuses_a_misspelt_setting(checkpoint: Path) -> None:
    with pytest.raises(TypeError, match=r"flipp_tta.*did you mean 'flip_tta'"):
        SemiSegCAW.load_from_checkpoint(checkpoint, flipp_tta=True)
    with pytest.raises(TypeError, match="backbone"):  # a SemiSegCAW setting, not stage 1's
        ClassElevateSeg.load_from_checkpoint(checkpoint, backbone="unext")


def test_load_from_checkpoint_keeps_lightnings_options_and_takes_settings(
    checkpoint: Path,
) -> None:
    model = SemiSegCAW.load_from_checkpoint(
        checkpoint,
        map_location="cpu",
        strict=True,
        weights_only=True,
        flip_tta=True,
        keep_largest_lesion=True,
    )
    assert model.hparams.flip_tta and model.hparams.keep_largest_lesion
    trusted = SemiSegCAW.load_from_checkpoint(str(checkpoint), weights_only=False)
    for (name, value), other in zip(
        model.state_dict().items(), trusted.state_dict().values(), strict=True
    ):
        assert torch.equal(value, other), name
    with pytest.raises(TypeError, match="cannot be called on an instance"):
        model.load_from_checkpoint(checkpoint)
