"""BUSI on disk: ``<root>/Dataset_BUSI_with_GT/<class>/<name>.png`` with its masks.

Masks are ``<name>_mask.png``, ``<name>_mask_1.png``, ... (their union is the mask);
``root`` may also be the ``Dataset_BUSI_with_GT`` folder itself. Classes: benign 0,
malignant 1, normal 2 (folder names matched case-insensitively). Ids:
``<class>/<file name>``. Each image is its own group until decoding groups near-duplicate
frames (:data:`BUSI_NEAR_DUPLICATE_DISTANCE`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from semiseg_caw.data.io import (
    BadFile,
    DataValidationError,
    is_image_file,
    not_found,
    report_problems,
)
from semiseg_caw.data.layouts import BUSI_FOLDER, layout_hint
from semiseg_caw.data.samples import BUSI_CLASSES, Sample
from semiseg_caw.data.scan_files import checked_scan, same_name_problems, unique_stems

BUSI_NEAR_DUPLICATE_DISTANCE = 64
"""Largest Hamming distance (of 256 bits) between difference hashes of BUSI frames grouped
as near duplicates. Measured on BUSI: pairs of the same scan lie below ~70, unrelated
images above ~75; 594 groups result from 779 images, the largest of 7 frames."""

_MASK_STEM = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<n>\d+))?$")


def is_mask_file(path: Path) -> bool:
    """Whether ``path`` is named like a BUSI mask (``<name>_mask.png``, ``<name>_mask_1.png``)."""
    return _MASK_STEM.match(path.stem) is not None


def find_busi_folder(root: str | Path) -> Path:
    """The folder holding BUSI's class folders: ``root/Dataset_BUSI_with_GT`` or ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise not_found("BUSI root folder", root)
    nested = root / BUSI_FOLDER
    return nested if nested.is_dir() else root


def busi_samples(root: str | Path) -> tuple[list[Sample], list[BadFile]]:
    """BUSI samples of every class, and the problems found (not raised yet)."""
    base = find_busi_folder(root)
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not any(folder.name.lower() in BUSI_CLASSES for folder in folders):
        found = f"no class folders ({', '.join(BUSI_CLASSES)}) found"
        raise DataValidationError([BadFile(str(base), found + layout_hint(base, "busi"))])
    samples: list[Sample] = []
    problems: list[BadFile] = []
    for folder in folders:
        name = folder.name.lower()
        if name not in BUSI_CLASSES:
            expected = ", ".join(BUSI_CLASSES)
            problems.append(
                BadFile(str(folder), f"unknown class folder {folder.name!r} (expected {expected})")
            )
            continue
        found, found_problems = _class_folder_samples(folder, base, BUSI_CLASSES.index(name))
        samples += found
        problems += found_problems
    return checked_scan(samples, problems, base)


def scan_busi(root: str | Path, *, skip_bad_files: bool = False) -> list[Sample]:
    """BUSI samples of every class (normal included), each its own group, without decoding."""
    samples, problems = busi_samples(root)
    report_problems(problems, skip_bad_files)
    return samples


def _class_folder_samples(
    folder: Path, base: Path, label: int
) -> tuple[list[Sample], list[BadFile]]:
    """One class folder: each image with its masks, matched by name."""
    image_files: list[Path] = []
    masks: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_image_file(path)):
            continue
        match = _MASK_STEM.match(path.stem)
        if match:
            masks[match["stem"]].append(path)
        else:
            image_files.append(path)
    images, clashes = unique_stems(image_files)
    problems = same_name_problems(clashes)
    for stem, paths in sorted(masks.items()):
        if stem not in images and stem not in clashes:
            problems += [BadFile(str(p), f"mask without an image ({stem}.*)") for p in paths]
    samples = []
    for stem, path in sorted(images.items()):
        if stem not in masks:
            problems.append(BadFile(str(path), f"image without a mask ({stem}_mask.*)"))
            continue
        samples.append(
            Sample(
                id=path.relative_to(base).as_posix(),
                image=path,
                masks=tuple(sorted(masks[stem], key=_mask_order)),
                label=label,
            )
        )
    return samples, problems


def _mask_order(path: Path) -> tuple[int, str]:
    match = _MASK_STEM.match(path.stem)
    return (int(match["n"]) if match and match["n"] else 0, path.name)
