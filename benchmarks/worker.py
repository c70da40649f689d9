"""One benchmark run, in its own process: ``semiseg-caw fit`` with a timing callback (unless
the run finished before), then ``semiseg-caw test`` of its best-on-validation checkpoint with
a callback that records the metrics and the inference time.

``run.py`` starts it for each run:

    python -m benchmarks.worker <run folder>/spec.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class EpochTimer(L.Callback):
    """Writes ``<default_root_dir>/timing.json``: seconds per training epoch of this stage."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.total: list[float] = []
        self._t0 = self._tv = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.time()  # stage 2 starts here (stage 1, if any, ran before)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0, self._tv = time.perf_counter(), None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._t0 is not None:
            self._tv = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        self.train.append((self._tv or now) - self._t0)
        self.total.append(now - self._t0)
        path = Path(trainer.default_root_dir) / "timing.json"
        path.write_text(
            json.dumps({"train_s": self.train, "epoch_s": self.total, "fit_start": self.fit_start})
        )


class TestRecorder(L.Callback):
    """Reads the module's test metric objects before they are reset (pixel and class
    accuracy are kept apart) and times the test loop."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.images = 0
        self.seconds = 0.0

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.images += len(batch["id"])

    def on_test_epoch_end(self, trainer, pl_module) -> None:  # runs before the module's hook
        self.seconds = time.perf_counter() - self._t0
        seg = pl_module.seg_metrics["test"].compute()
        self.metrics.update({f"seg/{k}": float(v) for k, v in seg.items()})
        cls = pl_module.cls_metrics["test"].compute()
        self.metrics.update({f"cls/{k}": float(v) for k, v in cls.items()})


def cli_with_callbacks(extra: list[L.Callback], args: list[str]):
    """Run the package CLI in-process with extra callback objects added to its trainer."""
    from semiseg_caw.cli import SemiSegCLI, main

    original = SemiSegCLI._instantiate_trainer

    def instantiate(self, config, callbacks):
        return original(self, config, [*callbacks, *extra])

    SemiSegCLI._instantiate_trainer = instantiate  # LightningCLI takes no callback objects
    try:
        return main(args)
    finally:
        SemiSegCLI._instantiate_trainer = original


def evaluate_checkpoint(args: list[str], ckpt: Path) -> dict[str, Any]:
    """``semiseg-caw test`` of one checkpoint: metrics, inference time and parameters."""
    import torch

    recorder = TestRecorder()
    cli = cli_with_callbacks([recorder], ["test", *args, f"--ckpt_path={ckpt}"])
    model = cli.model
    total = sum(p.numel() for p in model.parameters())
    teacher = getattr(model, "teacher", None)  # a mean teacher: a training aid, not the model
    total -= sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    aux = getattr(getattr(model, "net", None), "aux_model", None)
    aux_n = sum(p.numel() for p in aux.parameters()) if aux is not None else 0
    train = cli.datamodule.splits["train"]  # as the run's budget left it
    return {
        "best_checkpoint": str(ckpt),
        "train_masks": sum(sample.has_mask for sample in train),
        "train_class_only": sum(sample.kind == "class_only" for sample in train),
        "metrics": recorder.metrics,
        "logged": {k: float(v) for k, v in cli.trainer.callback_metrics.items()},
        "test_images": recorder.images,
        "infer_ms_per_image": 1000 * recorder.seconds / max(recorder.images, 1),
        "params": total,
        "params_core": total - aux_n,
        "threads": torch.get_num_threads(),
    }


def best_checkpoint(ckpts: Path) -> Path:
    """The newest best-on-validation checkpoint (``best-epoch=NNN.ckpt``) in ``ckpts``."""
    best = sorted(ckpts.glob("best-epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not best:
        raise RuntimeError(f"no best checkpoint in {ckpts}")
    return best[-1]


def fit_and_test(spec_file: Path) -> None:
    """One run, in its own process: ``semiseg-caw fit`` (unless it finished before),
    then ``semiseg-caw test --ckpt_path <best-on-val>``; writes test.json (a run tested
    again, its result.json removed, keeps the fit time of its earlier test.json). With
    ``"mode": "stage1"`` only tests the run's best stage-1 checkpoint (stage1_test.json)."""
    spec = json.loads(spec_file.read_text())
    rundir = Path(spec["dir"])
    if spec.get("mode") == "stage1":
        result = evaluate_checkpoint(
            spec["test"], best_checkpoint(rundir / "stage1" / "checkpoints")
        )
        (rundir / "stage1_test.json").write_text(json.dumps(result, indent=1))
        return
    ckpts = rundir / "checkpoints"
    fit_s = None
    done = rundir / "fit.done"
    killed = [*ckpts.glob("last*.ckpt"), *rundir.glob("stage1/checkpoints/last*.ckpt")]
    # Runs fitted before fit.done existed: a best checkpoint, and no resume file left.
    done_before = bool(list(ckpts.glob("best-epoch=*.ckpt"))) and not killed
    if not done.is_file() and not done_before:
        # A run killed in stage 1 or 2 continues from its last checkpoint (the CLI refuses
        # to start a new run over an earlier one's checkpoints).
        t0 = time.time()
        # The killed attempts' time: from the first start to the newest resume file (work
        # after it is lost and done again, inside this attempt).
        started = rundir / "fit.started"
        earlier = 0.0
        if killed and started.is_file():
            earlier = max(p.stat().st_mtime for p in killed) - float(started.read_text())
        elif not killed:
            started.write_text(repr(t0))
        timer = EpochTimer()
        cli_with_callbacks(
            [timer], ["fit", *spec["fit"], *(["--ckpt_path=last"] if killed else [])]
        )
        fit_s = earlier + time.time() - t0
        done.touch()
        timing = rundir / "timing.json"
        # Stage 1's time is known only when this attempt ran all of it.
        if (rundir / "stage1").is_dir() and timing.is_file() and not killed:
            record = json.loads(timing.read_text())
            record["stage1_s"] = timer.fit_start - t0  # data setup + stage 1 (train and val)
            record["stage1_epochs"] = spec["stage1_epochs"]
            record["stage1_epoch_s"] = record["stage1_s"] / spec["stage1_epochs"]
            timing.write_text(json.dumps(record))
    tested_before = rundir / "test.json"
    if fit_s is None and tested_before.is_file():  # tested again: the fit's time stays known
        fit_s = json.loads(tested_before.read_text()).get("fit_wall_s")
    result = evaluate_checkpoint(spec["test"], best_checkpoint(ckpts))
    result["fit_wall_s"] = fit_s
    (rundir / "test.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="the run's spec.json, written by run.py")
    fit_and_test(parser.parse_args().spec)
