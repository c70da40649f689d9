"""Post-processing of predicted masks: keep the largest lesion.

A breast or thyroid ultrasound image of these data sets shows one lesion, nearly always.
Small separate regions a model marks beside it are then false alarms, and removing them
raises Dice; where an image does hold two lesions it costs one of them. Whether it pays is
for validation to say (``benchmarks/tta.py``), as nnU-Net decides its own post-processing.
"""

from __future__ import annotations

import cv2  # comes with albumentations
import numpy as np
import torch
from torch import Tensor

# The logit given to removed pixels: a probability of 2e-9, far below any threshold.
REMOVED_LOGIT = -20.0


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a binary (H, W) mask; the mask itself when it has one
    region or none."""
    mask = mask.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:  # the background and one region at most
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def keep_largest_region(mask_logits: Tensor) -> Tensor:
    """Mask logits (B, 1, H, W) where, per image, every predicted region (logit >= 0, i.e.
    probability >= 0.5, as the metrics count a lesion pixel; 8-connected) but the largest is
    set to ``REMOVED_LOGIT``.

    Pixels below the threshold keep their logits, as do masks with one region or none. Runs
    on the host (OpenCV's connected components): one copy of the masks per batch.
    """
    foreground = (mask_logits[:, 0] >= 0).cpu().numpy()
    keep = np.stack([largest_region(mask) | ~mask for mask in foreground])
    keep_t = torch.from_numpy(keep).to(mask_logits.device).unsqueeze(1)
    return torch.where(keep_t, mask_logits, torch.full_like(mask_logits, REMOVED_LOGIT))
