"""Readers, decoding and validation on tiny data sets written in the real layouts."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from data_fixtures import SIZE, blob_mask, noise_image, save, write_busi, write_ddti, write_manifest
from PIL import Image

from semiseg_caw.data import (
    DataValidationError,
    decode_image,
    decode_mask,
    load_dataset,
    load_image_folder,
    make_synthetic,
    scan_busi,
    scan_ddti,
    scan_manifest,
)

BUSI_DIR = "Dataset_BUSI_with_GT"


def _load(*args, **kwargs):
    """load_dataset with warnings recorded; returns (data, [warning messages])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(*args, **kwargs)
    return data, [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "P", "LA", "I;16"])
def test_decode_image_any_mode_gives_gray_uint8(tmp_path, mode):
    gray = noise_image(1)
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(gray).convert(mode)
    image.save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == gray.shape
    if mode in ("L", "RGB", "RGBA", "LA", "I;16", "P"):
        assert np.array_equal(out, gray)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_decode_turns_images_and_masks_upright_by_their_exif_orientation(tmp_path, suffix):
    rows, cols = np.mgrid[: SIZE[1], : SIZE[0]]  # not square, so a turn changes the shape
    gray = (4 * cols + 2 * rows).astype(np.uint8)  # smooth, for the JPEG; no symmetry
    mask = blob_mask(2)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90 degrees clockwise
    Image.fromarray(gray).save(tmp_path / f"x{suffix}", exif=exif, quality=100)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png", exif=exif)
    upright = np.rot90(gray, k=-1)
    out = decode_image(tmp_path / f"x{suffix}")
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright).mean() < (0.5 if suffix == ".png" else 2)
    assert np.array_equal(decode_mask(tmp_path / "m.png"), np.rot90(mask, k=-1))


def test_decode_mask_uses_colour_not_alpha(tmp_path):
    mask = blob_mask(3)
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask, :3] = 255
    rgba[..., 3] = 255  # downloads: opaque RGBA masks
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(decode_mask(tmp_path / "opaque.png"), mask)
    rgba[..., 3] = np.where(mask, 255, 0)  # transparent background, colour carries the mask
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    assert np.array_equal(decode_mask(tmp_path / "transparent.png"), mask)
    only_alpha = np.zeros_like(rgba)
    only_alpha[..., 3] = np.where(mask, 255, 0)  # drawn only in alpha: falls back to alpha
    Image.fromarray(only_alpha, "RGBA").save(tmp_path / "alpha.png")
    assert np.array_equal(decode_mask(tmp_path / "alpha.png"), mask)


def test_decode_mask_modes_and_zero_one_values(tmp_path):
    mask = blob_mask(4)
    for mode in ("1", "L", "RGB"):
        save(tmp_path / f"{mode}.png", mask, mode)
        assert np.array_equal(decode_mask(tmp_path / f"{mode}.png"), mask)
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "01.png")  # values {0, 1}
    assert np.array_equal(decode_mask(tmp_path / "01.png"), mask)


def test_decode_mask_label_index_colour_and_palette_masks(tmp_path):
    mask = blob_mask(6)
    for name, value in (("index2", 2), ("gray100", 100)):  # max in (1, 127]: foreground > 0
        Image.fromarray(mask.astype(np.uint8) * value).save(tmp_path / f"{name}.png")
        assert np.array_equal(decode_mask(tmp_path / f"{name}.png"), mask), name
    red = np.zeros((*mask.shape, 3), np.uint8)
    red[mask] = (255, 0, 0)  # gray 76
    Image.fromarray(red).save(tmp_path / "red.png")
    assert np.array_equal(decode_mask(tmp_path / "red.png"), mask)
    # VOC-style palette: class 1 dark red, 255 a bright "void" border; index > 0 is foreground
    index = mask.astype(np.uint8)
    index[0, :] = 255
    voc = Image.fromarray(index, "P")
    voc.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
    voc.save(tmp_path / "voc.png")
    assert np.array_equal(decode_mask(tmp_path / "voc.png"), index > 0)
    # palette whose index 0 is white (foreground): read by colour, not by index
    inverted = Image.fromarray((~mask).astype(np.uint8), "P")
    inverted.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)
    inverted.save(tmp_path / "inverted.png")
    assert np.array_equal(decode_mask(tmp_path / "inverted.png"), mask)
    soft = mask.astype(np.uint8) * 255
    soft[0, 0] = 60  # 0/255 mask with a faint antialiased pixel: still > 127
    Image.fromarray(soft).save(tmp_path / "soft.png")
    assert np.array_equal(decode_mask(tmp_path / "soft.png"), mask)


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_decode_image_wider_than_8_bits_keeps_its_grey_levels(tmp_path, bits):
    gray = noise_image(2)
    gray[0, 0] = 255  # the brightest value the bit depth holds, as real exports have
    wide = (gray.astype(np.uint16) << (bits - 8)) | ((1 << (bits - 8)) - 1)  # 0..2**bits - 1
    Image.fromarray(wide).save(tmp_path / "x.png")  # a 16-bit PNG
    assert np.array_equal(decode_image(tmp_path / "x.png"), gray)


def test_decode_image_16_bit_holding_8_bit_values_and_32_bit_integers(tmp_path):
    gray = noise_image(3)
    Image.fromarray(gray.astype(np.uint16)).save(tmp_path / "small.png")  # values 0..255
    assert np.array_equal(decode_image(tmp_path / "small.png"), gray)
    wide = gray.astype(np.int32) << 12  # 20 bits
    wide[0, 0] = -5  # negative values are black
    Image.fromarray(wide, "I").save(tmp_path / "wide.tif")
    out = decode_image(tmp_path / "wide.tif")
    assert out[0, 0] == 0 and np.array_equal(out.ravel()[1:], gray.ravel()[1:])


def test_decode_image_float_images_are_scaled_not_clipped(tmp_path):
    gray = noise_image(4).astype(np.float32)
    gray[0, 0], gray[0, 1] = 0, 255
    cases = {
        "unit": (gray / 255, gray),  # [0, 1]: times 255, as before
        "bytes": (gray, gray),  # [0, 255]: as it is, as before
        "wide": (gray * 1000 / 255, gray),  # 0..1000: by its largest value
        "decibel": (gray * 60 / 255 - 60, gray),  # -60..0: by its range
    }
    for name, (values, expected) in cases.items():
        Image.fromarray(values.astype(np.float32), "F").save(tmp_path / f"{name}.tif")
        out = decode_image(tmp_path / f"{name}.tif")
        assert np.abs(out.astype(int) - expected).max() <= 1, name


def test_decode_mask_of_16_bit_values(tmp_path):
    mask = blob_mask(5)
    for peak in (1, 255, 4095, 65535):
        Image.fromarray(mask.astype(np.uint16) * peak).save(tmp_path / f"{peak}.png")
        assert np.array_equal(decode_mask(tmp_path / f"{peak}.png"), mask), peak


def test_truncated_and_corrupt_files_raise_naming_the_file(tmp_path):
    save(tmp_path / "good.png", noise_image(5))
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for name in ("cut.png", "junk.png"):
        with pytest.raises(ValueError, match="cannot decode"):
            decode_image(tmp_path / name)


# ----------------------------------------------------------------------------- BUSI


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
    data, messages = _load("busi", root, image_size=32)
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
    data, messages = _load("busi", tmp_path, image_size=32)
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
    data, messages = _load("busi", tmp_path, image_size=32)
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
    data, _ = _load("busi", tmp_path, image_size=32)
    group = {s.id: s.group for s in data.samples}
    assert group["malignant/malignant (7).png"] == group["benign/benign (4).png"]
    assert len(set(group.values())) == len(group) - 1  # unrelated images stay apart


def _problem_paths(excinfo) -> str:
    return "\n".join(f"{p.path}: {p.problem}" for p in excinfo.value.problems)


def test_a_mask_drawn_on_the_stored_pixels_of_a_turned_image_is_named(tmp_path):
    write_busi(tmp_path)
    image = tmp_path / BUSI_DIR / "benign" / "benign (1).png"
    exif = Image.Exif()
    exif[0x0112] = 8  # shown rotated 90 degrees anticlockwise; its mask is not
    Image.open(image).save(image, exif=exif)
    with pytest.raises(DataValidationError) as excinfo:
        load_dataset("busi", tmp_path, image_size=32)
    text = _problem_paths(excinfo)
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
    text = _problem_paths(excinfo)
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
    data, messages = _load("busi", tmp_path, image_size=32, skip_bad_files=True)
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
    text = _problem_paths(excinfo)
    assert "benign (2).jpg" in text and "benign (2).png" in text and "same name" in text
    with pytest.warns(RuntimeWarning, match="same name"):
        ids = {s.id for s in scan_busi(tmp_path, skip_bad_files=True)}
    assert "benign/benign (2).png" not in ids and "benign/benign (2).jpg" not in ids
    assert "benign/benign (3).png" in ids


# ----------------------------------------------------------------------------- DDTI


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
    text = _problem_paths(excinfo)
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
    text = _problem_paths(excinfo)
    assert "3.PNG" in text and "3.bmp" in text and "4.PNG" in text and "4.jpg" in text
    assert text.count("same name") == 2


def test_ddti_labels_not_in_utf8_name_the_file(tmp_path):
    write_ddti(tmp_path, n=4)
    text = (tmp_path / "labels.csv").read_text().replace("3.PNG,2,3,0", "3.PNG,2,3 (é),0")
    (tmp_path / "labels.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(DataValidationError) as excinfo:
        scan_ddti(tmp_path)
    assert "labels.csv" in _problem_paths(excinfo) and "UTF-8" in _problem_paths(excinfo)
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # BOM
    assert len(scan_ddti(tmp_path)) == 4


def test_ddti_labels_row_with_more_values_than_columns_is_refused(tmp_path):
    write_ddti(tmp_path, n=4)
    text = (tmp_path / "labels.csv").read_text().replace("3.PNG,2,3,0", "3.PNG,2,3,0,x")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataValidationError) as excinfo:
        scan_ddti(tmp_path)
    assert "value(s) more than the 4 columns of the header: 'x'" in _problem_paths(excinfo)


def test_ddti_missing_layout(tmp_path):
    (tmp_path / "image").mkdir()
    with pytest.raises(DataValidationError, match="mask"):
        scan_ddti(tmp_path)


# ----------------------------------------------------------------------------- manifest


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
    data, _ = _load("manifest", tmp_path, image_size=SIZE[0], classes=["x"])
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
    text = _problem_paths(excinfo)
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
    text = _problem_paths(excinfo)
    assert "manifest.csv:2: 2 value(s) more than the 4 columns" in text and "'extra'" in text
    assert len(excinfo.value.problems) == 1


def test_manifest_not_in_utf8_names_the_file_and_a_bom_is_fine(tmp_path):
    path = write_manifest(tmp_path)
    text = path.read_text().replace("benign", "bénin")
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataValidationError, match="UTF-8") as excinfo:
        scan_manifest(path, ["bénin", "malignant"])
    assert "manifest.csv: not UTF-8 text" in _problem_paths(excinfo)
    assert "line 2" in _problem_paths(excinfo)
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
    text = _problem_paths(excinfo)
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
    assert "0_m.png: empty, like all 6 masks of lesion-class images" in _problem_paths(excinfo)
    for i in (1, 3, 4, 5):  # 0 and 2 (class 0) stay empty
        save(tmp_path / f"{i}_m.png", blob_mask(i))
    data, messages = _load("manifest", tmp_path, image_size=32, classes=["benign", "malignant"])
    assert len(data.samples) == 6
    empty = [m for m in messages if "empty mask" in m]
    assert len(empty) == 1 and "2 of 6 lesion-class images" in empty[0]
    assert "0_m.png" in empty[0] and "2_m.png" in empty[0]
    # a class named normal is lesion-free: its empty masks are expected
    _, messages = _load("manifest", tmp_path, image_size=32, classes=["normal", "malignant"])
    assert not [m for m in messages if "empty mask" in m]


def _mask_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "not near-binary" in m or "on average" in m]


def test_implausible_masks_warn_naming_the_data_and_an_example(tmp_path):
    write_manifest(tmp_path)
    classes = ["benign", "malignant"]
    _, messages = _load("manifest", tmp_path, image_size=32, classes=classes)
    assert not _mask_warnings(messages)  # plausible masks: quiet
    for i in (0, 2, 3, 4, 5, 6, 7):  # inverted: lesion black, the rest white
        save(tmp_path / "masks" / f"{i}.png", ~blob_mask(200 + i))
    _, messages = _load("manifest", tmp_path, image_size=32, classes=classes)
    [warning] = _mask_warnings(messages)
    assert "on average" in warning and "inverted" in warning and "masks/0.png" in warning
    assert str(tmp_path) in warning
    write_manifest(tmp_path)
    save(tmp_path / "masks" / "4.png", noise_image(9))  # grey noise
    _, messages = _load("manifest", tmp_path, image_size=32, classes=classes)
    [warning] = _mask_warnings(messages)
    assert "1 of 7 masks are not near-binary" in warning and "masks/4.png" in warning


def test_swapped_image_and_mask_columns_warn(tmp_path):
    rows = []
    for i in range(4):
        save(tmp_path / f"{i}.png", noise_image(400 + i))
        save(tmp_path / f"{i}_m.png", blob_mask(400 + i))
        rows.append({"image": f"{i}_m.png", "mask": f"{i}.png", "label": str(i % 2)})
    write_manifest(tmp_path, rows)
    _, messages = _load("manifest", tmp_path, image_size=32, classes=["benign", "malignant"])
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
    _, messages = _load("busi", tmp_path, image_size=32)
    assert not _mask_warnings(messages)


def test_manifest_needs_classes_and_existing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_manifest(tmp_path / "none.csv", ["a"])
    write_manifest(tmp_path)
    with pytest.raises(ValueError, match="class names"):
        load_dataset("manifest", tmp_path)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_fast_deterministic_and_learnable():
    start = time.perf_counter()
    samples, cache = make_synthetic(120, 64, seed=3, include_normal=True)
    assert time.perf_counter() - start < 1.0
    _, again = make_synthetic(120, 64, seed=3, include_normal=True)
    _, other = make_synthetic(120, 64, seed=4, include_normal=True)
    assert np.array_equal(cache.images, again.images) and np.array_equal(cache.masks, again.masks)
    assert not np.array_equal(cache.images, other.images)
    assert cache.images.shape == (120, 64, 64) and cache.images.dtype == np.uint8
    assert {s.label for s in samples} == {0, 1, 2} and all(s.has_mask for s in samples)
    contrast = []
    for s in samples:
        image, mask = cache.get(s.id)
        assert set(np.unique(mask)) <= {0, 1}
        if s.label == 2:
            assert mask.sum() == 0
        else:
            assert mask.sum() > 0
            contrast.append(image[mask == 1].mean() / image[mask == 0].mean())
    # lesions are dark (hypoechoic) but not trivially so
    assert np.median(contrast) < 0.7 and max(contrast) > 0.3
    # shape follows the class: malignant lesions are less compact (perimeter^2 / area)
    compact = {0: [], 1: []}
    for s in samples:
        if s.label in compact:
            m = cache.get(s.id)[1].astype(bool)
            edge = (m ^ np.roll(m, 1, 0)).sum() + (m ^ np.roll(m, 1, 1)).sum()
            compact[s.label].append(edge**2 / m.sum())
    assert np.median(compact[1]) > np.median(compact[0])


def test_synthetic_sample_does_not_depend_on_count():
    _, few = make_synthetic(4, 32, seed=1)
    _, many = make_synthetic(10, 32, seed=1)
    assert np.array_equal(few.images, many.images[:4])


# ----------------------------------------------------------------------------- predict


def test_image_folder_any_format_keeps_original_size(tmp_path):
    for i, ext in enumerate(["png", "jpg", "bmp", "tif"]):
        Image.fromarray(noise_image(i, (30 + i, 20))).convert("RGB").save(tmp_path / f"{i}.{ext}")
    (tmp_path / "notes.txt").write_text("ignored")
    paths, cache = load_image_folder(tmp_path, 16)
    assert cache.ids == ["0.png", "1.jpg", "2.bmp", "3.tif"]
    assert paths[1].endswith("1.jpg")
    assert [tuple(s) for s in cache.orig_sizes] == [(20, 30), (20, 31), (20, 32), (20, 33)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="no images"):
        load_image_folder(tmp_path / "empty", 16)
