"""MALUNet: a lightweight U-Net with multi-attention blocks (Ruan et al., BIBM 2022).

A rewrite of the reference network (github.com/JCruan519/MALUNet, ``models/malunet.py``)
with the same layers and parameter count (177,943 at 3 input channels, 1 class), except:

- it returns logits (the reference ends in a sigmoid) plus the deepest encoder features;
- ``in_channels`` sets the first convolution;
- the two 1-D projections of each inverted external attention block start transposed to
  each other as in the reference, but are independent tensors afterwards (the reference
  makes them share storage by assigning ``.data``, which ties them by accident).

Building blocks, in the paper's terms: DGA (dilated gated attention), IEA (inverted
external attention), SAB / CAB (spatial / channel attention bridge between the skips).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg_caw.models.outputs import SegOutput

_NORM_GROUPS = 4  # GroupNorm groups and DGA channel splits, as in the reference


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k conv, GroupNorm, then pointwise 1 x 1 conv."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim_in, dim_in, kernel_size, padding=padding, groups=dim_in)
        self.norm = nn.GroupNorm(_NORM_GROUPS, dim_in)
        self.pointwise = nn.Conv2d(dim_in, dim_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.norm(self.depthwise(x)))


class GatedAttentionUnit(nn.Module):
    """Gate a GELU branch with a sigmoid branch, project, and add a 1 x 1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        k2 = kernel_size + 2
        self.gate = nn.Sequential(
            DepthwiseSeparableConv(in_channels, in_channels, kernel_size, kernel_size // 2),
            nn.Sigmoid(),
        )
        self.value = nn.Sequential(
            DepthwiseSeparableConv(in_channels, in_channels, k2, k2 // 2),
            nn.GELU(),
        )
        self.project = nn.Sequential(
            DepthwiseSeparableConv(in_channels, out_channels, kernel_size, kernel_size // 2),
            nn.GELU(),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.gate(x) * self.value(x)) + self.shortcut(x)


class DilatedGatedAttention(nn.Module):
    """DGA: four channel groups through depthwise convs of dilation 7, 5, 2, 1, then a GAU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilations: Sequence[int] = (7, 5, 2, 1),
    ) -> None:
        super().__init__()
        if len(dilations) != _NORM_GROUPS:
            raise ValueError(f"DGA needs {_NORM_GROUPS} dilations, got {tuple(dilations)}")
        group = in_channels // _NORM_GROUPS
        self.branches = nn.ModuleList(
            nn.Conv2d(
                group,
                group,
                kernel_size,
                padding=(kernel_size + (kernel_size - 1) * (d - 1)) // 2,
                dilation=d,
                groups=group,
            )
            for d in dilations
        )
        self.norm = nn.GroupNorm(_NORM_GROUPS, in_channels)
        self.mix = nn.Conv2d(in_channels, in_channels, 1)
        self.gau = GatedAttentionUnit(in_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        chunks = torch.chunk(x, _NORM_GROUPS, dim=1)
        x = torch.cat([conv(c) for conv, c in zip(self.branches, chunks, strict=True)], dim=1)
        x = F.gelu(self.mix(self.norm(x)))
        return self.gau(x)


class InvertedExternalAttention(nn.Module):
    """IEA: external attention with a memory of 4 x channels units, residual, GELU."""

    def __init__(self, channels: int, expansion: int = 4) -> None:
        super().__init__()
        self.memory_size = channels * expansion
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv1d(channels, self.memory_size, 1, bias=False)
        self.value = nn.Conv1d(self.memory_size, channels, 1, bias=False)
        self.conv_out = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = nn.GroupNorm(_NORM_GROUPS, channels)

    @torch.no_grad()
    def tie_initial_memory(self) -> None:
        """Start the key memory as the transpose of the value memory (as the reference)."""
        self.key.weight.copy_(self.value.weight.permute(1, 0, 2))

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        x = self.conv_in(x)
        b, c, h, w = x.shape
        attn = self.key(x.reshape(b, c, h * w))  # (B, K, N)
        attn = attn.softmax(dim=-1)  # over positions
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))  # double normalisation over memory
        x = self.value(attn).reshape(b, c, h, w)
        x = self.norm(self.conv_out(x))
        return F.gelu(x + identity)


class ChannelAttentionBridge(nn.Module):
    """CAB: channel attention for each skip level from the pooled channels of all levels."""

    def __init__(self, channels: Sequence[int], split_att: str = "fc") -> None:
        super().__init__()
        total = sum(channels)
        self.split_att = split_att
        self.mix = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        if split_att == "fc":
            self.heads = nn.ModuleList(nn.Linear(total, c) for c in channels)
        else:
            self.heads = nn.ModuleList(nn.Conv1d(total, c, 1) for c in channels)

    def forward(self, skips: Sequence[Tensor]) -> list[Tensor]:
        pooled = torch.cat([F.adaptive_avg_pool2d(t, 1) for t in skips], dim=1)  # (B, S, 1, 1)
        # Flattened, not transposed: a transposed input gives a Conv1d's weight a gradient
        # strided unlike the weight, which DDP warns about ("Grad strides do not match").
        att = self.mix(pooled.flatten(1).unsqueeze(1))  # (B, 1, S)
        if self.split_att != "fc":
            att = att.flatten(1).unsqueeze(-1)  # (B, S, 1) for the 1x1 Conv1d heads
        out = []
        for head in self.heads:
            a = torch.sigmoid(head(att))  # fc: (B, 1, C); conv: (B, C, 1)
            if self.split_att == "fc":
                a = a.transpose(-1, -2)
            out.append(a.unsqueeze(-1))  # (B, C, 1, 1)
        return out


class SpatialAttentionBridge(nn.Module):
    """SAB: one shared dilated conv turns each level's channel mean and max into a spatial gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=9, dilation=3)

    def forward(self, skips: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for t in skips:
            desc = torch.cat([t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)], dim=1)
            out.append(torch.sigmoid(self.conv(desc)))  # (B, 1, h, w)
        return out


class SCAttentionBridge(nn.Module):
    """SC-Att bridge: spatial then channel attention over the five skip connections."""

    def __init__(self, channels: Sequence[int], split_att: str = "fc") -> None:
        super().__init__()
        self.channel_att = ChannelAttentionBridge(channels, split_att)
        self.spatial_att = SpatialAttentionBridge()

    def forward(self, skips: Sequence[Tensor]) -> list[Tensor]:
        spatial = [a * t for a, t in zip(self.spatial_att(skips), skips, strict=True)]
        mixed = [s + t for s, t in zip(spatial, skips, strict=True)]
        channel = self.channel_att(mixed)
        return [a * m + s for a, m, s in zip(channel, mixed, spatial, strict=True)]


class MALUNet(nn.Module):
    """MALUNet segmentation network returning mask logits and bottleneck features.

    Args:
        in_channels: input image channels (e.g. 1 for ultrasound, +1 for an auxiliary map).
        num_classes: output mask channels (1 for binary lesion segmentation).
        c_list: widths of the six stages; each must be divisible by 4.
        split_att: channel-attention heads in the bridge, ``"fc"`` (Linear) or ``"conv"``.
        bridge: use the SC-Att bridge on the skip connections.

    Inputs must have height and width divisible by 32.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        c_list: Sequence[int] = (8, 16, 24, 32, 48, 64),
        split_att: str = "fc",
        bridge: bool = True,
    ) -> None:
        super().__init__()
        c_list = tuple(int(c) for c in c_list)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(c_list) != 6 or any(c <= 0 or c % _NORM_GROUPS for c in c_list):
            raise ValueError(
                f"c_list must hold 6 positive widths divisible by {_NORM_GROUPS}, got {c_list}"
            )
        if split_att not in ("fc", "conv"):
            raise ValueError(f"split_att must be 'fc' or 'conv', got {split_att!r}")
        c0, c1, c2, c3, c4, c5 = c_list
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_channels: int = c5

        self.encoder1 = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.encoder2 = nn.Conv2d(c0, c1, 3, padding=1)
        self.encoder3 = nn.Conv2d(c1, c2, 3, padding=1)
        self.encoder4 = nn.Sequential(InvertedExternalAttention(c2), DilatedGatedAttention(c2, c3))
        self.encoder5 = nn.Sequential(InvertedExternalAttention(c3), DilatedGatedAttention(c3, c4))
        self.encoder6 = nn.Sequential(InvertedExternalAttention(c4), DilatedGatedAttention(c4, c5))
        self.bridge = SCAttentionBridge(c_list[:5], split_att) if bridge else None

        self.decoder1 = nn.Sequential(DilatedGatedAttention(c5, c4), InvertedExternalAttention(c4))
        self.decoder2 = nn.Sequential(DilatedGatedAttention(c4, c3), InvertedExternalAttention(c3))
        self.decoder3 = nn.Sequential(DilatedGatedAttention(c3, c2), InvertedExternalAttention(c2))
        self.decoder4 = nn.Conv2d(c2, c1, 3, padding=1)
        self.decoder5 = nn.Conv2d(c1, c0, 3, padding=1)

        self.enc_norms = nn.ModuleList(nn.GroupNorm(_NORM_GROUPS, c) for c in (c0, c1, c2, c3, c4))
        self.dec_norms = nn.ModuleList(nn.GroupNorm(_NORM_GROUPS, c) for c in (c4, c3, c2, c1, c0))
        self.final = nn.Conv2d(c0, num_classes, 1)

        self.apply(_init_weights)
        for m in self.modules():
            if isinstance(m, InvertedExternalAttention):
                m.tie_initial_memory()

    def forward(self, x: Tensor) -> SegOutput:
        """Segment ``x`` (B, in_channels, H, W); H and W must be divisible by 32."""
        if x.ndim != 4:  # GroupNorm would otherwise read C as the batch
            raise ValueError(f"MALUNet expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"MALUNet needs H and W divisible by 32, got {tuple(x.shape[-2:])}")
        encoders = (self.encoder1, self.encoder2, self.encoder3, self.encoder4, self.encoder5)
        skips = []
        out = x
        for enc, norm in zip(encoders, self.enc_norms, strict=True):
            out = F.gelu(F.max_pool2d(norm(enc(out)), 2))
            skips.append(out)  # (B, c_i, H / 2^(i+1), W / 2^(i+1))
        if self.bridge is not None:
            skips = self.bridge(skips)
        features = F.gelu(self.encoder6(out))  # (B, c5, H/32, W/32)

        out = F.gelu(self.dec_norms[0](self.decoder1(features))) + skips[4]  # (B, c4, H/32, W/32)
        decoders = (self.decoder2, self.decoder3, self.decoder4, self.decoder5)
        for i, dec in enumerate(decoders, start=1):
            out = F.gelu(_up2(self.dec_norms[i](dec(out)))) + skips[4 - i]
        logits = _up2(self.final(out))  # (B, num_classes, H, W)
        return SegOutput(mask_logits=logits, features=features)


def _up2(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling with aligned corners, as in the reference decoder."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


def _init_weights(m: nn.Module) -> None:
    """The reference initialisation: truncated normal for Linear, He fan-out for convs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv1d):
        fan_out = m.kernel_size[0] * m.out_channels
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
