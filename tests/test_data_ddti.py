"""The DDTI reader on tiny data sets in its layout: labels, groups, bad rows and files."""

from __future__ import annotations

import pytest
from data_fixtures import blob_mask, noise_image, problem_paths, save, write_ddti

from semiseg_caw.data import DataValidationError, scan_ddti


def test_ddti_reader_labels_groups_and_unlabelled(tmp_path):
    write_ddti(tmp_path, n=12)
    samples = {s.id: s for s in scan_ddti(tmp_path)}
    assert len(samples) == 12
    assert samples["image/1.PNG"].label is None and samples["image/1.PNG"].has_mask
    assert samples["image/1.PNG"].group == samples["image/2.PNG"].group == "case/1"
    assert samples["image/3.PNG"].group == samples["image/4.PNG"].group == "case/2"
    assert samples["image/3.PNG"].label == 0 and samples["image/5.PNG"].label == 1
    assert samples["image/12.PNG"].group == "image/12.PNG"  # no case: own group
    assert samples["image/12.PNG"].label is None


def test_ddti_rows_and_masks_pointing_nowhere(tmp_path):
    write_ddti(tmp_path, n=6)
    with open(tmp_path / "labels.csv", "a") as handle:
        handle.write("77.PNG,9,4a,1\n")
    save(tmp_path / "mask" / "88.PNG", blob_mask(1))
    (tmp_path / "mask" / "3.PNG").unlink()
    with pytest.raises(DataValidationError) as excinfo:
        scan_ddti(tmp_path)
    text = problem_paths(excinfo)
    assert "labels.csv: row for '77.PNG': no such file in image/" in text
    assert "88.PNG: mask without an image" in text
    assert "3.PNG: image without a mask" in text


def test_ddti_bad_label_value_names_the_line(tmp_path):
    write_ddti(tmp_path, n=4)
    text = (tmp_path / "labels.csv").read_text().replace("3.PNG,2,3,0", "3.PNG,2,3,maybe")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataValidationError, match=r"labels.csv:4: label 'maybe'"):
        scan_ddti(tmp_path)


def test_ddti_two_files_with_the_same_name_are_refused_naming_both(tmp_path):
    write_ddti(tmp_path, n=4)
    save(tmp_path / "image" / "3.bmp", noise_image(5))
    save(tmp_path / "mask" / "4.jpg", blob_mask(5))
    with pytest.raises(DataValidationError) as excinfo:
        scan_ddti(tmp_path)
    text = problem_paths(excinfo)
    assert "3.PNG" in text and "3.bmp" in text and "4.PNG" in text and "4.jpg" in text
    assert text.count("same name") == 2


def test_ddti_labels_not_in_utf8_name_the_file(tmp_path):
    write_ddti(tmp_path, n=4)
    text = (tmp_path / "labels.csv").read_text().replace("3.PNG,2,3,0", "3.PNG,2,3 (é),0")
    (tmp_path / "labels.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(DataValidationError) as excinfo:
        scan_ddti(tmp_path)
    assert "labels.csv" in problem_paths(excinfo) and "UTF-8" in problem_paths(excinfo)
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # BOM
    assert len(scan_ddti(tmp_path)) == 4


def test_ddti_labels_row_with_more_values_than_columns_is_refused(tmp_path):
    write_ddti(tmp_path, n=4)
    text = (tmp_path / "labels.csv").read_text().replace("3.PNG,2,3,0", "3.PNG,2,3,0,x")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataValidationError) as excinfo:
        scan_ddti(tmp_path)
    assert "value(s) more than the 4 columns of the header: 'x'" in problem_paths(excinfo)


def test_ddti_missing_layout(tmp_path):
    (tmp_path / "image").mkdir()
    with pytest.raises(DataValidationError, match="mask"):
        scan_ddti(tmp_path)
