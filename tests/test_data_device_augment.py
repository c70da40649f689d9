"""Batched augmentation on the training device (``augment_on_device``)."""

from __future__ import annotations

import pytest
import torch

from semiseg_caw import SemiSegCAW, SemiSegDataModule
from semiseg_caw.data.device_augment import augment_batch
from semiseg_caw.data.transforms import MEAN, STD

NONE = dict(hflip_p=0.0, affine_p=0.0, brightness_contrast=0.0, noise=0.0)


def lesion_batch(n: int = 6, size: int = 48) -> dict:
    """Images whose bright squares are exactly their masks; a soft map on the same squares."""
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        top, left = 6 + 3 * i, 10 + 2 * i
        mask[i, :, top : top + 16, left : left + 12] = 1
    pixels = 0.1 + 0.8 * mask  # intensities in [0, 1]
    return {
        "image": (pixels - MEAN) / STD,
        "mask": mask,
        "aux_map": 0.9 * mask,
        "id": list("abcdef"),
    }


def test_nothing_drawn_leaves_the_batch_as_it_was() -> None:
    batch = lesion_batch()
    out = augment_batch(batch, **NONE)
    for key in ("image", "mask", "aux_map"):
        torch.testing.assert_close(out[key], batch[key], atol=1e-5, rtol=0)
    assert out["id"] == batch["id"]


def test_a_flip_is_a_flip() -> None:
    batch = lesion_batch()
    out = augment_batch(batch, **{**NONE, "hflip_p": 1.0})
    torch.testing.assert_close(out["image"], batch["image"].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["mask"], batch["mask"].flip(-1), atol=0, rtol=0)


def test_warps_keep_image_mask_and_map_aligned_and_masks_binary() -> None:
    torch.manual_seed(0)
    batch = lesion_batch()
    out = augment_batch(batch, **{**NONE, "affine_p": 1.0, "rotate_limit": 30.0, "hflip_p": 0.5})
    mask = out["mask"]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(mask, batch["mask"])  # it did warp
    bright = (out["image"] * STD + MEAN) > 0.5
    agree = (bright == mask.bool()).float().mean(dim=(1, 2, 3))
    assert (agree > 0.97).all(), agree  # only boundary pixels may differ
    assert ((out["aux_map"] > 0.45) == mask.bool()).float().mean() > 0.97


def test_intensity_changes_stay_in_range_and_are_per_sample() -> None:
    torch.manual_seed(1)
    batch = lesion_batch()
    batch["image"] = batch["image"].expand(-1, 3, -1, -1).clone()  # 3 replicated channels
    out = augment_batch(batch, **{**NONE, "brightness_contrast": 0.4, "noise": 0.3})
    pixels = out["image"] * STD + MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    torch.testing.assert_close(out["mask"], batch["mask"])  # intensity only
    assert torch.equal(out["image"][:, 0], out["image"][:, 2])  # channels stay replicated
    changed = (out["image"] - batch["image"]).abs().mean(dim=(1, 2, 3)) > 1e-4
    assert 0 < changed.sum() < len(changed)  # each sample draws for itself


def test_the_same_seed_draws_the_same_augmentation() -> None:
    batch = lesion_batch()
    torch.manual_seed(5)
    first = augment_batch(batch)
    torch.manual_seed(5)
    again = augment_batch(batch)
    torch.manual_seed(6)
    other = augment_batch(batch)
    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], other["image"])


def test_data_module_augments_training_batches_only_after_transfer(
    make_trainer, monkeypatch
) -> None:
    import semiseg_caw.data.datamodule as datamodule

    calls = []

    def spy(batch):
        calls.append(batch["image"].dtype)  # the loader's uint8 pixels, converted here
        out = augment_batch(batch)
        assert out["image"].dtype == out["mask"].dtype == torch.float32
        return out

    monkeypatch.setattr(datamodule, "augment_batch", spy)
    dm = SemiSegDataModule(
        image_size=32, batch_size=4, synthetic_samples=40, class_only=6, augment_on_device=True
    )
    model = SemiSegCAW(aux_source="none", loss_terms=["bce", "dice", "ce"])
    make_trainer(limit_train_batches=2, limit_val_batches=1).fit(model, datamodule=dm)
    assert calls == [torch.uint8] * 2  # the two training batches, after the transfer; never val
    assert dm._datasets["train"].transform is None  # the loader itself no longer augments
    calls.clear()
    dm.augment_on_device = False
    make_trainer(limit_train_batches=2, limit_val_batches=1).fit(model, datamodule=dm)
    assert not calls


def test_augment_on_device_goes_through_the_cli(tmp_path) -> None:
    from semiseg_caw.cli import main

    cli = main(
        [
            "fit",
            "--model=semiseg_caw.SemiSegCAW",
            "--model.init_args.aux_source=none",
            "--data.image_size=32",
            "--data.batch_size=4",
            "--data.synthetic_samples=40",
            "--data.augment_on_device=true",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.datamodule.augment_on_device
    assert cli.trainer.global_step == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_gpu_without_leaving_it() -> None:
    batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in lesion_batch().items()}
    out = augment_batch(batch)
    assert all(out[k].is_cuda for k in ("image", "mask", "aux_map"))


def test_settings_are_the_loader_pipelines() -> None:
    from semiseg_caw.data.device_augment import DEFAULTS

    assert DEFAULTS["rotate_limit"] == 30.0 and DEFAULTS["affine_p"] == 0.7
    with pytest.raises(TypeError, match="rotate_limt"):
        augment_batch(lesion_batch(), rotate_limt=10)
