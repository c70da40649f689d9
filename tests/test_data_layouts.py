"""A data.root that holds the other data set's layout, or lies one folder off the one
meant, is answered with the option to give, not with its folders named one by one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from data_fixtures import BUSI_DIR, write_busi, write_ddti

from semiseg_caw.data import DataValidationError, scan_busi, scan_ddti
from semiseg_caw.data.manifest import find_manifest


def refusal(scan, root: Path) -> str:
    with pytest.raises(DataValidationError) as refused:
        scan(root)
    assert len(refused.value.problems) == 1
    return refused.value.problems[0].problem


def test_busi_reader_names_the_folder_or_data_set_meant(tmp_path: Path) -> None:
    busi = write_busi(tmp_path / "busi")
    ddti = write_ddti(tmp_path / "ddti")
    assert refusal(scan_busi, ddti).endswith("; it holds the DDTI layout: --data.dataset ddti?")
    # One folder too high (the data folder) or too low (a class folder).
    assert refusal(scan_busi, tmp_path).endswith(f"; {busi} holds it: --data.root {busi}?")
    base = busi / BUSI_DIR
    assert refusal(scan_busi, base / "benign").endswith(f"; {base} holds it: --data.root {base}?")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert refusal(scan_busi, empty) == "no class folders (benign, malignant, normal) found"


def test_ddti_reader_names_the_folder_or_data_set_meant(tmp_path: Path) -> None:
    busi = write_busi(tmp_path / "busi")
    ddti = write_ddti(tmp_path / "ddti")
    layout = re.escape("not found (DDTI layout: image/, mask/, labels.csv)")
    assert re.fullmatch(
        f"{layout}; it holds the BUSI layout: --data.dataset busi\\?", refusal(scan_ddti, busi)
    )
    for root in (tmp_path, ddti / "image"):
        assert refusal(scan_ddti, root).endswith(f"; {ddti} holds it: --data.root {ddti}?")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert re.fullmatch(layout, refusal(scan_ddti, empty))


def test_a_data_set_folder_given_as_a_manifest_is_named(tmp_path: Path) -> None:
    busi = write_busi(tmp_path / "busi")
    with pytest.raises(FileNotFoundError) as refused:
        find_manifest(busi)
    message = str(refused.value)
    assert message.startswith(f"manifest file not found: {busi / 'manifest.csv'}")
    assert message.endswith(f"; {busi} holds the BUSI layout: --data.dataset busi?")
    with pytest.raises(FileNotFoundError, match=r"manifest.csv$"):
        find_manifest(tmp_path / "busi" / BUSI_DIR / "benign")  # no data set: no hint
