"""The shared Lightning base: evaluation, metrics, optimiser and logging written once."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from semiseg_caw.data.transforms import AUX_MAP_KEY
from semiseg_caw.lit.batches import EVAL_KEYS, PREDICT_KEYS, TRAIN_KEYS, check_batch
from semiseg_caw.lit.checkpointing import TaskCheckpoints
from semiseg_caw.lit.graphs import GraphedObjective, capture_cuda_graph
from semiseg_caw.lit.guard import DeviceStepGuard
from semiseg_caw.lit.optim import adamw, cosine_schedule, schedule_length
from semiseg_caw.lit.skip_steps import SkipNonFiniteSteps
from semiseg_caw.losses import balanced_class_weights, bce_loss, dice_loss
from semiseg_caw.metrics import SegmentationMetrics, build_classification_metrics
from semiseg_caw.postprocess import keep_largest_region
from semiseg_caw.warn import warn

EVAL_LOOPS = ("val", "test")  # the loops that keep metrics
INPUT_MULTIPLE = 32  # what the image size must divide by: the networks downsample 2^5
# Batch entries a training objective may read (the inputs of its CUDA graph).
OBJECTIVE_KEYS = ("image", "mask", "has_mask", "label", "has_label", AUX_MAP_KEY)
# Batch entries ``flip_tta`` mirrors: what ``evaluate_batch`` reads.
MIRRORED_KEYS = ("image", AUX_MAP_KEY)


class SegmentationTask(TaskCheckpoints, SkipNonFiniteSteps, abc.ABC):
    """Base for the package's LightningModules.

    Subclasses build their networks (``self.net``) and loss weighting
    (``self.weighting``) in ``configure_models``, return ``(mask_logits,
    class_logits)`` from ``evaluate_batch`` and named loss terms from
    ``loss_terms``. The training step (objective, logging, CUDA graphs when the
    ``cuda_graphs`` hyper-parameter is set), validation, test and prediction, metrics and
    the optimiser live here; skipping non-finite steps in ``semiseg_caw.lit.skip_steps``,
    saving and loading in ``semiseg_caw.lit.checkpointing``.

    Batches are dicts of ``image``, ``mask``, ``has_mask``, ``label`` and ``has_label``
    (``semiseg_caw.lit.batches``); the first of each loop is checked.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        min_lr: float = 1e-5,
        max_bad_steps: int = 20,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        # Written so that NaN fails them too (every comparison with NaN is false).
        if not (0 < lr < float("inf") and 0 <= min_lr <= lr):
            raise ValueError(
                f"need 0 <= min_lr <= lr and lr a finite number > 0, got lr={lr}, min_lr={min_lr}"
            )
        # AdamW would refuse a negative decay only when the optimiser is built, without the name.
        if not 0 <= weight_decay < float("inf"):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
        if max_bad_steps < 0:
            raise ValueError(
                f"max_bad_steps must be >= 0 (0: stop at the first), got {max_bad_steps}"
            )
        # Records the init arguments of the subclass too: they are the config schema.
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.bad_steps = 0
        # The names of the class outputs, as trained (saved in checkpoints; None: unknown).
        self.class_names: list[str] | None = None
        # The data module's image size it was fitted at (from its checkpoint, or a fit here;
        # None: unknown): what export_onnx exports at unless told otherwise.
        self.trained_image_size: int | None = None
        self._graphs_tried = False
        self._checked_loops: set[str] = set()  # loops whose first batch was checked
        self.cuda_graphed: list[str] = []  # parts of the step running from CUDA graphs
        self.__dict__["_graphed_objective"] = None  # not a submodule: no state of its own
        self._device_guard: DeviceStepGuard | None = None  # the sync-free non-finite guard
        # Class weights of the cross-entropy terms with ``balance_classes``, from the training
        # split's counts in ``setup`` (not saved: a resumed run counts again).
        self.register_buffer("class_weight", torch.ones(num_classes), persistent=False)
        self.configure_models()
        self.configure_metrics()

    # -- to be provided by subclasses (abstract: the CLI lists only concrete tasks) -------
    @abc.abstractmethod
    def configure_models(self) -> None:
        """Build the networks (and the loss weighting) from ``self.hparams``."""

    @abc.abstractmethod
    def evaluate_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Segmentation logits (B, 1, H, W) and class logits (B, K) or None of a batch
        (``image``, and whatever else the task uses, e.g. a cached ``aux_map``)."""

    @abc.abstractmethod
    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every active loss term of a training batch, by the names of ``self.weighting``."""

    def ce_weight(self) -> Tensor | None:
        """The class weights for cross-entropy terms: None (plain mean) unless
        ``balance_classes``."""
        return self.class_weight if self.hparams.get("balance_classes") else None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; by default one group of every parameter."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # -- metrics ------------------------------------------------------------------------
    def configure_metrics(self) -> None:
        self.seg_metrics = torch.nn.ModuleDict({s: SegmentationMetrics() for s in EVAL_LOOPS})
        self.cls_metrics = torch.nn.ModuleDict(
            {s: build_classification_metrics(self.num_classes) for s in EVAL_LOOPS}
        )
        # The loss as a metric, not self.log(sync_dist=True): Lightning averages the
        # processes' image counts as integers, wrong when their shares differ (5, 4 -> 4).
        self.eval_loss = torch.nn.ModuleDict({s: MeanMetric() for s in EVAL_LOOPS})

    def evaluate(
        self, batch: dict[str, Any], postprocess: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """What validation, test, prediction and export read: ``evaluate_batch`` with the
        inference settings among the hyper-parameters: ``flip_tta`` (see ``mirror_mean``)
        and, unless ``postprocess`` is False (export: it runs on the host),
        ``keep_largest_lesion`` (see ``semiseg_caw.postprocess``).

        Always an inference pass, without gradients and in eval mode: a model in training
        mode (as ``load_from_checkpoint`` and ``trainer.fit`` hand it back) is evaluated in
        eval mode and handed back as it was, its BatchNorm statistics untouched.
        """
        with self.eval_mode(), torch.no_grad():
            if self.hparams.get("flip_tta"):
                mask_logits, class_logits = self.mirror_mean(batch)
            else:
                mask_logits, class_logits = self.evaluate_batch(batch)
            if postprocess and self.hparams.get("keep_largest_lesion"):
                mask_logits = keep_largest_region(mask_logits)
        return mask_logits, class_logits

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Eval mode inside the block, and every module's own mode back after it (a frozen
        auxiliary model stays in eval mode when the rest trains). Nothing to do in eval mode,
        as in validation, test and prediction."""
        if not self.training:
            yield
            return
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode
            self._buffer_modules = None  # as after train(): found again when needed

    def mirror_mean(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """The mean of ``evaluate_batch``'s predictions for the image and for its left-right
        mirror (flipped back).

        Image and mirror go through the networks as one batch. Probabilities are averaged
        (per pixel for the mask, softmax for the class) and returned as logits, so a
        threshold of 0.5 applies to the mean probability. Training flips left-right too;
        ultrasound is never flipped upside down, so neither is the test image.
        """
        n = batch["image"].shape[0]
        both = {k: torch.cat([batch[k], batch[k].flip(-1)]) for k in MIRRORED_KEYS if k in batch}
        mask_logits, class_logits = self.evaluate_batch(both)
        mask_prob = torch.sigmoid(mask_logits.float())
        mask_prob = (mask_prob[:n] + mask_prob[n:].flip(-1)) / 2
        if class_logits is not None:
            class_prob = torch.softmax(class_logits.float(), dim=1)
            class_logits = torch.log((class_prob[:n] + class_prob[n:]) / 2)
        return torch.logit(mask_prob, eps=1e-7), class_logits

    def _shared_eval_step(self, batch: dict[str, Any], stage: str) -> None:
        mask_logits, class_logits = self.evaluate(batch)
        mask, has_mask = batch["mask"], batch["has_mask"]
        self.seg_metrics[stage].update(mask_logits, mask, has_mask)
        if class_logits is not None:
            self.cls_metrics[stage].update(class_logits, batch["label"])
        if has_mask.any():
            loss = bce_loss(mask_logits, mask, has_mask) + dice_loss(mask_logits, mask, has_mask)
            self.eval_loss[stage].update(loss.detach(), weight=has_mask.sum())
        else:  # weightless: a DDP process whose share holds no mask still computes the mean
            self.eval_loss[stage].update(mask_logits.new_zeros(()), weight=0)

    def _log_epoch_metrics(self, stage: str) -> None:
        if self._trainer is not None and self._trainer.sanity_checking:
            # Lightning drops what the sanity check logs; its few batches, often of one class
            # (BUSI's validation split lists benign images first), would only warn.
            self.seg_metrics[stage].reset()
            self.cls_metrics[stage].reset()
            self.eval_loss[stage].reset()
            return
        seg = self.seg_metrics[stage]
        # No masked sample seen: pooled Dice would read 1.0 (0/0), which must not pass as a
        # score. Counted over every process: computing syncs them, so all must take the same
        # branch (one whose share held no mask crashed DDP's collectives, or hung them).
        seen = seg["per_image"].count.clone()
        if self._trainer is not None:
            seen = self._trainer.strategy.reduce(seen, reduce_op="sum")
        values = dict(seg.compute()) if seen > 0 else {}
        if values:  # the loss, too, is of the masked images
            values["loss"] = self.eval_loss[stage].compute()
        # Prefixed: the pooled segmentation metrics have an `accuracy` (of pixels) too. Not
        # computed for a model without a classifier: torchmetrics warns of a compute before
        # any update (every epoch of the baselines).
        if self.cls_metrics[stage].update_called:
            cls = self.cls_metrics[stage].compute()
            values.update({f"cls_{k}": v for k, v in cls.items()})
        # The values are the same on every process (the metrics synced their states);
        # sync_dist tells Lightning so, which warned once per metric under DDP otherwise.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True)
        self.seg_metrics[stage].reset()
        self.cls_metrics[stage].reset()
        self.eval_loss[stage].reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        mask_logits, class_logits = self.evaluate(batch)
        out = {"mask_prob": torch.sigmoid(mask_logits), "id": batch.get("id")}
        if class_logits is not None:
            out["class_prob"] = torch.softmax(class_logits, dim=1)
        for key in ("path", "orig_size"):
            if key in batch:
                out[key] = batch[key]
        return out

    def setup(self, stage: str) -> None:
        # Every fit, validate, test and predict checks its loops' first batches again: a
        # model fitted before may now get another loader. (Here, as subclasses take the
        # on_*_start hooks.)
        self._checked_loops.clear()
        # A data module that does not fit the model: say so before the first batch, naming
        # the options rather than a layer deep in the step.
        data = getattr(self._trainer, "datamodule", None)
        size = getattr(data, "image_size", None)
        if isinstance(size, int) and size % INPUT_MULTIPLE:  # the networks halve it 5 times
            raise ValueError(
                f"data.image_size must be a multiple of {INPUT_MULTIPLE}, got {size} "
                f"(e.g. {max(INPUT_MULTIPLE, size // INPUT_MULTIPLE * INPUT_MULTIPLE)})"
            )
        channels = getattr(data, "in_channels", self.in_channels)
        if channels != self.in_channels:
            raise ValueError(
                f"the data module gives {channels}-channel images, the model takes "
                f"in_channels={self.in_channels}"
            )
        classes = getattr(data, "num_classes", self.num_classes)
        if stage != "predict" and classes != self.num_classes:  # a folder has no classes
            raise ValueError(
                f"the data module has {classes} classes "
                f"({', '.join(getattr(data, 'class_names', []))}), the model num_classes="
                f"{self.num_classes}"
            )
        if stage == "fit" and isinstance(size, int):
            self.trained_image_size = size
            # One image of the trained size: Lightning's model summary then counts the
            # forward's FLOPs (without it, it prints 'Total FLOPs: 0'). In the dtype of the
            # trainer's batches, which the summary does not convert (e.g. 'bf16-true').
            example = torch.zeros(1, self.in_channels, size, size)
            self.example_input_array = self._trainer.precision_plugin.convert_input(example)
        if stage == "fit" and self.hparams.get("balance_classes"):
            self._set_class_weights(data)

    def _set_class_weights(self, data: Any) -> None:
        counts = getattr(data, "class_counts", None)
        if counts is None:
            raise ValueError(
                "balance_classes needs the training split's class counts: fit with a data "
                "module that has class_counts(), e.g. SemiSegDataModule"
            )
        counts = counts("train")
        if len(counts) != self.num_classes:
            raise ValueError(
                f"class_counts gave {len(counts)} counts for {self.num_classes} classes"
            )
        with torch.no_grad():
            self.class_weight.copy_(balanced_class_weights(counts))
        absent = [i for i, n in enumerate(counts) if n == 0]
        if absent:
            warn(
                f"balance_classes: class(es) {absent} have no labelled training image", UserWarning
            )

    # -- training step -------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The training objective and the detached ``(K,)`` vector of its loss terms (in
        ``self.weighting.names`` order), replayed from the CUDA graph when one fits."""
        graphed = self.__dict__["_graphed_objective"]
        if graphed is not None and self.training:
            out = graphed(batch)
            if out is not None:
                return out
        return self.eager_objective(batch)

    def eager_objective(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``objective`` computed op by op (and what its CUDA graph records)."""
        stacked = self.weighting.stack(self.loss_terms(batch))
        loss = self.weighting.combine(stacked)
        if self._device_guard is not None and self.training:
            self._device_guard.after_forward(loss)
        return loss, stacked.detach()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        loss, terms = self.objective(batch)
        bs = batch["image"].shape[0]
        if self.logs_this_step():
            named_terms = zip(self.weighting.names, terms, strict=True)
            self.log_dict({f"train/{k}": v for k, v in named_terms}, batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        if self._device_guard is not None:
            return loss  # a non-finite one is skipped by the optimiser, counted on the device
        return self.guard_loss(loss)

    def logs_this_step(self) -> bool:
        """Whether the loggers get this training step's values (every ``log_every_n_steps``).

        Values logged on other steps are dropped by Lightning, after ~0.5 ms of host work
        each: a step's loss terms and WGM weights take a large part of a fast GPU's step.
        The loss itself is logged every step, for the progress bar.
        """
        connector = getattr(self._trainer, "_logger_connector", None)
        return getattr(connector, "should_update_logs", True)

    # -- the first batch of each loop is checked ------------------------------------------
    def _check_first_batch(self, batch: Any, loop: str, keys: tuple[str, ...]) -> None:
        if loop not in self._checked_loops:
            check_batch(batch, keys, self.in_channels, self.num_classes, self.dtype)
            self._checked_loops.add(loop)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0):
        self._check_first_batch(batch, "val", EVAL_KEYS)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check_first_batch(batch, "test", EVAL_KEYS)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0):
        self._check_first_batch(batch, "predict", PREDICT_KEYS)

    # -- CUDA graphs ----------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._check_first_batch(batch, "train", TRAIN_KEYS)
        if self._device_guard is None:
            self._device_guard = self._make_device_guard()
        if self.hparams.get("cuda_graphs") and not self._graphs_tried:
            self._graphs_tried = True
            if self.trainer.accumulate_grad_batches > 1:
                # A graph hands back gradients in its own static memory; summing them over
                # several replays into .grad would alias that memory and come out wrong.
                warn(
                    "cuda_graphs is not used with trainer.accumulate_grad_batches > 1; "
                    "training runs eager",
                    UserWarning,
                )
                return
            # Under the precision of a training step: a graph captured outside autocast
            # would replay float32 kernels in a bf16-mixed or 16-mixed run.
            with self.trainer.precision_plugin.train_step_context():
                self.cuda_graphed = self.capture_cuda_graphs(batch)
            if self._device_guard is not None:  # the capture's warm-up passes ran it too
                self._device_guard.reset(self.bad_steps)

    def capture_cuda_graphs(self, batch: dict[str, Any], whole_objective: bool = True) -> list[str]:
        """Graph the training objective for batches shaped like ``batch`` (or, when that
        fails or ``whole_objective`` is False, the networks alone, see ``graph_networks``);
        returns the names of the parts graphed."""
        image = batch["image"]
        if image.device.type != "cuda":
            warn(
                f"cuda_graphs applies on CUDA only; training on {image.device.type} runs eager",
                UserWarning,
            )
            return []
        if whole_objective:
            try:
                self.__dict__["_graphed_objective"] = GraphedObjective(
                    self.graphed_modules(),
                    self.eager_objective,
                    batch,
                    OBJECTIVE_KEYS,
                )
                return ["objective"]
            except Exception as err:  # capture fails in many ways; the fallbacks still work
                warn_capture_failed("the objective", err)
        return self.graph_networks(image)

    def graphed_modules(self) -> dict[str, torch.nn.Module]:
        """Every module the training objective runs: their weights are the graph's inputs."""
        return {"net": self.net, "weighting": self.weighting}

    def graph_networks(self, image: Tensor) -> list[str]:
        """The fallback scope: graph ``self.net`` for inputs shaped like ``image``."""
        try:
            capture_cuda_graph(self.net, tuple(image.shape), False, image.device)
        except Exception as err:
            warn_capture_failed("the network", err)
            return []
        return ["network"]

    def configure_optimizers(self) -> dict[str, Any]:
        # Not fused with gradient clipping: fused AdamW unscales fp16 gradients inside
        # step(), which Lightning refuses together with clipping.
        clipping = self._trainer is not None and self._trainer.gradient_clip_val
        optimizer = adamw(
            self.parameter_groups(), self.hparams.lr, self.hparams.weight_decay, not clipping
        )
        length, interval = schedule_length(self._trainer)
        scheduler = cosine_schedule(optimizer, length, self.hparams.min_lr / self.hparams.lr)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }


def warn_capture_failed(what: str, err: Exception) -> None:
    warn(
        f"cuda_graphs: capturing {what} failed, it runs eager ({type(err).__name__}: {err})",
        RuntimeWarning,
    )
