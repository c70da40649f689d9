"""Stages 2 and 3: the core segmentation + classification model trained with the WGM."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from semiseg_caw.checkpoints import load_submodule
from semiseg_caw.data.transforms import AUX_MAP_KEY, normalize
from semiseg_caw.lit.base import SegmentationTask, warn_capture_failed
from semiseg_caw.lit.fixed_parts import ignore_eval_mode_warning, restore_eval_mode_warning
from semiseg_caw.lit.graphs import capture_cuda_graph
from semiseg_caw.lit.semiseg_options import checked_terms
from semiseg_caw.losses import (
    bce_loss,
    cross_entropy_loss,
    dice_loss,
    focal_tversky_loss,
    pseudo_label_loss,
)
from semiseg_caw.models.semiseg import build_semiseg_net
from semiseg_caw.models.wgm import build_weighting
from semiseg_caw.warn import warn


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
            ``aux_lr_scale`` times the learning rate), fine-tune only its ``decoder`` and
            heads (its encoder fixed: no backward pass through it, a cheaper step), or keep
            it ``frozen``.
        layercam_layer: with ``aux_source: layercam``, the encoder stage(s) of the LayerCAM
            maps: the ``deepest``, the ``penultimate`` (finer), or both ``fused`` (see
            ``semiseg_caw.models.cam.layercam``); refused with another ``aux_source``.
        cache_aux_maps: with a fixed auxiliary model (``aux_mode: frozen``, or
            ``layercam``), compute every image's auxiliary map once at the start of
            ``fit`` and have the data module serve it (training maps get the images'
            flips and warps, not their intensity changes), instead of running the
            auxiliary model in every step. Needs a ``SemiSegDataModule``.
        cuda_graphs: on CUDA, capture the training step's objective (networks, loss
            terms and weighting, forward and backward) as one CUDA graph at the first
            training step, which removes most kernel-launch overhead of small networks
            like MALUNet. When that capture fails, graph the backbone (and a fine-tuned
            auxiliary model) alone; when that fails too, run eager; each with a warning.
            Static shapes: other batch shapes and evaluation run eager; graphs are captured
            under the trainer's precision (as a training step runs). Does nothing on a CPU or with
            gradient accumulation (a warning says so). The stage-1 run inside ``fit``
            inherits it.
        aux_output_skip: also add a trainable multiple (starting at 0) of the auxiliary
            map's logit to the backbone's mask logits (late fusion next to the input
            channel; see ``SemiSegCAWNet``).
        aux_dropout: in training, the probability that a sample's auxiliary map is replaced
            by zeros (the core model then segments it from the image alone). A core model
            given the map can settle for copying it and score about what the map scores;
            one that must also do without it has to learn from the image.
        aux_encoder: timm encoder of the auxiliary U-Net.
        stage1_checkpoint: ClassElevateSeg checkpoint to start from.
        stage1_epochs: epochs of the stage-1 run that ``fit`` starts when no
            checkpoint is given (None: as many as stage 2).
        stage1_loss_weights: loss weights of that stage-1 run, by term (``ce, bce,
            dice, cam, presence, consistency``; see ``ClassElevateSeg``); None keeps
            its defaults.
        stage1_presence_topk: the lesion-present term of that stage-1 run asks the mean of
            this fraction of a class-only lesion image's pixels (its most probable ones) to be
            high (``ClassElevateSeg``'s ``presence_topk``). Smaller asks less area of lesions
            that cover less of the image than that.
        stage1_pretrained: that stage-1 run starts its encoder from ImageNet weights
            (timm's; they must be downloadable or in the Hugging Face cache).
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
        pseudo_threshold: teacher probability above which (or below one minus which) a
            pixel of a class-only image becomes a pseudo-label.
        pseudo_teacher: where the ``pseudo`` term's targets come from: the auxiliary
            map (``aux``), or a mean teacher (``ema``): an exponential moving average of the
            backbone's weights, given the full auxiliary map, in eval mode. The map is
            only as good as stage 1; the averaged backbone improves with the core model.
        ema_decay: the mean teacher's decay per training batch (``pseudo_teacher: ema``).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        min_lr: final learning rate of the cosine schedule.
        max_bad_steps: non-finite losses tolerated (each skipped) before stopping. With
            fused AdamW they are counted on the device and read every
            ``trainer.log_every_n_steps`` steps and at the end of each epoch, so a run stops
            up to that many steps late.
        balance_classes: weigh the cross-entropy terms (``ce``, and ``aux``'s) by inverse
            class frequency in the training split, so that a rare class counts as much as a
            common one (DDTI: 58 low-risk to 363 suspicious images). Stage 1 inherits it.
        flip_tta: at validation, test, prediction and export, average the predictions
            for the image and its left-right mirror (see ``SegmentationTask.mirror_mean``):
            inference batches of twice the size. Off by default; stage 1 inherits it (so its
            best checkpoint is chosen the same way).
        keep_largest_lesion: at validation, test and prediction, keep only the largest
            predicted region of each mask (see ``semiseg_caw.postprocess``). Export leaves it
            out (the file's metadata says to apply it). Off by default; stage 1 inherits it.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        backbone: Literal["malunet", "unext"] = "malunet",
        aux_source: Literal["classelevate", "layercam", "none"] = "classelevate",
        aux_mode: Literal["finetune", "decoder", "frozen"] = "finetune",
        layercam_layer: Literal["deepest", "penultimate", "fused"] = "deepest",
        cache_aux_maps: bool = False,
        cuda_graphs: bool = False,
        aux_output_skip: bool = False,
        aux_dropout: float = 0.0,
        aux_encoder: str = "resnet18",
        stage1_checkpoint: str | None = None,
        stage1_epochs: int | None = None,
        stage1_loss_weights: dict[str, float] | None = None,
        stage1_presence_topk: float = 0.02,
        stage1_pretrained: bool = False,
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
        pseudo_teacher: Literal["aux", "ema"] = "aux",
        ema_decay: float = 0.99,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        min_lr: float = 1e-5,
        max_bad_steps: int = 20,
        balance_classes: bool = False,
        flip_tta: bool = False,
        keep_largest_lesion: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels, lr, weight_decay, min_lr, max_bad_steps)
        self.stage1_loaded = False
        self.aux_maps_cached = False  # set once cached maps are being served
        self._eval_mode_filter = None  # see on_fit_start

    # -- construction -------------------------------------------------------------------
    def configure_models(self) -> None:
        hp = self.hparams
        self.terms = terms = checked_terms(hp)
        self.net = build_semiseg_net(
            backbone=hp.backbone,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            aux_source=hp.aux_source,
            aux_encoder=hp.aux_encoder,
            aux_frozen=hp.aux_mode == "frozen" or hp.aux_source == "layercam",
            use_classifier=hp.classifier,
            classifier_hidden=hp.classifier_hidden,
            layercam_layer=hp.layercam_layer,
            output_skip=hp.aux_output_skip,
            aux_dropout=hp.aux_dropout,
            aux_encoder_frozen=hp.aux_source == "classelevate" and hp.aux_mode == "decoder",
        )
        ema = hp.pseudo_teacher == "ema"
        self.teacher = mean_teacher(self.net.backbone, hp.ema_decay) if ema else None
        extra = {"weights": hp.loss_weights} if hp.loss_weights else {}
        self.weighting = build_weighting(hp.weighting, terms, **extra)

    def load_stage1(self, path: str) -> None:
        """Load the auxiliary model's weights from a ClassElevateSeg checkpoint."""
        if self.net.aux_model is None:
            raise ValueError("aux_source is 'none': there is no auxiliary model to load")
        load_submodule(self.net.aux_model, path, prefix="net.")
        self.hparams.stage1_checkpoint = str(path)
        self.stage1_loaded = True

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        # Weights with the auxiliary model (a stage-2 checkpoint, by any route: ckpt_path,
        # load_from_checkpoint, by hand): the stage-1 file must not be read over them, nor
        # be needed at all once the run is copied elsewhere.
        if any(key.startswith("net.aux_model.") for key in state_dict):
            self.stage1_loaded = True
        return result

    def load_stage1_once(self) -> None:
        """Load ``stage1_checkpoint`` unless it or a stage-2 checkpoint is loaded already.

        Called when a loop starts, which Lightning does after restoring ``--ckpt_path``
        (``setup`` comes before the restore, when it is not known whether one follows).
        """
        path = self.hparams.stage1_checkpoint
        if path and not self.stage1_loaded:
            self.load_stage1(path)

    def on_validation_start(self) -> None:
        self.load_stage1_once()

    def on_test_start(self) -> None:
        self.load_stage1_once()
        self.warn_without_stage1("testing")

    def on_predict_start(self) -> None:
        self.load_stage1_once()
        self.warn_without_stage1("predicting")

    def warn_without_stage1(self, doing: str) -> None:
        """Evaluating a model whose auxiliary network never got weights (a fresh SemiSegCAW
        from Python: the CLI refuses untrained weights) gives maps of noise."""
        if self.net.aux_model is not None and not self.stage1_loaded:
            warn(
                f"{doing} a SemiSegCAW whose auxiliary ClassElevateSeg has no weights (no "
                "stage-1 checkpoint and no trained SemiSegCAW checkpoint loaded): load one with "
                "SemiSegCAW.load_from_checkpoint, or train it first",
                UserWarning,
            )

    # -- cached auxiliary maps -------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.load_stage1_once()  # the cached maps below are the loaded model's
        if self.net.aux_model is not None and not self.stage1_loaded:
            frozen = self.hparams.aux_mode == "frozen" or self.hparams.aux_source == "layercam"
            warn(
                "SemiSegCAW has no stage-1 weights: its auxiliary ClassElevateSeg starts "
                + (
                    "untrained and stays so (frozen): its maps are noise for the whole run"
                    if frozen
                    else "untrained"
                )
                + ". `semiseg-caw fit` trains stage 1 first; from Python give "
                "stage1_checkpoint= or run semiseg_caw.fit_stage1",
                UserWarning,
            )
        if self.hparams.cache_aux_maps:
            self.cache_aux_maps()
        self._eval_mode_filter = ignore_eval_mode_warning(self, self.net.fixed_aux_parts())

    def on_train_start(self) -> None:
        super().on_train_start()
        restore_eval_mode_warning(self._eval_mode_filter)  # Lightning has checked by now

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        restore_eval_mode_warning(self._eval_mode_filter)  # a fit that failed before training

    def cache_aux_maps(self, datamodule: Any = None, batch_size: int = 32) -> None:
        """Compute the fixed auxiliary model's map of every image of the data module's
        cache once (train, val and test) and have the data module serve them.

        Called at the start of ``fit`` when ``cache_aux_maps`` is set; steps then use a
        batch's ``aux_map`` instead of running the auxiliary model.
        """
        dm = datamodule if datamodule is not None else self.trainer.datamodule
        if not hasattr(dm, "set_aux_maps"):
            raise TypeError(
                "cache_aux_maps needs the data in a SemiSegDataModule (trainer.fit(model, "
                f"datamodule=...)), got {type(dm).__name__}"
            )
        if dm.data is None:
            dm.setup("fit")
        dm.set_aux_maps(self.compute_aux_maps(dm.data.cache.images, batch_size))
        self.aux_maps_cached = True

    @torch.no_grad()
    def compute_aux_maps(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Auxiliary maps, float32 (N, H, W) in [0, 1], of uint8 images (N, H, W).

        Runs on the module's device under the trainer's precision (as a validation step
        would), so cached and live maps agree.
        """
        if self.net.aux_model is None:
            raise RuntimeError("aux_source is 'none': there is no auxiliary model")
        trainer = self._trainer
        context = trainer.precision_plugin.forward_context if trainer is not None else nullcontext
        maps = np.empty(images.shape, dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([normalize(im, self.in_channels) for im in chunk]).to(self.device)
            with context():
                aux_map, _ = self.net.auxiliary(x)
            maps[start : start + len(chunk)] = aux_map[:, 0].float().cpu().numpy()
        return maps

    # -- CUDA graphs ------------------------------------------------------------------------
    def graph_networks(self, image: Tensor) -> list[str]:
        """The fallback scope of ``cuda_graphs``: the backbone, and a fine-tuned aux model."""
        net = self.net
        b, c, h, w = image.shape
        extra = 0 if net.aux_source == "none" else 1
        # (name, network, input shape, whether the input needs grad): a fine-tuned aux map
        # carries a gradient into the backbone's input, a fixed or cached one does not.
        targets = [("backbone", net.backbone, (b, c + extra, h, w), net.aux_trainable)]
        if net.aux_trainable:
            targets.append(("aux model", net.aux_model, (b, c, h, w), False))
        done: list[str] = []
        for name, module, shape, grad in targets:
            try:
                capture_cuda_graph(module, shape, grad, image.device)
            except Exception as err:
                warn_capture_failed(f"the {name}", err)
                continue
            done.append(name)
        return done

    def _batch_aux_map(self, batch: dict[str, Any]) -> Tensor | None:
        if not self.aux_maps_cached:
            return None
        return batch.get(AUX_MAP_KEY)

    @torch.no_grad()
    def aux_map(self, batch: dict[str, Any]) -> Tensor | None:
        """The auxiliary map (B, 1, H, W) the networks see for ``batch``: the cached one, or
        the auxiliary model's; None without an auxiliary model."""
        if self.net.aux_model is None:
            return None
        cached = self._batch_aux_map(batch)
        return cached if cached is not None else self.net.auxiliary(batch["image"])[0]

    # -- steps ----------------------------------------------------------------------------
    def forward(self, image: Tensor, aux_map: Tensor | None = None):
        return self.net(image, aux_map=aux_map)

    def evaluate_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        out = self.net(batch["image"], aux_map=self._batch_aux_map(batch))
        return out.mask_logits, out.class_logits

    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every active term, each averaged over the samples that have its target."""
        hp = self.hparams
        out = self.net(batch["image"], aux_map=self._batch_aux_map(batch))
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
            terms["ce"] = cross_entropy_loss(out.class_logits, label, weight=self.ce_weight())
        if "pseudo" in self.terms:
            class_only = batch["has_label"] & ~has_mask
            terms["pseudo"] = pseudo_label_loss(
                logits,
                self.pseudo_targets(batch["image"], out.aux_map),
                class_only,
                threshold=hp.pseudo_threshold,
            )
        if "aux" in self.terms:
            aux = out.aux_output
            terms["aux"] = (
                bce_loss(aux.mask_logits, mask, has_mask)
                + dice_loss(aux.mask_logits, mask, has_mask)
                + cross_entropy_loss(aux.class_logits, label, weight=self.ce_weight())
            )
        return terms

    @torch.no_grad()
    def pseudo_targets(self, image: Tensor, aux_map: Tensor) -> Tensor:
        """The probabilities the ``pseudo`` term learns from: the auxiliary map itself, or
        the mean teacher's prediction given the image and the whole (never dropped) map."""
        if self.teacher is None:
            return aux_map.detach()
        self.teacher.eval()  # the module's train() switches it back every epoch
        x = torch.cat([image, aux_map.to(image.dtype)], dim=1)
        return torch.sigmoid(self.teacher(x).mask_logits)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.teacher is not None:
            self.teacher.update_parameters(self.net.backbone)

    def graphed_modules(self) -> dict[str, torch.nn.Module]:
        modules = super().graphed_modules()
        if self.teacher is not None:  # read inside the objective: its weights are inputs too
            modules["teacher"] = self.teacher
        return modules

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        loss = super().training_step(batch, batch_idx)
        if self.logs_this_step():
            # Weights stay tensors on the device: `weights()` would copy them to the host (a
            # GPU sync) every step; the logger converts them only when it writes.
            weights = self.weighting.weight_tensor()
            named = zip(self.weighting.names, weights, strict=True)
            self.log_dict({f"wgm/{k}": w for k, w in named}, batch_size=batch["image"].shape[0])
        return loss

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
        if self.net.aux_trainable:
            groups.append(
                {
                    "params": [p for p in aux.parameters() if p.requires_grad],
                    "lr": self.hparams.lr * self.hparams.aux_lr_scale,
                }
            )
        return groups


def mean_teacher(backbone: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``backbone``'s weights and buffers (BatchNorm
    statistics included), updated by ``update_parameters`` after each step; no gradients."""
    teacher = AveragedModel(backbone, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return teacher.requires_grad_(False)
