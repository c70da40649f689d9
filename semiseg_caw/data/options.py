"""The data module's option checks: clear errors before any data is read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from semiseg_caw.data.budgets import check_class_only
from semiseg_caw.data.readers import DATASETS
from semiseg_caw.data.samples import class_names_for

if TYPE_CHECKING:
    from semiseg_caw.data.datamodule import SemiSegDataModule


def check_options(dm: SemiSegDataModule) -> None:
    """A ValueError naming the first option of ``dm`` whose value cannot work."""
    if dm.dataset not in DATASETS:
        raise ValueError(f"dataset must be synthetic, busi, ddti or manifest, got {dm.dataset!r}")
    if dm.dataset != "synthetic" and not dm.root:
        raise ValueError(f"dataset={dm.dataset!r} needs root (the data set folder or manifest)")
    if dm.dataset == "manifest" and not dm.classes:
        raise ValueError("dataset='manifest' needs classes (the class names, in index order)")
    if dm.classes and (len(dm.classes) < 2 or len(set(dm.classes)) < len(dm.classes)):
        raise ValueError(f"classes must name at least 2 different classes, got {dm.classes}")
    # Both would otherwise be ignored silently (training on generated images instead).
    if dm.dataset == "synthetic" and dm.root:
        raise ValueError(
            "root is set but dataset is 'synthetic'; set data.dataset to busi, ddti or "
            "manifest (or leave root unset for generated images)"
        )
    if dm.dataset != "manifest" and dm.classes:
        raise ValueError(
            f"classes is set but dataset is {dm.dataset!r}, whose classes are fixed "
            f"({', '.join(class_names_for(dm.dataset, dm.include_normal))}); classes "
            "names the labels of a manifest (set data.dataset to manifest, or leave "
            "classes unset)"
        )
    if dm.image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {dm.image_size}")
    if dm.in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {dm.in_channels}")
    if dm.batch_size < 2:
        raise ValueError(
            f"batch_size must be >= 2 (BatchNorm needs at least 2 images per training batch), "
            f"got {dm.batch_size}"
        )
    if dm.eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be >= 1, got {dm.eval_batch_size}")
    check_class_only(dm.class_only)
    if dm.seed < 0:
        raise ValueError(f"seed must be >= 0 (a numpy seed), got {dm.seed}")
    if dm.budget_mode not in ("semi", "reduced", "full"):
        raise ValueError(f"budget_mode must be semi, reduced or full, got {dm.budget_mode!r}")
    cpb = dm.class_only_per_batch
    if cpb is not None and not 0 < cpb < 1:  # 1 would leave no masked image in a batch
        raise ValueError(f"class_only_per_batch must be in (0, 1) or None, got {cpb}")
    if dm.ddti_unlabelled not in ("drop", "mask_only"):
        raise ValueError(f"ddti_unlabelled must be drop or mask_only, got {dm.ddti_unlabelled!r}")
    if dm.synthetic_samples < 1:
        raise ValueError(f"synthetic_samples must be >= 1, got {dm.synthetic_samples}")
    if dm.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {dm.num_workers}")
