"""Skipping training steps whose loss is not finite, without a host sync in every step.

Asking "is this loss finite?" on the host (``if torch.isfinite(loss)``) makes the CPU wait
for the GPU to finish the step, so it cannot queue the next one meanwhile: small networks
then leave the GPU idle between steps. :class:`DeviceStepGuard` answers on the device:

- the fused AdamW kernel skips its whole update (weights, moments, step count) when the
  optimiser's ``found_inf`` tensor is 1, the mechanism ``torch.amp.GradScaler`` uses;
- the buffers a forward pass updates (BatchNorm statistics, DWA sums) are put back after
  the backward pass with a ``torch.where`` on the same flag (NaN-safe, unlike blends);
- the count of skipped steps stays on the device, and the task reads it only now and then.

The flag is set inside the training objective (a CUDA graph of it replays that); the rest
is a dozen small kernels before the optimiser step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class DeviceStepGuard:
    """Flags, counts and undoes non-finite training steps on the device.

    Args:
        buffers: the tensors a training forward pass may change (the floating-point ones are
            kept as they were after the last finite step, starting from their values now).
        optimizers: fused optimisers that honour ``found_inf`` (AdamW with ``fused=True``).
        device: where the flag and the count live.
        count: skipped steps so far (a resumed run goes on counting).
    """

    def __init__(
        self,
        buffers: Sequence[Tensor],
        optimizers: Sequence[torch.optim.Optimizer],
        device: torch.device,
        count: int = 0,
    ) -> None:
        # Buffers grouped by dtype, each group kept as one flat copy, and the views between
        # the two made once: the restore is four kernel launches per dtype, whatever the
        # number of buffers. (Modules update their buffers in place, so the views stay valid.)
        # Integer buffers only count (BatchNorm's num_batches_tracked) and are left alone.
        self.groups: dict[torch.dtype, list[Tensor]] = {}
        for buffer in buffers:
            if buffer.is_floating_point():
                self.groups.setdefault(buffer.dtype, []).append(buffer)
        self.flat_views = {d: [b.detach().view(-1) for b in g] for d, g in self.groups.items()}
        self.kept = {d: torch.cat(views) for d, views in self.flat_views.items()}
        self.kept_views = {
            d: [
                v.view_as(b)
                for v, b in zip(self.kept[d].split([b.numel() for b in g]), g, strict=True)
            ]
            for d, g in self.groups.items()
        }
        self.found_inf = torch.zeros((), device=device)
        self.count = torch.full((), count, dtype=torch.int64, device=device)
        self.optimizers = list(optimizers)
        for optimizer in self.optimizers:
            optimizer.found_inf = self.found_inf

    @staticmethod
    def supports(optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` skips its update on ``found_inf`` (fused Adam and AdamW)."""
        return bool(optimizer.defaults.get("fused")) and isinstance(optimizer, torch.optim.Adam)

    @torch.no_grad()
    def after_forward(self, loss: Tensor) -> None:
        """Flag a non-finite ``loss`` for the optimiser."""
        self.found_inf.copy_(~torch.isfinite(loss).all())

    @torch.no_grad()
    def before_step(self) -> None:
        """After the backward pass (which reads the BatchNorm statistics it saved): agree on
        the flag across processes (one bad process skips the step for all, as its gradients
        reached every process), count a skipped step, and put the buffers back as they were
        after the last finite step (or keep them, when this one is finite)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.found_inf, op=torch.distributed.ReduceOp.MAX)
        self.count.add_(self.found_inf.long())
        bad = self.found_inf.bool()
        for dtype, group in self.groups.items():
            kept = self.kept[dtype]
            kept.copy_(torch.where(bad, kept, torch.cat(self.flat_views[dtype])))
            torch._foreach_copy_(group, self.kept_views[dtype])

    def total(self) -> int:
        """Skipped steps so far (a host sync: call it rarely)."""
        return int(self.count.item())

    @torch.no_grad()
    def reset(self, count: int) -> None:
        """Start over from the buffers as they are now and ``count`` skipped steps (after
        graph capture, whose warm-up passes ran the guard on a copy of the first batch)."""
        for dtype, kept in self.kept.items():
            kept.copy_(torch.cat(self.flat_views[dtype]))
        self.count.fill_(count)
        self.found_inf.zero_()

    def close(self) -> None:
        """Take the flag off the optimisers (a later step without the guard is not skipped)."""
        for optimizer in self.optimizers:
            if getattr(optimizer, "found_inf", None) is self.found_inf:
                del optimizer.found_inf
