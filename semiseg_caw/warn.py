"""``warn``: ``warnings.warn`` that names the right line, whoever called.

A fixed ``stacklevel`` points at the caller of the function that warns. Called by the
user's code that is the line to show; called by Lightning (a hook, ``setup``, a
dataloader) it is a line of Lightning's, which tells the user nothing: a warning then
names this package's own line that handed control to it instead.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import warnings
from pathlib import Path

PACKAGE_DIR = str(Path(__file__).parent) + os.sep
# Installed libraries (Lightning, torch, jsonargparse, pytest), the standard library and
# the console scripts (the `semiseg-caw` command's wrapper is nobody's line to look at).
LIBRARY_DIRS = tuple(
    sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "scripts")
)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn from the user's line that called into this package, or, when a library called
    it, from this package's outermost line before that library."""
    frame = sys._getframe(1)  # the package's line that warns
    stacklevel = 2
    while frame.f_back is not None and _in_package(frame.f_back):
        frame = frame.f_back
        stacklevel += 1
    caller = frame.f_back
    if caller is not None and not _in_library(caller):
        stacklevel += 1
    warnings.warn(message, category, stacklevel=stacklevel)


def _filename(frame) -> str:
    return frame.f_code.co_filename


def _in_package(frame) -> bool:
    return _filename(frame).startswith(PACKAGE_DIR)


def _in_library(frame) -> bool:
    name = _filename(frame)
    return name.startswith("<frozen") or name.startswith(LIBRARY_DIRS)
