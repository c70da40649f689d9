"""DDTI on disk: ``<root>/image/<n>.PNG``, ``<root>/mask/<n>.PNG`` and ``<root>/labels.csv``.

``labels.csv`` has columns ``image, case, tirads, label``: label 0 (low risk), 1
(suspicious) or empty (unknown: a mask-only sample). Groups: ``case``; an empty case is
its own group. Images missing from ``labels.csv`` are unlabelled and their own group.
Ids: ``image/<file name>``.
"""

from __future__ import annotations

import csv
from io import StringIO
from pathlib import Path

from semiseg_caw.data.io import BadFile, DataValidationError, not_found, report_problems
from semiseg_caw.data.layouts import layout_hint
from semiseg_caw.data.samples import Sample
from semiseg_caw.data.scan_files import (
    checked_scan,
    image_files_in,
    read_csv_text,
    same_name_problems,
    unique_stems,
    values_beyond_header,
)


def ddti_samples(root: str | Path) -> tuple[list[Sample], list[BadFile]]:
    """DDTI samples (labelled and unlabelled), and the problems found (not raised yet)."""
    root = Path(root)
    if not root.is_dir():
        raise not_found("DDTI root folder", root)
    image_dir, mask_dir, labels_csv = root / "image", root / "mask", root / "labels.csv"
    for needed in (image_dir, mask_dir, labels_csv):
        if not needed.exists():
            problem = "not found (DDTI layout: image/, mask/, labels.csv)"
            raise DataValidationError([BadFile(str(needed), problem + layout_hint(root, "ddti"))])
    rows, problems = _read_labels(labels_csv)
    image_files, mask_files = image_files_in(image_dir), image_files_in(mask_dir)
    images, image_clashes = unique_stems(image_files)
    masks, mask_clashes = unique_stems(mask_files)
    problems += same_name_problems(image_clashes) + same_name_problems(mask_clashes)
    for stem, path in masks.items():
        if stem not in images and stem not in image_clashes:
            problems.append(BadFile(str(path), "mask without an image in image/"))
    names = {p.name for p in image_files}
    for name in rows:
        if name not in names:
            problems.append(BadFile(str(labels_csv), f"row for {name!r}: no such file in image/"))
    samples = []
    for stem, path in images.items():
        if stem not in masks:
            if stem not in mask_clashes:
                problems.append(BadFile(str(path), "image without a mask in mask/"))
            continue
        label, case = rows.get(path.name, (None, ""))
        sample_id = f"image/{path.name}"
        samples.append(
            Sample(
                id=sample_id,
                image=path,
                masks=(masks[stem],),
                label=label,
                group=f"case/{case}" if case else sample_id,
            )
        )
    return checked_scan(samples, problems, root)


def scan_ddti(root: str | Path, *, skip_bad_files: bool = False) -> list[Sample]:
    """DDTI samples (labelled and unlabelled), grouped by case, without decoding."""
    samples, problems = ddti_samples(root)
    report_problems(problems, skip_bad_files)
    return samples


def _read_labels(labels_csv: Path) -> tuple[dict[str, tuple[int | None, str]], list[BadFile]]:
    """``labels.csv`` as {image file name: (label, case)}, and its bad rows."""
    problems: list[BadFile] = []
    rows: dict[str, tuple[int | None, str]] = {}
    reader = csv.DictReader(StringIO(read_csv_text(labels_csv), newline=""))
    missing = {"image", "case", "label"} - set(reader.fieldnames or ())
    if missing:
        raise DataValidationError(
            [BadFile(str(labels_csv), f"missing column(s) {', '.join(sorted(missing))}")]
        )
    for line, row in enumerate(reader, start=2):
        where = f"{labels_csv}:{line}"
        beyond = values_beyond_header(row, len(reader.fieldnames or ()))
        if beyond:
            problems.append(BadFile(where, beyond))
            continue
        name = (row["image"] or "").strip()
        try:
            label = _parse_label(row["label"] or "")
        except ValueError as err:
            problems.append(BadFile(where, str(err)))
            continue
        if name in rows:
            problems.append(BadFile(where, f"image {name!r} listed twice"))
            continue
        rows[name] = (label, (row["case"] or "").strip())
    return rows, problems


def _parse_label(value: str) -> int | None:
    value = value.strip()
    if value == "":
        return None
    if value in ("0", "1"):
        return int(value)
    raise ValueError(f"label {value!r} is not 0, 1 or empty")
