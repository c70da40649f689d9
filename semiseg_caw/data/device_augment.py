"""Training augmentation of whole batches on their own device (e.g. GPU tensors).

The same families, ranges and probabilities as the albumentations pipeline
(:func:`~semiseg_caw.data.transforms.build_train_transform`), drawn per sample: a flip, one
affine warp (rotation, scale, shift), brightness/contrast and speckle-like noise. Masks are
warped with nearest interpolation so they stay binary; a cached ``aux_map`` follows the
geometry only.

With ``SemiSegDataModule(augment_on_device=True)`` the loader only indexes the decoded
cache, one fancy index per batch, and hands over the uint8 pixels and masks as stored; the
batch is converted and augmented after Lightning moved it to the device: a handful of
batched kernels instead of per-image CPU work, so the loader cannot starve a fast GPU. The
draws come from torch's global generator of the batch's device, which ``seed_everything``
and :class:`~semiseg_caw.checkpoints.EpochSeeding` seed; nothing here waits for the device
(no ``.item()``, no data-dependent branch).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_caw.data.transforms import (
    AUX_MAP_KEY,
    MEAN,
    STD,
    build_train_transform,
    denormalize,
)

# The ranges and probabilities of the loader's pipeline: one source for both.
DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(build_train_transform).parameters.items()
    if name != "seed"
}


def from_raw(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with a uint8 ``image`` normalised and a uint8 ``mask`` made float, as
    ``SegmentationDataset`` gives them without ``raw``; other batches are returned as they are.
    """
    if batch["image"].dtype != torch.uint8:
        return batch
    out = dict(batch)
    out["image"] = (batch["image"].float() / 255 - MEAN) / STD
    out["mask"] = batch["mask"].float()
    return out


def augment_batch(batch: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A copy of ``batch`` with ``image`` (B, C, H, W), ``mask`` (B, 1, H, W) and, when
    present, ``aux_map`` augmented. ``image`` comes normalised (float) or as uint8 pixels
    and ``mask`` as float or uint8 (``SegmentationDataset(raw=True)``); both leave as float,
    the image normalised. ``settings`` override the defaults of
    ``build_train_transform`` (``rotate_limit``, ``scale``, ``shift``, ``hflip_p``,
    ``vflip_p``, ``affine_p``, ``brightness_contrast``, ``noise``), which they mean here too."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(
            f"unknown augmentation settings {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    opt = {**DEFAULTS, **settings}
    rotate_limit, scale, shift = opt["rotate_limit"], opt["scale"], opt["shift"]
    brightness_contrast, noise = opt["brightness_contrast"], opt["noise"]
    batch = from_raw(batch)
    image = batch["image"]
    n, device = image.shape[0], image.device

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, device=device)

    def coin(p: float) -> Tensor:
        return torch.rand(n, device=device) < p

    # One sampling grid per sample. affine_grid wants, for every output pixel, where to read
    # in the input: the inverse of "flip, then rotate / scale / shift" (as albumentations
    # orders them), in coordinates that run from -1 to 1 across the image.
    warp = coin(opt["affine_p"])
    angle = torch.where(warp, uniform(-rotate_limit, rotate_limit) * (math.pi / 180), 0.0)
    zoom = torch.where(warp, uniform(*scale), 1.0)
    tx = torch.where(warp, uniform(-shift, shift) * 2, 0.0)
    ty = torch.where(warp, uniform(-shift, shift) * 2, 0.0)
    fx = torch.where(coin(opt["hflip_p"]), -1.0, 1.0)
    fy = torch.where(coin(opt["vflip_p"]), -1.0, 1.0)
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack(
        [
            torch.stack([fx * cos, fx * sin, -fx * (cos * tx + sin * ty)], dim=1),
            torch.stack([-fy * sin, fy * cos, -fy * (-sin * tx + cos * ty)], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)

    def resample(x: Tensor, mode: str) -> Tensor:
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

    out = dict(batch)
    # Intensities in [0, 1], so that the area warped in from outside is black (fill 0).
    pixels = resample(denormalize(image), "bilinear")
    on = coin(0.5)[:, None, None, None]
    contrast = uniform(1 - brightness_contrast, 1 + brightness_contrast)[:, None, None, None]
    brightness = uniform(-brightness_contrast, brightness_contrast)[:, None, None, None]
    pixels = torch.where(on, pixels * contrast + brightness, pixels).clamp_(0, 1)
    speckle = 1 + noise * (2 * torch.rand_like(pixels[:, :1]) - 1)  # one factor per pixel
    pixels = torch.where(coin(0.3)[:, None, None, None], pixels * speckle, pixels).clamp_(0, 1)
    out["image"] = (pixels - MEAN) / STD
    out["mask"] = resample(batch["mask"], "nearest")
    if AUX_MAP_KEY in batch:
        out[AUX_MAP_KEY] = resample(batch[AUX_MAP_KEY], "bilinear")
    return out
