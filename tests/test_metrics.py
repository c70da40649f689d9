"""Evaluation metrics: pooled and per-image segmentation, classification."""

from __future__ import annotations

import pytest
import torch

from semiseg_caw.losses import IGNORE_INDEX
from semiseg_caw.metrics import (
    ClassificationMetrics,
    PerImageSegMetrics,
    PooledSegMetrics,
    SegmentationMetrics,
    build_classification_metrics,
    dice_per_image,
)


def logits_from(pred: torch.Tensor) -> torch.Tensor:
    """Logits whose sigmoid thresholds at 0.5 to the given binary prediction."""
    return (pred.float() * 2 - 1) * 5.0


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(6, 1, 16, 16)
    target = (torch.rand(6, 1, 16, 16) > 0.7).float()
    return logits, target


def test_pooled_dice_iou_identity(batch):
    metric = PooledSegMetrics()
    metric.update(*batch)
    out = metric.compute()
    dice, iou = out["dice"].item(), out["iou"].item()
    assert 0 < dice < 1
    assert dice == pytest.approx(2 * iou / (1 + iou), rel=1e-6)


def test_pooled_hand_computed_counts():
    pred = torch.tensor([[1, 1], [0, 0]]).reshape(1, 1, 2, 2)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    metric = PooledSegMetrics()
    metric.update(logits_from(pred), target)
    assert [metric.tp.item(), metric.fp.item(), metric.fn.item(), metric.tn.item()] == [1, 1, 1, 1]
    out = metric.compute()
    assert out["dice"].item() == pytest.approx(0.5)  # 2 / (2 + 1 + 1)
    assert out["iou"].item() == pytest.approx(1 / 3)
    for key in ("recall", "precision", "specificity", "accuracy"):
        assert out[key].item() == pytest.approx(0.5)


def test_threshold_is_inclusive_on_probability():
    # sigmoid(0) = 0.5 counts as positive, as in MALUNet's evaluation
    metric = PooledSegMetrics()
    metric.update(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert metric.tp.item() == 1


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_pooled_empty_everything_and_zero_division():
    metric = PooledSegMetrics()
    metric.update(logits_from(torch.zeros(2, 1, 4, 4)), torch.zeros(2, 1, 4, 4))
    out = metric.compute()
    assert out["dice"].item() == 1.0 and out["iou"].item() == 1.0
    assert out["recall"].item() == 0.0 and out["precision"].item() == 0.0
    assert out["specificity"].item() == 1.0 and out["accuracy"].item() == 1.0
    assert all(torch.isfinite(v) for v in PooledSegMetrics().compute().values())


def test_per_image_empty_ground_truth():
    empty = torch.zeros(1, 1, 4, 4)
    spot = empty.clone()
    spot[..., 0, 0] = 1
    metric = PerImageSegMetrics()
    metric.update(logits_from(empty), empty)  # empty vs empty: 1
    assert metric.compute()["dice_per_image"].item() == 1.0
    assert metric.compute()["iou_per_image"].item() == 1.0
    metric.update(logits_from(spot), empty)  # non-empty prediction, empty truth: 0
    assert metric.compute()["dice_per_image"].item() == pytest.approx(0.5)
    assert metric.compute()["iou_per_image"].item() == pytest.approx(0.5)


def test_per_image_hand_computed():
    pred = torch.tensor([[1, 1], [0, 0]]).reshape(1, 1, 2, 2)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    perfect = logits_from(target)
    metric = PerImageSegMetrics()
    metric.update(torch.cat([logits_from(pred), perfect]), torch.cat([target, target]))
    out = metric.compute()
    assert out["dice_per_image"].item() == pytest.approx((0.5 + 1.0) / 2)
    assert out["iou_per_image"].item() == pytest.approx((1 / 3 + 1.0) / 2)


def test_dice_per_image_is_what_the_metric_averages(batch):
    logits, target = batch
    target[0] = 0  # an empty mask scores 1 only with an empty prediction
    logits[0] = -1.0
    target[1] = 0
    each = dice_per_image(logits, target)
    assert each.shape == (6,) and each[0] == 1.0 and each[1] == 0.0
    metric = PerImageSegMetrics()
    metric.update(logits, target)
    assert each.mean().item() == pytest.approx(metric.compute()["dice_per_image"].item())
    with pytest.raises(ValueError, match="threshold"):
        dice_per_image(logits, target, threshold=1.0)


@pytest.mark.parametrize("metric_cls", [PooledSegMetrics, PerImageSegMetrics])
def test_valid_mask_excludes_samples(batch, metric_cls):
    logits, target = batch
    valid = torch.tensor([True, False, True, True, False, True])
    masked = metric_cls()
    masked.update(logits, target, valid)
    subset = metric_cls()
    subset.update(logits[valid], target[valid])
    for key, value in masked.compute().items():
        assert value.item() == pytest.approx(subset.compute()[key].item(), rel=1e-6), key


def test_accumulating_equals_one_big_update(batch):
    logits, target = batch
    valid = torch.tensor([True, True, False, True, True, True])
    pieces = SegmentationMetrics()
    for sl in (slice(0, 2), slice(2, 3), slice(3, 6)):
        pieces.update(logits[sl], target[sl], valid[sl])
    whole = SegmentationMetrics()
    whole.update(logits, target, valid)
    got, expected = pieces.compute(), whole.compute()
    assert set(got) == {
        "dice",
        "iou",
        "recall",
        "precision",
        "specificity",
        "accuracy",
        "dice_per_image",
        "iou_per_image",
    }
    for key in expected:
        assert got[key].item() == pytest.approx(expected[key].item(), rel=1e-6), key


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_segmentation_metrics_prefix_clone_and_reset(batch):
    metrics = SegmentationMetrics(prefix="val/")
    test_metrics = metrics.clone(prefix="test/")
    metrics.update(*batch)
    assert all(k.startswith("val/") for k in metrics.compute())
    metrics.reset()
    assert metrics.compute()["val/dice_per_image"].item() == 0.0
    test_metrics.update(*batch)
    assert "test/dice" in test_metrics.compute()


def test_classification_ignores_unlabelled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, IGNORE_INDEX, 0])  # the ignored one would be right
    metrics = build_classification_metrics(2)
    metrics.update(logits, labels)
    out = metrics.compute()
    assert set(out) == {"accuracy", "balanced_accuracy", "auroc"}
    assert out["accuracy"].item() == pytest.approx(2 / 3)
    assert out["balanced_accuracy"].item() == pytest.approx((1 / 2 + 1) / 2)


def test_classification_without_labels():
    metrics = ClassificationMetrics(3, prefix="val/")
    assert metrics.compute() == {}
    metrics.update(torch.randn(4, 3), torch.full((4,), IGNORE_INDEX))
    assert metrics.compute() == {}
    assert metrics(torch.randn(2, 3), torch.full((2,), IGNORE_INDEX)) == {}


def test_classification_averages_over_the_classes_present():
    """A class without samples has no recall and no AUROC: it is left out of the averages,
    not counted as 0; with one class present AUROC is left out, with a warning."""
    from torchmetrics.functional.classification import binary_auroc

    torch.manual_seed(0)
    logits, labels = torch.randn(30, 3), torch.tensor([0, 2] * 15)  # class 1 absent
    out = ClassificationMetrics(3)(logits, labels)
    probs, predicted = torch.softmax(logits, 1), logits.argmax(1)
    recall = [(predicted[labels == c] == c).float().mean() for c in (0, 2)]
    assert out["balanced_accuracy"].item() == pytest.approx(sum(recall).item() / 2)
    auroc = [binary_auroc(probs[:, c], (labels == c).long()) for c in (0, 2)]
    assert out["auroc"].item() == pytest.approx(sum(auroc).item() / 2)
    one_class = ClassificationMetrics(2)
    one_class.update(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.zeros(3).long())
    with pytest.warns(
        UserWarning, match="AUROC left out: all 3 labelled samples are of class 0"
    ) as warned:
        out = one_class.compute()
    assert warned[0].filename.endswith("semiseg_caw/metrics.py")  # not torchmetrics' file
    assert set(out) == {"accuracy", "balanced_accuracy"}
    assert out["balanced_accuracy"].item() == pytest.approx(2 / 3)  # not (2/3 + 0) / 2


@pytest.mark.parametrize("num_classes", [2, 3])
def test_auroc_is_one_for_separated_scores(num_classes):
    labels = torch.arange(num_classes).repeat(4)
    logits = torch.nn.functional.one_hot(labels, num_classes).float() * 3.0
    logits += 0.1 * torch.randn_like(logits)
    metrics = ClassificationMetrics(num_classes)
    metrics.update(logits[:5], labels[:5])
    metrics.update(logits[5:], labels[5:])  # accumulates across calls
    out = metrics.compute()
    assert out["auroc"].item() == pytest.approx(1.0)
    assert out["accuracy"].item() == 1.0


def test_classification_option_errors():
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationMetrics(1)
    with pytest.raises(ValueError, match="logits"):
        ClassificationMetrics(2).update(torch.randn(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        PooledSegMetrics(threshold=1.5)
