"""The record every reader produces, and the class names of each data set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

BUSI_CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")
"""BUSI class names by index; ``normal`` (2) only when normal images are included."""

DDTI_CLASSES: tuple[str, ...] = ("low_risk", "suspicious")
"""DDTI class names by index: ``labels.csv`` label 0 (TI-RADS 2-3) and 1 (TI-RADS >= 4a)."""

SYNTHETIC_CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")
"""Synthetic class names by index: oval lesion, irregular lesion, no lesion (optional)."""


def class_names_for(dataset: str, include_normal: bool = False) -> list[str]:
    """Class names of a built-in data set, known without reading any file."""
    if dataset in ("busi", "synthetic"):
        names = BUSI_CLASSES if dataset == "busi" else SYNTHETIC_CLASSES
        return list(names if include_normal else names[:2])
    if dataset == "ddti":
        return list(DDTI_CLASSES)
    raise ValueError(f"no built-in class names for data set {dataset!r}")


@dataclass(frozen=True)
class Sample:
    """One image with what is known about it.

    Attributes:
        id: Stable identifier, unique within a data set (a path relative to the data set root).
        image: Image file, or None for in-memory (synthetic) samples.
        masks: Mask files whose union is the lesion mask (may be empty).
        label: Class index, or None when the class is unknown.
        group: Samples sharing a group (same patient / case / near-duplicate frames) are
            always put in the same split. Defaults to ``id``.
        has_mask: Whether a pixel mask is available; defaults to ``bool(masks)``.
        split: ``train``, ``val`` or ``test`` when the data set assigns it (a manifest's
            ``split`` column); empty: the data module's split decides.
    """

    id: str
    image: Path | None
    masks: tuple[Path, ...] = ()
    label: int | None = None
    group: str = ""
    has_mask: bool | None = None
    split: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.id)
        if self.has_mask is None:
            object.__setattr__(self, "has_mask", bool(self.masks))

    @property
    def has_label(self) -> bool:
        """Whether the class label is known."""
        return self.label is not None

    @property
    def kind(self) -> str:
        """``full`` (mask and class), ``class_only``, ``mask_only`` or ``image_only``."""
        if self.has_mask and self.has_label:
            return "full"
        if self.has_label:
            return "class_only"
        return "mask_only" if self.has_mask else "image_only"

    def without_mask(self) -> Sample:
        """The same sample with its mask withheld (a class-only training sample)."""
        return dataclasses.replace(self, has_mask=False)

    def with_group(self, group: str) -> Sample:
        """The same sample in another group."""
        return dataclasses.replace(self, group=group)
