"""Classification head of the core model, guided by the auxiliary map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AuxGuidedClassifier(nn.Module):
    """Class logits from backbone features, pooled plainly and under the auxiliary map.

    The features are pooled twice: global average, and an average weighted by the
    auxiliary map resized to the feature grid, ``sum(f * a) / (sum(a) + eps)``. The two
    pooled vectors are concatenated and go through Linear-BN-ReLU-Dropout-Linear.

    Args:
        in_channels: channels C of the features (the backbone's ``feature_channels``).
        num_classes: image-level classes.
        hidden: width of the hidden layer.
        dropout: dropout before the last linear layer.
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden: int = 64, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or hidden < 1:
            raise ValueError(
                "in_channels, num_classes and hidden must be >= 1, got "
                f"{in_channels}, {num_classes}, {hidden}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.eps = 1e-6
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: Tensor, aux_map: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes) from features (B, C, h, w) and aux_map (B, 1, H, W) or None.

        Without a map the weighted pool uses uniform weights (it equals the plain average).
        """
        b, _, h, w = features.shape
        if aux_map is None:
            weights = features.new_ones(b, 1, h, w)
        else:
            if aux_map.ndim != 4 or aux_map.shape[0] != b or aux_map.shape[1] != 1:
                raise ValueError(f"aux_map must be (B, 1, H, W), got {tuple(aux_map.shape)}")
            weights = _resize(aux_map.to(features.dtype), (h, w))  # (B, 1, h, w)
        avg = features.mean(dim=(-2, -1))  # (B, C)
        weighted = (features * weights).sum(dim=(-2, -1)) / (
            weights.sum(dim=(-2, -1)) + self.eps
        )  # (B, C)
        return self.mlp(torch.cat([avg, weighted], dim=1))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Area-average when shrinking (the usual case), bilinear when growing."""
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
