"""The optimiser and learning-rate schedule every task trains with: AdamW, annealed from
``lr`` to ``min_lr`` on a cosine over the run."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from semiseg_caw.warn import warn


def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float, fused: bool):
    """AdamW over ``groups``; fused where asked and the device supports it.

    Fused AdamW updates every parameter in one kernel (CPU and CUDA, torch >= 2.4): on the
    small MALUNet the default per-tensor loop costs more than the step itself. Elsewhere,
    the foreach kernels."""
    options = {"lr": lr, "weight_decay": weight_decay}
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **options)
        except RuntimeError:  # a device or dtype without a fused kernel
            pass
    return torch.optim.AdamW(groups, foreach=True, **options)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, length: int | None, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's lr times a factor going from 1 to ``min_ratio`` over ``length`` steps of
    the scheduler (constant when None). A LambdaLR (not CosineAnnealingLR) so that every
    group, e.g. the auxiliary model's smaller lr, anneals in proportion."""

    def cosine(step: int) -> float:
        if length is None:
            return 1.0
        progress = min(step, length) / length
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def schedule_length(trainer: L.Trainer | None) -> tuple[int | None, str]:
    """The cosine schedule's length and unit: ``max_epochs`` epochs where the trainer has
    them, else its optimiser steps (a run bounded by ``max_steps`` has ``max_epochs`` -1);
    None (a constant lr) when neither is known."""
    if trainer is None:
        return None, "epoch"  # no run to anneal over, e.g. a module built to inspect
    epochs = trainer.max_epochs  # None until a fit resolves it
    if epochs is not None and epochs > 0:
        return epochs, "epoch"
    if epochs == 0:
        return None, "epoch"  # nothing trains (the CLI says so): no schedule to warn about
    steps = trainer.estimated_stepping_batches if epochs == -1 else math.inf
    if math.isfinite(steps) and steps > 0:
        return int(steps), "step"
    warn(
        "the run has no max_epochs or max_steps (e.g. only max_time), so the cosine "
        "schedule has no length: the learning rate stays at lr; set max_epochs or "
        "max_steps to anneal it to min_lr",
        UserWarning,
    )
    return None, "epoch"
