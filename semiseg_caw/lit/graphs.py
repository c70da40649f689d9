"""CUDA-graph capture for training steps (``SemiSegCAW(cuda_graphs=True)``).

Small networks like MALUNet are launch-bound on a big GPU: the kernels are short and
Python issues them one by one. A CUDA graph replays a whole recorded forward and
backward with one launch. Two scopes, both through ``torch.cuda.make_graphed_callables``:

- :class:`GraphedObjective`: the whole objective of a step (networks, loss terms and
  loss weighting), tensors in, loss out. Only the optimiser, logging and the
  non-finite guard stay eager.
- :func:`capture_cuda_graph`: one network (the fallback when the objective cannot be
  captured, and the way to graph ClassElevateSeg alone).

A graph holds fixed shapes and addresses: other batch shapes, evaluation and
``no_grad`` run eager. Capture runs warm-up passes (the objective's on the first batch, a
network's on random inputs of its shape); buffers they update (BatchNorm statistics, DWA
sums) are put back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _restore_after(module: nn.Module, capture: Callable[[], Any]) -> Any:
    """Run ``capture`` and put ``module``'s buffers back as they were before it."""
    saved = [b.detach().clone() for b in module.buffers()]
    result = capture()
    with torch.no_grad():
        for before, buffer in zip(saved, module.buffers(), strict=True):
            buffer.copy_(before)
    return result


def capture_cuda_graph(
    module: nn.Module, shape: tuple[int, ...], requires_grad: bool, device: torch.device
) -> None:
    """Replay ``module``'s training forward and backward from a CUDA graph for inputs of
    ``shape``.

    The graphed path is taken only in train mode with grad enabled, for one tensor input of
    that shape whose ``requires_grad`` is ``requires_grad``; anything else runs the eager
    forward. The warm-up and capture passes run on random inputs.
    """
    eager = module.forward
    example = torch.randn(shape, device=device, requires_grad=requires_grad)
    _restore_after(
        module, lambda: torch.cuda.make_graphed_callables(module, (example,), num_warmup_iters=3)
    )
    graphed = module.forward

    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if (
            args
            or kwargs
            or not module.training
            or not torch.is_grad_enabled()
            or tuple(x.shape) != tuple(shape)
            or x.requires_grad != requires_grad
        ):
            return eager(x, *args, **kwargs)
        return graphed(x)

    module.forward = forward


class _Objective(nn.Module):
    """A step's objective as a module of positional tensors: what ``make_graphed_callables``
    takes. Holds the modules the objective runs (so their parameters are the graph's), not
    the task, whose eager objective it calls."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        keys: Sequence[str],
        objective: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]],
    ) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.keys = tuple(keys)
        self.__dict__["_objective"] = objective  # a bound method of the task: not a submodule

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        return self._objective(dict(zip(self.keys, tensors, strict=True)))


class GraphedObjective:
    """The objective of training batches shaped like ``batch``, replayed from one CUDA graph.

    Args:
        modules: every module the objective runs (networks, loss weighting); their
            parameters are the graph's static inputs.
        objective: the task's eager objective, from a batch dict to ``(loss, terms)``.
        batch: the first training batch; the graph is recorded for its keys (those of
            ``keys`` that it has), shapes, dtypes and device.
        keys: batch entries the objective reads.

    Calling it returns what ``objective`` returns, or None when a batch does not fit the
    graph (then run eager).
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        objective: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]],
        batch: dict[str, Any],
        keys: Sequence[str],
    ) -> None:
        self.keys = tuple(k for k in keys if isinstance(batch.get(k), Tensor))
        self.absent = tuple(k for k in keys if k not in self.keys)  # e.g. no cached maps
        self.layout = [(batch[k].shape, batch[k].dtype, batch[k].device) for k in self.keys]
        self.objective = _Objective(modules, self.keys, objective).train()
        example = tuple(batch[k].detach().clone() for k in self.keys)
        module = self.objective
        self.graphed = _restore_after(
            module,
            # allow_unused_input: a term set may leave parameters without a gradient (e.g.
            # the classifier when 'ce' is off); eager autograd leaves those at None too.
            lambda: torch.cuda.make_graphed_callables(
                module, example, num_warmup_iters=3, allow_unused_input=True
            ),
        )

    def fits(self, batch: dict[str, Any]) -> bool:
        """Whether ``batch`` has the keys, shapes, dtypes and device the graph was made for."""
        if any(isinstance(batch.get(k), Tensor) for k in self.absent):
            return False
        for key, (shape, dtype, device) in zip(self.keys, self.layout, strict=True):
            value = batch.get(key)
            if not (
                isinstance(value, Tensor)
                and value.shape == shape
                and value.dtype == dtype
                and value.device == device
            ):
                return False
        return True

    def __call__(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        if not torch.is_grad_enabled() or not self.fits(batch):
            return None
        return self.graphed(*(batch[k] for k in self.keys))
