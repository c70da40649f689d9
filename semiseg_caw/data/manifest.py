"""A data set listed in a CSV manifest: any images, masks and class labels.

``root`` is the CSV file, or a folder holding ``manifest.csv``. Columns: ``image``
(required), ``mask``, ``label``, ``group``, ``split`` (optional, may be empty); column
names are stripped and lower-cased, and any other column is refused.

- Paths are relative to the manifest's folder (absolute paths are allowed); ``mask`` may
  list several files separated by ``;`` (their union is the mask).
- ``label`` is a class index (``0``, ``1``, ...) or a class name from ``classes``
  (case-insensitive). A row needs a mask or a label.
- ``split`` (``train``, ``val`` or ``test``) assigns the row to a split instead of the data
  module's split; a row with an empty ``split`` is then in none.
- A row with more values than the header has columns is refused (a value holding a comma
  must be quoted). Ids: the image path as written, with ``/`` separators.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from io import StringIO
from pathlib import Path

from semiseg_caw.data.io import BadFile, DataValidationError, not_found, report_problems
from semiseg_caw.data.layouts import layout_of
from semiseg_caw.data.samples import Sample
from semiseg_caw.data.scan_files import checked_scan, read_csv_text, values_beyond_header
from semiseg_caw.data.splits import SPLITS

MANIFEST_COLUMNS = ("image", "mask", "label", "group", "split")
"""Columns a manifest may have (names compared stripped and lower-cased)."""


def find_manifest(root: str | Path) -> Path:
    """The manifest CSV: ``root`` itself, or ``root/manifest.csv`` when ``root`` is a folder."""
    path = Path(root)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        error = not_found("manifest file", path)
        found = layout_of(Path(root))  # a data set folder given as a manifest's
        if found:
            message = f"{error}; {root} holds the {found.upper()} layout: --data.dataset {found}?"
            error = FileNotFoundError(message)
        raise error
    return path


def manifest_samples(
    root: str | Path, classes: Sequence[str]
) -> tuple[list[Sample], list[BadFile]]:
    """The samples a manifest lists, and its bad rows (not raised yet)."""
    manifest = find_manifest(root)
    problems: list[BadFile] = []
    samples: list[Sample] = []
    seen: set[str] = set()
    reader = csv.DictReader(StringIO(read_csv_text(manifest), newline=""))
    reader.fieldnames = _manifest_columns(reader.fieldnames or [], manifest)
    for line, row in enumerate(reader, start=2):
        where = f"{manifest}:{line}"
        beyond = values_beyond_header(row, len(reader.fieldnames))
        if beyond:
            problems.append(BadFile(where, beyond))
            continue
        try:
            sample = _row_sample(row, manifest.parent, classes, seen)
        except ValueError as err:
            problems.append(BadFile(where, str(err)))
            continue
        seen.add(sample.id)
        samples.append(sample)
    return checked_scan(samples, problems, manifest)


def scan_manifest(
    root: str | Path, classes: Sequence[str], *, skip_bad_files: bool = False
) -> list[Sample]:
    """Samples listed in a CSV manifest (see the module docstring), without decoding."""
    samples, problems = manifest_samples(root, classes)
    report_problems(problems, skip_bad_files)
    return samples


def _row_sample(row: dict, base: Path, classes: Sequence[str], seen: set[str]) -> Sample:
    """One row's sample; a ValueError saying what is wrong with the row."""
    written = (row.get("image") or "").strip()
    if not written:
        raise ValueError("empty image path")
    image = base / written
    mask_fields = [m.strip() for m in (row.get("mask") or "").split(";") if m.strip()]
    masks = tuple(base / m for m in mask_fields)
    missing = [str(p) for p in (image, *masks) if not p.is_file()]
    if missing:
        raise ValueError(f"file(s) not found: {', '.join(missing)}")
    label = _parse_label(row.get("label") or "", classes)
    if label is None and not masks:
        raise ValueError("row has neither a mask nor a label")
    sample_id = Path(written).as_posix()
    if sample_id in seen:
        raise ValueError(f"image {written!r} listed twice")
    split = (row.get("split") or "").strip().lower()
    if split not in ("", *SPLITS):
        raise ValueError(f"split must be train, val, test or empty, got {split!r}")
    group = (row.get("group") or "").strip()
    return Sample(
        id=sample_id,
        image=image,
        masks=masks,
        label=label,
        group=f"group/{group}" if group else sample_id,
        split=split,
    )


def _parse_label(value: str, classes: Sequence[str]) -> int | None:
    value = value.strip()
    if value == "":
        return None
    if re.fullmatch(r"[+-]?\d+", value):
        index = int(value)
        if not 0 <= index < len(classes):
            raise ValueError(f"label {index} out of range for {len(classes)} classes")
        return index
    lowered = [c.lower() for c in classes]
    if value.lower() not in lowered:
        raise ValueError(f"unknown class name {value!r} (classes: {', '.join(classes)})")
    return lowered.index(value.lower())


def _manifest_columns(header: Sequence[str], manifest: Path) -> list[str]:
    """Column names stripped and lower-cased (`` Mask`` is ``mask``); a typo such as
    ``masks`` is refused rather than silently leaving every mask out."""
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name and name not in MANIFEST_COLUMNS]
    twice = sorted({name for name in columns if name and columns.count(name) > 1})
    problem = ""
    if unknown:
        problem = f"unknown column(s) {', '.join(repr(n) for n in unknown)}"
        if any(";" in name for name in unknown):
            problem += " (columns must be separated by commas)"
    elif twice:
        problem = f"column(s) {', '.join(repr(n) for n in twice)} given twice"
    elif "image" not in columns:
        problem = "no 'image' column"
    if problem:
        allowed = ", ".join(MANIFEST_COLUMNS)
        raise DataValidationError(
            [BadFile(str(manifest), f"{problem} (allowed columns: {allowed}; image is required)")]
        )
    return columns
