"""The batch the package's LightningModules take, and a check of a loop's first batch.

A batch is a dict (what ``SemiSegDataModule``'s loaders yield; a user's own loader must
yield the same):

- ``image``: float (B, C, H, W), normalised, C = the model's ``in_channels``;
- ``mask``: float (B, 1, H, W) with values 0 and 1 (zeros where there is no mask);
- ``has_mask``: bool (B,), which images have a mask;
- ``label``: long (B,), the class index, -1 where there is none;
- ``has_label``: bool (B,), which images have a class label.

Validation and test read ``image``, ``mask``, ``has_mask`` and ``label``; prediction reads
``image`` only. A wrong batch would otherwise fail deep in a loss (a tuple, a missing key)
or, worse, train without an error: 0/255 masks drive the BCE term negative without bound.
"""

from __future__ import annotations

from typing import Any

import torch

TRAIN_KEYS = ("image", "mask", "has_mask", "label", "has_label")
EVAL_KEYS = ("image", "mask", "has_mask", "label")
SOURCE = "see semiseg_caw.lit.batches, or use SemiSegDataModule's loaders with datamodule="


def check_batch(batch: Any, keys: tuple[str, ...], in_channels: int) -> None:
    """Raise a ValueError naming the problem when ``batch`` is not a batch these modules
    take. Reads two values from the device: call it on a loop's first batch only."""
    if not isinstance(batch, dict):
        raise ValueError(
            f"a batch must be a dict with keys {', '.join(keys)}; got {type(batch).__name__} "
            f"({SOURCE})"
        )
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"the batch lacks {', '.join(missing)} ({SOURCE})")
    image = batch["image"]
    if image.dtype == torch.uint8:
        raise ValueError(
            "batch['image'] is uint8: SemiSegDataModule(augment_on_device=True) sends raw "
            "training batches that its on_after_batch_transfer converts; pass the data "
            "module as trainer.fit(model, datamodule=...), not its loaders"
        )
    if image.ndim != 4 or image.shape[1] != in_channels:
        raise ValueError(
            f"batch['image'] must be (B, {in_channels}, H, W) float (the model's in_channels), "
            f"got {tuple(image.shape)}"
        )
    if "mask" not in keys:
        return
    mask = batch["mask"]
    expected = (image.shape[0], 1, *image.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"batch['mask'] must be {expected} like the image, got {tuple(mask.shape)}"
        )
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(
            f"batch['mask'] must hold 0 and 1, got values up to {float(mask.max()):g} "
            "(a 0/255 mask: divide by 255)"
        )
