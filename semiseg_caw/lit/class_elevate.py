"""Stage 1: ClassElevateSeg, a U-Net that turns class labels into auxiliary segmentation maps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from semiseg_caw.lit.base import SegmentationTask
from semiseg_caw.losses import (
    bce_loss,
    cam_consistency_loss,
    cross_entropy_loss,
    dice_loss,
    lesion_presence_loss,
    soft_target_loss,
)
from semiseg_caw.models.class_elevate import ClassElevateNet
from semiseg_caw.models.wgm import StaticWeighting

STAGE1_TERMS = ("ce", "bce", "dice", "cam", "presence", "consistency")


class ClassElevateSeg(SegmentationTask):
    """Multitask pre-training of the auxiliary model (stage 1).

    Cross-entropy on every sample with a class, BCE + Dice on every sample with
    a mask, and on class-only samples two class-to-pixel terms: a soft target
    from the class activation map of the true class (``cam``) and a
    lesion-present constraint on the top-k probabilities (``presence``).
    Optionally (``consistency``, off by default) a third: the mask of a flipped,
    intensity-jittered copy of a class-only image, flipped back, is pulled
    towards the (fixed) mask of the image itself; this costs a second forward pass.

    Args:
        num_classes: number of image classes (linked from the data module).
        in_channels: image channels, 1 or 3 (linked from the data module).
        encoder: any timm backbone name for the U-Net encoder.
        pretrained: load ImageNet weights for the encoder (needs a download).
        dropout: dropout before the classification layer.
        loss_weights: fixed weight per term of ``ce, bce, dice, cam, presence,
            consistency``; a term with weight 0 is not computed (``consistency``: 0
            unless given).
        normal_class: index of a lesion-free class (e.g. BUSI normal), whose
            images are supervised with an empty mask; None when there is none.
        presence_topk: fraction of pixels whose mean probability must be high
            on a lesion image.
        cuda_graphs: on CUDA, replay the training objective (or, where that capture
            fails, the network) from a CUDA graph; see ``SemiSegCAW``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        min_lr: final learning rate of the cosine schedule.
        max_bad_steps: non-finite losses tolerated (each skipped) before stopping. With
            fused AdamW they are counted on the device and read every
            ``trainer.log_every_n_steps`` steps and at the end of each epoch, so a run stops
            up to that many steps late.
        balance_classes: weigh the ``ce`` term by inverse class frequency in the training
            split (see ``SemiSegCAW``).
        flip_tta: at validation, test, prediction and export, average the predictions
            for the image and its left-right mirror (see ``SegmentationTask.mirror_mean``):
            inference batches of twice the size. Off by default; a stage 1 run by
            ``SemiSegCAW`` takes stage 2's.
        keep_largest_lesion: at validation, test and prediction, keep only the largest
            predicted region of each mask (see ``semiseg_caw.postprocess``). Export leaves it
            out (the file's metadata says to apply it). Off by default; a stage 1 run by
            ``SemiSegCAW`` takes stage 2's.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        encoder: str = "resnet18",
        pretrained: bool = False,
        dropout: float = 0.2,
        loss_weights: dict[str, float] | None = None,
        normal_class: int | None = None,
        presence_topk: float = 0.02,
        cuda_graphs: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        min_lr: float = 1e-5,
        max_bad_steps: int = 20,
        balance_classes: bool = False,
        flip_tta: bool = False,
        keep_largest_lesion: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels, lr, weight_decay, min_lr, max_bad_steps)

    def configure_models(self) -> None:
        weights = dict(ce=1.0, bce=1.0, dice=1.0, cam=0.2, presence=0.2, consistency=0.0)
        given = self.hparams.loss_weights or {}
        unknown = set(given) - set(STAGE1_TERMS)
        if unknown:
            raise ValueError(f"unknown stage-1 loss terms {sorted(unknown)}; known: {STAGE1_TERMS}")
        weights.update(given)
        if any(not 0 <= w < float("inf") for w in weights.values()):  # NaN fails too
            raise ValueError(f"loss weights must be finite and >= 0, got {weights}")
        topk = self.hparams.presence_topk
        if not 0 < topk <= 1:  # the lesion-present loss refuses it too, but at the first step
            raise ValueError(f"presence_topk must lie in (0, 1], got {topk}")
        normal = self.hparams.normal_class
        if normal is not None and not 0 <= normal < self.num_classes:
            raise ValueError(
                f"normal_class must be a class index in [0, {self.num_classes}) or None, "
                f"got {normal}"
            )
        self.term_weights = {k: w for k, w in weights.items() if w > 0}
        self.net = ClassElevateNet(
            encoder=self.hparams.encoder,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            pretrained=self.hparams.pretrained,
            dropout=self.hparams.dropout,
        )
        self.weighting = StaticWeighting(list(self.term_weights), self.term_weights)

    def forward(self, image: Tensor):
        return self.net(image)

    def evaluate_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        out = self.net(batch["image"])
        return out.mask_logits, out.class_logits

    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every active stage-1 term, each averaged over the samples that have its target."""
        out = self.net(batch["image"])
        mask, has_mask, label = batch["mask"], batch["has_mask"], batch["label"]
        class_only = batch["has_label"] & ~has_mask
        # A lesion class: a normal image's mask is known to be empty, so no CAM target.
        topk = self.hparams.presence_topk
        if not 0 < topk <= 1:  # the lesion-present loss refuses it too, but at the first step
            raise ValueError(f"presence_topk must lie in (0, 1], got {topk}")
        normal = self.hparams.normal_class
        present = label >= 0 if normal is None else (label >= 0) & (label != normal)
        terms: dict[str, Tensor] = {}
        if "ce" in self.term_weights:
            terms["ce"] = cross_entropy_loss(out.class_logits, label, weight=self.ce_weight())
        if "bce" in self.term_weights:
            terms["bce"] = bce_loss(out.mask_logits, mask, has_mask)
        if "dice" in self.term_weights:
            terms["dice"] = dice_loss(out.mask_logits, mask, has_mask)
        if "cam" in self.term_weights:
            cam = self.net.cam(out.features, label.clamp(min=0), tuple(mask.shape[-2:]))
            terms["cam"] = cam_consistency_loss(out.mask_logits, cam.detach(), class_only & present)
        if "presence" in self.term_weights:
            terms["presence"] = lesion_presence_loss(
                out.mask_logits, present, class_only, topk_fraction=self.hparams.presence_topk
            )
        if "consistency" in self.term_weights:
            view = self.net(jitter(batch["image"]).flip(-1))
            target = torch.sigmoid(out.mask_logits).detach()
            terms["consistency"] = soft_target_loss(view.mask_logits.flip(-1), target, class_only)
        return terms


def jitter(
    image: Tensor, contrast: float = 0.2, brightness: float = 0.2, noise: float = 0.1
) -> Tensor:
    """A per-sample contrast / brightness change and pixel noise of a normalised image batch:
    the second view of the consistency term."""
    b = image.shape[0]
    shape = (b,) + (1,) * (image.ndim - 1)
    scale = 1 + contrast * (2 * torch.rand(shape, device=image.device) - 1)
    shift = brightness * (2 * torch.rand(shape, device=image.device) - 1)
    return image * scale + shift + noise * torch.randn_like(image)
