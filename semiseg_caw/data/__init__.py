"""Data layer: readers, splits, label budgets, transforms and the LightningDataModule.

Names are imported lazily, so ``import semiseg_caw.data`` costs nothing and pulls in
neither Lightning nor albumentations until the name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Sample": "samples",
    "BUSI_CLASSES": "samples",
    "DDTI_CLASSES": "samples",
    "SYNTHETIC_CLASSES": "samples",
    "class_names_for": "samples",
    "BadFile": "io",
    "DataValidationError": "io",
    "ImageCache": "cache",
    "decode_image": "io",
    "decode_mask": "io",
    "LoadedDataset": "readers",
    "load_dataset": "readers",
    "load_image_folder": "readers",
    "scan_busi": "busi",
    "scan_ddti": "ddti",
    "scan_manifest": "manifest",
    "make_synthetic": "synthetic",
    "stratified_group_split": "splits",
    "select_class_only": "budgets",
    "apply_budget": "budgets",
    "read_split_file": "splits",
    "write_split_file": "splits",
    "make_split_file": "splits",
    "build_train_transform": "transforms",
    "normalize": "transforms",
    "SegmentationDataset": "datasets",
    "MixedBatchSampler": "datasets",
    "SemiSegDataModule": "datamodule",
}

__all__ = [
    "BUSI_CLASSES",
    "BadFile",
    "DDTI_CLASSES",
    "DataValidationError",
    "ImageCache",
    "LoadedDataset",
    "MixedBatchSampler",
    "SYNTHETIC_CLASSES",
    "Sample",
    "SegmentationDataset",
    "SemiSegDataModule",
    "apply_budget",
    "build_train_transform",
    "class_names_for",
    "decode_image",
    "decode_mask",
    "load_dataset",
    "load_image_folder",
    "make_split_file",
    "make_synthetic",
    "normalize",
    "read_split_file",
    "scan_busi",
    "scan_ddti",
    "scan_manifest",
    "select_class_only",
    "stratified_group_split",
    "write_split_file",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from semiseg_caw.data.budgets import apply_budget, select_class_only
    from semiseg_caw.data.busi import scan_busi
    from semiseg_caw.data.cache import ImageCache
    from semiseg_caw.data.datamodule import SemiSegDataModule
    from semiseg_caw.data.datasets import (
        MixedBatchSampler,
        SegmentationDataset,
    )
    from semiseg_caw.data.ddti import scan_ddti
    from semiseg_caw.data.io import (
        BadFile,
        DataValidationError,
        decode_image,
        decode_mask,
    )
    from semiseg_caw.data.manifest import scan_manifest
    from semiseg_caw.data.readers import LoadedDataset, load_dataset, load_image_folder
    from semiseg_caw.data.samples import (
        BUSI_CLASSES,
        DDTI_CLASSES,
        SYNTHETIC_CLASSES,
        Sample,
        class_names_for,
    )
    from semiseg_caw.data.splits import (
        make_split_file,
        read_split_file,
        stratified_group_split,
        write_split_file,
    )
    from semiseg_caw.data.synthetic import make_synthetic
    from semiseg_caw.data.transforms import build_train_transform, normalize
