"""Which data set's layout a folder holds, so that a ``data.root`` holding another one (or
lying one folder off) is answered with the option meant, not a list of odd file names."""

from __future__ import annotations

from pathlib import Path

from semiseg_caw.data.samples import BUSI_CLASSES

BUSI_FOLDER = "Dataset_BUSI_with_GT"


def layout_of(folder: Path) -> str | None:
    """``"busi"`` or ``"ddti"`` when ``folder`` holds that data set's folders, else None."""
    try:
        names = {p.name.lower() for p in folder.iterdir() if p.is_dir()}
    except OSError:  # not a folder, or not readable: nothing to say about it
        return None
    if {"image", "mask"} <= names:
        return "ddti"
    if BUSI_FOLDER.lower() in names or names & set(BUSI_CLASSES):
        return "busi"
    return None


def layout_hint(root: Path, wanted: str) -> str:
    """What ``root`` holds instead of the ``wanted`` layout, as ``; ...?``, or ``""``: the
    other data set's layout, or the wanted one in its parent or in one of its folders."""
    found = layout_of(root)
    if found and found != wanted:
        return f"; it holds the {found.upper()} layout: --data.dataset {found}?"
    if root.parent != root and layout_of(root.parent) == wanted:
        meant = [root.parent]
    else:
        try:
            meant = sorted(p for p in root.iterdir() if p.is_dir() and layout_of(p) == wanted)
        except OSError:
            meant = []
    return f"; {meant[0]} holds it: --data.root {meant[0]}?" if meant else ""
