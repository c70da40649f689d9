"""Training steps whose loss is not finite are skipped, and a run stops after too many.

Two guards do it, chosen per fit:

- the device guard (``semiseg_caw.lit.guard.DeviceStepGuard``), sync-free, where the
  optimiser can skip a step on a device flag: fused AdamW, one optimiser step per batch,
  no GradScaler;
- the host guard (``guard_loss``) everywhere else: one check of the loss per step.

Either way a skipped step changes nothing: no gradient reaches the weights, and the
buffers its forward pass updated (BatchNorm statistics, DWA sums) are put back as they were
after the last good step. ``bad_steps`` counts skips over the whole run and is saved in
checkpoints, so a resumed run keeps counting.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from semiseg_caw.lit.guard import DeviceStepGuard
from semiseg_caw.warn import warn


class SkipNonFiniteSteps(L.LightningModule):
    """The guards' Lightning hooks, for ``SegmentationTask``: it sets ``bad_steps`` (0)
    and ``_device_guard`` (None) in its ``__init__`` and has ``max_bad_steps`` among its
    hyper-parameters, says which steps log (``logs_this_step``), and its ``training_step``
    returns ``guard_loss(loss)`` when no device guard runs."""

    bad_steps: int
    _device_guard: DeviceStepGuard | None

    def _make_device_guard(self) -> DeviceStepGuard | None:
        """The device guard where the optimiser can skip a step on a device flag; None
        elsewhere (``guard_loss`` then checks each loss on the host)."""
        trainer = self.trainer
        optimizers = trainer.optimizers
        if (
            not self.automatic_optimization
            or trainer.accumulate_grad_batches > 1
            or getattr(trainer.precision_plugin, "scaler", None) is not None
            or not optimizers
            or not all(DeviceStepGuard.supports(o) for o in optimizers)
        ):
            return None
        return DeviceStepGuard(self._step_buffers(), optimizers, self.device, self.bad_steps)

    def on_train_start(self) -> None:
        # Close one left by a fit that failed: it holds its optimiser. (A new one is built at
        # the first batch, when every module that trains is in training mode.)
        self._close_device_guard()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._device_guard is not None:
            self._device_guard.before_step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The device count is read on logging steps and at the end of an epoch only.
        if self._device_guard is not None and (self.logs_this_step() or self.trainer.is_last_batch):
            self._count_skipped_steps(log=True)

    def on_train_end(self) -> None:
        if self._device_guard is not None:
            self._count_skipped_steps()
        self._close_device_guard()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._device_guard is not None:
            self._count_skipped_steps()
        checkpoint["bad_steps"] = self.bad_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.bad_steps = int(checkpoint.get("bad_steps", 0))

    def _close_device_guard(self) -> None:
        if self._device_guard is not None:
            self._device_guard.close()
            self._device_guard = None

    def _count_skipped_steps(self, log: bool = False) -> None:
        """Read the device guard's count; warn about new skips, stop after too many."""
        total = self._device_guard.total()
        new, self.bad_steps = total - self.bad_steps, max(total, self.bad_steps)
        if new <= 0:
            return
        if log:
            self.log("train/skipped_steps", float(total))
        self._report_bad_steps(
            f"{new} non-finite training loss(es) by global step {self.global_step}; those "
            "steps were skipped",
            total,
        )

    def _report_bad_steps(self, what: str, total: int) -> None:
        """Warn about skipped steps (``total`` in the run so far); stop after too many."""
        msg = f"{what} ({total}/{self.hparams.max_bad_steps} allowed)"
        if total > self.hparams.max_bad_steps:
            raise FloatingPointError(
                f"{msg}. Stopping: lower the learning rate, check the data, or raise max_bad_steps."
            )
        warn(msg, RuntimeWarning)

    # -- the host guard -------------------------------------------------------------------
    def guard_loss(self, loss: Tensor) -> Tensor | None:
        """Return None (skip the step) when the loss is not finite; give up after too many.

        A sync per step: used where the optimiser cannot skip a step on a device flag."""
        if torch.isfinite(loss).all():
            self._keep_buffers()
            return loss
        self.bad_steps += 1
        self._restore_buffers()
        self.log("train/skipped_steps", float(self.bad_steps))
        self._report_bad_steps(
            f"non-finite training loss at global step {self.global_step}; step skipped",
            self.bad_steps,
        )
        return None

    def train(self, mode: bool = True) -> SkipNonFiniteSteps:
        self._buffer_modules = None  # which modules train may change: found again when needed
        return super().train(mode)

    def _step_buffers(self) -> list[Tensor]:
        """The buffers a training step can change: those of modules in training mode (a
        frozen auxiliary model stays in eval mode, so its BatchNorm statistics are fixed).

        The modules are found once per ``train()``/``eval()``, not in every step (a walk
        over some 400 modules); their buffers are read each time, as ``.to()`` replaces them.
        """
        modules = getattr(self, "_buffer_modules", None)
        if modules is None:
            modules = [m for m in self.modules() if m.training and m._buffers]
            self._buffer_modules = modules
        return [b for m in modules for b in m._buffers.values() if b is not None]

    def _keep_buffers(self) -> None:
        """Copy the buffers as they are after a good step (a few thousand numbers)."""
        kept = getattr(self, "_kept_buffers", None)
        buffers = self._step_buffers()
        if kept is None or len(kept) != len(buffers):
            self._kept_buffers = [b.detach().clone() for b in buffers]
        elif buffers:
            with torch.no_grad():
                torch._foreach_copy_(kept, buffers)  # one kernel launch, not one per buffer

    def _restore_buffers(self) -> None:
        kept = getattr(self, "_kept_buffers", None)
        buffers = self._step_buffers()
        if kept is not None and len(kept) == len(buffers):
            if buffers:
                with torch.no_grad():
                    torch._foreach_copy_(buffers, kept)
        elif not all(torch.isfinite(b).all() for b in buffers if b.is_floating_point()):
            raise FloatingPointError(
                f"non-finite training loss at global step {self.global_step}, before any "
                "good step, left non-finite BatchNorm statistics: check the input data"
            )
