"""Time the demo (both stages on synthetic data) and record its validation Dice.

    python benchmarks/demo_check.py [--out benchmarks/results/demo-cpu.md]

Runs `semiseg-caw fit --config configs/demo.yaml` in a subprocess, then reads the
best validation Dice of each stage from its checkpoints. Writes a Markdown note
with commit, hardware, settings and wall time; never edit it by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py, however loaded
from provenance import commit, describe, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def best_score(checkpoint: Path) -> float:
    """Best monitored value (validation Dice) recorded by the run's ModelCheckpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key, value in state["callbacks"].items():
        if key.startswith("ModelCheckpoint"):
            return float(value["best_model_score"])
    raise RuntimeError(f"{checkpoint} holds no ModelCheckpoint state")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/demo-cpu.md"))
    args = parser.parse_args()
    env = dict(os.environ, WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "semiseg_caw", "fit", "--config", str(ROOT / "configs/demo.yaml"),
            f"--trainer.default_root_dir={tmp}", "--trainer.enable_progress_bar=false",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        stage1 = best_score(Path(tmp) / "stage1/checkpoints/last.ckpt")
        stage2 = best_score(Path(tmp) / "checkpoints/last.ckpt")
    hardware = describe(machine())  # the trainer picks a GPU where there is one
    text = f"""# Demo check: `semiseg-caw fit --config configs/demo.yaml`

Written by `benchmarks/demo_check.py`; do not edit by hand.

- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC
- commit: {commit(untracked=False)}
- hardware: {hardware} at the end
- software: Python {platform.python_version()}, torch {torch.__version__}
- settings: configs/demo.yaml as committed (synthetic data, 64 px; stage 1 then stage 2), W&B off

| wall time, both stages (s) | stage 1 best val Dice | stage 2 (SemiSeg-CAW) best val Dice |
|---:|---:|---:|
| {wall:.1f} | {stage1:.3f} | {stage2:.3f} |
"""
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
