"""Stratified, grouped train/val/test splits and their JSON files (the label budgets that
withhold masks within a split: :mod:`semiseg_caw.data.budgets`).

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

from semiseg_caw.data.io import check_file_writable, file_exists_error, not_found
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
    """A ValueError unless ``fractions`` are three finite, non-negative numbers, not all zero."""
    finite = all(0 <= f < float("inf") for f in fractions)  # NaN fails too
    if len(fractions) != len(SPLITS) or not finite or sum(fractions) <= 0:
        raise ValueError(
            "fractions must be three finite, non-negative numbers (train, val, test), not all "
            f"zero; got {list(fractions)}"
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
        raise not_found("split file", path)
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
