"""Label budgets: the images whose masks are withheld (counted or a fraction, stratified,
seeded, nested), and the training samples under each budget mode."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from semiseg_caw.data import Sample, apply_budget, select_class_only


def _train(n: int = 100) -> list[Sample]:
    samples = [
        Sample(id=f"t{i:03d}", image=None, label=int(i % 4 == 0), has_mask=True) for i in range(n)
    ]
    samples.append(Sample(id="m0", image=None, label=None, has_mask=True))  # mask-only
    samples.append(Sample(id="c0", image=None, label=0, has_mask=False))  # already class-only
    return samples


def test_class_only_selection_count_fraction_stratified_deterministic():
    train = _train()
    chosen = select_class_only(train, 20, seed=42)
    assert len(chosen) == 20 and chosen == sorted(chosen)
    assert chosen == select_class_only(train, 20, seed=42)
    assert chosen != select_class_only(train, 20, seed=1)
    label = {s.id: s.label for s in train}
    assert Counter(label[i] for i in chosen) == {0: 15, 1: 5}
    assert "m0" not in chosen and "c0" not in chosen
    assert len(select_class_only(train, 0.25, seed=42)) == 25
    assert set(chosen) <= set(select_class_only(train, 40, seed=42))  # nested budgets
    assert select_class_only(train, 0, seed=42) == []


def test_budget_too_large_or_invalid():
    with pytest.raises(ValueError, match="asks for 101 .* only 100"):
        select_class_only(_train(), 101, seed=0)
    with pytest.raises(ValueError, match="count or a fraction"):
        select_class_only(_train(), 2.5, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        select_class_only(_train(), -1, seed=0)
    with pytest.raises(ValueError, match=">= 0, got nan"):
        select_class_only(_train(), float("nan"), seed=0)
    with pytest.raises(ValueError, match="count or a fraction in \\(0, 1\\), got inf"):
        select_class_only(_train(), float("inf"), seed=0)


def test_class_only_one_point_zero_is_refused_as_ambiguous():
    train = _train()
    with pytest.raises(
        ValueError, match=r"class_only=1.0 is ambiguous: give a count as an integer"
    ):
        select_class_only(train, 1.0, seed=0)
    with pytest.raises(ValueError, match="class_only=1.0 is ambiguous"):
        select_class_only(train, np.float64(1.0), seed=0)
    assert len(select_class_only(train, 1, seed=0)) == 1  # an integer is a count
    assert len(select_class_only(train, np.int64(1), seed=0)) == 1
    assert len(select_class_only(train, 2.0, seed=0)) == 2  # larger whole floats are counts


def test_budget_modes():
    train = _train()
    semi = apply_budget(train, 30, "semi", seed=0)
    assert len(semi) == len(train)
    assert sum(s.kind == "class_only" for s in semi) == 31  # 30 withheld + the one already
    reduced = apply_budget(train, 30, "reduced", seed=0)
    assert len(reduced) == len(train) - 30
    withheld = {s.id for s in semi if s.kind == "class_only"} - {"c0"}
    assert not withheld & {s.id for s in reduced}
    full = apply_budget(train, 30, "full", seed=0)
    assert full == train
    assert apply_budget(train, 10**6, "full", seed=0) == train  # budget ignored
    with pytest.raises(ValueError, match="budget_mode"):
        apply_budget(train, 1, "half", seed=0)
