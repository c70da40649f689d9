"""LightningModules of the package, on one shared base."""

from semiseg_caw.lit.base import SegmentationTask
from semiseg_caw.lit.class_elevate import ClassElevateSeg
from semiseg_caw.lit.semiseg import SemiSegCAW
from semiseg_caw.lit.stages import fit_stage1

__all__ = ["ClassElevateSeg", "SegmentationTask", "SemiSegCAW", "fit_stage1"]
