"""UNeXt: a convolutional + tokenised-MLP U-Net (Valanarasu & Patel, MICCAI 2022).

A rewrite of the reference ``UNext`` (github.com/jeya-maria-jose/UNeXt-pytorch, ``archs.py``)
with the same layers and parameter count (1,471,921 at 3 input channels, 1 class), except
that ``in_channels`` really sets the first convolution (the reference hard-codes 3) and the
deepest features are returned beside the logits. Unused reference options (heads, qkv,
sr ratios, img_size) are dropped: they create no layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg_caw.models.outputs import SegOutput


def _shift(x: Tensor, shift_size: int, dim: int) -> Tensor:
    """Split channels into ``shift_size`` groups and shift group g by g - shift_size // 2
    pixels along ``dim`` (2 = height, 3 = width), filling with zeros.

    Equivalent to the reference's pad / roll / narrow sequence.
    """
    pad = shift_size // 2
    padded = F.pad(x, (pad, pad, pad, pad))
    groups = torch.chunk(padded, shift_size, dim=1)
    shifted = [torch.roll(g, s, dim) for g, s in zip(groups, range(-pad, pad + 1), strict=False)]
    out = torch.cat(shifted, dim=1)
    return out.narrow(2, pad, x.shape[2]).narrow(3, pad, x.shape[3])


class ShiftedMLP(nn.Module):
    """Tokenised MLP: height shift, Linear, depthwise conv, GELU, width shift, Linear."""

    def __init__(self, dim: int, drop: float = 0.0, shift_size: int = 5) -> None:
        super().__init__()
        self.shift_size = shift_size
        self.fc1 = nn.Linear(dim, dim)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """``x`` is a token sequence (B, h*w, C)."""
        x = _tokens(_shift(_grid(x, h, w), self.shift_size, dim=2))
        x = self.fc1(x)
        x = _tokens(self.dwconv(_grid(x, h, w)))
        x = self.drop(self.act(x))
        x = _tokens(_shift(_grid(x, h, w), self.shift_size, dim=3))
        return self.drop(self.fc2(x))


class ShiftedBlock(nn.Module):
    """Pre-norm residual block around a :class:`ShiftedMLP`."""

    def __init__(
        self, dim: int, drop: float = 0.0, drop_path: float = 0.0, shift_size: int = 5
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = ShiftedMLP(dim, drop=drop, shift_size=shift_size)
        self.drop_path = nn.Identity()
        if drop_path > 0.0:
            from timm.layers import DropPath  # here: importing timm takes seconds

            self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return x + self.drop_path(self.mlp(self.norm(x), h, w))


class OverlapPatchEmbed(nn.Module):
    """Strided 3 x 3 conv to tokens, then LayerNorm; halves the resolution."""

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(_tokens(x)), h, w


class UNeXt(nn.Module):
    """UNeXt segmentation network returning mask logits and bottleneck features.

    Args:
        in_channels: input image channels.
        num_classes: output mask channels.
        embed_dims: widths of the third conv stage / first token stage / bottleneck.
        conv_dims: widths of the first two conv stages (the reference's 16, 32).
        drop_rate: dropout inside the tokenised MLPs.
        drop_path_rate: stochastic depth, spread as in the reference: linearly from 0 over
            its three levels (0, rate/2, rate), of which the two token levels take the
            first two (the decoder's blocks mirror the encoder's).
        shift_size: number of channel groups shifted in the tokenised MLPs.

    Inputs must have height and width divisible by 32.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        embed_dims: Sequence[int] = (128, 160, 256),
        conv_dims: Sequence[int] = (16, 32),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        shift_size: int = 5,
    ) -> None:
        super().__init__()
        embed_dims = tuple(int(d) for d in embed_dims)
        conv_dims = tuple(int(d) for d in conv_dims)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(embed_dims) != 3 or min(embed_dims) < shift_size:
            raise ValueError(
                f"embed_dims must hold 3 widths of at least shift_size={shift_size}, "
                f"got {embed_dims}"
            )
        if len(conv_dims) != 2 or min(conv_dims) < 1:
            raise ValueError(f"conv_dims must hold 2 positive widths, got {conv_dims}")
        if shift_size < 1 or shift_size % 2 == 0:
            raise ValueError(f"shift_size must be a positive odd number, got {shift_size}")
        if not 0.0 <= drop_rate < 1.0 or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError("drop_rate and drop_path_rate must be in [0, 1)")
        e0, e1, e2 = embed_dims
        c0, c1 = conv_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_channels: int = e2

        # Conv encoder: three conv-BN-maxpool-ReLU stages.
        self.encoder1 = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.encoder2 = nn.Conv2d(c0, c1, 3, padding=1)
        self.encoder3 = nn.Conv2d(c1, e0, 3, padding=1)
        self.ebn1 = nn.BatchNorm2d(c0)
        self.ebn2 = nn.BatchNorm2d(c1)
        self.ebn3 = nn.BatchNorm2d(e0)

        # Tokenised MLP stages (stage 4 and bottleneck) and their decoder mirrors.
        # The reference's linspace(0, rate, sum(depths)) with depths [1, 1, 1]: 0, rate/2,
        # rate, of which only the first two are used.
        dpr = torch.linspace(0, drop_path_rate, 3).tolist()
        self.patch_embed3 = OverlapPatchEmbed(e0, e1)
        self.patch_embed4 = OverlapPatchEmbed(e1, e2)
        self.block1 = ShiftedBlock(e1, drop_rate, dpr[0], shift_size)
        self.block2 = ShiftedBlock(e2, drop_rate, dpr[1], shift_size)
        self.dblock1 = ShiftedBlock(e1, drop_rate, dpr[0], shift_size)
        self.dblock2 = ShiftedBlock(e0, drop_rate, dpr[1], shift_size)
        self.norm3 = nn.LayerNorm(e1)
        self.norm4 = nn.LayerNorm(e2)
        self.dnorm3 = nn.LayerNorm(e1)
        self.dnorm4 = nn.LayerNorm(e0)

        # Decoder convs.
        self.decoder1 = nn.Conv2d(e2, e1, 3, padding=1)
        self.decoder2 = nn.Conv2d(e1, e0, 3, padding=1)
        self.decoder3 = nn.Conv2d(e0, c1, 3, padding=1)
        self.decoder4 = nn.Conv2d(c1, c0, 3, padding=1)
        self.decoder5 = nn.Conv2d(c0, c0, 3, padding=1)
        self.dbn1 = nn.BatchNorm2d(e1)
        self.dbn2 = nn.BatchNorm2d(e0)
        self.dbn3 = nn.BatchNorm2d(c1)
        self.dbn4 = nn.BatchNorm2d(c0)
        self.final = nn.Conv2d(c0, num_classes, 1)

        # The reference initialises only its token-stage modules this way.
        token_stages = (
            self.patch_embed3,
            self.patch_embed4,
            self.block1,
            self.block2,
            self.dblock1,
            self.dblock2,
        )
        for m in token_stages:
            m.apply(_init_weights)

    def forward(self, x: Tensor) -> SegOutput:
        """Segment ``x`` (B, in_channels, H, W); H and W must be divisible by 32."""
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"UNeXt needs H and W divisible by 32, got {tuple(x.shape[-2:])}")
        t1 = F.relu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2))  # (B, c0, H/2, W/2)
        t2 = F.relu(F.max_pool2d(self.ebn2(self.encoder2(t1)), 2))  # (B, c1, H/4, W/4)
        t3 = F.relu(F.max_pool2d(self.ebn3(self.encoder3(t2)), 2))  # (B, e0, H/8, W/8)

        tok, h, w = self.patch_embed3(t3)
        t4 = _grid(self.norm3(self.block1(tok, h, w)), h, w)  # (B, e1, H/16, W/16)
        tok, h, w = self.patch_embed4(t4)
        features = _grid(self.norm4(self.block2(tok, h, w)), h, w)  # (B, e2, H/32, W/32)

        out = F.relu(_up2(self.dbn1(self.decoder1(features)))) + t4
        h, w = out.shape[-2:]
        out = _grid(self.dnorm3(self.dblock1(_tokens(out), h, w)), h, w)  # (B, e1, H/16, W/16)
        out = F.relu(_up2(self.dbn2(self.decoder2(out)))) + t3
        h, w = out.shape[-2:]
        out = _grid(self.dnorm4(self.dblock2(_tokens(out), h, w)), h, w)  # (B, e0, H/8, W/8)
        out = F.relu(_up2(self.dbn3(self.decoder3(out)))) + t2  # (B, c1, H/4, W/4)
        out = F.relu(_up2(self.dbn4(self.decoder4(out)))) + t1  # (B, c0, H/2, W/2)
        out = F.relu(_up2(self.decoder5(out)))  # (B, c0, H, W)
        return SegOutput(mask_logits=self.final(out), features=features)


def _tokens(x: Tensor) -> Tensor:
    """(B, C, h, w) feature map -> (B, h*w, C) token sequence."""
    return x.flatten(2).transpose(1, 2)


def _grid(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h*w, C) token sequence -> (B, C, h, w) feature map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def _up2(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling (corners not aligned), as in the reference decoder."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def _init_weights(m: nn.Module) -> None:
    """The reference initialisation of the token stages."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
