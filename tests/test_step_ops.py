"""Host syncs and operator counts of a training step (benchmarks/step_ops.py, issue 6)."""

from __future__ import annotations

import pytest
import torch
from scripts import load_script

from semiseg_caw import SemiSegDataModule

step_ops = load_script("step_ops")


def test_counter_sees_every_kind_of_host_sync() -> None:
    x = torch.arange(4.0)
    with step_ops.OpCounter() as counter:
        y = x * 2 + 1  # device work only
    assert sum(counter.syncs.values()) == 0 and counter.ops["mul"] == 1
    for sync in (
        lambda: y.sum().item(),
        lambda: bool(y.max() > 0),
        lambda: y.tolist(),
        lambda: y.cpu().tolist(),
        lambda: y[y > 2],
    ):
        with step_ops.OpCounter() as counter:
            sync()
        assert sum(counter.syncs.values()) == 1, counter.syncs
    assert torch.Tensor.tolist(torch.ones(2)) == [1.0, 1.0]  # methods restored on exit


@pytest.mark.parametrize("variant", ["malunet", "caw-finetune"])
def test_a_training_step_makes_no_host_sync(variant: str) -> None:
    # A host sync (a logged weight copied to the host, a boolean index in a loss, a finite
    # check of the loss) would stall a GPU every step; the non-finite guard works on the
    # device (semiseg_caw/lit/guard.py) and its count is read on logging steps only.
    dm = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=24, class_only=4)
    row = step_ops.count_variant(variant, dm, step=1)
    assert row["syncs"] == 0, row["sync_sites"]
    assert 0 < row["ops_in_graphed_networks"] < row["ops_in_graphed_objective"] < row["ops"]
