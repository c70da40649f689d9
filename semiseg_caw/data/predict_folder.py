"""A folder of images to predict: which files are predicted, and the dataset that reads them.

Unlike training data, a prediction folder is not decoded up front: each image is decoded
when the loader asks for it, so memory does not grow with the folder, and a file that
cannot be read is reported by the writer while the rest of the folder is still predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from semiseg_caw.data.busi import is_mask_file
from semiseg_caw.data.datasets import collate
from semiseg_caw.data.io import (
    IMAGE_EXTENSIONS,
    BadFile,
    DataValidationError,
    describe_error,
    list_image_files,
    not_found,
    read_for_prediction,
)
from semiseg_caw.data.transforms import normalize
from semiseg_caw.warn import warn

_LISTED = 20  # names shown in a warning about files left out


def predict_image_paths(folder: str | Path) -> list[Path]:
    """The images directly inside ``folder`` to predict, in name order.

    Files named like masks (``*_mask.png``: BUSI keeps its ground truth next to the scans),
    other files and subfolders are left out with a warning each; a folder left with no
    image is a DataValidationError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise not_found("prediction folder", folder)
    paths = list_image_files(folder)  # names only: decoding waits for the loader
    listed = set(paths)
    masks = [p.name for p in paths if is_mask_file(p)]
    if masks:
        paths = [p for p in paths if not is_mask_file(p)]
        warn(
            f"skipping {len(masks)} file(s) in {folder} named like masks (*_mask.*, "
            f"*_mask_1.*, ...; e.g. {masks[0]}): ground truth, not scans to predict",
            UserWarning,
        )
    if not paths:
        notes = [f"{len(masks)} mask file(s) skipped"] if masks else []
        below = _subfolders_with_images(folder)
        if below:  # e.g. a data set's root (DDTI's image/ and mask/) given for its images
            listing = ", ".join(below[:_LISTED]) + (", ..." if len(below) > _LISTED else "")
            notes.append(
                f"subfolders are not predicted, and {listing} hold(s) images: give one as "
                "--data.predict_dir"
            )
        only = f" ({'; '.join(notes)})" if notes else ""
        raise DataValidationError([BadFile(str(folder), f"no images found{only}")])
    ignored = sorted(p.name for p in folder.iterdir() if p.is_file() and p not in listed)
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    dicom = any(Path(name).suffix.lower() in (".dcm", ".dicom") for name in ignored)
    for names, why in (
        (
            ignored,
            f"file(s) in {folder} are not predicted, being hidden or not named as "
            f"images ({', '.join(IMAGE_EXTENSIONS)})"
            + ("; DICOM files are not read: export their frames as PNG" if dicom else ""),
        ),
        (
            subfolders,
            f"subfolder(s) of {folder} are not predicted (only the folder's own images are)",
        ),
    ):
        if names:
            listing = ", ".join(names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")
            warn(f"{len(names)} {why}: {listing}", UserWarning)
    return paths


def _subfolders_with_images(folder: Path) -> list[str]:
    """The names of ``folder``'s subfolders that hold image files of their own."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            if list_image_files(sub):
                found.append(sub.name)
        except OSError:  # unreadable: not one to suggest
            pass
    return found


class PredictFolderDataset(Dataset):
    """The image files of a folder to predict, each decoded when the loader asks for it.

    Items: ``image`` (C, S, S) normalised, ``id`` (file name), ``path``, ``orig_size`` long
    (2,) (height, width). A file that cannot be read gives a blank image, ``orig_size``
    (0, 0) and ``error`` (the reason), so that the rest of the folder is still predicted
    and the writer reports the file.
    """

    def __init__(self, paths: Sequence[Path], image_size: int, in_channels: int = 1) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = image_size
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        item = {"id": path.name, "path": str(path)}
        try:
            image, orig_size = read_for_prediction(path, self.image_size)
        except (OSError, ValueError) as err:
            blank = np.zeros((self.image_size, self.image_size), np.uint8)
            item.update(image=normalize(blank, self.in_channels), error=describe_error(err))
            item["orig_size"] = torch.from_numpy(np.zeros(2, np.int64))
            return item
        item.update(image=normalize(image, self.in_channels))
        item["orig_size"] = torch.from_numpy(np.asarray(orig_size, np.int64))
        return item


def collate_predictions(items: Sequence[dict]) -> dict:
    """:func:`collate` for predict items; ``error`` ("" for good files) only when one failed."""
    errors = [item.get("error", "") for item in items]
    batch = collate([{k: v for k, v in item.items() if k != "error"} for item in items])
    if any(errors):
        batch["error"] = errors
    return batch
