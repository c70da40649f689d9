"""Stratified, grouped train/val/test splits, their JSON files, and label budgets.

Split file format (JSON, ids sorted, one per line)::

    {
      "dataset": "busi",
      "seed": 42,
      "fractions": [0.7, 0.1, 0.2],
      "train": ["benign/benign (1).png", ...],
      "val": [...],
      "test": [...]
    }

A split covers every usable sample of a data set (BUSI normal images and DDTI unlabelled
images included), so one file serves every option; options filter it afterwards.
Samples without a class label (mask-only) are only ever listed in ``train``: a group with
no labelled sample goes to train, and the unlabelled members of a labelled group in val
or test are left out of the file. Val and test hold labelled images only.

Regenerate the committed files (identical output for identical data; an existing file is
only replaced with ``--overwrite``)::

    python -m semiseg_caw.data.splits busi ../shared/data/busi configs/splits/busi.json --overwrite
    python -m semiseg_caw.data.splits ddti ../shared/data/ddti configs/splits/ddti.json --overwrite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from semiseg_caw.data.io import check_file_writable, file_exists_error
from semiseg_caw.data.samples import Sample

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
DEFAULT_SEED = 42

PROG = "python -m semiseg_caw.data.splits"

USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)
"""Errors the split command reports in one line, as ``semiseg-caw`` does (``cli.USER_ERRORS``;
DataValidationError is a ValueError)."""


def check_fractions(fractions: Sequence[float]) -> None:
    """A ValueError unless ``fractions`` are three non-negative numbers, not all zero."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, val, test), not all zero; "
            f"got {list(fractions)}"
        )


def stratified_group_split(
    samples: Sequence[Sample],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SEED,
) -> dict[str, list[str]]:
    """Split sample ids into train/val/test, keeping groups whole and class proportions.

    Greedy: groups are visited largest first (ties in a seeded random order) and each is put
    where it most reduces the squared relative shortfall of every class in every split
    against its target ``fraction * class count``. Deterministic for a given seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with sorted ids.
    """
    check_fractions(fractions)
    frac = np.asarray(fractions, dtype=np.float64) / float(sum(fractions))
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.id):
        groups[sample.group].append(sample)
    labels = sorted({s.label for s in samples if s.label is not None})
    any_label = bool(labels)
    column = {label: i for i, label in enumerate(labels or [None])}
    assigned: dict[str, list[str]] = {name: [] for name in SPLITS}
    names = sorted(groups)
    counts = np.zeros((len(names), len(column)))  # (G, C) labelled samples per class
    for g, name in enumerate(names):
        for sample in groups[name]:
            if sample.label is not None or not any_label:
                counts[g, column[sample.label]] += 1
    splittable = np.nonzero(counts.sum(1) > 0)[0]
    for g in np.nonzero(counts.sum(1) == 0)[0]:  # unlabelled groups: train only
        assigned["train"] += [s.id for s in groups[names[g]]]
    rng = np.random.default_rng(seed)
    order = splittable[rng.permutation(len(splittable))]
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    target = frac[:, None] * counts.sum(0)[None, :]  # (3, C)
    have = np.zeros_like(target)
    scale = np.maximum(target, 1.0)
    for g in order:
        before = ((have - target) ** 2 / scale).sum(1)  # (3,)
        after = ((have + counts[g] - target) ** 2 / scale).sum(1)
        best = int(np.argmin(after - before))
        have[best] += counts[g]
        members = groups[names[g]]
        if best == 0:
            assigned["train"] += [s.id for s in members]
        else:
            labelled = [s.id for s in members if s.label is not None or not any_label]
            assigned[SPLITS[best]] += labelled
    return {name: sorted(ids) for name, ids in assigned.items()}


def split_to_json(
    split: dict[str, list[str]],
    dataset: str,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> str:
    """The text of a split file (stable: sorted ids, two-space indent, final newline)."""
    lines = [
        "{",
        f'  "dataset": {json.dumps(dataset)},',
        f'  "seed": {int(seed)},',
        f'  "fractions": {json.dumps([float(f) for f in fractions])},',
    ]
    for k, name in enumerate(SPLITS):
        ids = ",\n".join(f"    {json.dumps(i, ensure_ascii=False)}" for i in sorted(split[name]))
        body = f"[\n{ids}\n  ]" if ids else "[]"
        lines.append(f'  "{name}": {body}' + ("," if k < len(SPLITS) - 1 else ""))
    return "\n".join(lines) + "\n}\n"


def write_split_file(path: str | Path, split: dict[str, list[str]], dataset: str, **kwargs) -> None:
    """Write a split file (see :func:`split_to_json`), replacing any file there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(split_to_json(split, dataset, **kwargs), encoding="utf-8")
        part.replace(path)  # never leave a half-written split under the final name
    finally:
        part.unlink(missing_ok=True)


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """Read a split file (UTF-8, with or without a byte order mark); a ValueError naming the
    file when it is malformed or lists an id twice."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (a relative path is read from {Path.cwd()})"
        raise FileNotFoundError(f"split file not found: {path}{where}")
    try:
        record = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"split file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
            f"offset {err.start}); re-save it as UTF-8"
        ) from err
    except json.JSONDecodeError as err:
        raise ValueError(f"split file {path} is not valid JSON: {err}") from err
    _check_split_record(record, path)
    seen: dict[str, str] = {}
    for name in SPLITS:
        for sample_id in record[name]:
            if sample_id in seen:
                raise ValueError(
                    f"split file {path}: id {sample_id!r} is in both {seen[sample_id]} and {name}"
                )
            seen[sample_id] = name
    return {name: list(record[name]) for name in SPLITS}


def _check_split_record(record: object, path: Path) -> None:
    """A ValueError naming ``path`` unless ``record`` is an object whose train, val and
    test are lists of id strings."""
    if not isinstance(record, dict):
        raise ValueError(
            f"split file {path} must hold a JSON object with lists train, val and test; "
            f"got {_json_kind(record)}"
        )
    missing = [name for name in SPLITS if not isinstance(record.get(name), list)]
    if missing:
        raise ValueError(f"split file {path} lacks list(s): {', '.join(missing)}")
    for name in SPLITS:
        for position, sample_id in enumerate(record[name]):
            if not isinstance(sample_id, str):
                raise ValueError(
                    f"split file {path}: {name!r} must list id strings; item {position} is "
                    f"{_json_kind(sample_id)} ({json.dumps(sample_id)})"
                )


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def check_split_ids(split: dict[str, list[str]], known: Sequence[str], source: str) -> None:
    """Raise a ValueError naming the ids of ``split`` that are not among ``known``."""
    known_set = set(known)
    unknown = [i for name in SPLITS for i in split[name] if i not in known_set]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(
            f"split file {source} lists {len(unknown)} id(s) not found in the data: {shown}{more}"
            " (made for another data set or root? excluded as exact duplicates or skipped as bad files?)"
        )


# ----------------------------------------------------------------------------- budgets


def check_class_only(class_only: float) -> None:
    """A ValueError unless ``class_only`` is a count (0, 1, 2, ...) or a fraction in (0, 1).

    A float 1.0 is refused: as a fraction it would withhold every mask, as a count one.
    """
    if class_only < 0:
        raise ValueError(f"class_only must be >= 0, got {class_only}")
    if class_only == 1 and not isinstance(class_only, (int, np.integer)):
        raise ValueError(
            f"class_only={float(class_only)} is ambiguous: give a count as an integer "
            "(class_only=1 withholds one mask) or a fraction below 1"
        )
    if class_only >= 1 and float(class_only) != int(class_only):
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


# ----------------------------------------------------------------------------- CLI


def make_split_file(
    dataset: str,
    root: str | Path | None,
    out: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, list[str]]:
    """Read a data set, split it and write the split file; returns the split.

    An existing file at ``out`` (a committed split) is refused with a FileExistsError
    unless ``overwrite``; that and the fractions are checked before the data is read.
    """
    from semiseg_caw.data.readers import load_dataset

    check_fractions(fractions)
    _check_output(Path(out), overwrite)
    # Image size does not matter to the split (hashes use full-resolution pixels).
    data = load_dataset(dataset, root, image_size=32, classes=classes)
    split = stratified_group_split(data.samples, fractions, seed)
    write_split_file(out, split, dataset, seed=seed, fractions=fractions)
    return split


def _check_output(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise FileExistsError(f"{out} is a folder: name the split file (.json) to write")
    if out.exists() and not overwrite:
        raise file_exists_error(out)
    check_file_writable(out, out.with_name(out.name + ".part"))  # before decoding the data


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m semiseg_caw.data.splits DATASET ROOT OUT``.

    User errors (a missing folder, bad data, an existing OUT) end it with one ``error:``
    line on stderr and exit status 2, as ``semiseg-caw`` does; SEMISEG_CAW_TRACEBACK=1
    shows the traceback instead.
    """
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["busi", "ddti", "manifest"])
    parser.add_argument("root", help="data set folder, or the manifest file")
    parser.add_argument("out", help="split file to write (JSON)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS))
    parser.add_argument("--classes", nargs="+", help="class names (manifest only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    if args.dataset == "manifest" and not args.classes:
        _exit_with_error("a manifest needs its class names: --classes NAME [NAME ...]")
    try:
        split = make_split_file(
            args.dataset,
            args.root,
            args.out,
            seed=args.seed,
            fractions=args.fractions,
            classes=args.classes,
            overwrite=args.overwrite,
        )
    except USER_ERRORS as err:
        if os.environ.get("SEMISEG_CAW_TRACEBACK") == "1":
            raise
        _exit_with_error(f"{err}\n(SEMISEG_CAW_TRACEBACK=1 shows where it was raised)")
    sizes = ", ".join(f"{name} {len(split[name])}" for name in SPLITS)
    print(f"wrote {args.out}: {sizes}")


def _exit_with_error(message: str) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(2)


if __name__ == "__main__":
    main()
