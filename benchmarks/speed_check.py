"""Speed levers against the training result (issue 6): a lever may change the speed of a
run, never its result beyond seed noise.

Trains the demo configuration (``configs/demo.yaml``: both stages, synthetic data) with and
without each lever (fused AdamW, cached auxiliary maps, augmentation on the device, CUDA
graphs, bf16-mixed precision) and with two seeds, and writes the validation Dice side by side
(``results/speed-check-<hardware>.md`` and ``.json``). Stage 1 is trained once and shared by
every stage-2 run; each run is its own process, and ``--parallel N`` runs N at once.

    python benchmarks/speed_check.py                                  # CPU, every CPU lever
    python benchmarks/speed_check.py --device cuda --parallel 8 --runs "fused AdamW" "CUDA graphs" bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py and speed.py
from provenance import commit, usable_cores  # noqa: E402
from speed import ENV, REPO, RESULTS, VARIANTS, hardware_names  # noqa: E402

DIRTY_PATHS = ["semiseg_caw", "benchmarks/speed_check.py", "configs/demo.yaml"]


@dataclass(frozen=True)
class Run:
    """One stage-2 training of the check: a variant, a seed and the levers it uses."""

    label: str
    variant: str
    seed: int
    plain_adamw: bool = False  # the optimiser before the fused-AdamW lever
    on_device: bool = False  # augmentation on the device
    graphs: bool = False  # CUDA graphs
    bf16: bool = False  # trainer precision bf16-mixed

    @property
    def gpu_only(self) -> bool:
        return self.graphs  # bf16-mixed runs on a CPU too (autocast to bfloat16 there)

    @property
    def job(self) -> str:
        """The worker's job string: ``variant:seed:plain:on_device:graphs:bf16``."""
        flags = (self.plain_adamw, self.on_device, self.graphs, self.bf16)
        return ":".join([self.variant, str(self.seed), *(str(int(f)) for f in flags)])


def both_seeds(label: str, variant: str, **levers: bool) -> list[Run]:
    """The run at seeds 42 and 43: the spread between them is the check's seed noise."""
    return [Run(label, variant, seed, **levers) for seed in (42, 43)]


RUNS: list[Run] = [
    Run("bare MALUNet, plain AdamW", "malunet", 42, plain_adamw=True),
    *both_seeds("bare MALUNet, fused AdamW", "malunet"),
    Run("SemiSeg-CAW fine-tuned, plain AdamW", "caw-finetune", 42, plain_adamw=True),
    *both_seeds("SemiSeg-CAW fine-tuned, fused AdamW", "caw-finetune"),
    *both_seeds("SemiSeg-CAW aux decoder fine-tuned", "caw-decoder"),
    *both_seeds("SemiSeg-CAW frozen, live maps", "caw-frozen"),
    *both_seeds("SemiSeg-CAW frozen, cached maps", "caw-cached"),
    *both_seeds("bare MALUNet, augmentation on the device", "malunet", on_device=True),
    *both_seeds(
        "SemiSeg-CAW fine-tuned, augmentation on the device", "caw-finetune", on_device=True
    ),
    # Against the fused-AdamW runs above; CUDA graphs on a GPU only.
    Run("bare MALUNet, CUDA graphs", "malunet", 42, graphs=True),
    Run("SemiSeg-CAW fine-tuned, CUDA graphs", "caw-finetune", 42, graphs=True),
    Run("SemiSeg-CAW frozen, cached maps, CUDA graphs", "caw-cached", 42, graphs=True),
    *both_seeds("bare MALUNet, bf16-mixed", "malunet", bf16=True),
    *both_seeds("SemiSeg-CAW fine-tuned, bf16-mixed", "caw-finetune", bf16=True),
    *both_seeds("SemiSeg-CAW aux decoder fine-tuned, bf16-mixed", "caw-decoder", bf16=True),
    Run(
        "SemiSeg-CAW fine-tuned, bf16-mixed + CUDA graphs",
        "caw-finetune",
        42,
        graphs=True,
        bf16=True,
    ),
]


def _demo_config(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    def number(value: Any) -> Any:  # YAML 1.1 reads 3e-3 as a string
        try:
            return float(value) if isinstance(value, str) else value
        except ValueError:
            return value

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    model = {k: number(v) for k, v in config["model"].get("init_args", {}).items()}
    epochs = args.epochs or config["trainer"]["max_epochs"]
    stage1 = args.stage1_epochs or model.pop("stage1_epochs", None) or epochs
    model.pop("stage1_epochs", None)
    return {"data": config["data"], "model": model, "epochs": epochs, "stage1_epochs": stage1}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One demo-config training run: stage 1 alone, or stage 2 of one variant and seed."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    import semiseg_caw
    from semiseg_caw.lit.stages import fit_stage1

    cfg = _demo_config(args)
    # The job: "stage1", or Run.job (variant, seed, then each lever: 0 or 1).
    stage1_job = args.worker == "stage1"
    variant, seed, plain, on_device, graphs, bf16 = (
        ("", "0", "0", "0", "0", "0") if stage1_job else args.worker.split(":")
    )
    dm = semiseg_caw.SemiSegDataModule(**cfg["data"], augment_on_device=on_device == "1")
    trainer_kwargs = dict(
        accelerator=args.device,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    if stage1_job:
        L.seed_everything(42, verbose=False)
        model = semiseg_caw.SemiSegCAW(num_classes=dm.num_classes, **cfg["model"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = fit_stage1(
                model, dm, args.dir, cfg["stage1_epochs"], trainer_kwargs=trainer_kwargs
            )
        return {"checkpoint": str(path), "wall_s": time.perf_counter() - start}

    if plain == "1":  # against the fused lever: AdamW's per-tensor loop
        adamw = torch.optim.AdamW

        class PlainAdamW(adamw):
            def __init__(self, params, **kwargs) -> None:
                kwargs.pop("fused", None)
                kwargs["foreach"] = False  # else CUDA would take the foreach kernels
                super().__init__(params, **kwargs)

        torch.optim.AdamW = PlainAdamW
    L.seed_everything(int(seed), verbose=False)
    _, cls_name, kwargs = VARIANTS[variant]
    model_kwargs = {**cfg["model"], **kwargs, "cuda_graphs": graphs == "1"}
    if model_kwargs.get("aux_source", "classelevate") != "none":
        model_kwargs["stage1_checkpoint"] = args.stage1
    model = semiseg_caw.SemiSegCAW(num_classes=dm.num_classes, **model_kwargs)

    class History(Callback):
        def __init__(self) -> None:
            self.dice: list[float] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after validation
            self.dice.append(float(trainer.callback_metrics.get("val/dice", float("nan"))))

    history = History()
    trainer = L.Trainer(
        max_epochs=cfg["epochs"],
        enable_checkpointing=False,
        callbacks=[history],
        default_root_dir=args.dir,
        precision="bf16-mixed" if bf16 == "1" else "32-true",
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    return {
        "dice": history.dice,
        "final": history.dice[-1],
        "best": max(history.dice),
        "wall_s": time.perf_counter() - start,
        "optimizer": type(trainer.optimizers[0]).__name__
        + (" fused" if trainer.optimizers[0].param_groups[0].get("fused") else ""),
    }


def cpu_threads(parallel: int) -> int:
    """Torch threads per run on a CPU: runs at once share the cores. Each taking them all
    oversubscribes them (threads spinning against each other made runs up to 30x slower)."""
    return max(1, usable_cores() // max(1, parallel))


def _run_worker(args: argparse.Namespace, job: str, tmp: Path) -> dict[str, Any]:
    # A result file per job: with --parallel several workers share `tmp`, and one
    # shared file gave every run of a pair the result of whichever finished last.
    out = tmp / f"result-{job.replace(':', '-')}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job]
    cmd += ["--dir", str(tmp), "--json", str(out), "--device", args.device]
    cmd += ["--stage1", args.stage1 or ""]
    cmd += ["--epochs", str(args.epochs)]
    cmd += ["--stage1-epochs", str(args.stage1_epochs)]
    env = {**os.environ, **ENV}
    if args.device == "cpu":
        threads = str(cpu_threads(args.parallel))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise RuntimeError(f"check run {job} failed (exit {proc.returncode})")
    return json.loads(out.read_text())


def selected_runs(patterns: list[str], device: str) -> list[Run]:
    """The runs whose label contains one of ``patterns``; on a CPU, not the GPU-only ones."""
    runs = [r for r in RUNS if any(k in r.label for k in patterns)]
    return runs if device == "cuda" else [r for r in runs if not r.gpu_only]


def check(args: argparse.Namespace) -> None:
    """Demo-config trainings with and without each lever; validation Dice side by side."""
    import lightning
    import torch

    start = time.perf_counter()
    cfg = _demo_config(args)
    hardware, slug = hardware_names(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        stage1 = _run_worker(args, "stage1", Path(tmp))
        args.stage1 = stage1["checkpoint"]
        print(f"stage 1: {stage1['wall_s']:.0f} s", flush=True)
        runs = selected_runs(args.runs, args.device)

        def one(run: Run) -> dict[str, Any]:
            r = _run_worker(args, run.job, Path(tmp))
            print(
                f"{run.label}, seed {run.seed}: final {r['final']:.4f} best {r['best']:.4f}",
                flush=True,
            )
            return {"label": run.label, "variant": run.variant, "seed": run.seed, **r}

        # Each run is its own process: a big machine can run several at once.
        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            results = list(pool.map(one, runs))
    lines = [
        f"# Speed levers vs training result: demo config ({hardware.split(';')[0]})",
        "",
        "Written by `benchmarks/speed_check.py`; do not edit by hand.",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit(*DIRTY_PATHS)}",
        f"- hardware: {hardware}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}",
        f"- settings: `configs/demo.yaml` (synthetic data {cfg['data']}, model "
        f"{cfg['model']}); stage 1 once ({cfg['stage1_epochs']} epochs, seed 42), shared by "
        f"every stage-2 run; stage 2 {cfg['epochs']} epochs, seed as listed",
        "- plain AdamW: `torch.optim.AdamW` with `foreach=False`, its per-tensor loop; "
        "fused AdamW: `fused=True` (what `configure_optimizers` now picks)",
        "- augmentation on the device: `data.augment_on_device` (the same augmentation as "
        "batched torch ops after the transfer to the device) instead of albumentations in "
        "the loader",
        "- CUDA graphs: `model.cuda_graphs` (the training objective replayed from a CUDA "
        "graph; a GPU only)",
        "- bf16-mixed: `trainer.precision: bf16-mixed` (stage 2 only)",
        f"- runs at once: {args.parallel}"
        + (f" ({cpu_threads(args.parallel)} torch thread(s) each)" if args.device == "cpu" else ""),
        f"- wall time: {(time.perf_counter() - start) / 60:.1f} min",
        "",
        "| run | seed | val Dice, last epoch | best val Dice | stage-2 wall (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['seed']} | {r['final']:.4f} | {r['best']:.4f} | "
            f"{r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "Seed noise: the spread between seeds 42 and 43 of one setting. A lever passes when "
        "its change at seed 42 is no larger than that. Stage-2 wall: each run's wall time "
        "on a possibly shared machine, context only; speed is measured by the speed table.",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else RESULTS / f"speed-check-{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    sys.stdout.write(text)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--epochs", type=int, default=0, help="stage-2 epochs (0: the demo's)")
    parser.add_argument("--stage1-epochs", type=int, default=0, help="(0: the demo's)")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[""],
        help="only the runs whose label contains one of these (default: all)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--out", default="", help="default: results/speed-check-<hardware>.md")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--stage1", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.update({k: os.environ.get(k, v) for k, v in ENV.items()})
    if args.worker:
        Path(args.json).write_text(json.dumps(worker(args)))
    else:
        check(args)


if __name__ == "__main__":
    main()
