"""Readers: a data set on disk (or generated) to a list of :class:`Sample` records.

``scan_*`` functions only list files and read CSV files; :func:`load_dataset` also decodes
every image once (validating it and filling the :class:`ImageCache`), removes exact
duplicates and, for BUSI, groups near-duplicate frames.

Layouts:

- **BUSI**: ``<root>/Dataset_BUSI_with_GT/<class>/<name>.png`` with masks
  ``<name>_mask.png``, ``<name>_mask_1.png``, ... (their union is the mask); ``root`` may
  also be the ``Dataset_BUSI_with_GT`` folder itself. Classes: benign 0, malignant 1,
  normal 2 (folder names matched case-insensitively). Ids: ``<class>/<file name>``.
- **DDTI**: ``<root>/image/<n>.PNG``, ``<root>/mask/<n>.PNG`` and ``<root>/labels.csv`` with
  columns ``image, case, tirads, label``. Label 0 (low risk) / 1 (suspicious) / empty
  (unknown: a mask-only sample). Groups: ``case``; an empty case is its own group. Images
  missing from ``labels.csv`` are unlabelled and their own group. Ids: ``image/<file name>``.
- **Manifest**: a CSV file (``root`` is the file, or a folder holding ``manifest.csv``) with
  columns ``image`` (required), ``mask``, ``label``, ``group``, ``split`` (optional, may be
  empty); column names are stripped and lower-cased, and any other column is refused.
  ``split`` (``train``, ``val`` or ``test``) assigns the row to a split instead of the
  data module's split; a row with an empty ``split`` is then in none.
  Paths are relative to the manifest's folder (absolute paths are allowed); ``mask`` may
  list several files separated by ``;`` (their union is the mask). ``label`` is a class
  index (``0``, ``1``, ...) or a class name from ``classes`` (case-insensitive). A row
  needs a mask or a label; a row with more values than the header has columns is refused
  (a value holding a comma must be quoted). Ids: the image path as written, with ``/``
  separators.
- **Synthetic**: generated in memory, see :mod:`semiseg_caw.data.synthetic`.

CSV files must be UTF-8 (a byte order mark is fine). Two images whose names differ only
in their extension (``x.png``, ``x.jpg``) are refused: masks are matched by name.

Once decoded, masks are checked and exact duplicates removed (see
:mod:`semiseg_caw.data.checks`).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

from semiseg_caw.data.checks import (
    check_grey_masks,
    check_lesion_masks,
    check_mask_coverage,
    group_near_duplicates,
    remove_exact_duplicates,
)
from semiseg_caw.data.io import (
    BadFile,
    DataValidationError,
    ImageCache,
    decode_samples,
    is_image_file,
    list_image_files,
    report_problems,
)
from semiseg_caw.data.samples import BUSI_CLASSES, DDTI_CLASSES, Sample, class_names_for
from semiseg_caw.data.splits import SPLITS

BUSI_FOLDER = "Dataset_BUSI_with_GT"
BUSI_NEAR_DUPLICATE_DISTANCE = 64
"""Largest Hamming distance (of 256 bits) between difference hashes of BUSI frames grouped
as near duplicates. Measured on BUSI: pairs of the same scan lie below ~70, unrelated
images above ~75; 594 groups result from 779 images, the largest of 7 frames."""

DATASETS = ("synthetic", "busi", "ddti", "manifest")

_MASK_STEM = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<n>\d+))?$")

MANIFEST_COLUMNS = ("image", "mask", "label", "group", "split")
"""Columns a manifest may have (names compared stripped and lower-cased)."""


def is_mask_file(path: Path) -> bool:
    """Whether ``path`` is named like a BUSI mask (``<name>_mask.png``, ``<name>_mask_1.png``)."""
    return _MASK_STEM.match(path.stem) is not None


@dataclass
class LoadedDataset:
    """A decoded data set: usable samples (final groups, no duplicates) and their pixels.

    Attributes:
        name: Data set name (``busi``, ``ddti``, ``manifest`` or ``synthetic``).
        samples: Usable samples, sorted by id.
        cache: Resized images and masks of every sample.
        class_names: Names of the class indices used by ``Sample.label``.
        excluded: Ids left out as exact duplicates.
    """

    name: str
    samples: list[Sample]
    cache: ImageCache
    class_names: list[str]
    excluded: list[str]


# ----------------------------------------------------------------------------- BUSI


def find_busi_folder(root: str | Path) -> Path:
    """The folder holding BUSI's class folders: ``root/Dataset_BUSI_with_GT`` or ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BUSI root folder not found: {root}")
    nested = root / BUSI_FOLDER
    return nested if nested.is_dir() else root


def _mask_order(path: Path) -> tuple[int, str]:
    match = _MASK_STEM.match(path.stem)
    return (int(match["n"]) if match and match["n"] else 0, path.name)


def _scan_busi(root: str | Path) -> tuple[list[Sample], list[BadFile]]:
    base = find_busi_folder(root)
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataValidationError(
            [BadFile(str(base), f"no class folders ({', '.join(BUSI_CLASSES)}) found")]
        )
    samples: list[Sample] = []
    problems: list[BadFile] = []
    for folder in folders:
        name = folder.name.lower()
        if name not in BUSI_CLASSES:
            problems.append(
                BadFile(
                    str(folder),
                    f"unknown class folder {folder.name!r} (expected {', '.join(BUSI_CLASSES)})",
                )
            )
            continue
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
        images, clashes = _unique_stems(image_files)
        problems += _same_name_problems(clashes)
        for stem, paths in sorted(masks.items()):
            if stem not in images and stem not in clashes:
                problems += [BadFile(str(p), f"mask without an image ({stem}.*)") for p in paths]
        for stem, path in sorted(images.items()):
            if stem not in masks:
                problems.append(BadFile(str(path), f"image without a mask ({stem}_mask.*)"))
                continue
            samples.append(
                Sample(
                    id=path.relative_to(base).as_posix(),
                    image=path,
                    masks=tuple(sorted(masks[stem], key=_mask_order)),
                    label=BUSI_CLASSES.index(name),
                )
            )
    return _checked(samples, problems, base)


def scan_busi(root: str | Path, *, skip_bad_files: bool = False) -> list[Sample]:
    """BUSI samples of every class (normal included), each its own group, without decoding."""
    samples, problems = _scan_busi(root)
    report_problems(problems, skip_bad_files)
    return samples


# ----------------------------------------------------------------------------- DDTI


def _parse_ddti_label(value: str) -> int | None:
    value = value.strip()
    if value == "":
        return None
    if value in ("0", "1"):
        return int(value)
    raise ValueError(f"label {value!r} is not 0, 1 or empty")


def _scan_ddti(root: str | Path) -> tuple[list[Sample], list[BadFile]]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DDTI root folder not found: {root}")
    image_dir, mask_dir, labels_csv = root / "image", root / "mask", root / "labels.csv"
    for needed in (image_dir, mask_dir, labels_csv):
        if not needed.exists():
            raise DataValidationError(
                [BadFile(str(needed), "not found (DDTI layout: image/, mask/, labels.csv)")]
            )
    problems: list[BadFile] = []
    rows: dict[str, tuple[int | None, str]] = {}
    reader = csv.DictReader(StringIO(_read_csv_text(labels_csv), newline=""))
    missing = {"image", "case", "label"} - set(reader.fieldnames or ())
    if missing:
        raise DataValidationError(
            [BadFile(str(labels_csv), f"missing column(s) {', '.join(sorted(missing))}")]
        )
    for line, row in enumerate(reader, start=2):
        where = f"{labels_csv}:{line}"
        beyond = _values_beyond_header(row, len(reader.fieldnames or ()))
        if beyond:
            problems.append(BadFile(where, beyond))
            continue
        name = (row["image"] or "").strip()
        try:
            label = _parse_ddti_label(row["label"] or "")
        except ValueError as err:
            problems.append(BadFile(where, str(err)))
            continue
        if name in rows:
            problems.append(BadFile(where, f"image {name!r} listed twice"))
            continue
        rows[name] = (label, (row["case"] or "").strip())
    image_files, mask_files = _image_files_in(image_dir), _image_files_in(mask_dir)
    images, image_clashes = _unique_stems(image_files)
    masks, mask_clashes = _unique_stems(mask_files)
    problems += _same_name_problems(image_clashes) + _same_name_problems(mask_clashes)
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
    return _checked(samples, problems, root)


def scan_ddti(root: str | Path, *, skip_bad_files: bool = False) -> list[Sample]:
    """DDTI samples (labelled and unlabelled), grouped by case, without decoding."""
    samples, problems = _scan_ddti(root)
    report_problems(problems, skip_bad_files)
    return samples


# ----------------------------------------------------------------------------- manifest


def find_manifest(root: str | Path) -> Path:
    """The manifest CSV: ``root`` itself, or ``root/manifest.csv`` when ``root`` is a folder."""
    path = Path(root)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"manifest file not found: {path}")
    return path


def _parse_manifest_label(value: str, classes: Sequence[str]) -> int | None:
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


def _scan_manifest(root: str | Path, classes: Sequence[str]) -> tuple[list[Sample], list[BadFile]]:
    manifest = find_manifest(root)
    base = manifest.parent
    problems: list[BadFile] = []
    samples: list[Sample] = []
    seen: set[str] = set()
    reader = csv.DictReader(StringIO(_read_csv_text(manifest), newline=""))
    reader.fieldnames = _manifest_columns(reader.fieldnames or [], manifest)
    for line, row in enumerate(reader, start=2):
        where = f"{manifest}:{line}"
        beyond = _values_beyond_header(row, len(reader.fieldnames))
        if beyond:
            problems.append(BadFile(where, beyond))
            continue
        written = (row.get("image") or "").strip()
        if not written:
            problems.append(BadFile(where, "empty image path"))
            continue
        image = base / written
        mask_fields = [m.strip() for m in (row.get("mask") or "").split(";") if m.strip()]
        masks = tuple(base / m for m in mask_fields)
        missing = [str(p) for p in (image, *masks) if not p.is_file()]
        if missing:
            problems.append(BadFile(where, f"file(s) not found: {', '.join(missing)}"))
            continue
        try:
            label = _parse_manifest_label(row.get("label") or "", classes)
        except ValueError as err:
            problems.append(BadFile(where, str(err)))
            continue
        if label is None and not masks:
            problems.append(BadFile(where, "row has neither a mask nor a label"))
            continue
        sample_id = Path(written).as_posix()
        if sample_id in seen:
            problems.append(BadFile(where, f"image {written!r} listed twice"))
            continue
        split = (row.get("split") or "").strip().lower()
        if split not in ("", *SPLITS):
            problems.append(
                BadFile(where, f"split must be train, val, test or empty, got {split!r}")
            )
            continue
        seen.add(sample_id)
        group = (row.get("group") or "").strip()
        samples.append(
            Sample(
                id=sample_id,
                image=image,
                masks=masks,
                label=label,
                group=f"group/{group}" if group else sample_id,
                split=split,
            )
        )
    return _checked(samples, problems, manifest)


def _values_beyond_header(row: dict, columns: int) -> str:
    """The problem of a row with more values than the header has columns ("" when none):
    csv.DictReader files them under the key None, and they would silently be lost. Empty
    extra values (a trailing comma) lose nothing and pass."""
    extra = row.get(None) or []
    if not any(value.strip() for value in extra):
        return ""
    listed = ", ".join(repr(value) for value in extra)
    return (
        f"{len(extra)} value(s) more than the {columns} columns of the header: {listed} "
        "(quote a value that holds a comma)"
    )


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


def scan_manifest(
    root: str | Path, classes: Sequence[str], *, skip_bad_files: bool = False
) -> list[Sample]:
    """Samples listed in a CSV manifest (see the module docstring), without decoding."""
    samples, problems = _scan_manifest(root, classes)
    report_problems(problems, skip_bad_files)
    return samples


# ----------------------------------------------------------------------------- shared


def _read_csv_text(path: Path) -> str:
    """The text of a CSV file, UTF-8 with or without a byte order mark (Excel's "CSV UTF-8");
    a DataValidationError naming the file and line when it is in another encoding."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        problem = (
            f"not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); re-save it as "
            "UTF-8 (in Excel: Save As, CSV UTF-8)"
        )
        raise DataValidationError([BadFile(str(path), problem)]) from err


def _image_files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _unique_stems(paths: Iterable[Path]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image files by name without extension, and the names that several files share
    (``x.png`` and ``x.jpg``): masks are matched by that name, so those are left out."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        by_stem[path.stem].append(path)
    unique = {stem: found[0] for stem, found in by_stem.items() if len(found) == 1}
    clashes = {stem: found for stem, found in by_stem.items() if len(found) > 1}
    return unique, clashes


def _same_name_problems(clashes: dict[str, list[Path]]) -> list[BadFile]:
    return [
        BadFile(
            str(found[0]),
            f"{len(found)} files have the same name {stem!r} "
            f"({', '.join(p.name for p in found)}); keep one of them",
        )
        for stem, found in sorted(clashes.items())
    ]


def _checked(
    samples: list[Sample], problems: list[BadFile], where: Path
) -> tuple[list[Sample], list[BadFile]]:
    if not samples and not problems:
        raise DataValidationError([BadFile(str(where), "no images found")])
    return sorted(samples, key=lambda s: s.id), problems


def load_dataset(
    dataset: str,
    root: str | Path | None = None,
    *,
    image_size: int = 256,
    classes: Sequence[str] | None = None,
    skip_bad_files: bool = False,
    synthetic_samples: int = 200,
    include_normal: bool = False,
    seed: int = 42,
) -> LoadedDataset:
    """Read, validate and decode a data set once.

    Every file-based data set is loaded whole (BUSI with its normal images, DDTI with its
    unlabelled images) so that splits do not depend on options; filter afterwards.

    Args:
        dataset: One of ``synthetic``, ``busi``, ``ddti``, ``manifest``.
        root: Data set folder (BUSI, DDTI) or manifest file/folder.
        image_size: Side of the cached images and masks.
        classes: Class names of a manifest (required there).
        skip_bad_files: Skip unusable files with one warning instead of raising.
        synthetic_samples: Number of synthetic images.
        include_normal: Synthetic only: also generate lesion-free images (class 2).
        seed: Synthetic only: generator seed.
    """
    if dataset == "synthetic":
        from semiseg_caw.data.synthetic import make_synthetic

        samples, cache = make_synthetic(
            synthetic_samples, image_size, seed=seed, include_normal=include_normal
        )
        names = class_names_for("synthetic", include_normal)
        return LoadedDataset("synthetic", samples, cache, names, [])
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"data set {dataset!r} needs a root path")
    if dataset == "busi":
        samples, problems = _scan_busi(root)
        names = list(BUSI_CLASSES)
    elif dataset == "ddti":
        samples, problems = _scan_ddti(root)
        names = list(DDTI_CLASSES)
    else:
        if not classes:
            raise ValueError("a manifest data set needs its class names (classes=[...])")
        samples, problems = _scan_manifest(root, classes)
        names = list(classes)
    cache, decode_problems = decode_samples(samples, image_size)
    report_problems(problems + decode_problems, skip_bad_files)
    samples = [s for s in samples if s.id in cache]
    if not samples:
        raise DataValidationError([BadFile(str(root), "no usable images left")])
    samples, excluded = remove_exact_duplicates(samples, cache)
    check_lesion_masks(samples, cache, names)
    check_grey_masks(samples, cache, f"{dataset} data at {root}")
    check_mask_coverage(samples, cache, f"{dataset} data at {root}")
    if dataset == "busi":
        samples = group_near_duplicates(samples, cache, BUSI_NEAR_DUPLICATE_DISTANCE)
    if excluded:
        cache = cache.subset(s.id for s in samples)
    return LoadedDataset(dataset, samples, cache, names, excluded)


def load_image_folder(
    folder: str | Path, image_size: int, *, skip_bad_files: bool = False
) -> tuple[list[str], ImageCache]:
    """Decode every image directly inside ``folder`` (png, jpg, bmp, tif, ...) at once.

    Returns the image paths and a cache whose ids are the file names, in name order.
    Prediction does not use it (it decodes one batch at a time, see
    ``PredictFolderDataset``); it suits small folders that are read again and again.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = list_image_files(folder)
    if not paths:
        raise DataValidationError([BadFile(str(folder), "no images found")])
    samples = [Sample(id=p.name, image=p) for p in paths]
    cache, problems = decode_samples(samples, image_size)
    report_problems(problems, skip_bad_files)
    if not len(cache):
        raise DataValidationError([BadFile(str(folder), "no usable images left")])
    by_name = {p.name: p for p in paths}
    return [str(by_name[i]) for i in cache.ids], cache
