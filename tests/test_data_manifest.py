"""The CSV manifest reader, and the checks of decoded masks shown on manifests."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import (
    BUSI_DIR,
    SIZE,
    blob_mask,
    load_with_warnings,
    noise_image,
    problem_paths,
    save,
    write_busi,
    write_manifest,
)
from PIL import Image

from semiseg_caw.data import DataValidationError, load_dataset, scan_manifest


def test_manifest_labels_by_name_or_index_groups_and_paths(tmp_path):
    path = write_manifest(tmp_path)
    samples = {s.id: s for s in scan_manifest(path, ["benign", "malignant"])}
    assert [samples[f"imgs/{i}.png"].label for i in range(8)] == [0, 1, 1, 0, 0, 1, None, None]
    assert not samples["imgs/1.png"].has_mask and samples["imgs/1.png"].kind == "class_only"
    assert samples["imgs/6.png"].kind == "mask_only"
    assert samples["imgs/0.png"].group == samples["imgs/1.png"].group == "group/g0"
    assert samples["imgs/0.png"].image == tmp_path / "imgs" / "0.png"
    assert scan_manifest(tmp_path, ["benign", "malignant"])  # folder holding manifest.csv


def test_manifest_multiple_masks_are_united(tmp_path):
    save(tmp_path / "a.png", noise_image(1))
    left, right = np.zeros(SIZE[::-1], bool), np.zeros(SIZE[::-1], bool)
    left[:, :5], right[:, -5:] = True, True
    save(tmp_path / "l.png", left)
    save(tmp_path / "r.png", right, "1")
    write_manifest(tmp_path, [{"image": "a.png", "mask": "l.png;r.png", "label": "", "group": ""}])
    data, _ = load_with_warnings("manifest", tmp_path, image_size=SIZE[0], classes=["x"])
    mask = data.cache.get("a.png")[1]
    assert mask[:, 0].all() and mask[:, -1].all() and not mask[:, SIZE[0] // 2].any()


def test_manifest_bad_rows_name_the_line(tmp_path):
    save(tmp_path / "a.png", noise_image(1))
    rows = [
        {"image": "a.png", "mask": "", "label": "0", "group": ""},
        {"image": "gone.png", "mask": "", "label": "0", "group": ""},
        {"image": "a.png", "mask": "missing_mask.png", "label": "1", "group": ""},
        {"image": "a.png", "mask": "", "label": "cyst", "group": ""},
        {"image": "a.png", "mask": "", "label": "5", "group": ""},
        {"image": "a.png", "mask": "", "label": "", "group": ""},
    ]
    path = write_manifest(tmp_path, rows)
    with pytest.raises(DataValidationError) as excinfo:
        scan_manifest(path, ["benign", "malignant"])
    text = problem_paths(excinfo)
    assert "manifest.csv:3: file(s) not found" in text and "gone.png" in text
    assert "manifest.csv:4: file(s) not found" in text and "missing_mask.png" in text
    assert "manifest.csv:5: unknown class name 'cyst'" in text
    assert "manifest.csv:6: label 5 out of range" in text
    assert "manifest.csv:7: row has neither a mask nor a label" in text


def test_manifest_row_with_more_values_than_columns_is_refused(tmp_path):
    path = write_manifest(tmp_path)
    lines = path.read_text().splitlines()
    lines[1] += ",g9,extra"  # one more value than the header has columns, and another
    lines[2] += ",,"  # empty extra values (a trailing comma) lose nothing
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError) as excinfo:
        scan_manifest(path, ["benign", "malignant"])
    text = problem_paths(excinfo)
    assert "manifest.csv:2: 2 value(s) more than the 4 columns" in text and "'extra'" in text
    assert len(excinfo.value.problems) == 1


def test_manifest_not_in_utf8_names_the_file_and_a_bom_is_fine(tmp_path):
    path = write_manifest(tmp_path)
    text = path.read_text().replace("benign", "bénin")
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataValidationError, match="UTF-8") as excinfo:
        scan_manifest(path, ["bénin", "malignant"])
    assert "manifest.csv: not UTF-8 text" in problem_paths(excinfo)
    assert "line 2" in problem_paths(excinfo)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # Excel's "CSV UTF-8"
    samples = {s.id: s for s in scan_manifest(path, ["bénin", "malignant"])}
    assert samples["imgs/0.png"].label == 0


def test_manifest_column_names_are_normalised_and_unknown_ones_refused(tmp_path):
    path = write_manifest(tmp_path)
    text = path.read_text().splitlines()
    path.write_text("\n".join([" Image, MASK ,label ,Group", *text[1:]]) + "\n")
    samples = {s.id: s for s in scan_manifest(path, ["benign", "malignant"])}
    assert samples["imgs/0.png"].has_mask and samples["imgs/0.png"].label == 0
    assert samples["imgs/0.png"].group == "group/g0"
    path.write_text("\n".join(["image,masks,label,class", *text[1:]]) + "\n")
    with pytest.raises(DataValidationError) as excinfo:
        scan_manifest(path, ["benign", "malignant"])
    text = problem_paths(excinfo)
    assert "unknown column(s) 'masks', 'class'" in text
    assert "allowed columns: image, mask, label, group" in text


def test_lesion_images_with_empty_masks_warn_or_raise(tmp_path):
    rows = []
    for i in range(6):
        save(tmp_path / f"{i}.png", noise_image(300 + i))
        save(tmp_path / f"{i}_m.png", np.zeros(SIZE[::-1], bool))  # empty: e.g. mis-encoded
        rows.append({"image": f"{i}.png", "mask": f"{i}_m.png", "label": str(i % 2), "group": ""})
    write_manifest(tmp_path, rows)
    with pytest.raises(DataValidationError, match="Check the mask encoding") as excinfo:
        load_dataset("manifest", tmp_path, image_size=32, classes=["benign", "malignant"])
    assert "0_m.png: empty, like all 6 masks of lesion-class images" in problem_paths(excinfo)
    for i in (1, 3, 4, 5):  # 0 and 2 (class 0) stay empty
        save(tmp_path / f"{i}_m.png", blob_mask(i))
    data, messages = load_with_warnings(
        "manifest", tmp_path, image_size=32, classes=["benign", "malignant"]
    )
    assert len(data.samples) == 6
    empty = [m for m in messages if "empty mask" in m]
    assert len(empty) == 1 and "2 of 6 lesion-class images" in empty[0]
    assert "0_m.png" in empty[0] and "2_m.png" in empty[0]
    # a class named normal is lesion-free: its empty masks are expected
    _, messages = load_with_warnings(
        "manifest", tmp_path, image_size=32, classes=["normal", "malignant"]
    )
    assert not [m for m in messages if "empty mask" in m]


def _mask_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "not near-binary" in m or "on average" in m]


def test_implausible_masks_warn_naming_the_data_and_an_example(tmp_path):
    write_manifest(tmp_path)
    classes = ["benign", "malignant"]
    _, messages = load_with_warnings("manifest", tmp_path, image_size=32, classes=classes)
    assert not _mask_warnings(messages)  # plausible masks: quiet
    for i in (0, 2, 3, 4, 5, 6, 7):  # inverted: lesion black, the rest white
        save(tmp_path / "masks" / f"{i}.png", ~blob_mask(200 + i))
    _, messages = load_with_warnings("manifest", tmp_path, image_size=32, classes=classes)
    [warning] = _mask_warnings(messages)
    assert "on average" in warning and "inverted" in warning and "masks/0.png" in warning
    assert str(tmp_path) in warning
    write_manifest(tmp_path)
    save(tmp_path / "masks" / "4.png", noise_image(9))  # grey noise
    _, messages = load_with_warnings("manifest", tmp_path, image_size=32, classes=classes)
    [warning] = _mask_warnings(messages)
    assert "1 of 7 masks are not near-binary" in warning and "masks/4.png" in warning


def test_swapped_image_and_mask_columns_warn(tmp_path):
    rows = []
    for i in range(4):
        save(tmp_path / f"{i}.png", noise_image(400 + i))
        save(tmp_path / f"{i}_m.png", blob_mask(400 + i))
        rows.append({"image": f"{i}_m.png", "mask": f"{i}.png", "label": str(i % 2)})
    write_manifest(tmp_path, rows)
    _, messages = load_with_warnings(
        "manifest", tmp_path, image_size=32, classes=["benign", "malignant"]
    )
    [warning] = [m for m in _mask_warnings(messages) if "not near-binary" in m]
    assert "4 of 4 masks" in warning and "swapped" in warning


def test_jpeg_and_antialiased_masks_are_near_binary(tmp_path):
    write_busi(tmp_path)
    for path in (tmp_path / BUSI_DIR / "malignant").glob("*_mask.png"):
        mask = np.asarray(Image.open(path).convert("L"))
        soft = Image.fromarray(mask).resize((SIZE[0] * 4, SIZE[1] * 4)).resize(SIZE)  # blurry
        soft.save(path)
    Image.open(tmp_path / BUSI_DIR / "benign" / "benign (2)_mask.png").convert("L").save(
        tmp_path / BUSI_DIR / "benign" / "benign (2)_mask.jpg", quality=60
    )
    (tmp_path / BUSI_DIR / "benign" / "benign (2)_mask.png").unlink()
    _, messages = load_with_warnings("busi", tmp_path, image_size=32)
    assert not _mask_warnings(messages)


def test_manifest_needs_classes_and_existing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_manifest(tmp_path / "none.csv", ["a"])
    write_manifest(tmp_path)
    with pytest.raises(ValueError, match="class names"):
        load_dataset("manifest", tmp_path)
