"""What ``load_dataset`` does to a data set once it is decoded: check its masks, remove
exact duplicates and group near-duplicate frames.

Masks: empty masks of lesion-class images warn (all empty:
error); masks that are not near-binary (grey noise, images given as masks) or that cover
more than half their image on average (inverted) warn, naming examples.

Exact duplicates (same decoded pixels, whatever the file format) are removed with a
warning naming the files: when their labels conflict (BUSI ``benign (433).png`` and
``malignant (145).png``) every copy is removed; otherwise one copy is kept (preferring a
labelled one, then one with a mask, then the first id).

Near-duplicate frames (BUSI: several frames of one scan) are put in one group, so that no
split separates them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from semiseg_caw.data.cache import ImageCache
from semiseg_caw.data.io import BadFile, DataValidationError
from semiseg_caw.data.samples import Sample
from semiseg_caw.warn import warn

MEAN_FOREGROUND_LIMIT = 0.5
"""Largest plausible mean share of an image that its (non-empty) masks cover. Lesions are
the smaller part: BUSI and DDTI 10% on average, 56% at most; inverted masks (lesion
black) cover most of their image."""

GREY_MASK_SHARE = 0.05
"""Largest plausible share of mid-grey pixels in a mask (see ``io.mid_grey_share``). BUSI's
and DDTI's masks have none; an ultrasound image has 10% or more, grey noise about 50%."""


def remove_exact_duplicates(
    samples: Sequence[Sample], cache: ImageCache
) -> tuple[list[Sample], list[str]]:
    """Drop samples whose decoded pixels equal another's; warn naming every file.

    Copies with conflicting labels are all dropped; otherwise one is kept: a labelled copy,
    then one with a mask, then the first by id. Returns the kept samples and the dropped ids.
    """
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_hash[cache.content_hashes[cache.index[sample.id]]].append(sample)
    dropped: list[str] = []
    notes: list[str] = []
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        copies = sorted(copies, key=lambda s: (not s.has_label, not s.has_mask, s.id))
        labels = {s.label for s in copies if s.label is not None}
        names = ", ".join(s.id for s in copies)
        if len(labels) > 1:
            dropped += [s.id for s in copies]
            notes.append(f"  {names}: conflicting labels, all excluded")
        else:
            dropped += [s.id for s in copies[1:]]
            notes.append(f"  {names}: kept {copies[0].id}")
    if notes:
        warn(f"{len(dropped)} exact duplicate image(s) excluded:\n" + "\n".join(notes), UserWarning)
    gone = set(dropped)
    return [s for s in samples if s.id not in gone], sorted(dropped)


def group_near_duplicates(
    samples: Sequence[Sample], cache: ImageCache, max_distance: int
) -> list[Sample]:
    """Merge the groups of samples whose difference hashes differ in <= ``max_distance`` bits.

    Single linkage (union-find); the merged group is named by its smallest member group.
    """
    n = len(samples)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first_of_group: dict[str, int] = {}
    for i, sample in enumerate(samples):
        union(i, first_of_group.setdefault(sample.group, i))
    bits = cache.dhashes[[cache.index[s.id] for s in samples]].astype(np.float32)  # (N, 256)
    distance = bits @ (1.0 - bits).T + (1.0 - bits) @ bits.T  # (N, N) Hamming distances
    for i, j in zip(*np.nonzero(np.triu(distance <= max_distance, k=1)), strict=True):
        union(int(i), int(j))
    names: dict[int, str] = {}
    for i, sample in enumerate(samples):
        root = find(i)
        names[root] = min(names.get(root, sample.group), sample.group)
    return [s.with_group(names[find(i)]) for i, s in enumerate(samples)]


def check_lesion_masks(
    samples: Sequence[Sample], cache: ImageCache, class_names: Sequence[str]
) -> None:
    """Catch masks whose encoding decodes as empty (e.g. a colour this reader thresholds away).

    Among images of a lesion class (any class but ``normal``) that have a mask: when every
    mask is empty, raise a DataValidationError; when some are, warn naming a few.
    """
    lesion = [
        s
        for s in samples
        if s.has_mask and s.label is not None and class_names[s.label].lower() != "normal"
    ]
    empty = [s for s in lesion if cache.mask_pixels[cache.index[s.id]] == 0]
    if not empty:
        return
    rule = (
        "masks are read as foreground where the gray value is > 127, or > 0 when the "
        "largest value is at most 127 (palette masks: index > 0)"
    )
    if len(empty) == len(lesion):
        raise DataValidationError(
            [
                BadFile(
                    _mask_name(empty[0]),
                    f"empty, like all {len(lesion)} masks of lesion-class images",
                )
            ],
            hint=f"Check the mask encoding: {rule}.",
        )
    warn(
        f"{len(empty)} of {len(lesion)} lesion-class images have an empty mask "
        f"({_mask_names(empty, 5)}); "
        f"check their mask encoding ({rule})",
        UserWarning,
    )


def check_grey_masks(samples: Sequence[Sample], cache: ImageCache, source: str) -> None:
    """Warn about masks that are not near-binary: grey noise, or images given as masks (e.g.
    swapped manifest columns). Thresholded, they would train a model on nonsense."""
    with_mask = [s for s in samples if s.has_mask]
    grey = [s for s in with_mask if cache.mask_grey_shares[cache.index[s.id]] > GREY_MASK_SHARE]
    if grey:
        warn(
            f"{source}: {len(grey)} of {len(with_mask)} masks are not near-binary (many grey "
            f"levels, e.g. {_mask_names(grey)}): are they images or noise, or are the image "
            "and mask columns swapped? Masks should be black with the lesion white.",
            UserWarning,
        )


def check_mask_coverage(samples: Sequence[Sample], cache: ImageCache, source: str) -> None:
    """Warn when non-empty masks cover most of their image on average: inverted masks (lesion
    black on white) would teach the model to segment the background."""
    covered = [s for s in samples if cache.mask_pixels[cache.index[s.id]] > 0]
    if not covered:
        return  # empty masks are check_lesion_masks' concern
    rows = [cache.index[s.id] for s in covered]
    shares = cache.mask_pixels[rows] / cache.orig_sizes[rows].prod(axis=1)
    if shares.mean() > MEAN_FOREGROUND_LIMIT:
        example = covered[int(shares.argmax())]
        warn(
            f"{source}: masks cover {shares.mean():.0%} of their image on average (e.g. "
            f"{_mask_names([example])}); lesions are usually the smaller part: are the masks "
            "inverted (lesion black on white)?",
            UserWarning,
        )


def _mask_name(sample: Sample) -> str:
    return str(sample.masks[0]) if sample.masks else sample.id


def _mask_names(samples: Sequence[Sample], shown: int = 3) -> str:
    names = [_mask_name(s) for s in samples[:shown]]
    return ", ".join(names) + (", ..." if len(samples) > shown else "")
