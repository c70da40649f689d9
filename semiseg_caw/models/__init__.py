"""Plain ``nn.Module`` networks and loss weighting; nothing here imports Lightning."""

from semiseg_caw.models.class_elevate import ClassElevateNet
from semiseg_caw.models.heads import AuxGuidedClassifier
from semiseg_caw.models.layercam import LAYERCAM_LAYERS, layercam
from semiseg_caw.models.malunet import MALUNet
from semiseg_caw.models.outputs import ClassElevateOutput, SegOutput, SemiSegOutput
from semiseg_caw.models.semiseg import AUX_SOURCES, BACKBONES, SemiSegCAWNet, build_semiseg_net
from semiseg_caw.models.unext import UNeXt
from semiseg_caw.models.wgm import (
    DWAWeighting,
    IMTLWeighting,
    LossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
    build_weighting,
    imtl_gradient_weights,
)

__all__ = [
    "AUX_SOURCES",
    "BACKBONES",
    "LAYERCAM_LAYERS",
    "AuxGuidedClassifier",
    "ClassElevateNet",
    "ClassElevateOutput",
    "DWAWeighting",
    "IMTLWeighting",
    "LossWeighting",
    "MALUNet",
    "SegOutput",
    "SemiSegCAWNet",
    "SemiSegOutput",
    "StaticWeighting",
    "UNeXt",
    "UncertaintyWeighting",
    "build_semiseg_net",
    "build_weighting",
    "imtl_gradient_weights",
    "layercam",
]
