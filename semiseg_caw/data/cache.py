"""The in-memory cache of a data set's resized images and masks, each decoded once.

:func:`decode_samples` decodes every sample's image and masks (on threads: PIL releases the
GIL while decoding), checks that each mask matches its image, and stacks what it keeps into
one :class:`ImageCache`; a sample that fails becomes a :class:`BadFile` record instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from semiseg_caw.data.io import (
    DHASH_SIZE,
    BadFile,
    content_hash,
    decode_image,
    decode_mask_and_grey_share,
    describe_error,
    dhash,
    resize_image,
    resize_mask,
)
from semiseg_caw.data.samples import Sample


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
            mask, share = decode_mask_and_grey_share(Path(mask_path))
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
