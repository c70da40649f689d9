"""Image files: decoding, validation, resizing and hashing (kept: :mod:`semiseg_caw.data.cache`).

Every image is decoded once, turned upright by its EXIF orientation, converted to 8-bit
grayscale (ultrasound is single-channel; 12/16-bit and float images keep the grey levels
they use, see :func:`_scale_to_uint8`), resized to ``image_size x image_size`` (image:
bilinear with PIL's antialiasing, which averages like area interpolation when shrinking;
mask: nearest) and kept as ``uint8``.
Problems (unreadable file, mask size differing from its image, ...) are collected as
:class:`BadFile` records and reported together, either as one :class:`DataValidationError`
or, when the user asked to skip bad files, as one warning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from semiseg_caw.warn import warn

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File name endings (case-insensitive) read as images."""

DHASH_SIZE = 16
"""Side of the difference hash used to find near-duplicate frames (16 x 16 = 256 bits)."""

MASK_LEVELS_OF_LABELS = 16
"""Masks with at most this many distinct grey values (binary masks, label indices) are never
counted as grey: see :func:`mid_grey_share`."""


class BadFile(NamedTuple):
    """A file that cannot be used, and why."""

    path: str
    problem: str


class DataValidationError(ValueError):
    """The data on disk is not usable as it is; ``problems`` lists every bad file."""

    def __init__(self, problems: Sequence[BadFile], hint: str = "") -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in the data:"]
        lines += [f"  {p.path}: {p.problem}" for p in self.problems]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def report_problems(problems: Sequence[BadFile], skip_bad_files: bool) -> None:
    """Raise one error listing every problem, or warn once when bad files are to be skipped."""
    if not problems:
        return
    if not skip_bad_files:
        raise DataValidationError(
            problems,
            hint="Fix or remove these files, or skip them: data.skip_bad_files: true "
            "(--data.skip_bad_files true; skip_bad_files=True in Python).",
        )
    listing = "\n".join(f"  {p.path}: {p.problem}" for p in problems)
    warn(f"skipping {len(problems)} bad file(s):\n{listing}", RuntimeWarning)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image by its extension (hidden files never do)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float grayscale to uint8, keeping the grey levels it uses.

    Integers: values up to 255 are kept as they are (8-bit data or label indices stored
    wide). Wider values keep their top 8 bits, the bit depth being the fewest bits that
    hold the image's largest value: a 12-bit export (0..4095) is shifted by 4, a 16-bit
    one (largest value >= 32768) by 8. Files do not say their bit depth, so a 12-bit image
    whose brightest pixel is below 2048 is read as 11-bit (twice as bright). Negative
    values are black.

    Floats: values in [0, 1] are scaled by 255 and values in [0, 255] kept; any other
    range is scaled linearly so that ``min(0, smallest)`` is black and the largest value
    white (a float TIFF of 0..1000, or decibels -60..0). NaN is black.
    """
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return _scale_float_to_uint8(arr)
    arr = np.clip(arr.astype(np.int64), 0, None)
    bits = int(arr.max(initial=0)).bit_length()
    if bits <= 8:
        return arr.astype(np.uint8)
    return (arr >> (bits - 8)).astype(np.uint8)


def _scale_float_to_uint8(arr: np.ndarray) -> np.ndarray:
    finite = arr[np.isfinite(arr)]
    low = min(float(finite.min(initial=0.0)), 0.0)
    high = float(finite.max(initial=0.0))
    if low == 0.0 and high <= 1.0:
        arr = arr * 255.0
    elif low < 0.0 or high > 255.0:
        arr = (arr - low) * (255.0 / (high - low))
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def to_gray(image: Image.Image, *, alpha_fallback: bool = False) -> np.ndarray:
    """Grayscale uint8 (H, W) from any PIL mode (1, L, P, LA, RGB, RGBA, I;16, I, F, ...).

    The colour content is used and alpha ignored: downloads of BUSI store masks as RGBA
    whose alpha channel is fully opaque and carries no information. With
    ``alpha_fallback`` (masks), an image whose colour content is uniform while its alpha
    varies is read from its alpha channel instead (a mask drawn only in transparency).
    """
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _scale_to_uint8(np.asarray(image))
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"))
    gray = np.asarray(image.convert("L"))  # drops alpha (ITU-R 601-2 luma for colour)
    if alpha_fallback and "A" in image.getbands() and gray.min() == gray.max():
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() != alpha.max():
            return alpha
    return gray


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image file, turned upright as its EXIF orientation says (as
    image viewers and annotation tools show it); a clear ValueError when it cannot be read."""
    try:
        with Image.open(path) as im:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return im
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises many kinds for corrupt or truncated files
        if _is_dicom(path):  # scanners' own format, which Pillow does not read
            raise ValueError(
                "a DICOM file, which is not read here: export its frames as PNG (e.g. with "
                "pydicom) and give those"
            ) from err
        raise ValueError(f"cannot decode image ({type(err).__name__}: {err})") from err


def _is_dicom(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM file does: a 128-byte preamble, then ``DICM``."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def decode_image(path: str | Path) -> np.ndarray:
    """Decode an image file to grayscale uint8 (H, W)."""
    return to_gray(_open(Path(path)))


def decode_mask(path: str | Path) -> np.ndarray:
    """Decode a mask file to bool (H, W): foreground where the grayscale value is > 127.

    A mask whose maximum is between 1 and 127 holds label indices ({0, 1}, {0, 2}) or a
    dark colour (pure red is gray 76): it is read as foreground where > 0, since a > 127
    threshold would empty it. A palette ('P') mask whose index 0 is black is read by its
    palette index (foreground where > 0), whatever the colours of the other indices.
    """
    return decode_mask_and_grey_share(Path(path))[0]


def decode_mask_and_grey_share(path: Path) -> tuple[np.ndarray, float]:
    """The mask of :func:`decode_mask` and the :func:`mid_grey_share` of its grey values."""
    image = _open(path)
    if image.mode == "P" and _palette_starts_black(image):
        return np.asarray(image) > 0, 0.0
    gray = to_gray(image, alpha_fallback=True)
    if 1 <= gray.max(initial=0) <= 127:
        return gray > 0, mid_grey_share(gray)
    return gray > 127, mid_grey_share(gray)


def mid_grey_share(gray: np.ndarray) -> float:
    """Share of a uint8 mask's pixels that are mid-grey: further than a quarter of its value
    range from both its darkest and its brightest value.

    About 0 for binary, anti-aliased or JPEG-compressed masks (grey only along edges), about
    0.5 for grey noise and 0.1 or more for an ultrasound image given as a mask. Masks with
    at most :data:`MASK_LEVELS_OF_LABELS` distinct values (label indices) count as 0.
    """
    counts = np.bincount(gray.ravel(), minlength=256)
    levels = np.flatnonzero(counts)
    if len(levels) <= MASK_LEVELS_OF_LABELS:
        return 0.0
    darkest, brightest = int(levels[0]), int(levels[-1])
    quarter = (brightest - darkest) / 4
    values = np.arange(counts.size)
    mid = (values > darkest + quarter) & (values < brightest - quarter)
    return float(counts[mid].sum() / gray.size)


def _palette_starts_black(image: Image.Image) -> bool:
    """Whether palette index 0 is opaque black (a label-index mask's background)."""
    palette = image.getpalette() or []
    return palette[:3] == [0, 0, 0] and "transparency" not in image.info


def resize_image(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (H, W) image to (size, size), bilinear (antialiased when shrinking)."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool/{0,1} (H, W) mask to uint8 {0, 1} (size, size) with nearest interpolation."""
    mask = mask.astype(np.uint8)
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return (mask > 0).astype(np.uint8)


def content_hash(gray: np.ndarray) -> str:
    """Hash of decoded pixels and shape: equal for the same picture in any file format/mode."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(gray.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(gray).tobytes())
    return digest.hexdigest()


def dhash(gray: np.ndarray, hash_size: int = DHASH_SIZE) -> np.ndarray:
    """Difference hash: signs of horizontal gradients of the image box-shrunk to a tiny grid.

    Returns a bool vector of ``hash_size**2`` bits; near-identical frames differ in few bits.
    """
    small = Image.fromarray(gray).resize((hash_size + 1, hash_size), Image.Resampling.BOX)
    small = np.asarray(small, dtype=np.float32)
    return (small[:, 1:] > small[:, :-1]).ravel()


def not_found(what: str, path: Path) -> FileNotFoundError:
    """``<what> not found: <path>``; for a relative path, the folder it was looked for from
    (a config's paths are read from where the command runs, not from the config's folder)."""
    where = "" if path.is_absolute() else f" (a relative path is read from {Path.cwd()})"
    return FileNotFoundError(f"{what} not found: {path}{where}")


def file_exists_error(path: Path) -> FileExistsError:
    """The refusal to replace an earlier output file without being told to."""
    return FileExistsError(
        f"{path} exists: give another file name, or --overwrite (overwrite=True in Python)"
    )


def check_file_writable(path: Path, staging: Path, what: str = "") -> None:
    """Create ``path``'s folder if needed and prove that ``staging`` (the file written first,
    then renamed to ``path``) can be written there: a PermissionError naming ``path``
    (after ``what``) now, not after minutes of work."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.touch()
        staging.unlink()
    except OSError as err:
        where = err.filename or path.parent
        raise PermissionError(
            f"{what}{path} cannot be written: {where}: {err.strerror or err}"
        ) from err


def describe_error(err: Exception) -> str:
    """The reason a file could not be used, for a BadFile record or an ``error`` column."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    return str(err) or type(err).__name__


def read_for_prediction(path: str | Path, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One image to predict, decoded on demand: (size, size) uint8 and its (height, width).

    Raises ValueError (naming the reason) for a file that cannot be decoded, an empty
    file or an image without pixels, and FileNotFoundError for a vanished one.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    gray = decode_image(path)
    if gray.ndim != 2 or 0 in gray.shape:
        raise ValueError(f"image has no pixels (shape {gray.shape})")
    return resize_image(gray, image_size), (int(gray.shape[0]), int(gray.shape[1]))


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=str)
