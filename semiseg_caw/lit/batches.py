"""The batch the package's LightningModules take, and a check of a loop's first batch.

A batch is a dict (what ``SemiSegDataModule``'s loaders yield; a user's own loader must
yield the same):

- ``image``: float32 (B, C, H, W), normalised, C = the model's ``in_channels``;
- ``mask``: float (B, 1, H, W) with values 0 and 1 (zeros where there is no mask);
- ``has_mask``: bool (B,) (or integers 0 and 1), which images have a mask;
- ``label``: long (B,), the class index (0 to num_classes - 1), -1 where there is none;
- ``has_label``: bool (B,) (or integers 0 and 1), which images have a class label.

Validation and test read ``image``, ``mask``, ``has_mask`` and ``label``; prediction reads
``image`` only. A wrong batch would otherwise fail deep in a loss (a tuple, a missing key, a
float64 image) or, worse, train without an error: 0/255 masks drive the BCE term negative
without bound, and a float label 1.7 is cut to class 1.
"""

from __future__ import annotations

from typing import Any

import torch

TRAIN_KEYS = ("image", "mask", "has_mask", "label", "has_label")
EVAL_KEYS = ("image", "mask", "has_mask", "label")
PREDICT_KEYS = ("image",)
FLAG_KEYS = ("has_mask", "has_label")
SOURCE = "see semiseg_caw.lit.batches, or use SemiSegDataModule's loaders with datamodule="


def check_batch(
    batch: Any,
    keys: tuple[str, ...],
    in_channels: int,
    num_classes: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Raise a ValueError naming the problem when ``batch`` is not a batch these modules
    take: a dict of ``keys``, images of ``in_channels`` channels in float32 or ``dtype`` (the
    model's), labels below ``num_classes``. Reads a few values from the device: call it on a
    loop's first batch only."""
    if not isinstance(batch, dict):
        raise ValueError(
            f"a batch must be a dict with keys {', '.join(keys)}; got {type(batch).__name__} "
            f"({SOURCE})"
        )
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"the batch lacks {', '.join(missing)} ({SOURCE})")
    not_tensors = [k for k in keys if not isinstance(batch[k], torch.Tensor)]
    if not_tensors:
        key = not_tensors[0]
        raise ValueError(f"batch['{key}'] must be a tensor, got {type(batch[key]).__name__}")
    image = batch["image"]
    _check_image(image, in_channels, dtype)
    n = image.shape[0]
    if "mask" in keys:
        _check_mask(batch["mask"], image)
    for key in FLAG_KEYS:
        if key in keys:
            _check_flags(batch[key], key, n)
    if "label" in keys:
        _check_labels(batch["label"], n, num_classes)


def _check_image(image: torch.Tensor, in_channels: int, dtype: torch.dtype) -> None:
    if image.dtype == torch.uint8:
        raise ValueError(
            "batch['image'] is uint8: SemiSegDataModule(augment_on_device=True) sends raw "
            "training batches that its on_after_batch_transfer converts; pass the data "
            "module as trainer.fit(model, datamodule=...), not its loaders"
        )
    if image.dtype not in (torch.float32, dtype):
        # The networks' weights are float32 (or the model's own dtype after .double() or a
        # "-true" precision); the trainer's mixed precision casts inside, not the loader.
        raise ValueError(
            f"batch['image'] is {_name(image.dtype)}, the model takes float32 images "
            "(normalised as SemiSegDataModule does): convert them with image.float(); "
            "for half precision set the trainer's precision, e.g. '16-mixed'"
        )
    if image.ndim != 4 or image.shape[1] != in_channels:
        raise ValueError(
            f"batch['image'] must be (B, {in_channels}, H, W) float (the model's in_channels), "
            f"got {tuple(image.shape)}"
        )


def _check_mask(mask: torch.Tensor, image: torch.Tensor) -> None:
    expected = (image.shape[0], 1, *image.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"batch['mask'] must be {expected} like the image, got {tuple(mask.shape)}"
        )
    if mask.isnan().any():  # min() and max() of a NaN mask pass the range check below
        raise ValueError("batch['mask'] holds NaN: masks must hold 0 and 1")
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(
            f"batch['mask'] must hold 0 and 1, got values up to {float(mask.max()):g} "
            "(a 0/255 mask: divide by 255)"
        )


def _check_flags(flags: torch.Tensor, key: str, n: int) -> None:
    """``has_mask`` / ``has_label``: bool, or integers 0 and 1 (the losses read them as bool)."""
    if tuple(flags.shape) != (n,):
        raise ValueError(f"batch['{key}'] must be ({n},), one per image, got {tuple(flags.shape)}")
    if flags.dtype == torch.bool:
        return
    if flags.is_floating_point() or flags.is_complex():
        raise ValueError(f"batch['{key}'] must be bool, got {_name(flags.dtype)}: use .bool()")
    if ((flags != 0) & (flags != 1)).any():
        raise ValueError(
            f"batch['{key}'] must hold 0 and 1 (or True and False), got "
            f"{sorted(set(flags.tolist()))}"
        )


def _check_labels(labels: torch.Tensor, n: int, num_classes: int | None) -> None:
    if tuple(labels.shape) != (n,):
        raise ValueError(f"batch['label'] must be ({n},), one per image, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        # The losses cast to long: a float label 1.7 would silently become class 1.
        raise ValueError(
            f"batch['label'] must hold integer class indices (long), got {_name(labels.dtype)}"
        )
    if num_classes is None or not labels.numel():
        return
    outside = labels[(labels < -1) | (labels >= num_classes)]
    if outside.numel():
        raise ValueError(
            f"batch['label'] holds {int(outside[0])}: labels must lie in 0..{num_classes - 1} "
            f"(the model's num_classes={num_classes}), or be -1 for an image without a class"
        )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
