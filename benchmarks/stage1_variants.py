"""Stage 1 retrained under other settings, scored by lesion size.

On BUSI the stage-1 ClassElevateSeg over-segments small lesions and the core model copies it
(README, the lesion-size bullet). This script retrains the stage 1 of the ``cpu`` budget's
``-long-both`` rows (SemiSegCAW's own stage 1: 32 epochs at 96 px; its stage 2 cut to one
epoch) once per variant and seed, always with a ``control`` that changes nothing (it
reproduces the benchmark's stage 1), then scores every stage-1 checkpoint with
``lesion_size.py`` on the validation and the test split. With ``--stage2-epochs N`` it
also trains, on each of those stage-1 checkpoints, the -long-both rows' core model (a
frozen, cached auxiliary map) for N epochs, and scores it the same way: whether a better
stage 1 makes a better SemiSeg-CAW.

    python benchmarks/stage1_variants.py --seeds 3 4 --parallel 2 \\
        --variant "no-cam=--model.init_args.stage1_loss_weights={cam: 0.0}"

Runs go to ``runs/stage1-variants/<dataset>/<variant>/seed<N>`` (stage 2 in its
``stage2-<N>ep`` folder); a finished one is reused
when it was trained with the same arguments (``fit-args.json``). Writes
``benchmarks/results/stage1-variants/<dataset>-{stage1-variants,lesion-size}.{json,md}``.
A diagnostic: a variant is judged on validation; the test figures are for the record.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lesion_size  # noqa: E402
from aux_gap import save  # noqa: E402
from protocol import BUDGETS, CLASS_ONLY, FROZEN_CACHED  # noqa: E402
from provenance import usable_cores  # noqa: E402
from run import REPO, RESULTS, run_args, run_env  # noqa: E402
from worker import best_checkpoint  # noqa: E402


def fit_args(a: argparse.Namespace, settings: list[str], seed: int, rundir: Path) -> list[str]:
    """``semiseg-caw fit`` arguments of one run: the -long-both row's, stage 2 cut to one
    epoch, the options given for every run, then the variant's settings."""
    stage1 = f"--model.init_args.stage1_epochs={a.stage1_epochs}"
    return [*_row_args(a, seed, 1, rundir), stage1, *a.fit_option, *settings]


def stage2_args(a: argparse.Namespace, settings: list[str], seed: int, rundir: Path) -> list[str]:
    """``semiseg-caw fit`` arguments of a core model trained for ``a.stage2_epochs`` on the
    stage-1 checkpoint of the run in ``rundir.parent``; the variant's settings apply too."""
    stage1 = best_checkpoint(rundir.parent / "stage1" / "checkpoints")
    given = f"--model.init_args.stage1_checkpoint={stage1}"
    return [*_row_args(a, seed, a.stage2_epochs, rundir), given, *a.fit_option, *settings]


def _row_args(a: argparse.Namespace, seed: int, epochs: int, rundir: Path) -> list[str]:
    """The -long-both row's fit arguments for ``epochs`` of stage 2, logged in ``rundir``."""
    row = {"configs": [FROZEN_CACHED], "class_only": a.class_only}
    return [
        "fit",
        *run_args(a.dataset, row, {"image_size": a.image_size}, a.root),
        f"--seed_everything={seed}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={rundir}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={rundir}",
    ]


def train(args: list[str], rundir: Path, threads: int) -> float | None:
    """Fit one run unless a finished one with the same arguments is there; its wall
    seconds (None when reused). A finished run trained otherwise is refused, not mixed in."""
    record = rundir / "fit-args.json"
    if record.is_file():
        if json.loads(record.read_text()) != args:
            raise SystemExit(f"{rundir} was trained with other arguments ({record}); move it")
        if (rundir / "fit.done").is_file():  # a best checkpoint alone may be a killed run's
            return None
    elif rundir.exists() and any(rundir.iterdir()):
        raise SystemExit(f"{rundir} holds a run of unknown arguments (no {record.name}); move it")
    rundir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(args, indent=1))
    resume = ["--ckpt_path=last"] if list(rundir.glob("**/last*.ckpt")) else []
    started = time.perf_counter()
    with open(rundir.with_suffix(".log"), "a") as log:
        cmd = [sys.executable, "-m", "semiseg_caw", *args, *resume]
        subprocess.run(cmd, cwd=REPO, env=run_env(threads), stdout=log, stderr=log, check=True)
    (rundir / "fit.done").touch()
    return time.perf_counter() - started


def train_all(a: argparse.Namespace, jobs: list, make_args, folder: Path, threads: int) -> list:
    """``train`` each (variant, seed) job in ``<work>/<variant>/seed<N>/<folder>``, with the
    arguments ``make_args`` gives, ``a.parallel`` at once; their fit seconds."""

    def go(job: tuple[str, int]) -> float | None:
        name, seed = job
        rundir = a.work / name / f"seed{seed}" / folder
        return train(make_args(a, a.variants[name], seed, rundir), rundir, threads)

    with ThreadPoolExecutor(a.parallel) as pool:
        return list(pool.map(go, jobs))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(CLASS_ONLY), default="busi")
    p.add_argument("--root", help="data set folder (default: the data set config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OPTION",
        help="a fit option of variant NAME, e.g. 'no-cam=--model.init_args.stage1_loss_weights="
        "{cam: 0.0}' (repeat the option, or the name for several options)",
    )
    p.add_argument("--image-size", type=int, default=BUDGETS["cpu"]["image_size"])
    p.add_argument("--stage1-epochs", type=int, default=BUDGETS["cpu"]["long_stage1_epochs"])
    p.add_argument(
        "--fit-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="a fit option for every run, the control's too (e.g. --trainer.limit_train_batches=2)",
    )
    p.add_argument(
        "--stage2-epochs",
        type=int,
        default=0,
        help="also train the core model this long on each stage 1 (default 0: not at all)",
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at once")
    p.add_argument("--work", type=Path, help="run folders (default runs/stage1-variants/<dataset>)")
    p.add_argument("--out", type=Path, default=RESULTS / "stage1-variants")
    a = p.parse_args(argv)
    a.class_only = CLASS_ONLY[a.dataset][0]
    # Paths relative to the repository (where the runs train), so tables name them portably.
    work = a.work.resolve() if a.work else REPO / "runs" / "stage1-variants" / a.dataset
    a.work = work.relative_to(REPO) if work.is_relative_to(REPO) else work
    a.out = a.out.resolve()
    a.root = str(Path(a.root).resolve()) if a.root else None
    a.variants = {"control": []}  # the benchmark's own stage 1, reproduced
    for given in a.variant:
        name, _, option = given.partition("=")
        if not name or name == "control" or not option.startswith("--"):
            p.error(f"--variant takes NAME=--option with a name other than control, got {given!r}")
        a.variants.setdefault(name, []).append(option)
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    os.chdir(REPO)
    started = time.perf_counter()
    threads = max(1, usable_cores() // a.parallel)
    jobs = [(name, seed) for name in a.variants for seed in a.seeds]
    stages = [(1, fit_args, Path("."), Path("stage1"))]
    if a.stage2_epochs:
        stage2 = Path(f"stage2-{a.stage2_epochs}ep")
        stages.append((2, stage2_args, stage2, stage2))
    runs = []
    for stage, make_args, folder, scored in stages:  # every stage 1 before any stage 2
        fit_s = train_all(a, jobs, make_args, folder, threads)
        for (name, seed), t in zip(jobs, fit_s, strict=True):
            ckpt = best_checkpoint(a.work / name / f"seed{seed}" / scored / "checkpoints")
            settings = a.variants[name]
            runs.append(dict(variant=name, seed=seed, stage=stage, settings=settings, fit_s=t))
            runs[-1]["checkpoint"] = str(ckpt)
    sizes = lesion_size.main(
        ["--dataset", a.dataset, "--image-size", str(a.image_size), "--out", str(a.out)]
        + (["--root", a.root] if a.root else [])
        + ["--checkpoint", *(r["checkpoint"] for r in runs)]
    )
    extra = {
        "stage1_epochs": a.stage1_epochs,
        "stage2_epochs": a.stage2_epochs,
        "runs": runs,
        "threads": threads,
    }
    return save(a, "stage1-variants", sizes["rows"], started, markdown, **extra)


def markdown(record: dict) -> str:
    """The variants, their settings and fit times, then the lesion-size means per variant."""
    lines = [
        f"# Stage 1 variants scored by lesion size: {record['dataset']}",
        "",
        f"Generated by `benchmarks/stage1_variants.py` on {record['date']} — do not edit by hand.",
        "",
        f"- The `-long-both` rows' stage 1 ({record['stage1_epochs']} epochs, "
        f"{record['image_size']} px, {record['class_only']} class-only images), retrained per "
        "variant and seed"
        + (
            f"; stage 2: their core model, {record['stage2_epochs']} epochs on each stage 1"
            if record.get("stage2_epochs")
            else ""
        )
        + ". The per-checkpoint tables are in the `lesion-size` file beside this one. "
        "Fit s: – where an earlier finished run was reused.",
        f"- Commit `{record['commit']}`; wall time {record['wall_s']:.0f} s; "
        f"{record['threads']} torch threads a run.",
        "",
        "| variant | stage | seed | settings | fit s |",
        "|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        settings = " ".join(f"`{s}`" for s in run["settings"]) or "(none)"
        fit = "–" if run["fit_s"] is None else f"{run['fit_s']:.0f}"
        lines.append(f"| {run['variant']} | {run['stage']} | {run['seed']} | {settings} | {fit} |")
    lines += [
        "",
        "Means over seeds: pooled Dice, mean Dice per image (all, and by lesion-size third), "
        "and on the small third the median predicted / true lesion area, the precision and the "
        "share of false-positive pixels far from the lesion (`lesion-size` file):",
        "",
        "| variant | stage | split | pooled | per image | small | medium | large "
        "| small: area, precision, far |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, stage), rows in by_variant(record).items():
        for split in lesion_size.SPLITS:
            *dice, area, precision, far = seed_means([row[split] for row in rows.values()])
            cells = " | ".join(f"{d:.3f}" for d in dice)
            lines.append(
                f"| {name} | {stage} | {split} | {cells} | {area:.2f}, {precision:.2f}, {far:.2f} |"
            )
    return "\n".join(lines) + "\n"


def by_variant(record: dict) -> dict[tuple[str, int], dict[int, dict]]:
    """The lesion-size rows of a record by (variant, stage), then by seed, in run order."""
    out: dict[tuple[str, int], dict[int, dict]] = {}
    for row, run in zip(record["rows"], record["runs"], strict=True):
        out.setdefault((run["variant"], run.get("stage", 1)), {})[run["seed"]] = row
    return out


def seed_means(scores: list[dict]) -> list[float]:
    """Means over seeds of one split's lesion-size scores: pooled Dice, Dice per image, the
    thirds' Dice per image, then the small third's area ratio, precision and far share."""
    small = [s["groups"]["small"] for s in scores]
    columns = [
        [s["pooled"] for s in scores],
        [s["per_image"] for s in scores],
        *([s["groups"][t]["per_image"] for s in scores] for t in lesion_size.THIRDS),
        [g["area_ratio"] for g in small],
        [g["precision"] for g in small],
        # far_fp: None without false positives; absent from files written before it existed.
        [g["far_fp"] for g in small if g.get("far_fp") is not None],
    ]
    return [statistics.mean(c) if c else math.nan for c in columns]


if __name__ == "__main__":
    main()
