"""Decoding single image and mask files: modes, bit depths, orientation, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import SIZE, blob_mask, noise_image, save
from PIL import Image

from semiseg_caw.data import decode_image, decode_mask


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
    # A scanner's DICOM file (preamble, "DICM", then its elements) is named as one.
    (tmp_path / "scan.dcm").write_bytes(bytes(128) + b"DICM" + bytes(64))
    with pytest.raises(ValueError, match="a DICOM file, which is not read here: export its"):
        decode_image(tmp_path / "scan.dcm")
