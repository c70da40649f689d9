"""SemiSeg-CAW: semi-supervised ultrasound lesion segmentation on PyTorch Lightning.

The public API is importable from here; names are loaded on first use, so that
``import semiseg_caw`` stays cheap and pulls in Lightning only when needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # LightningModules and the data module
    "SegmentationTask": "semiseg_caw.lit",
    "ClassElevateSeg": "semiseg_caw.lit",
    "SemiSegCAW": "semiseg_caw.lit",
    "fit_stage1": "semiseg_caw.lit",
    "SemiSegDataModule": "semiseg_caw.data",
    # callbacks and export
    "ValidationImageLogger": "semiseg_caw.lit.callbacks",
    "LoggerSaveConfigCallback": "semiseg_caw.lit.callbacks",
    "PredictionWriter": "semiseg_caw.lit.writer",
    "LastCheckpoint": "semiseg_caw.checkpoints",
    "EpochSeeding": "semiseg_caw.checkpoints",
    "export_onnx": "semiseg_caw.export",
    # networks and loss weighting
    "MALUNet": "semiseg_caw.models",
    "UNeXt": "semiseg_caw.models",
    "ClassElevateNet": "semiseg_caw.models",
    "AuxGuidedClassifier": "semiseg_caw.models",
    "SemiSegCAWNet": "semiseg_caw.models",
    "build_semiseg_net": "semiseg_caw.models",
    "build_weighting": "semiseg_caw.models",
    "LossWeighting": "semiseg_caw.models",
    "StaticWeighting": "semiseg_caw.models",
    "UncertaintyWeighting": "semiseg_caw.models",
    "IMTLWeighting": "semiseg_caw.models",
    "DWAWeighting": "semiseg_caw.models",
    "layercam": "semiseg_caw.models",
    "SegOutput": "semiseg_caw.models",
    "ClassElevateOutput": "semiseg_caw.models",
    "SemiSegOutput": "semiseg_caw.models",
    # losses and metrics
    "BCELoss": "semiseg_caw.losses",
    "DiceLoss": "semiseg_caw.losses",
    "FocalTverskyLoss": "semiseg_caw.losses",
    "CrossEntropyLoss": "semiseg_caw.losses",
    "bce_loss": "semiseg_caw.losses",
    "dice_loss": "semiseg_caw.losses",
    "focal_tversky_loss": "semiseg_caw.losses",
    "cross_entropy_loss": "semiseg_caw.losses",
    "balanced_class_weights": "semiseg_caw.losses",
    "SegmentationMetrics": "semiseg_caw.metrics",
    "PooledSegMetrics": "semiseg_caw.metrics",
    "PerImageSegMetrics": "semiseg_caw.metrics",
    "ClassificationMetrics": "semiseg_caw.metrics",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'semiseg_caw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
