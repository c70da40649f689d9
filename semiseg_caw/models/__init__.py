"""Plain ``nn.Module`` networks and loss weighting; nothing here imports Lightning.

Names are loaded on first use: ``from semiseg_caw.models import MALUNet`` does not
import timm (seconds), which only ClassElevateNet and what builds on it need.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AUX_SOURCES": "semiseg",
    "BACKBONES": "semiseg",
    "LAYERCAM_LAYERS": "cam",
    "AuxGuidedClassifier": "heads",
    "ClassElevateNet": "class_elevate",
    "ClassElevateOutput": "outputs",
    "DWAWeighting": "wgm",
    "IMTLWeighting": "wgm",
    "LossWeighting": "wgm",
    "MALUNet": "malunet",
    "SegOutput": "outputs",
    "SemiSegCAWNet": "semiseg",
    "SemiSegOutput": "outputs",
    "StaticWeighting": "wgm",
    "UNeXt": "unext",
    "UncertaintyWeighting": "wgm",
    "build_semiseg_net": "semiseg",
    "build_weighting": "wgm",
    "imtl_gradient_weights": "wgm",
    "layercam": "cam",  # a module named layercam would shadow the function
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
