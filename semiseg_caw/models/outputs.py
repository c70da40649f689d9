"""Named outputs of the networks in :mod:`semiseg_caw.models`.

Every network returns one of these small structures instead of a bare tuple, so the
meaning of a field never changes with the configuration. All masks are logits.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class SegOutput(NamedTuple):
    """Output of a segmentation backbone (MALUNet, UNeXt, ...)."""

    mask_logits: Tensor  # (B, num_classes, H, W)
    features: Tensor  # deepest encoder features (B, C, h, w)


class ClassElevateOutput(NamedTuple):
    """Output of :class:`~semiseg_caw.models.class_elevate.ClassElevateNet`."""

    mask_logits: Tensor  # (B, 1, H, W)
    class_logits: Tensor  # (B, num_classes)
    features: Tensor  # deepest encoder features, (B, 512, H/32, W/32) for resnet18


class SemiSegOutput(NamedTuple):
    """Output of :class:`~semiseg_caw.models.semiseg.SemiSegCAWNet`."""

    mask_logits: Tensor  # (B, 1, H, W) core model segmentation logits
    class_logits: Tensor | None  # (B, num_classes), or None without a classifier
    aux_map: Tensor | None  # (B, 1, H, W) in [0, 1], or None when aux_source == "none"
    aux_output: ClassElevateOutput | None  # raw auxiliary output, for its own losses
