"""Stages 2 and 3: the core segmentation + classification model trained with the WGM."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from semiseg_caw.checkpoints import load_submodule
from semiseg_caw.lit.base import SegmentationTask
from semiseg_caw.losses import (
    bce_loss,
    cross_entropy_loss,
    dice_loss,
    focal_tversky_loss,
    pseudo_label_loss,
)
from semiseg_caw.models.semiseg import build_semiseg_net
from semiseg_caw.models.wgm import build_weighting

CORE_TERMS = ("bce", "dice", "ftv", "ce", "pseudo", "aux")


class SemiSegCAW(SegmentationTask):
    """SemiSeg-CAW: a segmentation backbone guided by auxiliary maps, with a class head and WGM.

    The auxiliary model (ClassElevateSeg) is loaded from a stage-1 checkpoint;
    ``semiseg-caw fit`` trains stage 1 first when none is given. With
    ``aux_source: none``, ``classifier: false``, ``loss_terms: [bce, dice]`` and
    ``weighting: static`` this module is the plain-backbone baseline.

    Args:
        num_classes: number of image classes (linked from the data module).
        in_channels: image channels, 1 or 3 (linked from the data module).
        backbone: segmentation network of the core model.
        aux_source: where the auxiliary map comes from: the ClassElevateSeg
            segmentation output, LayerCAM of its classifier, or none.
        aux_mode: ``finetune`` the auxiliary model jointly (own parameter group,
            ``aux_lr_scale`` times the learning rate) or keep it ``frozen``.
        aux_encoder: timm encoder of the auxiliary U-Net.
        stage1_checkpoint: ClassElevateSeg checkpoint to start from.
        stage1_epochs: epochs of the stage-1 run that ``fit`` starts when no
            checkpoint is given (None: as many as stage 2).
        aux_lr_scale: learning-rate factor of the auxiliary model when fine-tuned.
        classifier: add the auxiliary-map-guided classification head.
        classifier_hidden: width of the classification head's hidden layer.
        loss_terms: terms to combine, from ``bce, dice, ftv, ce, pseudo, aux``
            (``aux``: the auxiliary model's own BCE + Dice + CE while fine-tuned;
            ``pseudo``: BCE on confident auxiliary-map pixels of class-only images).
        weighting: ``wgm`` (uncertainty weighting, the default), ``static``,
            ``imtl`` (IMTL-L) or ``dwa``.
        loss_weights: fixed weights per term for ``static`` weighting.
        ftv_alpha: Focal Tversky weight of false negatives.
        ftv_beta: Focal Tversky weight of false positives.
        ftv_gamma: Focal Tversky exponent.
        pseudo_threshold: auxiliary probability above which (or below one minus
            which) a pixel of a class-only image becomes a pseudo-label.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        min_lr: final learning rate of the cosine schedule.
        max_bad_steps: non-finite losses tolerated (each skipped) before stopping.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        backbone: Literal["malunet", "unext"] = "malunet",
        aux_source: Literal["classelevate", "layercam", "none"] = "classelevate",
        aux_mode: Literal["finetune", "frozen"] = "finetune",
        aux_encoder: str = "resnet18",
        stage1_checkpoint: str | None = None,
        stage1_epochs: int | None = None,
        aux_lr_scale: float = 0.1,
        classifier: bool = True,
        classifier_hidden: int = 64,
        loss_terms: list[str] | None = None,
        weighting: Literal["wgm", "uncertainty", "static", "imtl", "dwa"] = "wgm",
        loss_weights: dict[str, float] | None = None,
        ftv_alpha: float = 0.7,
        ftv_beta: float = 0.3,
        ftv_gamma: float = 0.75,
        pseudo_threshold: float = 0.9,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        min_lr: float = 1e-5,
        max_bad_steps: int = 20,
    ) -> None:
        super().__init__(num_classes, in_channels, lr, weight_decay, min_lr, max_bad_steps)
        self.stage1_loaded = False

    # -- construction -------------------------------------------------------------------
    def configure_models(self) -> None:
        hp = self.hparams
        terms = list(hp.loss_terms) if hp.loss_terms is not None else self.default_terms()
        unknown = set(terms) - set(CORE_TERMS)
        if unknown or not terms:
            raise ValueError(f"loss_terms must be a non-empty subset of {CORE_TERMS}, got {terms}")
        if "ce" in terms and not hp.classifier:
            raise ValueError("loss term 'ce' needs classifier: true")
        if ("pseudo" in terms or "aux" in terms) and hp.aux_source == "none":
            raise ValueError("loss terms 'pseudo' and 'aux' need an auxiliary model")
        if "aux" in terms and (hp.aux_mode == "frozen" or hp.aux_source != "classelevate"):
            raise ValueError("loss term 'aux' supervises a fine-tuned ClassElevateSeg only")
        if not 0.5 < hp.pseudo_threshold < 1:
            raise ValueError(f"pseudo_threshold must lie in (0.5, 1), got {hp.pseudo_threshold}")
        if hp.aux_lr_scale <= 0:
            raise ValueError(f"aux_lr_scale must be > 0, got {hp.aux_lr_scale}")
        self.terms = terms
        self.net = build_semiseg_net(
            backbone=hp.backbone,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            aux_source=hp.aux_source,
            aux_encoder=hp.aux_encoder,
            aux_frozen=hp.aux_mode == "frozen" or hp.aux_source == "layercam",
            use_classifier=hp.classifier,
            classifier_hidden=hp.classifier_hidden,
        )
        extra = {}
        if hp.weighting == "static" and hp.loss_weights:
            extra["weights"] = hp.loss_weights
        elif hp.loss_weights:
            raise ValueError("loss_weights apply to weighting: static only")
        self.weighting = build_weighting(hp.weighting, terms, **extra)

    def default_terms(self) -> list[str]:
        hp = self.hparams
        terms = ["bce", "dice", "ftv"]
        if hp.classifier:
            terms.append("ce")
        if hp.aux_source == "classelevate" and hp.aux_mode == "finetune":
            terms.append("aux")
        return terms

    def load_stage1(self, path: str) -> None:
        """Load the auxiliary model's weights from a ClassElevateSeg checkpoint."""
        if self.net.aux_model is None:
            raise ValueError("aux_source is 'none': there is no auxiliary model to load")
        load_submodule(self.net.aux_model, path, prefix="net.")
        self.hparams.stage1_checkpoint = str(path)
        self.stage1_loaded = True

    def setup(self, stage: str) -> None:
        # Weights restored from a stage-2 checkpoint already hold the (fine-tuned) auxiliary model.
        restoring = self._trainer is not None and self.trainer.ckpt_path is not None
        path = self.hparams.stage1_checkpoint
        if path and not restoring and not self.stage1_loaded:
            self.load_stage1(path)

    # -- steps ----------------------------------------------------------------------------
    def forward(self, image: Tensor):
        return self.net(image)

    def evaluate_batch(self, image: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(image)
        return out.mask_logits, out.class_logits

    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every active term, each averaged over the samples that have its target."""
        hp = self.hparams
        out = self.net(batch["image"])
        mask, has_mask, label = batch["mask"], batch["has_mask"], batch["label"]
        logits = out.mask_logits
        terms: dict[str, Tensor] = {}
        if "bce" in self.terms:
            terms["bce"] = bce_loss(logits, mask, has_mask)
        if "dice" in self.terms:
            terms["dice"] = dice_loss(logits, mask, has_mask)
        if "ftv" in self.terms:
            terms["ftv"] = focal_tversky_loss(
                logits, mask, has_mask, alpha=hp.ftv_alpha, beta=hp.ftv_beta, gamma=hp.ftv_gamma
            )
        if "ce" in self.terms:
            terms["ce"] = cross_entropy_loss(out.class_logits, label)
        if "pseudo" in self.terms:
            class_only = batch["has_label"] & ~has_mask
            terms["pseudo"] = pseudo_label_loss(
                logits, out.aux_map.detach(), class_only, threshold=hp.pseudo_threshold
            )
        if "aux" in self.terms:
            aux = out.aux_output
            terms["aux"] = (
                bce_loss(aux.mask_logits, mask, has_mask)
                + dice_loss(aux.mask_logits, mask, has_mask)
                + cross_entropy_loss(aux.class_logits, label)
            )
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        terms = self.loss_terms(batch)
        loss = self.weighting(terms)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=bs)
        self.log_dict({f"wgm/{k}": w for k, w in self.weighting.weights().items()}, batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        return self.guard_loss(loss)

    def on_train_epoch_end(self) -> None:
        if hasattr(self.weighting, "epoch_end"):
            self.weighting.epoch_end()

    def parameter_groups(self) -> list[dict[str, Any]]:
        aux = self.net.aux_model
        aux_params = {id(p) for p in aux.parameters()} if aux is not None else set()
        weighting = [p for p in self.weighting.parameters() if p.requires_grad]
        weighting_ids = {id(p) for p in weighting}
        core = [
            p
            for p in self.parameters()
            if p.requires_grad and id(p) not in aux_params and id(p) not in weighting_ids
        ]
        groups: list[dict[str, Any]] = [{"params": core}]
        if weighting:
            # Loss weights are not decayed: decay would pull every s_i towards zero.
            groups.append({"params": weighting, "weight_decay": 0.0})
        if (
            aux is not None
            and self.hparams.aux_mode == "finetune"
            and self.hparams.aux_source == "classelevate"
        ):
            groups.append(
                {
                    "params": list(aux.parameters()),
                    "lr": self.hparams.lr * self.hparams.aux_lr_scale,
                }
            )
        return groups


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module, trainable or not."""
    return sum(p.numel() for p in module.parameters())
