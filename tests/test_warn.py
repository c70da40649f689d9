"""The package's warnings name the user's line that called it, or, when a library
(Lightning calling a hook) did, the package's own line: never a line of Lightning's."""

from __future__ import annotations

import sysconfig
import warnings
from pathlib import Path

import lightning
import pytest

import semiseg_caw.data.io as data_io
from semiseg_caw.data.io import BadFile, report_problems

BAD = [BadFile("a.png", "cannot decode image")]


def warned_from(call) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    (warning,) = caught
    assert "skipping 1 bad file(s)" in str(warning.message)
    return warning.filename


def test_called_from_the_users_code_the_warning_names_the_users_line() -> None:
    assert warned_from(lambda: report_problems(BAD, skip_bad_files=True)) == __file__


@pytest.mark.parametrize(
    "caller",
    [
        Path(lightning.__file__).parent / "pytorch" / "trainer" / "call.py",  # a hook's caller
        Path(sysconfig.get_paths()["scripts"]) / "semiseg-caw",  # the command's wrapper
    ],
    ids=["lightning", "console-script"],
)
def test_called_from_a_library_the_warning_names_the_packages_line(caller: Path) -> None:
    # A frame with the library's file name calls the package, as Lightning calls a hook.
    code = compile("report_problems(BAD, skip_bad_files=True)", str(caller), "exec")
    scope = {"report_problems": report_problems, "BAD": BAD}
    assert warned_from(lambda: exec(code, scope)) == data_io.__file__
