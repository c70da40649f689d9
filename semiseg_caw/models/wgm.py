"""WGM, the weight generation module: named loss terms in, one training objective out.

Every scheme sits behind :class:`LossWeighting`, so a config switch picks one:

- ``static``: fixed weights;
- ``uncertainty`` (alias ``wgm``, the default): trainable ``s_i``, objective
  ``sum_i exp(-s_i) * L_i + s_i`` (Kendall et al. 2018, without the 1/2 factors);
- ``imtl``: IMTL-L loss scaling, objective ``sum_i exp(s_i) * L_i - s_i``
  (Liu et al. 2021). :func:`imtl_gradient_weights` implements IMTL-G, the combination
  of shared-parameter gradients, but no training option uses it yet: ``imtl`` trains
  with IMTL-L alone;
- ``dwa``: dynamic weight average (Liu et al. 2019) from the ratio of recent
  epoch-mean losses.

The trainable ``s_i`` are clamped, so no weight can collapse to zero or explode.
They should go in an optimiser group without weight decay, which would pull every
weight towards 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DWAWeighting",
    "IMTLWeighting",
    "LossWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "build_weighting",
    "imtl_gradient_weights",
]


class LossWeighting(nn.Module):
    """Turns named loss terms into one objective.

    Args:
        names: the loss terms, in a fixed order; ``forward`` needs exactly these.
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        names = tuple(names)
        if not names:
            raise ValueError("names must hold at least one loss term")
        if len(set(names)) != len(names):
            raise ValueError(f"loss term names must be unique, got {names}")
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"loss term names must be non-empty strings, got {names}")
        self.names = names

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The scalar objective from a mapping of every term's scalar loss."""
        return self.combine(self.stack(losses))

    def combine(self, stacked: Tensor) -> Tensor:
        """The objective from the ``(K,)`` vector of losses in the order of ``names``."""
        raise NotImplementedError

    def weight_tensor(self) -> Tensor:
        """The current effective weights, ``(K,)``, detached (loggable without a sync)."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """The current effective weight of each term, for logging every step."""
        return dict(zip(self.names, self.weight_tensor().cpu().tolist(), strict=True))

    def stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The ``(K,)`` vector of losses in the order of ``names``; KeyError on a mismatch."""
        missing = [n for n in self.names if n not in losses]
        extra = sorted(set(losses) - set(self.names))
        if missing or extra:
            raise KeyError(
                f"loss terms do not match the weighting's names {list(self.names)}: "
                f"missing {missing}, unexpected {extra}"
            )
        values = [torch.as_tensor(losses[n]) for n in self.names]
        for name, value in zip(self.names, values, strict=True):
            if value.numel() != 1:
                raise ValueError(f"loss term {name!r} must be a scalar, got {tuple(value.shape)}")
        return torch.stack([v.reshape(()).float() for v in values])

    def extra_repr(self) -> str:
        return f"names={list(self.names)}"


class StaticWeighting(LossWeighting):
    """Fixed weights: the objective is ``sum_i w_i * L_i``.

    Args:
        names: the loss terms.
        weights: weight per term (>= 0); terms not given get 1.0.
    """

    def __init__(self, names: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(names)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise ValueError(
                f"weights given for unknown terms {unknown}; names: {list(self.names)}"
            )
        values = [float(weights.get(n, 1.0)) for n in self.names]
        bad = {
            n: w
            for n, w in zip(self.names, values, strict=True)
            if not (w >= 0 and math.isfinite(w))
        }
        if bad:
            raise ValueError(f"static weights must be finite and >= 0, got {bad}")
        self.register_buffer("_weights", torch.tensor(values))

    def combine(self, stacked: Tensor) -> Tensor:
        return (self._weights.to(stacked.device) * stacked).sum()

    def weight_tensor(self) -> Tensor:
        return self._weights.detach().clone()


class _InwardClamp(torch.autograd.Function):
    """Clamp whose gradient can still pull an out-of-range value back into range.

    A plain clamp has zero gradient outside ``[lo, hi]``, so a parameter that an
    optimiser step pushed past the bound would stay stuck there.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        inside = (x >= ctx.lo) & (x <= ctx.hi)
        # Gradient descent moves x by -grad: keep only the gradient that points inwards.
        inward = ((x > ctx.hi) & (grad > 0)) | ((x < ctx.lo) & (grad < 0))
        return grad * (inside | inward).to(grad.dtype), None, None


def _check_clamp(clamp: tuple[float, float], init: float) -> tuple[float, float]:
    lo, hi = (float(c) for c in clamp)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"clamp must be two finite numbers (lo, hi) with lo < hi, got {clamp}")
    if not lo <= init <= hi:
        raise ValueError(f"init {init} must lie inside clamp {clamp}")
    return lo, hi


class _LogScaleWeighting(LossWeighting):
    """Shared part of the weightings with one trainable, clamped log-scale per term."""

    def __init__(
        self, names: Sequence[str], init: float = 0.0, clamp: tuple[float, float] = (-4.0, 4.0)
    ) -> None:
        super().__init__(names)
        self.clamp = _check_clamp(clamp, init)
        self.log_scales = nn.Parameter(torch.full((len(self.names),), float(init)))

    def clamped(self) -> Tensor:
        """The ``(K,)`` log-scales ``s_i`` inside the clamp range."""
        return _InwardClamp.apply(self.log_scales, *self.clamp)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clamp={self.clamp}"


class UncertaintyWeighting(_LogScaleWeighting):
    """Uncertainty weighting, the default WGM: objective ``sum_i exp(-s_i) * L_i + s_i``.

    For a constant loss ``L_i`` the optimum is ``s_i = log L_i``, i.e. ``w_i = 1 / L_i``.
    The weight ``w_i = exp(-s_i)`` stays in ``[exp(-hi), exp(-lo)]``.

    Args:
        names: the loss terms.
        init: initial ``s_i`` (0 gives weight 1).
        clamp: range of ``s_i``.
    """

    def combine(self, stacked: Tensor) -> Tensor:
        s = self.clamped()
        return (torch.exp(-s) * stacked + s).sum()

    def weight_tensor(self) -> Tensor:
        return torch.exp(-self.log_scales.detach().clamp(*self.clamp))


class IMTLWeighting(_LogScaleWeighting):
    """IMTL-L loss scaling: objective ``sum_i exp(s_i) * L_i - s_i``.

    Drives every scaled loss ``exp(s_i) * L_i`` towards 1. The weight
    ``w_i = exp(s_i)`` stays in ``[exp(lo), exp(hi)]``.

    Args:
        names: the loss terms.
        init: initial ``s_i`` (0 gives weight 1).
        clamp: range of ``s_i``.
    """

    def combine(self, stacked: Tensor) -> Tensor:
        s = self.clamped()
        return (torch.exp(s) * stacked - s).sum()

    def weight_tensor(self) -> Tensor:
        return torch.exp(self.log_scales.detach().clamp(*self.clamp))


def imtl_gradient_weights(grads: Sequence[Tensor], eps: float = 1e-12) -> Tensor:
    """IMTL-G: weights ``alpha`` (summing to 1) for combining shared-parameter gradients.

    The combined gradient ``g = sum_i alpha_i g_i`` has equal projections onto every
    unit gradient ``u_i = g_i / |g_i|`` (Liu et al., ICLR 2021, closed form
    ``alpha_{2..t} = g_1 U^T (D U^T)^{-1}`` with rows ``D_i = g_1 - g_i``,
    ``U_i = u_1 - u_i``). A pseudo-inverse covers degenerate (parallel) gradients.
    No training option calls it yet (``weighting: imtl`` is IMTL-L only).

    Args:
        grads: one gradient per task over the same shared parameters (any shape).
        eps: guards the norm of a zero gradient.

    Returns:
        ``(t,)`` weights in the dtype and device of the first gradient.
    """
    if len(grads) == 0:
        raise ValueError("imtl_gradient_weights needs at least one gradient")
    flat = torch.stack([g.detach().reshape(-1).double() for g in grads])  # (t, P)
    if len(grads) == 1:
        return torch.ones(1, dtype=grads[0].dtype, device=grads[0].device)
    units = flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)
    d = flat[:1] - flat[1:]  # (t-1, P)
    u = units[:1] - units[1:]  # (t-1, P)
    alpha_rest = flat[:1] @ u.T @ torch.linalg.pinv(d @ u.T)  # (1, t-1)
    alpha = torch.cat([1.0 - alpha_rest.sum(1), alpha_rest.reshape(-1)])
    return alpha.to(dtype=grads[0].dtype, device=grads[0].device)


class DWAWeighting(LossWeighting):
    """Dynamic weight average: ``w_i = K * softmax(r_i / T)``, ``r_i = L_i(t-1) / L_i(t-2)``.

    Uses epoch means of each loss, accumulated by ``forward`` in training mode;
    call :meth:`epoch_end` once per training epoch (on every rank; under DDP the
    means are averaged over ranks). Weights are 1 in the first two epochs. The
    term whose loss falls slowest gets the most weight. No trainable parameters.

    Args:
        names: the loss terms.
        temperature: softmax temperature ``T``; larger is closer to equal weights.
    """

    def __init__(self, names: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(names)
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        self.temperature = float(temperature)
        k = len(self.names)
        self.register_buffer("_weights", torch.ones(k))
        self.register_buffer("_epoch_sum", torch.zeros(k))
        self.register_buffer("_epoch_count", torch.zeros(()))
        self.register_buffer("_history", torch.ones(2, k))  # (t-2, t-1)
        self.register_buffer("_epochs_seen", torch.zeros((), dtype=torch.long))

    def combine(self, stacked: Tensor) -> Tensor:
        if self.training:
            self._epoch_sum += stacked.detach().to(self._epoch_sum)
            self._epoch_count += 1
        return (self._weights.to(stacked.device) * stacked).sum()

    def weight_tensor(self) -> Tensor:
        return self._weights.detach().clone()

    @torch.no_grad()
    def epoch_end(self) -> None:
        """Roll the epoch-mean losses into the history and recompute the weights."""
        total = torch.cat([self._epoch_sum, self._epoch_count.reshape(1)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        if total[-1] > 0:
            mean = total[:-1] / total[-1]
            self._history.copy_(torch.stack([self._history[1], mean]))
            self._epochs_seen += 1
            if self._epochs_seen >= 2:
                ratio = self._history[1] / self._history[0].clamp_min(1e-12)
                k = len(self.names)
                self._weights.copy_(k * torch.softmax(ratio / self.temperature, dim=0))
        self._epoch_sum.zero_()
        self._epoch_count.zero_()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"


_WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "wgm": UncertaintyWeighting,
    "imtl": IMTLWeighting,
    "dwa": DWAWeighting,
}


def build_weighting(name: str, names: Sequence[str], **kwargs: Any) -> LossWeighting:
    """The weighting called ``name`` (static, uncertainty/wgm, imtl, dwa) over ``names``."""
    key = name.lower()
    if key not in _WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of {sorted(_WEIGHTINGS)}")
    return _WEIGHTINGS[key](names, **kwargs)
