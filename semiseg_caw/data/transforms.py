"""Augmentations (albumentations 2.x) and normalisation.

Images arrive from the cache already resized to ``image_size`` as uint8 (H, W). Training
draws fresh parameters for every sample (rotation angle included); masks are warped with
nearest interpolation so they stay binary. Evaluation only normalises.

A cached auxiliary map (a soft float32 map in [0, 1] from a frozen auxiliary model, see
``SemiSegCAW(cache_aux_maps=True)``) can ride along as the ``aux_map`` target: it gets the
same flips and affine warp as the image, with the image's (linear) interpolation, but none
of the intensity changes. The map was computed from the un-augmented image, so it ignores
the brightness, contrast and noise the image receives: an accepted approximation.

Normalisation uses fixed constants, the same for every data set:
``x = (pixel / 255 - MEAN) / STD`` with ``MEAN = 0.5`` and ``STD = 0.25``, which maps
[0, 255] to [-2, 2].
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

MEAN = 0.5
STD = 0.25

AUX_MAP_KEY = "aux_map"
"""Name of the optional auxiliary-map target of the training transform."""


def build_train_transform(
    *,
    rotate_limit: float = 30.0,
    scale: tuple[float, float] = (0.9, 1.1),
    shift: float = 0.0625,
    hflip_p: float = 0.5,
    vflip_p: float = 0.0,
    affine_p: float = 0.7,
    brightness_contrast: float = 0.2,
    noise: float = 0.15,
    seed: int | None = None,
) -> A.Compose:
    """Training augmentation for a uint8 image (H, W, 1) and its {0, 1} mask (H, W).

    Call it as ``transform(image=..., mask=...)``, optionally with ``aux_map=`` a float32
    (H, W) map in [0, 1] that follows the geometric transforms only (linear interpolation).

    Args:
        rotate_limit: Rotation drawn per sample from [-rotate_limit, rotate_limit] degrees.
        scale: Range of the zoom factor.
        shift: Largest translation as a fraction of the side.
        hflip_p: Probability of a horizontal (left-right) flip.
        vflip_p: Probability of a vertical flip. Off by default: in ultrasound the
            transducer is at the top and acoustic shadows fall below lesions.
        affine_p: Probability of the rotation/scale/shift.
        brightness_contrast: Largest relative brightness and contrast change.
        noise: Speckle-like multiplicative noise: per-pixel factors in [1 - noise, 1 + noise].
        seed: Seed of the pipeline's own random generator (None: fresh entropy).
    """
    geometric = [
        A.HorizontalFlip(p=hflip_p),
        A.VerticalFlip(p=vflip_p),
        A.Affine(
            rotate=(-rotate_limit, rotate_limit),
            scale=scale,
            translate_percent=(-shift, shift),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=affine_p,
        ),
    ]
    # The aux map is an image-like target of the geometric transforms only; the intensity
    # transforms below do not know the key and pass it through untouched. Without an
    # aux_map the pipeline and its random draws are exactly those of an image + mask.
    for t in geometric:
        t.add_targets({AUX_MAP_KEY: "image"})
    intensity = [
        A.RandomBrightnessContrast(
            brightness_limit=brightness_contrast, contrast_limit=brightness_contrast, p=0.5
        ),
        A.MultiplicativeNoise(
            multiplier=(1.0 - noise, 1.0 + noise), per_channel=False, elementwise=True, p=0.3
        ),
    ]
    return A.Compose(geometric + intensity, seed=seed)


def normalize(image: np.ndarray, in_channels: int = 1) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 1) image to a float tensor (in_channels, H, W), normalised.

    Three channels are the one grayscale channel replicated (for encoders that expect RGB).
    """
    gray = np.asarray(image)
    if gray.ndim == 3:
        gray = gray[..., 0]
    return normalize_batch(gray[None], in_channels)[0]


def normalize_batch(images: np.ndarray, in_channels: int = 1) -> torch.Tensor:
    """uint8 (B, H, W) images to a float tensor (B, in_channels, H, W), normalised.

    Computed in numpy: tiny torch ops in loader code would start intra-op threads, which
    slow loading down badly when the CPU is shared.
    """
    gray = np.asarray(images, dtype=np.float32)
    gray = gray * np.float32(1.0 / (255.0 * STD)) - np.float32(MEAN / STD)  # (B, H, W)
    return torch.from_numpy(np.repeat(gray[:, None], in_channels, axis=1))


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: back to [0, 1] intensities."""
    return image * STD + MEAN
