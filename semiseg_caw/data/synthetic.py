"""Synthetic ultrasound images: the default data set, generated in memory from a seed.

Each image is speckled tissue (smooth echogenicity, layered structure, depth-dependent
attenuation, multiplicative Rayleigh speckle) with one hypoechoic (dark) lesion and its
mask. The lesion's shape follows its class, the way radiologists read breast lesions:

- benign (0): smooth, wider-than-tall oval, sometimes gently lobulated, sharp margin,
  often posterior acoustic enhancement;
- malignant (1): irregular, spiculated, rounder or taller-than-wide, blurred margin,
  often posterior acoustic shadowing;
- normal (2, on request): no lesion; the mask is empty.

Sizes, contrast, margins and distractors (a dark fat layer, shadows) vary and the class
cues overlap, so neither segmentation nor classification is trivial. Sample ``i`` depends
only on ``(seed, i)``, ``include_normal`` and the image size, not on how many samples are
generated.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from semiseg_caw.data.cache import ImageCache
from semiseg_caw.data.samples import Sample


def _smooth_field(rng: np.random.Generator, size: int, cells: int, low: float, high: float):
    """A smooth random field (size, size): bicubic upsampling of a coarse random grid."""
    coarse = rng.uniform(low, high, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def _lesion(rng: np.random.Generator, label: int, y: np.ndarray, x: np.ndarray):
    """Lesion mask (bool), soft inside-ness (float) and posterior-effect factor (float)."""
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.62)
    radius = rng.uniform(0.08, 0.19)
    angle = np.arctan2(y - cy, x - cx)
    if label == 0:  # benign: wide oval, smooth or gently lobulated margin
        half_w, half_h = radius * rng.uniform(1.15, 1.7), radius
        wobble = sum(
            rng.uniform(0.0, 0.07) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
            for k in (2, 3, 4)
        )
        edge_width = rng.uniform(0.003, 0.01)
        posterior = rng.uniform(0.95, 1.35)  # enhancement (mostly)
    else:  # malignant: round/tall, irregular and spiculated, blurred margin
        half_w, half_h = radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.9, 1.35)
        wobble = sum(
            rng.uniform(0.02, 0.1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
            for k in range(3, 9)
        )
        for _ in range(rng.integers(3, 10)):  # spicules: narrow angular spikes
            centre = rng.uniform(-np.pi, np.pi)
            gap = (angle - centre + np.pi) % (2 * np.pi) - np.pi
            wobble = wobble + rng.uniform(0.15, 0.45) * np.exp(-0.5 * (gap / 0.06) ** 2)
        edge_width = rng.uniform(0.008, 0.02)
        posterior = rng.uniform(0.5, 1.05)  # shadowing (mostly)
    rho = np.sqrt(((x - cx) / half_w) ** 2 + ((y - cy) / half_h) ** 2)
    boundary = 1.0 + wobble
    mask = rho < boundary
    inside = 1.0 / (1.0 + np.exp(np.clip((rho - boundary) * radius / edge_width, -30, 30)))
    bottom = cy + half_h * 1.1
    below = (np.abs(x - cx) < half_w * 0.8) & (y > bottom)
    fade = np.exp(-np.clip(y - bottom, 0, None) / 0.35)
    effect = np.where(below, 1.0 + (posterior - 1.0) * fade, 1.0)
    return mask, inside, effect


def synthetic_sample(
    seed: int, index: int, size: int, label: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """One synthetic image (size, size) uint8 and its bool mask (None for a normal image)."""
    rng = np.random.default_rng([seed, index])
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size  # (2, S, S) in [0, 1]
    tissue = _smooth_field(rng, size, 5, 0.35, 0.8)
    tilt = rng.uniform(-0.3, 0.3)
    for _ in range(3):  # layered fibro-glandular structure
        freq, phase = rng.uniform(3, 12), rng.uniform(0, 2 * np.pi)
        tissue = tissue * (
            1.0 + rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * freq * (y + tilt * x) + phase)
        )
    if rng.random() < 0.5:  # dark subcutaneous fat layer: a distractor
        top, depth = rng.uniform(0.05, 0.2), rng.uniform(0.04, 0.1)
        layer = np.abs(y - top - tilt * 0.2 * (x - 0.5)) < depth
        tissue = np.where(layer, tissue * rng.uniform(0.35, 0.6), tissue)
    if rng.random() < 0.3:  # an acoustic shadow column not caused by a lesion
        column = np.abs(x - rng.uniform(0.1, 0.9)) < rng.uniform(0.02, 0.06)
        tissue = np.where(
            column & (y > rng.uniform(0.3, 0.7)), tissue * rng.uniform(0.5, 0.8), tissue
        )
    mask = None
    if label in (0, 1):
        mask, inside, effect = _lesion(rng, label, y, x)
        darkness = rng.uniform(0.15, 0.45)  # hypoechoic lesion: echo level relative to tissue
        texture = _smooth_field(rng, size, 9, 0.7, 1.3) if label == 1 else 1.0
        tissue = tissue * (1.0 - inside * (1.0 - darkness * texture)) * effect
    attenuation = np.exp(-rng.uniform(0.3, 1.2) * y)  # deeper tissue returns less echo
    speckle = rng.rayleigh(1.0, (size, size)).astype(np.float32) / np.sqrt(np.pi / 2)
    speckle = (speckle + np.roll(speckle, 1, axis=1) + np.roll(speckle, 1, axis=0)) / 3.0  # grains
    image = tissue * attenuation * speckle * rng.uniform(0.8, 1.15)
    image = image + rng.normal(0.0, 0.02, (size, size))
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.2)
    return (image * 255.0 + 0.5).astype(np.uint8), mask


def make_synthetic(
    num_samples: int, image_size: int, *, seed: int = 42, include_normal: bool = False
) -> tuple[list[Sample], ImageCache]:
    """Generate a synthetic data set: samples (class index cycles 0, 1[, 2]) and their cache.

    Args:
        num_samples: Number of images.
        image_size: Side of each square image.
        seed: Generator seed; the same seed gives the same images.
        include_normal: Also generate lesion-free normal images (every third image, class 2).
    """
    if num_samples < 1 or image_size < 8:
        raise ValueError(
            f"need num_samples >= 1 and image_size >= 8, got {num_samples}, {image_size}"
        )
    num_classes = 3 if include_normal else 2
    samples, images, masks = [], [], []
    for i in range(num_samples):
        label = i % num_classes
        image, mask = synthetic_sample(seed, i, image_size, label)
        samples.append(Sample(id=f"synthetic/{i:05d}", image=None, label=label, has_mask=True))
        images.append(image)
        masks.append(mask)
    cache = ImageCache.from_arrays([s.id for s in samples], images, masks, image_size)
    return samples, cache
