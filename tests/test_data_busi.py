"""The BUSI reader on tiny data sets in its layout: labels, masks, duplicates, bad files."""

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
)
from PIL import Image

from semiseg_caw.data import DataValidationError, load_dataset, scan_busi


@pytest.mark.parametrize("nested", [True, False])
def test_busi_reader_layout_labels_and_masks(tmp_path, nested):
    root = write_busi(tmp_path, nested=nested)  # class folders in root itself when not nested
    samples = scan_busi(root)
    assert [s.label for s in samples].count(0) == 6
    assert [s.label for s in samples].count(1) == 4
    assert [s.label for s in samples].count(2) == 2
    by_id = {s.id: s for s in samples}
    multi = by_id["benign/benign (1).png"]
    assert [m.name for m in multi.masks] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    data, messages = load_with_warnings("busi", root, image_size=32)
    assert len(data.samples) == 12 and data.class_names == ["benign", "malignant", "normal"]
    # union of both mask files, resized with nearest: binary, covers both lesions
    _, small = data.cache.get("benign/benign (1).png")
    assert set(np.unique(small)) == {0, 1}
    assert small[-2:, -2:].all() and small.sum() > 4 * 4
    for s in data.samples:  # normal masks are empty, lesion masks are not
        assert (data.cache.get(s.id)[1].sum() == 0) == (s.label == 2)
    assert not [m for m in messages if "empty mask" in m]  # normal images are not lesions
    assert data.cache.images.dtype == np.uint8 and data.cache.images.shape[1:] == (32, 32)
    assert tuple(data.cache.orig_sizes[0]) == (SIZE[1], SIZE[0])


def test_busi_root_may_be_the_dataset_folder_itself(tmp_path):
    write_busi(tmp_path)
    assert [s.id for s in scan_busi(tmp_path)] == [s.id for s in scan_busi(tmp_path / BUSI_DIR)]


def test_busi_exact_duplicates_with_conflicting_labels_are_excluded(tmp_path):
    write_busi(tmp_path)
    base = tmp_path / BUSI_DIR
    # the same picture as benign (2), saved in another mode, filed as malignant
    save(
        base / "malignant" / "malignant (9).png",
        np.asarray(Image.open(base / "benign" / "benign (2).png").convert("L")),
        "RGB",
    )
    save(base / "malignant" / "malignant (9)_mask.png", blob_mask(9), "L")
    data, messages = load_with_warnings("busi", tmp_path, image_size=32)
    ids = {s.id for s in data.samples}
    assert "benign/benign (2).png" not in ids and "malignant/malignant (9).png" not in ids
    assert data.excluded == ["benign/benign (2).png", "malignant/malignant (9).png"]
    assert any("benign (2).png" in m and "malignant (9).png" in m for m in messages)


def test_same_label_duplicates_keep_one_copy(tmp_path):
    write_busi(tmp_path)
    base = tmp_path / BUSI_DIR
    copy = np.asarray(Image.open(base / "benign" / "benign (3).png").convert("L"))
    save(base / "benign" / "benign (99).png", copy, "RGBA")
    save(base / "benign" / "benign (99)_mask.png", blob_mask(99))
    data, messages = load_with_warnings("busi", tmp_path, image_size=32)
    ids = {s.id for s in data.samples}
    assert "benign/benign (3).png" in ids and "benign/benign (99).png" not in ids
    assert any("kept benign/benign (3).png" in m for m in messages)


def test_busi_near_duplicates_share_a_group(tmp_path):
    write_busi(tmp_path)
    base = tmp_path / BUSI_DIR
    frame = np.asarray(Image.open(base / "benign" / "benign (4).png").convert("L")).astype(int)
    frame = np.clip(frame + np.random.default_rng(0).integers(-6, 7, frame.shape), 0, 255)
    save(base / "malignant" / "malignant (7).png", frame.astype(np.uint8))
    save(base / "malignant" / "malignant (7)_mask.png", blob_mask(7))
    data, _ = load_with_warnings("busi", tmp_path, image_size=32)
    group = {s.id: s.group for s in data.samples}
    assert group["malignant/malignant (7).png"] == group["benign/benign (4).png"]
    assert len(set(group.values())) == len(group) - 1  # unrelated images stay apart


def test_a_mask_drawn_on_the_stored_pixels_of_a_turned_image_is_named(tmp_path):
    write_busi(tmp_path)
    image = tmp_path / BUSI_DIR / "benign" / "benign (1).png"
    exif = Image.Exif()
    exif[0x0112] = 8  # shown rotated 90 degrees anticlockwise; its mask is not
    Image.open(image).save(image, exif=exif)
    with pytest.raises(DataValidationError) as excinfo:
        load_dataset("busi", tmp_path, image_size=32)
    text = problem_paths(excinfo)
    assert "benign (1)_mask.png: mask size 40x32" in text and "turned by 90 degrees" in text


def test_busi_bad_files_raise_one_error_naming_each(tmp_path):
    write_busi(tmp_path)
    base = tmp_path / BUSI_DIR
    (base / "benign" / "benign (2).png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    save(base / "benign" / "benign (3)_mask.png", np.zeros((10, 10), bool))  # wrong size
    save(base / "malignant" / "malignant (50)_mask.png", blob_mask(1))  # no image
    save(base / "tumour" / "tumour (1).png", noise_image(77))  # unknown class folder
    with pytest.raises(DataValidationError) as excinfo:
        load_dataset("busi", tmp_path, image_size=32)
    text = problem_paths(excinfo)
    assert "benign (2).png: cannot decode" in text
    assert "benign (3)_mask.png: mask size 10x10" in text and "differs" in text
    assert "malignant (50)_mask.png: mask without an image" in text
    assert "tumour: unknown class folder 'tumour'" in text
    assert len(excinfo.value.problems) == 4
    assert "skip_bad_files=True" in str(excinfo.value)


def test_busi_skip_bad_files_warns_once_and_skips(tmp_path):
    write_busi(tmp_path)
    base = tmp_path / BUSI_DIR
    (base / "benign" / "benign (2).png").write_bytes(b"broken")
    save(base / "benign" / "benign (3)_mask.png", np.zeros((10, 10), bool))
    save(base / "tumour" / "tumour (1).png", noise_image(77))
    data, messages = load_with_warnings("busi", tmp_path, image_size=32, skip_bad_files=True)
    ids = {s.id for s in data.samples}
    assert len(ids) == 10 and "benign/benign (2).png" not in ids
    bad = [m for m in messages if "bad file" in m]
    assert len(bad) == 1 and "benign (2).png" in bad[0] and "tumour" in bad[0]


def test_busi_missing_root_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_busi(tmp_path / "nowhere")
    with pytest.raises(DataValidationError, match="no class folders"):
        scan_busi(tmp_path)
    (tmp_path / "benign").mkdir()
    with pytest.raises(DataValidationError, match="no images found"):
        scan_busi(tmp_path)


def test_busi_image_without_mask_is_reported(tmp_path):
    write_busi(tmp_path)
    (tmp_path / BUSI_DIR / "normal" / "normal (1)_mask.png").unlink()
    with pytest.raises(DataValidationError, match=r"normal \(1\).png: image without a mask"):
        scan_busi(tmp_path)


def test_busi_two_images_with_the_same_name_are_refused_naming_both(tmp_path):
    write_busi(tmp_path)
    folder = tmp_path / BUSI_DIR / "benign"
    Image.open(folder / "benign (2).png").convert("RGB").save(folder / "benign (2).jpg")
    with pytest.raises(DataValidationError) as excinfo:
        scan_busi(tmp_path)
    text = problem_paths(excinfo)
    assert "benign (2).jpg" in text and "benign (2).png" in text and "same name" in text
    with pytest.warns(RuntimeWarning, match="same name"):
        ids = {s.id for s in scan_busi(tmp_path, skip_bad_files=True)}
    assert "benign/benign (2).png" not in ids and "benign/benign (2).jpg" not in ids
    assert "benign/benign (3).png" in ids
