"""Image decoding, validation and the in-memory cache of resized images and masks.

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
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from semiseg_caw.data.samples import Sample

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
    warnings.warn(f"skipping {len(problems)} bad file(s):\n{listing}", RuntimeWarning, stacklevel=2)


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
        raise ValueError(f"cannot decode image ({type(err).__name__}: {err})") from err


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
    return _decode_mask_and_grey_share(Path(path))[0]


def _decode_mask_and_grey_share(path: Path) -> tuple[np.ndarray, float]:
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


@dataclass
class ImageCache:
    """Decoded, resized images and masks of a data set, keyed by sample id.

    One contiguous array per kind, so worker processes share it (fork) or receive it
    in one piece (spawn) instead of many small objects.

    Attributes:
        image_size: Side of every stored image and mask.
        ids: Sample ids, in the order of the arrays.
        images: (N, S, S) uint8 grayscale images.
        masks: (N, S, S) uint8 masks in {0, 1} (zeros for samples without a mask).
        orig_sizes: (N, 2) int64 original (height, width).
        content_hashes: Hash of each full-resolution decoded image (exact duplicates).
        dhashes: (N, DHASH_SIZE**2) bool difference hashes (near duplicates).
        mask_pixels: (N,) int64 foreground pixels of each full-resolution mask (0: empty
            or none), to find lesion images whose masks decode as empty.
        mask_grey_shares: (N,) float32 largest :func:`mid_grey_share` of each sample's mask
            files (0: binary or none), to find masks that are not masks (noise, an image).
    """

    image_size: int
    ids: list[str]
    images: np.ndarray
    masks: np.ndarray
    orig_sizes: np.ndarray
    content_hashes: list[str]
    dhashes: np.ndarray
    mask_pixels: np.ndarray
    mask_grey_shares: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {sample_id: i for i, sample_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.index

    def get(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The (S, S) uint8 image and {0, 1} mask of one sample."""
        i = self.index[sample_id]
        return self.images[i], self.masks[i]

    def subset(self, ids: Iterable[str]) -> ImageCache:
        """A cache holding only ``ids`` (copies; lets the rest be freed)."""
        rows = [self.index[i] for i in ids]
        return ImageCache(
            image_size=self.image_size,
            ids=[self.ids[r] for r in rows],
            images=self.images[rows],
            masks=self.masks[rows],
            orig_sizes=self.orig_sizes[rows],
            content_hashes=[self.content_hashes[r] for r in rows],
            dhashes=self.dhashes[rows],
            mask_pixels=self.mask_pixels[rows],
            mask_grey_shares=self.mask_grey_shares[rows],
        )

    @classmethod
    def from_arrays(
        cls,
        ids: Sequence[str],
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
        image_size: int,
    ) -> ImageCache:
        """Build a cache from full-resolution grayscale images and bool masks (or None)."""
        small_images, small_masks, hashes, dhashes, pixels = [], [], [], [], []
        for image, mask in zip(images, masks, strict=True):
            small_images.append(resize_image(image, image_size))
            empty = np.zeros((image_size, image_size), np.uint8)
            small_masks.append(empty if mask is None else resize_mask(mask, image_size))
            hashes.append(content_hash(image))
            dhashes.append(dhash(image))
            pixels.append(0 if mask is None else int(np.count_nonzero(mask)))
        orig_sizes = [image.shape[:2] for image in images]
        greys = [0.0] * len(small_images)  # bool masks: binary
        return cls._stack(
            image_size, ids, small_images, small_masks, orig_sizes, hashes, dhashes, pixels, greys
        )

    @classmethod
    def _stack(
        cls, image_size, ids, images, masks, orig_sizes, hashes, dhashes, mask_pixels, greys
    ) -> ImageCache:
        n, s, bits = len(ids), image_size, DHASH_SIZE * DHASH_SIZE
        return cls(
            image_size=image_size,
            ids=list(ids),
            images=np.stack(images) if n else np.zeros((0, s, s), np.uint8),
            masks=np.stack(masks) if n else np.zeros((0, s, s), np.uint8),
            orig_sizes=np.asarray(orig_sizes, dtype=np.int64).reshape(n, 2),
            content_hashes=list(hashes),
            dhashes=np.stack(dhashes) if n else np.zeros((0, bits), bool),
            mask_pixels=np.asarray(mask_pixels, dtype=np.int64).reshape(n),
            mask_grey_shares=np.asarray(greys, dtype=np.float32).reshape(n),
        )


class _Decoded(NamedTuple):
    image: np.ndarray  # (S, S) uint8
    mask: np.ndarray  # (S, S) uint8 {0, 1}
    orig_size: tuple[int, int]
    content_hash: str
    dhash: np.ndarray
    mask_pixels: int  # foreground pixels at full resolution
    mask_grey_share: float  # largest mid_grey_share of its mask files


_TURNED_HINT = (
    ": turned by 90 degrees. Both files are read upright, as their EXIF orientation tags say "
    "(as image viewers show them); is the mask drawn on the image's stored pixels instead?"
)


def _decode_sample(sample: Sample, image_size: int) -> _Decoded | BadFile:
    """Decode, check and shrink one sample's image and masks; a BadFile on any problem."""
    assert sample.image is not None
    try:
        gray = decode_image(sample.image)
    except (OSError, ValueError) as err:
        return BadFile(str(sample.image), describe_error(err))
    union = np.zeros(gray.shape, dtype=bool)
    grey_share = 0.0
    for mask_path in sample.masks:
        try:
            mask, share = _decode_mask_and_grey_share(Path(mask_path))
        except (OSError, ValueError) as err:
            return BadFile(str(mask_path), describe_error(err))
        if mask.shape != gray.shape:
            turned = mask.shape == gray.shape[::-1]
            return BadFile(
                str(mask_path),
                f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its image "
                f"{sample.image.name} {gray.shape[1]}x{gray.shape[0]}"
                + (_TURNED_HINT if turned else ""),
            )
        union |= mask
        grey_share = max(grey_share, share)
    return _Decoded(
        image=resize_image(gray, image_size),
        mask=resize_mask(union, image_size),
        orig_size=(gray.shape[0], gray.shape[1]),
        content_hash=content_hash(gray),
        dhash=dhash(gray),
        mask_pixels=int(np.count_nonzero(union)),
        mask_grey_share=grey_share,
    )


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


def decode_samples(
    samples: Sequence[Sample],
    image_size: int,
    *,
    num_threads: int | None = None,
) -> tuple[ImageCache, list[BadFile]]:
    """Decode every sample's files once into an :class:`ImageCache`; bad samples are left out.

    Args:
        samples: Samples with an image file each.
        image_size: Side of the stored images and masks.
        num_threads: Decoding threads (PIL releases the GIL while decoding); default: CPU count, at
            most 8.

    Returns:
        The cache of the good samples, and one BadFile per sample left out.
    """
    threads = num_threads or min(8, os.cpu_count() or 1)
    results: list[_Decoded | BadFile]
    if threads <= 1 or len(samples) < 16:
        results = [_decode_sample(s, image_size) for s in samples]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(lambda s: _decode_sample(s, image_size), samples))
    good = [(s, r) for s, r in zip(samples, results, strict=True) if isinstance(r, _Decoded)]
    problems = [r for r in results if isinstance(r, BadFile)]
    cache = ImageCache._stack(
        image_size,
        [s.id for s, _ in good],
        [r.image for _, r in good],
        [r.mask for _, r in good],
        [r.orig_size for _, r in good],
        [r.content_hash for _, r in good],
        [r.dhash for _, r in good],
        [r.mask_pixels for _, r in good],
        [r.mask_grey_share for _, r in good],
    )
    return cache, problems


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
