"""The SemiSeg-CAW core model: a backbone and classifier guided by an auxiliary map."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semiseg_caw.models.cam import LAYERCAM_LAYERS, layercam
from semiseg_caw.models.class_elevate import ClassElevateNet
from semiseg_caw.models.heads import AuxGuidedClassifier
from semiseg_caw.models.malunet import MALUNet
from semiseg_caw.models.outputs import ClassElevateOutput, SemiSegOutput
from semiseg_caw.models.unext import UNeXt

AUX_SOURCES = ("classelevate", "layercam", "none")
BACKBONES: dict[str, type[nn.Module]] = {"malunet": MALUNet, "unext": UNeXt}


class SemiSegCAWNet(nn.Module):
    """Segmentation backbone fed with image + auxiliary map, plus an aux-guided classifier.

    Args:
        backbone: segmentation network returning a ``SegOutput``; it takes the image
            channels plus one for the auxiliary map (image channels only for ``"none"``).
        classifier: head on the backbone's deepest features, or None for no class output.
        aux_model: the ClassElevateSeg network (required unless ``aux_source == "none"``).
        aux_source: ``"classelevate"`` (sigmoid of the aux model's mask), ``"layercam"``
            (LayerCAM of the aux model's classifier for its predicted class) or ``"none"``.
        aux_frozen: with ``"classelevate"``, keep the aux model fixed (no gradient, always in
            eval mode) instead of fine-tuning it jointly. With ``"layercam"`` the aux model
            is always fixed.
        aux_encoder_frozen: fine-tune the aux model's decoder and heads only: its encoder
            keeps its weights and BatchNorm statistics (no gradient, always in eval mode), so
            a step spends no backward pass and no optimiser state on it.
        layercam_layer: encoder stage(s) of the LayerCAM maps, see :func:`layercam`.
        output_skip: also add ``gain * logit(aux_map)`` to the backbone's mask logits, with
            one trainable ``gain`` that starts at 0 (so training starts from the plain
            model): a late-fusion path for the map next to the input channel, which a
            backbone that downsamples its input early can use to keep the map's detail.
        aux_dropout: in training mode, the probability that a sample's map is replaced by
            zeros before the backbone, the classifier and the output skip see it (the
            output's ``aux_map`` keeps it), so that the backbone also learns to segment from
            the image alone instead of settling for copying the map.

    A fixed aux model (or encoder) has ``requires_grad`` switched off and stays in eval mode
    through ``.train()``; ``aux_trainable`` tells whether any of the aux model is fine-tuned
    (e.g. for optimiser groups).
    """

    def __init__(
        self,
        backbone: nn.Module,
        classifier: AuxGuidedClassifier | None,
        aux_model: ClassElevateNet | None,
        aux_source: str = "classelevate",
        aux_frozen: bool = False,
        layercam_layer: str = "deepest",
        output_skip: bool = False,
        aux_dropout: float = 0.0,
        aux_encoder_frozen: bool = False,
    ) -> None:
        super().__init__()
        if aux_source not in AUX_SOURCES:
            raise ValueError(f"aux_source must be one of {AUX_SOURCES}, got {aux_source!r}")
        if aux_source == "none" and aux_model is not None:
            raise ValueError("aux_source='none' takes no aux_model; pass aux_model=None")
        if aux_source != "none" and aux_model is None:
            raise ValueError(f"aux_source={aux_source!r} needs an aux_model")
        if layercam_layer not in LAYERCAM_LAYERS:
            raise ValueError(
                f"layercam_layer must be one of {LAYERCAM_LAYERS}, got {layercam_layer!r}"
            )
        if output_skip and aux_source == "none":
            raise ValueError("output_skip adds the auxiliary map: it needs an aux_source")
        if not 0.0 <= aux_dropout < 1.0:
            raise ValueError(f"aux_dropout must lie in [0, 1), got {aux_dropout}")
        if aux_dropout and aux_source == "none":
            raise ValueError("aux_dropout drops the auxiliary map: it needs an aux_source")
        self.backbone = backbone
        self.classifier = classifier
        self.aux_model = aux_model
        self.aux_source = aux_source
        self.aux_frozen = aux_frozen
        self.layercam_layer = layercam_layer
        self.aux_dropout = aux_dropout
        self.skip_gain = nn.Parameter(torch.zeros(())) if output_skip else None
        if aux_encoder_frozen and not self.aux_trainable:
            raise ValueError(
                "aux_encoder_frozen fixes part of a fine-tuned ClassElevateSeg: it needs "
                "aux_source='classelevate' and aux_frozen=False"
            )
        self.aux_encoder_frozen = aux_encoder_frozen
        for part in self.fixed_aux_parts():
            part.requires_grad_(False)
            part.eval()

    def fixed_aux_parts(self) -> list[nn.Module]:
        """The parts of the aux model that are not fine-tuned."""
        if self.aux_model is None:
            return []
        if not self.aux_trainable:
            return [self.aux_model]
        return [self.aux_model.encoder] if self.aux_encoder_frozen else []

    @property
    def aux_trainable(self) -> bool:
        """Whether the aux model is fine-tuned through this network."""
        return self.aux_source == "classelevate" and not self.aux_frozen

    def train(self, mode: bool = True) -> SemiSegCAWNet:
        """Set train / eval mode; a fixed aux model (or encoder) always stays in eval mode."""
        super().train(mode)
        for part in self.fixed_aux_parts():
            part.eval()
        return self

    def forward(self, image: Tensor, aux_map: Tensor | None = None) -> SemiSegOutput:
        """Run on ``image`` (B, C, H, W); a given ``aux_map`` (B, 1, H, W) in [0, 1] (e.g.
        cached from a frozen aux model) is used instead of running the aux model."""
        aux_output = keep = None
        fed = aux_map  # the map the backbone and classifier see
        if self.aux_source == "none":
            if aux_map is not None:
                raise ValueError("aux_source='none' takes no aux_map")
            x = image
        else:
            if aux_map is None:
                aux_map, aux_output = self.auxiliary(image)
            elif aux_map.shape != (image.shape[0], 1, *image.shape[-2:]):
                raise ValueError(
                    f"aux_map must have shape (B, 1, H, W) = {(image.shape[0], 1, *image.shape[-2:])}, "
                    f"got {tuple(aux_map.shape)}"
                )
            keep = self._kept_maps(image)
            fed = aux_map if keep is None else aux_map * keep
            x = torch.cat([image, fed.to(image.dtype)], dim=1)  # (B, C + 1, H, W)
        out = self.backbone(x)
        mask_logits = out.mask_logits
        if self.skip_gain is not None:
            # Clamped so that a saturated map (exactly 0 or 1) gives a finite logit.
            p = aux_map.to(mask_logits.dtype).clamp(1e-4, 1 - 1e-4)
            skip = self.skip_gain * torch.logit(p)
            mask_logits = mask_logits + (skip if keep is None else skip * keep)
        class_logits = None
        if self.classifier is not None:
            class_logits = self.classifier(out.features, fed)
        return SemiSegOutput(
            mask_logits=mask_logits,
            class_logits=class_logits,
            aux_map=aux_map,
            aux_output=aux_output,
        )

    def _kept_maps(self, image: Tensor) -> Tensor | None:
        """(B, 1, 1, 1) of 0 (map dropped) and 1 in training with ``aux_dropout``, else None."""
        if not (self.training and self.aux_dropout):
            return None
        draw = torch.rand(image.shape[0], 1, 1, 1, device=image.device)
        return (draw >= self.aux_dropout).to(image.dtype)

    def auxiliary(self, image: Tensor) -> tuple[Tensor, ClassElevateOutput | None]:
        """The auxiliary map (B, 1, H, W) in [0, 1] and the raw aux output (None for LayerCAM).

        Also the way to precompute maps for caching when the aux model is fixed.
        """
        if self.aux_model is None:
            raise RuntimeError("this network has no auxiliary model (aux_source='none')")
        if self.aux_source == "layercam":
            return layercam(self.aux_model, image, layer=self.layercam_layer), None
        if self.aux_trainable:
            aux_output = self.aux_model(image)
        else:
            with torch.no_grad():
                aux_output = self.aux_model(image)
        return torch.sigmoid(aux_output.mask_logits), aux_output


def build_semiseg_net(
    backbone: str = "malunet",
    in_channels: int = 1,
    num_classes: int = 2,
    aux_source: str = "classelevate",
    aux_encoder: str = "resnet18",
    aux_frozen: bool = False,
    use_classifier: bool = True,
    classifier_hidden: int = 64,
    layercam_layer: str = "deepest",
    output_skip: bool = False,
    aux_dropout: float = 0.0,
    aux_encoder_frozen: bool = False,
) -> SemiSegCAWNet:
    """Assemble the SemiSeg-CAW model from names (the paper's shape with the defaults).

    The backbone gets ``in_channels`` + 1 inputs (the auxiliary map) and one mask output;
    the aux model is a ``ClassElevateNet`` on ``aux_encoder`` with ``in_channels`` inputs.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    if aux_source not in AUX_SOURCES:
        raise ValueError(f"aux_source must be one of {AUX_SOURCES}, got {aux_source!r}")
    extra = 0 if aux_source == "none" else 1
    net = BACKBONES[backbone](in_channels=in_channels + extra, num_classes=1)
    aux_model = None
    if aux_source != "none":
        aux_model = ClassElevateNet(aux_encoder, in_channels=in_channels, num_classes=num_classes)
    classifier = None
    if use_classifier:
        classifier = AuxGuidedClassifier(
            net.feature_channels, num_classes, hidden=classifier_hidden
        )
    return SemiSegCAWNet(
        net,
        classifier,
        aux_model,
        aux_source,
        aux_frozen,
        layercam_layer,
        output_skip,
        aux_dropout,
        aux_encoder_frozen,
    )
