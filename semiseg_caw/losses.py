"""Loss terms of SemiSeg-CAW: a functional core with thin ``nn.Module`` wrappers.

Every function takes logits. Segmentation logits and masks are ``(B, 1, H, W)``
(any ``(B, ...)`` layout works), masks are float in {0, 1}; class logits are
``(B, K)`` and labels ``(B,)`` long with :data:`IGNORE_INDEX` for "no label".

A term that needs a target is averaged only over the samples that have it
(``valid``, a ``(B,)`` bool mask; ``None`` means every sample). When no sample has
it the term is a zero that is still connected to the graph, never NaN. Targets of
invalid samples are never read, so placeholders (zeros, NaN) are harmless. The
selection is done by weighting, not indexing, so no loss synchronises with the GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -1

__all__ = [
    "IGNORE_INDEX",
    "BCELoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalTverskyLoss",
    "balanced_class_weights",
    "bce_loss",
    "cam_consistency_loss",
    "cross_entropy_loss",
    "dice_loss",
    "focal_tversky_loss",
    "lesion_presence_loss",
    "pseudo_label_loss",
    "soft_target_loss",
]


# -- helpers -----------------------------------------------------------------------------
def _valid_mask(valid: Tensor | None, logits: Tensor) -> Tensor:
    """The ``(B,)`` bool mask of samples to use; all samples when ``valid`` is None."""
    batch = logits.shape[0]
    if valid is None:
        return torch.ones(batch, dtype=torch.bool, device=logits.device)
    if valid.shape != (batch,):
        raise ValueError(f"valid must have shape ({batch},), got {tuple(valid.shape)}")
    return valid.to(device=logits.device, dtype=torch.bool)


def _check_pair(logits: Tensor, target: Tensor, target_name: str = "target") -> None:
    if logits.ndim < 2:
        raise ValueError(f"logits must be (B, ...) with at least 2 dims, got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(
            f"{target_name} shape {tuple(target.shape)} differs from logits shape "
            f"{tuple(logits.shape)}"
        )


def _per_sample(valid: Tensor, x: Tensor) -> Tensor:
    """Broadcast a ``(B,)`` mask to the layout of ``x``."""
    return valid.view(-1, *([1] * (x.ndim - 1)))


def _clean_target(target: Tensor, valid: Tensor) -> Tensor:
    """Float target with the samples outside ``valid`` replaced by zeros."""
    target = target.float()
    return torch.where(_per_sample(valid, target), target, torch.zeros_like(target))


def _masked_mean(per_sample: Tensor, valid: Tensor) -> Tensor:
    """Mean of a ``(B,)`` loss over valid samples; a graph-connected zero when none is."""
    kept = torch.where(valid, per_sample, torch.zeros_like(per_sample))
    return kept.sum() / valid.sum().clamp_min(1).to(per_sample.dtype)


def _soft_counts(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample soft TP, FP, FN from probabilities, each ``(B,)``."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    tp = (prob * target).sum(1)
    fp = (prob * (1.0 - target)).sum(1)
    fn = ((1.0 - prob) * target).sum(1)
    return tp, fp, fn


def _check_nonneg(**values: float) -> None:
    for name, value in values.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


# -- segmentation terms ------------------------------------------------------------------
def bce_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """BCE-with-logits, averaged over the pixels of the samples that have a mask."""
    _check_pair(logits, target)
    valid = _valid_mask(valid, logits)
    logits = logits.float()
    target = _clean_target(target, valid)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return _masked_mean(per_pixel.flatten(1).mean(1), valid)


def dice_loss(
    logits: Tensor, target: Tensor, valid: Tensor | None = None, smooth: float = 1.0
) -> Tensor:
    """Soft Dice loss ``1 - (2TP + s) / (2TP + FP + FN + s)`` per sample, mean over valid ones."""
    _check_nonneg(smooth=smooth)
    _check_pair(logits, target)
    valid = _valid_mask(valid, logits)
    tp, fp, fn = _soft_counts(logits.float(), _clean_target(target, valid))
    dice = (2.0 * tp + smooth) / (2.0 * tp + fp + fn + smooth).clamp_min(1e-12)
    return _masked_mean(1.0 - dice, valid)


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    valid: Tensor | None = None,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 0.75,
    smooth: float = 1.0,
) -> Tensor:
    """Focal Tversky loss ``(1 - TI)^gamma`` (Abraham & Khan 2019), mean over valid samples.

    ``TI = (TP + s) / (TP + alpha*FN + beta*FP + s)`` on soft per-sample counts;
    ``alpha`` weighs false negatives, ``beta`` false positives. With
    ``alpha = beta = 0.5`` and ``gamma = 1`` it is the soft Dice loss (with Dice
    smoothing ``2s``). ``gamma < 1`` (the authors' 0.75) raises every sample's loss
    (``x**gamma >= x`` on [0, 1]) and steepens it near a perfect prediction.
    """
    _check_nonneg(alpha=alpha, beta=beta, smooth=smooth)
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    _check_pair(logits, target)
    valid = _valid_mask(valid, logits)
    tp, fp, fn = _soft_counts(logits.float(), _clean_target(target, valid))
    tversky = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth).clamp_min(1e-12)
    # The clamp keeps the gradient of x**gamma (gamma < 1) finite at a perfect prediction.
    return _masked_mean((1.0 - tversky).clamp_min(1e-12) ** gamma, valid)


# -- classification ----------------------------------------------------------------------
def cross_entropy_loss(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Cross-entropy averaged over the labelled samples; a graph-connected zero if none.

    With ``weight`` (one per class, e.g. from :func:`balanced_class_weights`), a weighted
    mean: each labelled sample counts with its class's weight.
    """
    if logits.ndim != 2:
        raise ValueError(f"class logits must be (B, K), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    labels = labels.long()
    per_sample = F.cross_entropy(
        logits.float(),
        labels,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    valid = labels != ignore_index
    if weight is None:
        return _masked_mean(per_sample, valid)
    if weight.shape != (logits.shape[1],):
        raise ValueError(f"weight must have shape ({logits.shape[1]},), got {tuple(weight.shape)}")
    per_weight = torch.where(valid, weight.float()[labels.clamp_min(0)], 0.0)
    return (per_sample * per_weight).sum() / per_weight.sum().clamp_min(1e-12)


def balanced_class_weights(counts: list[int] | Tensor) -> Tensor:
    """Class weights that give every class the same total weight: ``n / (k * n_c)``, where
    ``n`` samples fall in ``k`` classes that occur, ``n_c`` of them in class c (a class with
    no sample gets 0: it never appears in the loss)."""
    counts = torch.as_tensor(counts, dtype=torch.float32)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"need per-class counts, some positive, got {counts.tolist()}")
    present = counts > 0
    weights = counts.sum() / (present.sum() * counts.clamp_min(1))
    return torch.where(present, weights, 0.0)


# -- class-to-pixel terms for class-only samples -----------------------------------------
def soft_target_loss(
    seg_logits: Tensor, target: Tensor, valid: Tensor | None = None, name: str = "target"
) -> Tensor:
    """Soft BCE pulling the segmentation towards a fixed probability map in [0, 1].

    The map is a target (detached here) of the same shape as ``seg_logits``; the loss is
    averaged over the pixels of the valid samples.
    """
    _check_pair(seg_logits, target, name)
    valid = _valid_mask(valid, seg_logits)
    target = _clean_target(target.detach(), valid).nan_to_num(0.0).clamp(0.0, 1.0)
    per_pixel = F.binary_cross_entropy_with_logits(seg_logits.float(), target, reduction="none")
    return _masked_mean(per_pixel.flatten(1).mean(1), valid)


def cam_consistency_loss(seg_logits: Tensor, cam: Tensor, valid: Tensor | None = None) -> Tensor:
    """Soft BCE pulling the segmentation towards a class activation map in [0, 1], averaged
    over the pixels of the valid (class-only) samples; see :func:`soft_target_loss`."""
    return soft_target_loss(seg_logits, cam, valid, name="cam")


def lesion_presence_loss(
    seg_logits: Tensor,
    present: Tensor,
    valid: Tensor | None = None,
    topk_fraction: float = 0.02,
) -> Tensor:
    """Multiple-instance constraint from the class label, mean over valid samples.

    A sample whose class has a lesion (``present``) pays ``-log`` of the mean of
    its top-k pixel probabilities (k = ``topk_fraction`` of the pixels, at least
    one); a lesion-free sample pays BCE of every pixel towards 0.
    """
    if not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
    valid = _valid_mask(valid, seg_logits)
    if present.shape != valid.shape:
        raise ValueError(
            f"present must have shape {tuple(valid.shape)}, got {tuple(present.shape)}"
        )
    flat = seg_logits.float().flatten(1)  # (B, N)
    k = max(1, round(topk_fraction * flat.shape[1]))
    top = flat.topk(k, dim=1).values  # sigmoid is monotone: top-k logits = top-k probs
    # log(mean(sigmoid(top))) computed stably in log space.
    log_mean_top = torch.logsumexp(F.logsigmoid(top), dim=1) - math.log(k)
    positive = -log_mean_top
    negative = F.softplus(flat).mean(1)  # BCE towards 0 is softplus(logit)
    present = present.to(device=flat.device, dtype=torch.bool)
    return _masked_mean(torch.where(present, positive, negative), valid)


def pseudo_label_loss(
    seg_logits: Tensor,
    aux_prob: Tensor,
    valid: Tensor | None = None,
    threshold: float = 0.9,
) -> Tensor:
    """BCE towards the confident pixels of an auxiliary probability map.

    Pixels with ``aux_prob > threshold`` are targets 1, ``aux_prob < 1 - threshold``
    targets 0, the rest are ignored. The mean runs over all confident pixels of the
    valid samples (pooled); zero, graph-connected, when there is none.
    """
    if not 0.5 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0.5, 1), got {threshold}")
    _check_pair(seg_logits, aux_prob, "aux_prob")
    valid = _valid_mask(valid, seg_logits)
    aux_prob = aux_prob.detach().float()
    positive = aux_prob > threshold
    confident = (positive | (aux_prob < 1.0 - threshold)) & _per_sample(valid, aux_prob)
    per_pixel = F.binary_cross_entropy_with_logits(
        seg_logits.float(), positive.float(), reduction="none"
    )
    weight = confident.float()
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


# -- module wrappers ---------------------------------------------------------------------
class BCELoss(nn.Module):
    """Module form of :func:`bce_loss`."""

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        return bce_loss(logits, target, valid)


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss`.

    Args:
        smooth: added to numerator and denominator; keeps empty masks at loss 0.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        _check_nonneg(smooth=smooth)
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        return dice_loss(logits, target, valid, smooth=self.smooth)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}"


class FocalTverskyLoss(nn.Module):
    """Module form of :func:`focal_tversky_loss`.

    Args:
        alpha: weight of false negatives.
        beta: weight of false positives.
        gamma: focal exponent; below 1 (the authors' 0.75) it raises every sample's loss
            and steepens it near a perfect prediction.
        smooth: added to numerator and denominator of the Tversky index.
    """

    def __init__(
        self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75, smooth: float = 1.0
    ) -> None:
        super().__init__()
        _check_nonneg(alpha=alpha, beta=beta, smooth=smooth)
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        return focal_tversky_loss(
            logits, target, valid, self.alpha, self.beta, self.gamma, self.smooth
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, smooth={self.smooth}"


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy_loss`.

    Args:
        ignore_index: label value meaning "no class label".
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return cross_entropy_loss(logits, labels, self.ignore_index, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"
