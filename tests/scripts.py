"""Helpers of the tests of ``benchmarks/``: load a script as a module, the way
``python benchmarks/X.py`` runs it; the harness's modules; a made-up run record."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]  # the checkout's root

# The harness's modules, by the names the tests give them: ``from scripts import bench``;
# ``tables`` is report.py, the others are named as their files.
_HARNESS = {
    "bench": "run",
    "protocol": "protocol",
    "tables": "report",
    **{name: name for name in ("summary", "seed_gaps", "comparison", "plots", "worker")},
}


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as module ``benchmarks.<name>`` (once per session)."""
    module_name = f"benchmarks.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def __getattr__(name: str) -> ModuleType:
    """``bench``, ``protocol``, ``tables`` and the table modules: benchmarks/run.py,
    protocol.py, report.py, ..., loaded on first use, so that test files which only need
    ``load_script`` don't load them."""
    if name not in _HARNESS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    bench = load_script("run")  # puts benchmarks/ on sys.path for its sibling modules
    return bench if name == "bench" else importlib.import_module(_HARNESS[name])


def fake_record(row: str, method: str, seed: int, dice: float) -> dict:
    """A run's record as run.py writes it, with made-up figures: test Dice ``dice``."""
    protocol = __getattr__("protocol")
    iou = dice / (2 - dice)
    metrics = {f"seg/{k}": 0.5 for k in protocol.SEG_KEYS}
    metrics.update({"seg/dice": dice, "seg/iou": iou, "cls/auroc": 0.8})
    return {
        "row": row,
        "method": method,
        "backbone": "malunet",
        "class_only": 100,
        "seed": seed,
        "metrics": metrics,
        "params": 1000,
        "params_core": 1000,
        "train_s_per_epoch": 1.0,
        "epoch_s": 1.2,
        "stage1_epoch_s": None,
        "infer_ms_per_image": 2.0,
        "fit_wall_s": 60.0,
        "best_epoch": 3,
    }
