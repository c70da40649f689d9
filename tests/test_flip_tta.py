"""``flip_tta``: evaluation averages the predictions for an image and its left-right mirror."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import pytest
import torch

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule
from semiseg_caw.export import InferenceModel
from semiseg_caw.lit.stages import stage1_module

SIZE = 32


def small_semiseg(**kwargs) -> SemiSegCAW:
    torch.manual_seed(0)
    # resnet10t: the same auxiliary U-Net on a shallower timm encoder, to keep tests short.
    return SemiSegCAW(aux_encoder="resnet10t", **kwargs).eval()


def image(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_flip_tta_is_the_mean_of_the_image_and_its_mirror() -> None:
    model = small_semiseg()
    x = image()
    plain_mask, plain_class = model.evaluate_batch({"image": x})
    mirror_mask, mirror_class = model.evaluate_batch({"image": x.flip(-1)})
    assert not torch.allclose(plain_mask, mirror_mask.flip(-1))  # untrained: not symmetric

    model.hparams.flip_tta = True
    mask_logits, class_logits = model.evaluate({"image": x})
    expected = (torch.sigmoid(plain_mask) + torch.sigmoid(mirror_mask).flip(-1)) / 2
    torch.testing.assert_close(torch.sigmoid(mask_logits), expected, atol=1e-6, rtol=0)
    expected_class = (plain_class.softmax(1) + mirror_class.softmax(1)) / 2
    torch.testing.assert_close(class_logits.softmax(1), expected_class, atol=1e-6, rtol=0)

    # So the prediction for the mirrored image is the mirrored prediction.
    flipped_mask, flipped_class = model.evaluate({"image": x.flip(-1)})
    torch.testing.assert_close(flipped_mask, mask_logits.flip(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flipped_class, class_logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_flip_tta_mirrors_a_cached_auxiliary_map_with_its_image() -> None:
    model = small_semiseg(aux_mode="frozen", cache_aux_maps=True, flip_tta=True)
    model.aux_maps_cached = True  # as after cache_aux_maps: steps read the batch's map
    x = image()
    aux_map = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mask, _ = model.evaluate({"image": x, "aux_map": aux_map})
    plain, _ = model.evaluate_batch({"image": x, "aux_map": aux_map})
    mirror, _ = model.evaluate_batch({"image": x.flip(-1), "aux_map": aux_map.flip(-1)})
    expected = (torch.sigmoid(plain) + torch.sigmoid(mirror).flip(-1)) / 2
    torch.testing.assert_close(torch.sigmoid(mask), expected, atol=1e-6, rtol=0)
    mirrored, _ = model.evaluate({"image": x.flip(-1), "aux_map": aux_map.flip(-1)})
    torch.testing.assert_close(mirrored, mask.flip(-1), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_flip_tta_is_off_by_default_inherited_by_stage1_and_exported() -> None:
    model = small_semiseg()
    x = image()
    assert model.hparams.flip_tta is False
    torch.testing.assert_close(model.evaluate({"image": x}), model.evaluate_batch({"image": x}))
    assert stage1_module(SemiSegCAW(aux_encoder="resnet10t", flip_tta=True)).hparams.flip_tta

    model.hparams.flip_tta = True  # the ONNX model computes what evaluation computes
    mask_logits, class_logits = model.evaluate({"image": x})
    mask_prob, class_prob = InferenceModel(model)(x)
    torch.testing.assert_close(mask_prob, torch.sigmoid(mask_logits))
    torch.testing.assert_close(class_prob, class_logits.softmax(1))


@pytest.mark.parametrize("flip_tta", [False, True])
def test_validation_and_prediction_go_through_the_mirrored_mean(
    flip_tta: bool, make_trainer: Callable[..., L.Trainer]
) -> None:
    torch.manual_seed(0)
    model = ClassElevateSeg(encoder="resnet10t", flip_tta=flip_tta)
    dm = SemiSegDataModule(image_size=SIZE, batch_size=4, synthetic_samples=24, class_only=4)
    seen: list[int] = []
    evaluate_batch = model.evaluate_batch

    def spy(batch):
        seen.append(batch["image"].shape[0])
        return evaluate_batch(batch)

    model.evaluate_batch = spy
    make_trainer().validate(model, datamodule=dm)
    dm.setup("validate")
    loader_sizes = [batch["image"].shape[0] for batch in dm.val_dataloader()]
    assert seen == [n * (2 if flip_tta else 1) for n in loader_sizes]

    batch = next(iter(dm.val_dataloader()))
    model.eval()  # validate() hands the model back in training mode (dropout)
    with torch.no_grad():
        out = model.predict_step(batch, 0)
        mask_logits, class_logits = model.evaluate(batch)
    torch.testing.assert_close(out["mask_prob"], torch.sigmoid(mask_logits))
    torch.testing.assert_close(out["class_prob"], class_logits.softmax(1))


def test_a_saved_model_loads_with_flip_tta_switched_on(tmp_path) -> None:
    model = small_semiseg()
    path = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    loaded = SemiSegCAW.load_from_checkpoint(path, flip_tta=True, weights_only=True).eval()
    assert loaded.hparams.flip_tta and not model.hparams.flip_tta
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(loaded.evaluate({"image": x}), loaded.mirror_mean({"image": x}))
