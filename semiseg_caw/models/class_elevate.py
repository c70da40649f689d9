"""ClassElevateSeg: a timm-encoder U-Net with a classification head (Stage 1 of SemiSeg-CAW).

The network learns from masks and from image-level classes; its sigmoid mask is the
auxiliary map fed to the core model. The decoder follows segmentation_models_pytorch's
``Unet`` (nearest x2 upsampling, concatenated skip, two conv3x3-BN-ReLU per block, the last
block without skip, a 3x3 conv segmentation head), so with ``resnet18`` and the default
widths the U-Net part has the same 14,328,209 parameters at 3 input channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg_caw.models.outputs import ClassElevateOutput


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip if any, then two conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1)
        return self.conv2(self.conv1(x))


class ClassElevateNet(nn.Module):
    """U-Net on a timm encoder, with mask logits and class logits from the deepest features.

    Args:
        encoder: any timm model name that supports ``features_only`` (default ``resnet18``).
        in_channels: input image channels.
        num_classes: image-level classes of the classification head.
        decoder_channels: decoder block widths, deepest first; one block per x2 upsampling,
            so their number must equal log2 of the encoder's output stride (5 for resnets).
        pretrained: load the encoder's timm (ImageNet) weights; needs them downloadable or cached.
        dropout: dropout before the linear classifier.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        in_channels: int = 1,
        num_classes: int = 2,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        pretrained: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 2:  # softmax over one class: nothing to learn, CAMs of nothing
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not decoder_channels or min(decoder_channels) < 1:
            raise ValueError(f"decoder_channels must be positive widths, got {decoder_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not timm.is_model(encoder):
            raise ValueError(f"unknown timm encoder {encoder!r}")
        self.encoder_name = encoder
        self.in_channels = in_channels
        self.num_classes = num_classes

        self.encoder = _create_encoder(encoder, in_channels, pretrained)
        channels = list(self.encoder.feature_info.channels())
        reductions = list(self.encoder.feature_info.reduction())
        stride = reductions[-1]
        if stride != 2 ** len(decoder_channels):
            raise ValueError(
                f"encoder {encoder!r} has output stride {stride}: decoder_channels needs "
                f"{stride.bit_length() - 1} entries, got {len(decoder_channels)}"
            )
        self.output_stride: int = stride

        # Block j upsamples to stride / 2^(j+1) and takes the encoder stage at that stride.
        self.skip_indices: list[int | None] = []
        blocks = []
        in_ch = channels[-1]
        for j, out_ch in enumerate(decoder_channels):
            r = stride // 2 ** (j + 1)
            idx = max((i for i, ri in enumerate(reductions[:-1]) if ri == r), default=None)
            self.skip_indices.append(idx)
            blocks.append(DecoderBlock(in_ch, 0 if idx is None else channels[idx], out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], 1, 3, padding=1)

        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self._init_decoder_and_heads()

    @property
    def feature_channels(self) -> int:
        """Channels of the deepest encoder features (512 for resnet18)."""
        return self.classifier.in_features

    def forward(self, x: Tensor) -> ClassElevateOutput:
        """Mask logits (B, 1, H, W), class logits (B, num_classes) and deepest features."""
        stages = self.encode(x)
        return ClassElevateOutput(
            mask_logits=self.decode(stages),
            class_logits=self.classify(stages[-1]),
            features=stages[-1],
        )

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder stage outputs, shallowest first; H and W must divide the output stride."""
        if x.shape[-2] % self.output_stride or x.shape[-1] % self.output_stride:
            raise ValueError(
                f"input H and W must be divisible by {self.output_stride}, got {tuple(x.shape[-2:])}"
            )
        return self.encoder(x)

    def decode(self, stages: Sequence[Tensor]) -> Tensor:
        """Mask logits (B, 1, H, W) from the encoder stages."""
        x = stages[-1]
        for block, idx in zip(self.decoder, self.skip_indices, strict=True):
            x = block(x, None if idx is None else stages[idx])
        return self.segmentation_head(x)

    def classify(self, features: Tensor) -> Tensor:
        """Class logits (B, num_classes) from the deepest features (B, C, h, w)."""
        return self.classifier(self.dropout(self.pool(features).flatten(1)))

    def cam(self, features: Tensor, target: Tensor, size: tuple[int, int]) -> Tensor:
        """Class activation map of class ``target`` (B,), in [0, 1], shape (B, 1, *size).

        The classifier weights of the target class weight the deepest features; the map is
        ReLU'd, divided by its per-sample maximum and bilinearly upsampled. It stays
        differentiable: detach it before using it as a target.
        """
        if target.ndim != 1 or target.shape[0] != features.shape[0]:
            raise ValueError(f"target must have shape (B,), got {tuple(target.shape)}")
        weights = self.classifier.weight[target.long()]  # (B, C)
        cam = F.relu(torch.einsum("bc,bchw->bhw", weights, features)).unsqueeze(1)  # (B, 1, h, w)
        cam = normalise_max(cam)
        return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)

    def _init_decoder_and_heads(self) -> None:
        """segmentation_models_pytorch's initialisation of the decoder and heads."""
        for m in self.decoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for head in (self.segmentation_head, self.classifier):
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)


class PretrainedWeightsError(RuntimeError):
    """Pretrained encoder weights that could not be loaded (offline, no cache): a user's
    setting to change, reported by the command without a traceback."""


def _create_encoder(name: str, in_channels: int, pretrained: bool) -> nn.Module:
    """A timm feature extractor; download failures become a PretrainedWeightsError naming
    the encoder."""
    try:
        return timm.create_model(
            name, features_only=True, pretrained=pretrained, in_chans=in_channels
        )
    except Exception as err:
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"could not load pretrained weights for encoder {name!r} ({err}); "
            "check the network or the Hugging Face cache, or use pretrained=False"
        ) from err


def normalise_max(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Divide each sample of a non-negative (B, 1, h, w) map by its maximum (eps-safe)."""
    return x / (x.amax(dim=(-2, -1), keepdim=True) + eps)
