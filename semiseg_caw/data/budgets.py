"""Label budgets: which training images of a split lose their masks (a seeded,
class-stratified choice, nested across budgets of one seed), and what becomes of them:
kept as class-only samples, dropped, or given their masks after all."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from semiseg_caw.data.samples import Sample


def check_class_only(class_only: float) -> None:
    """A ValueError unless ``class_only`` is a count (0, 1, 2, ...) or a fraction in (0, 1).

    A float 1.0 is refused: as a fraction it would withhold every mask, as a count one.
    """
    if not class_only >= 0:  # NaN too
        raise ValueError(f"class_only must be >= 0, got {class_only}")
    if class_only == 1 and not isinstance(class_only, (int, np.integer)):
        raise ValueError(
            f"class_only={float(class_only)} is ambiguous: give a count as an integer "
            "(class_only=1 withholds one mask) or a fraction below 1"
        )
    if class_only >= 1 and not (class_only < float("inf") and float(class_only) == int(class_only)):
        raise ValueError(f"class_only must be a count or a fraction in (0, 1), got {class_only}")


def _budget_count(class_only: float, available: int) -> int:
    check_class_only(class_only)
    if 0 < class_only < 1:
        return int(round(class_only * available))
    return int(class_only)


def select_class_only(samples: Sequence[Sample], class_only: float, seed: int) -> list[str]:
    """Ids whose masks are withheld: a seeded, class-stratified subset of the fully labelled.

    Args:
        samples: Training samples; only those with both a mask and a label are candidates.
        class_only: A count (an integer >= 1; 2.0 counts as 2), or a fraction in (0, 1)
            of the candidates. A float 1.0 is refused as ambiguous (one image, or all?).
        seed: Selection seed.

    The per-class counts follow the class proportions (largest remainder); within a class
    the first ids of a seeded permutation are taken, so budgets of one seed are nested
    (e.g. 48 within 96 within 144) as far as the rounding allows.

    Raises:
        ValueError: When the budget exceeds the number of candidates.
    """
    candidates: dict[int, list[str]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.id):
        if sample.has_mask and sample.has_label:
            candidates[int(sample.label)].append(sample.id)
    available = sum(len(ids) for ids in candidates.values())
    count = _budget_count(class_only, available)
    if count > available:
        raise ValueError(
            f"class_only={class_only} asks for {count} class-only images but the train split "
            f"has only {available} images with both a mask and a label"
        )
    if count == 0:
        return []
    classes = sorted(candidates)
    share = np.array([len(candidates[c]) for c in classes]) * count / available
    quota = np.floor(share).astype(int)
    for i in np.argsort(-(share - quota), kind="stable")[: count - int(quota.sum())]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for c, q in zip(classes, quota, strict=True):
        ids = candidates[c]
        chosen += [ids[i] for i in rng.permutation(len(ids))[:q]]
    return sorted(chosen)


def apply_budget(
    samples: Sequence[Sample], class_only: float, budget_mode: str, seed: int
) -> list[Sample]:
    """The training samples under a label budget.

    Args:
        samples: Training samples.
        class_only: Count or fraction of fully labelled samples whose masks are withheld.
        budget_mode: ``semi``: they stay as class-only samples; ``reduced``: they are
            dropped; ``full``: the budget is ignored and every mask is used.
        seed: Selection seed.
    """
    if budget_mode not in ("semi", "reduced", "full"):
        raise ValueError(f"budget_mode must be semi, reduced or full, got {budget_mode!r}")
    if budget_mode == "full":
        return list(samples)
    withheld = set(select_class_only(samples, class_only, seed))
    if budget_mode == "reduced":
        return [s for s in samples if s.id not in withheld]
    return [s.without_mask() if s.id in withheld else s for s in samples]
