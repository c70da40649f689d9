"""Which split the data module uses, and whether a split can be trained on or scored."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from semiseg_caw.data.samples import Sample
from semiseg_caw.data.splits import (
    DEFAULT_FRACTIONS,
    SPLITS,
    check_split_ids,
    stratified_group_split,
)
from semiseg_caw.warn import warn


def choose_split(
    samples: Sequence[Sample],
    split_file: dict[str, list[str]] | None,
    source: str | None,
    *,
    skip_bad_files: bool,
    seed: int,
) -> dict[str, list[str]]:
    """Ids of each split: a manifest's split column, else the split file read from
    ``source``, else the seeded stratified, grouped 70/10/20 split of ``samples``."""
    by_id = {s.id: s for s in samples}
    assigned = {s.id: s.split for s in samples if s.split}
    if assigned and split_file is not None:
        raise ValueError(
            f"the manifest assigns splits (its split column) and data.split_file "
            f"{source} does too: give one of them"
        )
    if assigned:
        return {name: [i for i, n in assigned.items() if n == name] for name in SPLITS}
    if split_file is not None:
        split = split_file
        if skip_bad_files:
            split = _drop_unknown(split, by_id, source)
        check_split_ids(split, list(by_id), source)
        return split
    return stratified_group_split(samples, DEFAULT_FRACTIONS, seed)


def check_split_usable(name: str, splits: dict[str, list[Sample]], class_names: list[str]) -> None:
    """A ValueError with the numbers when split ``name`` is empty, lacks a class or has no
    image with a mask: every class must be trained and scored, and Dice needs masks."""
    counts = Counter(s.label for s in splits[name])
    missing = [c for k, c in enumerate(class_names) if counts[k] == 0]
    if not splits[name] or missing:
        problem = "is empty" if not splits[name] else f"has no image of class {', '.join(missing)}"
        raise ValueError(
            f"the {name} split {problem} ({split_summary(splits, class_names)}); "
            "every class must be trained and scored: change the split (file), the label "
            "budget (class_only, budget_mode) or the data"
        )
    if not any(s.has_mask for s in splits[name]):
        with_mask = ", ".join(
            f"{k} {sum(s.has_mask for s in splits[k])} of {len(splits[k])}" for k in SPLITS
        )
        need = (
            "segmentation is learnt from masks: lower class_only or give more images a mask"
            if name == "train"
            else "segmentation metrics (Dice, IoU) need masks in val and test: give more "
            "images a mask or change the split (file)"
        )
        raise ValueError(
            f"the {name} split has no image with a mask (images with a mask: {with_mask}); {need}"
        )


def split_summary(splits: dict[str, list[Sample]], class_names: Sequence[str] = ()) -> str:
    """Images per split and class, e.g. ``train: 28 (benign 14, malignant 14); val: 0; ...``."""
    parts = []
    for name in SPLITS:
        samples = splits.get(name, [])
        counts = Counter(s.label for s in samples)
        detail = [f"{label} {counts[k]}" for k, label in enumerate(class_names)]
        if counts[None]:
            detail.append(f"unlabelled {counts[None]}")
        shown = f" ({', '.join(detail)})" if samples and detail else ""
        parts.append(f"{name}: {len(samples)}{shown}")
    return "; ".join(parts)


def _drop_unknown(split: dict[str, list[str]], by_id: dict, source: str) -> dict[str, list[str]]:
    """With skip_bad_files: ids of skipped files leave the split with a warning."""
    unknown = [i for name in SPLITS for i in split[name] if i not in by_id]
    if unknown:
        warn(
            f"{len(unknown)} id(s) of split file {source} are not in the data (skipped): "
            + ", ".join(unknown[:10]),
            UserWarning,
        )
    return {name: [i for i in split[name] if i in by_id] for name in SPLITS}
