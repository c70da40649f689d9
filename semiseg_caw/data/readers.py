"""Reading a data set: its files listed, every image decoded once, validated and cached.

The layouts and their scanners: :mod:`~semiseg_caw.data.busi`,
:mod:`~semiseg_caw.data.ddti` and :mod:`~semiseg_caw.data.manifest` (any data set given as
a CSV file); generated images: :mod:`~semiseg_caw.data.synthetic`. CSV files must be UTF-8
(a byte order mark is fine). Two images whose names differ only in their extension
(``x.png``, ``x.jpg``) are refused: masks are matched by name.

:func:`load_dataset` decodes every image once (validating it and filling the
:class:`ImageCache`), checks the masks, removes exact duplicates and, for BUSI, groups
near-duplicate frames (see :mod:`semiseg_caw.data.checks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from semiseg_caw.data.busi import BUSI_NEAR_DUPLICATE_DISTANCE, busi_samples
from semiseg_caw.data.cache import ImageCache, decode_samples
from semiseg_caw.data.checks import (
    check_grey_masks,
    check_lesion_masks,
    check_mask_coverage,
    group_near_duplicates,
    remove_exact_duplicates,
)
from semiseg_caw.data.ddti import ddti_samples
from semiseg_caw.data.io import (
    BadFile,
    DataValidationError,
    list_image_files,
    not_found,
    report_problems,
)
from semiseg_caw.data.manifest import manifest_samples
from semiseg_caw.data.samples import BUSI_CLASSES, DDTI_CLASSES, Sample, class_names_for

DATASETS = ("synthetic", "busi", "ddti", "manifest")


@dataclass
class LoadedDataset:
    """A decoded data set: usable samples (final groups, no duplicates) and their pixels.

    Attributes:
        name: Data set name (``busi``, ``ddti``, ``manifest`` or ``synthetic``).
        samples: Usable samples, sorted by id.
        cache: Resized images and masks of every sample.
        class_names: Names of the class indices used by ``Sample.label``.
        excluded: Ids left out as exact duplicates.
    """

    name: str
    samples: list[Sample]
    cache: ImageCache
    class_names: list[str]
    excluded: list[str]


def load_dataset(
    dataset: str,
    root: str | Path | None = None,
    *,
    image_size: int = 256,
    classes: Sequence[str] | None = None,
    skip_bad_files: bool = False,
    synthetic_samples: int = 200,
    include_normal: bool = False,
    seed: int = 42,
) -> LoadedDataset:
    """Read, validate and decode a data set once.

    Every file-based data set is loaded whole (BUSI with its normal images, DDTI with its
    unlabelled images) so that splits do not depend on options; filter afterwards.

    Args:
        dataset: One of ``synthetic``, ``busi``, ``ddti``, ``manifest``.
        root: Data set folder (BUSI, DDTI) or manifest file/folder.
        image_size: Side of the cached images and masks.
        classes: Class names of a manifest (required there).
        skip_bad_files: Skip unusable files with one warning instead of raising.
        synthetic_samples: Number of synthetic images.
        include_normal: Synthetic only: also generate lesion-free images (class 2).
        seed: Synthetic only: generator seed.
    """
    if dataset == "synthetic":
        from semiseg_caw.data.synthetic import make_synthetic

        samples, cache = make_synthetic(
            synthetic_samples, image_size, seed=seed, include_normal=include_normal
        )
        names = class_names_for("synthetic", include_normal)
        return LoadedDataset("synthetic", samples, cache, names, [])
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"data set {dataset!r} needs a root path")
    if dataset == "busi":
        samples, problems = busi_samples(root)
        names = list(BUSI_CLASSES)
    elif dataset == "ddti":
        samples, problems = ddti_samples(root)
        names = list(DDTI_CLASSES)
    else:
        if not classes:
            raise ValueError("a manifest data set needs its class names (classes=[...])")
        samples, problems = manifest_samples(root, classes)
        names = list(classes)
    cache, decode_problems = decode_samples(samples, image_size)
    report_problems(problems + decode_problems, skip_bad_files)
    samples = [s for s in samples if s.id in cache]
    if not samples:
        raise DataValidationError([BadFile(str(root), "no usable images left")])
    samples, excluded = remove_exact_duplicates(samples, cache)
    check_lesion_masks(samples, cache, names)
    check_grey_masks(samples, cache, f"{dataset} data at {root}")
    check_mask_coverage(samples, cache, f"{dataset} data at {root}")
    if dataset == "busi":
        samples = group_near_duplicates(samples, cache, BUSI_NEAR_DUPLICATE_DISTANCE)
    if excluded:
        cache = cache.subset(s.id for s in samples)
    return LoadedDataset(dataset, samples, cache, names, excluded)


def load_image_folder(
    folder: str | Path, image_size: int, *, skip_bad_files: bool = False
) -> tuple[list[str], ImageCache]:
    """Decode every image directly inside ``folder`` (png, jpg, bmp, tif, ...) at once.

    Returns the image paths and a cache whose ids are the file names, in name order.
    Prediction does not use it (it decodes one batch at a time, see
    ``semiseg_caw.data.predict_folder``); it suits small folders that are read again and again.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise not_found("image folder", folder)
    paths = list_image_files(folder)
    if not paths:
        raise DataValidationError([BadFile(str(folder), "no images found")])
    samples = [Sample(id=p.name, image=p) for p in paths]
    cache, problems = decode_samples(samples, image_size)
    report_problems(problems, skip_bad_files)
    if not len(cache):
        raise DataValidationError([BadFile(str(folder), "no usable images left")])
    by_name = {p.name: p for p in paths}
    return [str(by_name[i]) for i in cache.ids], cache
