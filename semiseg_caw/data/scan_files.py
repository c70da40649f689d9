"""What the BUSI, DDTI and manifest scanners share: reading CSV text, matching files by name.

Scanners return ``(samples, problems)``; a problem is a :class:`BadFile` that the caller
raises or skips (``skip_bad_files``) together with those found while decoding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from semiseg_caw.data.io import BadFile, DataValidationError, is_image_file
from semiseg_caw.data.samples import Sample


def read_csv_text(path: Path) -> str:
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


def values_beyond_header(row: dict, columns: int) -> str:
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


def image_files_in(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def unique_stems(paths: Iterable[Path]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image files by name without extension, and the names that several files share
    (``x.png`` and ``x.jpg``): masks are matched by that name, so those are left out."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        by_stem[path.stem].append(path)
    unique = {stem: found[0] for stem, found in by_stem.items() if len(found) == 1}
    clashes = {stem: found for stem, found in by_stem.items() if len(found) > 1}
    return unique, clashes


def same_name_problems(clashes: dict[str, list[Path]]) -> list[BadFile]:
    """One problem for each name that several image files share."""
    return [
        BadFile(
            str(found[0]),
            f"{len(found)} files have the same name {stem!r} "
            f"({', '.join(p.name for p in found)}); keep one of them",
        )
        for stem, found in sorted(clashes.items())
    ]


def checked_scan(
    samples: list[Sample], problems: list[BadFile], where: Path
) -> tuple[list[Sample], list[BadFile]]:
    """A scan's result sorted by id; a DataValidationError when it found nothing at all."""
    if not samples and not problems:
        raise DataValidationError([BadFile(str(where), "no images found")])
    return sorted(samples, key=lambda s: s.id), problems
