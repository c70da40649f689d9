"""Evaluation metrics of the protocol, as torchmetrics (so they sync under DDP).

- :class:`PooledSegMetrics`: the paper's numbers, MALUNet's evaluation: one
  confusion matrix over every pixel of every image, threshold 0.5.
- :class:`PerImageSegMetrics`: mean per-image Dice and IoU.
- :class:`SegmentationMetrics`: both of them in one collection.
- :class:`ClassificationMetrics`: accuracy, balanced accuracy and AUROC over
  the samples that have a class label (averaged over the classes present).

All of them take logits; sigmoid / softmax happen here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn

from semiseg_caw.losses import IGNORE_INDEX

__all__ = [
    "ClassificationMetrics",
    "PerImageSegMetrics",
    "PooledSegMetrics",
    "SegmentationMetrics",
    "build_classification_metrics",
    "dice_per_image",
]


def _check_threshold(threshold: float) -> float:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return float(threshold)


def _binarise(
    logits: Tensor, target: Tensor, valid: Tensor | None, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Flattened bool prediction and target ``(B, N)`` and the ``(B,)`` valid mask."""
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} differs from logits shape {tuple(logits.shape)}"
        )
    batch = logits.shape[0]
    if valid is None:
        valid = torch.ones(batch, dtype=torch.bool, device=logits.device)
    elif valid.shape != (batch,):
        raise ValueError(f"valid must have shape ({batch},), got {tuple(valid.shape)}")
    valid = valid.to(device=logits.device, dtype=torch.bool)
    pred = torch.sigmoid(logits.detach().float()).flatten(1) >= threshold  # MALUNet uses >=
    true = target.detach().flatten(1) > 0.5
    return pred, true, valid


def _ratio(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den``, or ``empty`` where ``den`` is 0."""
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, empty))


def _per_image(pred: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
    """Dice and IoU ``(B,)`` of flattened bool masks; 1 where both are empty."""
    inter = (pred & true).sum(1).float()
    total = pred.sum(1).float() + true.sum(1).float()
    return _ratio(2 * inter, total, 1.0), _ratio(inter, total - inter, 1.0)


def dice_per_image(logits: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """Each image's Dice ``(B,)`` as :class:`PerImageSegMetrics` averages it (an image with
    an empty mask scores 1 if its prediction is empty too, else 0)."""
    pred, true, _ = _binarise(logits, target, None, _check_threshold(threshold))
    return _per_image(pred, true)[0]


class PooledSegMetrics(Metric):
    """Pixel metrics from one confusion matrix pooled over all images (MALUNet's evaluation).

    ``compute`` returns dice, iou, recall, precision, specificity and accuracy.
    Where a denominator is 0 the value is 0, except Dice and IoU when there is
    neither a true nor a predicted positive pixel (TP + FP + FN = 0): then they
    are 1, as the prediction is perfect.

    Args:
        threshold: on ``sigmoid(logits)``; a pixel is positive when its probability
            is ``>= threshold``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = _check_threshold(threshold)
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch: logits and binary masks ``(B, 1, H, W)``, ``valid`` ``(B,)`` bool."""
        pred, true, valid = _binarise(logits, target, valid, self.threshold)
        keep = valid[:, None]
        self.tp += (pred & true & keep).sum()
        self.fp += (pred & ~true & keep).sum()
        self.fn += (~pred & true & keep).sum()
        self.tn += (~pred & ~true & keep).sum()

    def compute(self) -> dict[str, Tensor]:
        dtype = torch.float32 if self.tp.device.type == "mps" else torch.float64
        tp, fp, fn, tn = (x.to(dtype) for x in (self.tp, self.fp, self.fn, self.tn))
        out = {
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
            "iou": _ratio(tp, tp + fp + fn, 1.0),
            "recall": _ratio(tp, tp + fn, 0.0),
            "precision": _ratio(tp, tp + fp, 0.0),
            "specificity": _ratio(tn, tn + fp, 0.0),
            "accuracy": _ratio(tp + tn, tp + tn + fp + fn, 0.0),
        }
        return {k: v.float() for k, v in out.items()}


class PerImageSegMetrics(Metric):
    """Mean over images of each image's Dice and IoU.

    An image with an empty ground truth scores 1 if its prediction is empty too,
    else 0. ``compute`` returns ``dice_per_image`` and ``iou_per_image`` (0 before
    any image was seen).

    Args:
        threshold: on ``sigmoid(logits)``, as in :class:`PooledSegMetrics`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = _check_threshold(threshold)
        self.add_state("dice_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch: logits and binary masks ``(B, 1, H, W)``, ``valid`` ``(B,)`` bool."""
        pred, true, valid = _binarise(logits, target, valid, self.threshold)
        dice, iou = _per_image(pred, true)
        weight = valid.float()
        self.dice_sum += (dice * weight).sum()
        self.iou_sum += (iou * weight).sum()
        self.count += valid.sum()

    def compute(self) -> dict[str, Tensor]:
        count = self.count.clamp_min(1).float()
        return {"dice_per_image": self.dice_sum / count, "iou_per_image": self.iou_sum / count}


class SegmentationMetrics(MetricCollection):
    """Pooled and per-image segmentation metrics in one collection.

    ``update(logits, target, valid=None)``; ``compute()`` returns one flat dict
    (dice, iou, recall, precision, specificity, accuracy, dice_per_image,
    iou_per_image), with ``prefix`` in front of each key; ``clone(prefix=...)``
    gives an independent copy per stage.

    Args:
        threshold: on ``sigmoid(logits)``.
        prefix: prepended to every key of ``compute``.
    """

    def __init__(self, threshold: float = 0.5, prefix: str | None = None) -> None:
        super().__init__(
            {
                "pooled": PooledSegMetrics(threshold=threshold),
                "per_image": PerImageSegMetrics(threshold=threshold),
            },
            prefix=prefix,
            compute_groups=False,
        )


class ClassificationMetrics(Metric):
    """Accuracy, balanced accuracy (macro recall) and AUROC over labelled samples.

    ``update(logits, labels)`` keeps the softmax probabilities of the samples not labelled
    ``ignore_index``. ``compute()`` returns ``{"accuracy", "balanced_accuracy", "auroc"}``
    (prefixed), or an empty dict if no labelled sample was ever seen. Balanced accuracy
    and AUROC (one-vs-rest, exact, macro-averaged; for two classes the binary AUROC) average
    over the classes that have samples: a class absent from the labels has no recall and
    no AUROC, and counting it as 0 would report a score the model did not get. With a
    single class present AUROC is undefined and left out, with a warning.

    Args:
        num_classes: number of classes ``K`` (at least 2).
        ignore_index: label value meaning "no class label".
        prefix: prepended to every key of ``compute``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        prefix: str | None = None,
        **kwargs: Any,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.prefix = prefix or ""
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch of class logits ``(B, K)`` and labels ``(B,)``."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}), got {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0],):
            raise ValueError(
                f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}"
            )
        keep = labels != self.ignore_index
        self.probs.append(torch.softmax(logits.detach().float()[keep], dim=1))
        self.labels.append(labels[keep].long())

    def compute(self) -> dict[str, Tensor]:
        if len(self.labels) == 0:  # no update yet (a list; one tensor once synced)
            return {}
        probs, labels = dim_zero_cat(self.probs), dim_zero_cat(self.labels)
        if labels.numel() == 0:
            return {}
        predicted = probs.argmax(dim=1)
        present = labels.unique()
        recall = torch.stack([(predicted[labels == c] == c).float().mean() for c in present])
        out = {
            "accuracy": (predicted == labels).float().mean(),
            "balanced_accuracy": recall.mean(),
        }
        if len(present) > 1:
            out["auroc"] = torch.stack(
                [binary_auroc(probs[:, c], (labels == c).long()) for c in present]
            ).mean()
        else:
            # Once, not per process: every process computes the synced metric.
            rank_zero_warn(
                f"classification AUROC left out: all {labels.numel()} labelled samples are of "
                f"class {int(present[0])}, and AUROC needs two classes",
                UserWarning,
                stacklevel=3,  # this line, not torchmetrics' own frames in between
            )
        return {self.prefix + k: v for k, v in out.items()}


def build_classification_metrics(
    num_classes: int, ignore_index: int = IGNORE_INDEX, prefix: str | None = None
) -> ClassificationMetrics:
    """The classification metrics of the protocol; see :class:`ClassificationMetrics`."""
    return ClassificationMetrics(num_classes, ignore_index=ignore_index, prefix=prefix)
