"""DeviceStepGuard: a non-finite step changes nothing, without reading the loss on the host."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semiseg_caw.lit.guard import DeviceStepGuard


def net_and_optimizer(fused: bool = True) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).train()
    kind = {"fused": True} if fused else {"foreach": True}
    return net, torch.optim.AdamW(net.parameters(), lr=0.1, **kind)


def step(net, optimizer, guard, x) -> None:
    loss = net(x).sum()
    guard.after_forward(loss)
    loss.backward()
    guard.before_step()
    optimizer.step()
    optimizer.zero_grad()


def state(net, optimizer) -> list[torch.Tensor]:
    """Weights, BatchNorm statistics and AdamW moments and step counts (not BatchNorm's
    num_batches_tracked, which only counts)."""
    moments = [t for s in optimizer.state.values() for t in s.values()]
    kept = [v for k, v in net.state_dict().items() if "num_batches" not in k]
    return [t.detach().clone() for t in [*kept, *moments]]


def test_a_non_finite_step_changes_nothing_and_is_counted() -> None:
    net, optimizer = net_and_optimizer()
    guard = DeviceStepGuard(list(net.buffers()), [optimizer], torch.device("cpu"), count=2)
    x = torch.randn(8, 4)
    step(net, optimizer, guard, x)  # a good step: everything moves
    before = state(net, optimizer)
    bad = x.clone()
    bad[0, 0] = float("nan")  # reaches the BatchNorm statistics too
    step(net, optimizer, guard, bad)
    after = state(net, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert guard.total() == 3
    step(net, optimizer, guard, x)
    assert not torch.equal(state(net, optimizer)[0], after[0]) and guard.total() == 3


def test_reset_and_close() -> None:
    net, optimizer = net_and_optimizer()
    guard = DeviceStepGuard(list(net.buffers()), [optimizer], torch.device("cpu"))
    assert optimizer.found_inf is guard.found_inf
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)  # e.g. put back after a graph capture's warm-up
    guard.reset(count=7)
    guard.found_inf.fill_(1.0)
    guard.before_step()  # a skipped step restores what reset kept
    assert torch.equal(net[1].running_mean, torch.full((4,), 5.0)) and guard.total() == 8
    guard.close()
    assert not hasattr(optimizer, "found_inf")


@pytest.mark.parametrize(("fused", "supported"), [(True, True), (False, False)])
def test_only_fused_adam_skips_on_the_flag(fused: bool, supported: bool) -> None:
    _, optimizer = net_and_optimizer(fused)
    assert DeviceStepGuard.supports(optimizer) is supported
    assert not DeviceStepGuard.supports(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0))
