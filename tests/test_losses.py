"""Loss terms against hand-computed values and known limits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg_caw.losses import (
    IGNORE_INDEX,
    BCELoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalTverskyLoss,
    balanced_class_weights,
    bce_loss,
    cam_consistency_loss,
    cross_entropy_loss,
    dice_loss,
    focal_tversky_loss,
    lesion_presence_loss,
    pseudo_label_loss,
)

SEG_LOSSES = [bce_loss, dice_loss, focal_tversky_loss]


@pytest.fixture
def masks() -> torch.Tensor:
    torch.manual_seed(0)
    target = (torch.rand(4, 1, 16, 16) > 0.6).float()
    target[0] = 0.0  # one empty mask
    return target


def perfect_logits(target: torch.Tensor) -> torch.Tensor:
    return (target * 2 - 1) * 20.0


@pytest.mark.parametrize("loss_fn", SEG_LOSSES)
def test_perfect_prediction_is_zero(loss_fn, masks):
    assert loss_fn(perfect_logits(masks), masks).item() == pytest.approx(0.0, abs=1e-5)


def test_all_wrong_dice_is_one(masks):
    masks[0, 0, 0, 0] = 1.0  # no empty mask, so smoothing is negligible
    assert dice_loss(-perfect_logits(masks), masks).item() == pytest.approx(1.0, abs=0.05)
    assert dice_loss(-perfect_logits(masks), masks, smooth=0.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_focal_tversky_with_equal_weights_is_dice(masks, smooth):
    logits = torch.randn_like(masks)
    ftv = focal_tversky_loss(logits, masks, alpha=0.5, beta=0.5, gamma=1.0, smooth=smooth)
    # (TP + s) / (TP + (FN + FP) / 2 + s) == (2TP + 2s) / (2TP + FP + FN + 2s)
    dice = dice_loss(logits, masks, smooth=2 * smooth)
    assert ftv.item() == pytest.approx(dice.item(), rel=1e-5)


def test_tversky_hand_computed():
    prob = torch.tensor([[0.9, 0.2], [0.6, 0.1]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.logit(prob).reshape(1, 1, 2, 2)
    target = target.reshape(1, 1, 2, 2)
    tp = 0.9 + 0.1  # 1.0
    fn = 0.1 + 0.9  # 1.0
    fp = 0.2 + 0.6  # 0.8
    ti = (tp + 1.0) / (tp + 0.7 * fn + 0.3 * fp + 1.0)
    expected = (1 - ti) ** 0.75
    got = focal_tversky_loss(logits, target, alpha=0.7, beta=0.3, gamma=0.75, smooth=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # alpha weighs false negatives: swapping alpha and beta changes the value here
    swapped = focal_tversky_loss(logits, target, alpha=0.3, beta=0.7, gamma=0.75)
    assert swapped.item() != pytest.approx(got.item())


def test_focal_exponent_below_one_raises_loss(masks):
    logits = torch.randn_like(masks)
    plain = focal_tversky_loss(logits, masks, gamma=1.0)
    focal = focal_tversky_loss(logits, masks, gamma=0.75)
    assert 0 < plain.item() < 1
    assert focal.item() > plain.item()


def test_bce_matches_torch_on_valid_samples(masks):
    logits = torch.randn_like(masks)
    valid = torch.tensor([True, False, True, False])
    expected = F.binary_cross_entropy_with_logits(logits[valid], masks[valid])
    assert bce_loss(logits, masks, valid).item() == pytest.approx(expected.item(), rel=1e-6)
    assert BCELoss()(logits, masks, valid).item() == pytest.approx(expected.item(), rel=1e-6)


def test_invalid_samples_targets_are_never_read(masks):
    logits = torch.randn_like(masks, requires_grad=True)
    valid = torch.tensor([True, True, False, False])
    garbage = masks.clone()
    garbage[~valid] = float("nan")
    for loss_fn in SEG_LOSSES:
        clean = loss_fn(logits, masks, valid)
        dirty = loss_fn(logits, garbage, valid)
        assert torch.equal(clean, dirty)
        (grad,) = torch.autograd.grad(dirty, logits)
        assert torch.isfinite(grad).all()
        assert (grad[~valid] == 0).all()


@pytest.mark.parametrize(
    "loss_call",
    [
        lambda x, t, v: bce_loss(x, t, v),
        lambda x, t, v: dice_loss(x, t, v),
        lambda x, t, v: focal_tversky_loss(x, t, v),
        lambda x, t, v: cam_consistency_loss(x, t, v),
        lambda x, t, v: lesion_presence_loss(x, torch.ones(4, dtype=torch.bool), v),
        lambda x, t, v: pseudo_label_loss(x, t, v),
    ],
)
def test_no_valid_sample_gives_connected_zero(loss_call, masks):
    logits = perfect_logits(masks).requires_grad_()
    loss = loss_call(logits, masks, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_cross_entropy_ignores_unlabelled():
    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX, 1])
    keep = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert CrossEntropyLoss()(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)

    none = cross_entropy_loss(logits, torch.full((5,), IGNORE_INDEX))
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(logits.grad).all()


def test_weighted_cross_entropy_matches_torch_and_ignores_unlabelled():
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, IGNORE_INDEX, 2, 0, 1, 0])
    weight = torch.tensor([0.5, 2.0, 3.0])
    keep = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], labels[keep], weight=weight)
    got = cross_entropy_loss(logits, labels, weight=weight)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Equal weights are the plain mean; no labelled sample is a connected zero.
    plain = cross_entropy_loss(logits, labels)
    assert cross_entropy_loss(logits, labels, weight=torch.full((3,), 4.0)).item() == (
        pytest.approx(plain.item(), rel=1e-6)
    )
    none = cross_entropy_loss(logits, torch.full((6,), IGNORE_INDEX), weight=weight)
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        cross_entropy_loss(logits, labels, weight=torch.ones(2))


def test_balanced_class_weights_give_every_class_the_same_total():
    counts = [58, 363, 0]
    weights = balanced_class_weights(counts)
    totals = weights * torch.tensor(counts, dtype=torch.float32)
    assert totals[0].item() == pytest.approx(totals[1].item())
    assert totals.sum().item() == pytest.approx(sum(counts))  # mean weight per sample is 1
    assert weights[2].item() == 0.0  # an absent class never appears in the loss
    with pytest.raises(ValueError, match="some positive"):
        balanced_class_weights([0, 0])


def test_lesion_presence():
    logits = torch.full((2, 1, 10, 10), -5.0)
    logits[0, 0, 0, :2] = 5.0  # a 2-pixel lesion in sample 0
    present = torch.tensor([True, False])
    # top-2 of 100 pixels are the lesion: -log(sigmoid(5))
    both = lesion_presence_loss(logits, present, topk_fraction=0.02)
    lesion = lesion_presence_loss(logits, present, torch.tensor([True, False]))
    normal = lesion_presence_loss(logits, present, torch.tensor([False, True]))
    assert lesion.item() == pytest.approx(math.log1p(math.exp(-5.0)), rel=1e-5)
    assert normal.item() == pytest.approx(F.softplus(torch.tensor(-5.0)).item(), rel=1e-5)
    assert both.item() == pytest.approx((lesion.item() + normal.item()) / 2, rel=1e-5)
    # a lesion image with no confident pixel is penalised far more
    empty = lesion_presence_loss(torch.full((1, 1, 10, 10), -5.0), torch.tensor([True]))
    assert empty.item() > 4.0


def test_pseudo_label_uses_confident_pixels_only():
    aux = torch.tensor([0.95, 0.5, 0.02, 0.6]).reshape(1, 1, 2, 2)
    logits = torch.tensor([1.0, 7.0, -2.0, -3.0]).reshape(1, 1, 2, 2)
    expected = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(-2.0))) / 2
    assert pseudo_label_loss(logits, aux, threshold=0.9).item() == pytest.approx(expected.item())
    nothing = pseudo_label_loss(logits, torch.full_like(aux, 0.5))
    assert nothing.item() == 0.0


def test_cam_consistency_is_soft_bce_without_cam_gradient():
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    cam = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = cam_consistency_loss(logits, cam, torch.tensor([True, False]))
    expected = F.binary_cross_entropy_with_logits(logits[:1], cam[:1].detach())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert cam.grad is None


def test_modules_match_functions(masks):
    logits = torch.randn_like(masks)
    assert DiceLoss(smooth=0.5)(logits, masks).item() == pytest.approx(
        dice_loss(logits, masks, smooth=0.5).item()
    )
    ftv = FocalTverskyLoss(alpha=0.6, beta=0.4, gamma=1.5)
    assert ftv(logits, masks).item() == pytest.approx(
        focal_tversky_loss(logits, masks, alpha=0.6, beta=0.4, gamma=1.5).item()
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: DiceLoss(smooth=-1.0),
        lambda: FocalTverskyLoss(gamma=0.0),
        lambda: FocalTverskyLoss(alpha=-0.1),
        lambda: CrossEntropyLoss(label_smoothing=1.0),
    ],
)
def test_bad_options_raise(make):
    with pytest.raises(ValueError):
        make()


def test_shape_mismatch_raises(masks):
    with pytest.raises(ValueError, match="shape"):
        dice_loss(torch.randn(4, 1, 8, 8), masks)
    with pytest.raises(ValueError, match="valid"):
        bce_loss(torch.randn_like(masks), masks, torch.ones(3, dtype=torch.bool))
