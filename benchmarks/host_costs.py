"""Two host-side costs of a training step that a fast GPU waits for, measured on any machine.

- Logging: the median training-step time of SemiSeg-CAW (aux model off, 32 px, batch 8) with
  its loss terms and WGM weights logged on every step (``log_every_n_steps=1``) against only
  on the steps a logger writes (``log_every_n_steps=50``, the default; with the default
  ``--steps 60`` one step of the timed window, the 50th, is one, and the median over the
  window's steps absorbs it). The difference is what logging the skipped values would cost.
- Checkpoints: the size of a SemiSeg-CAW checkpoint with a fine-tuned ResNet-18 auxiliary
  model (weights and AdamW moments, as ``last.ckpt``; weights only, as a best checkpoint)
  and the seconds ``Trainer.save_checkpoint`` takes to write it.

    python benchmarks/host_costs.py            # writes results/host-costs.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py, however loaded
from provenance import commit, describe, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = 3  # interleaved pairs: the step times of a shared CPU drift


def _trainer(**kwargs):
    import lightning as L

    options = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**options, **kwargs)


def step_ms(log_every_n_steps: int, steps: int) -> float:
    """Median milliseconds between the ends of consecutive training steps (after 5)."""
    import lightning as L

    from semiseg_caw import SemiSegCAW, SemiSegDataModule

    ends: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            ends.append(time.perf_counter())

    L.seed_everything(0, verbose=False)
    model = SemiSegCAW(aux_source="none", loss_terms=["bce", "dice", "ce"])
    data = SemiSegDataModule(image_size=32, batch_size=8, synthetic_samples=800, augment=False)
    trainer = _trainer(
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        log_every_n_steps=log_every_n_steps,
        callbacks=[Clock()],
    )
    trainer.fit(model, datamodule=data)
    gaps = [b - a for a, b in zip(ends[:-1], ends[1:], strict=False)][5:]
    return 1e3 * statistics.median(gaps)


def checkpoint_costs(image_size: int) -> dict[str, float]:
    """MB and write seconds of a fine-tuned SemiSeg-CAW checkpoint, whole and weights only."""
    from semiseg_caw import SemiSegCAW, SemiSegDataModule
    from semiseg_caw.checkpoints import AtomicCheckpointIO

    model = SemiSegCAW(aux_mode="finetune")
    data = SemiSegDataModule(image_size=image_size, batch_size=4, synthetic_samples=40)
    # The CLI's checkpoint writer (written beside the file, synced, renamed into place).
    trainer = _trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, plugins=[AtomicCheckpointIO()]
    )
    trainer.fit(model, datamodule=data)  # one step, so that AdamW has its moments
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, weights_only in (("whole", False), ("weights", True)):
            path = Path(tmp) / f"{name}.ckpt"
            times = []
            for _ in range(3):
                start = time.perf_counter()
                trainer.save_checkpoint(path, weights_only=weights_only)
                times.append(time.perf_counter() - start)
            out[f"{name}_mb"] = path.stat().st_size / 1e6
            out[f"{name}_s"] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per timed run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "host-costs.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    every, default = [], []
    for _ in range(RUNS):
        every.append(step_ms(1, args.steps))
        default.append(step_ms(50, args.steps))
    ckpt = checkpoint_costs(image_size=64)
    saved = [e - d for e, d in zip(every, default, strict=True)]
    lines = [
        "# Host costs of a training step: logging and checkpoint writes",
        "",
        "Written by `benchmarks/host_costs.py`; do not edit by hand.",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit('semiseg_caw', 'benchmarks/host_costs.py')}",
        f"- hardware: {describe(machine())} at the end (the CPU may be shared)",
        f"- software: Python {sys.version.split()[0]}, torch {torch.__version__}, 1 torch thread",
        f"- logging: SemiSeg-CAW without auxiliary model (terms bce, dice, ce; WGM), 32 px, "
        f"batch 8, {args.steps} steps per run, median gap between step ends after 5 steps "
        "(the median absorbs the logger steps, every 50th, of the second column's runs); "
        f"{RUNS} interleaved pairs",
        "- checkpoint: SemiSeg-CAW with a fine-tuned ResNet-18 ClassElevateSeg, after one "
        "AdamW step; `Trainer.save_checkpoint` with the CLI's `AtomicCheckpointIO` to a local "
        "temporary folder, median of 3",
        f"- wall time: {time.perf_counter() - start:.0f} s",
        "",
        "| step ms, terms and WGM logged every step | step ms, only on logger steps | "
        "difference ms |",
        "|---:|---:|---:|",
        *(
            f"| {e:.2f} | {d:.2f} | {s:+.2f} |"
            for e, d, s in zip(every, default, saved, strict=True)
        ),
        f"| median {statistics.median(every):.2f} | {statistics.median(default):.2f} | "
        f"{statistics.median(saved):+.2f} |",
        "",
        "| checkpoint | MB | write s |",
        "|---|---:|---:|",
        f"| whole (`last.ckpt`: weights and AdamW moments) | {ckpt['whole_mb']:.0f} | "
        f"{ckpt['whole_s']:.2f} |",
        f"| weights only (a best checkpoint) | {ckpt['weights_mb']:.0f} | "
        f"{ckpt['weights_s']:.2f} |",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
