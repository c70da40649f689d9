"""Benchmark harness of the protocol (docs/PROTOCOL.md): train every row, test the best
checkpoint on the test split, write the tables.

Each run is its own subprocess: ``python -m semiseg_caw fit`` (stage 1 then stage 2 for
SemiSeg-CAW rows) with a timing callback, then a test worker that loads the
best-on-validation checkpoint (``checkpoints/best-epoch=NNN.ckpt``; chosen on val/dice only)
and evaluates it on the test split. Runs already finished (their ``result.json`` exists)
are reused unless ``--force``; so an interrupted benchmark resumes where it stopped.

    python benchmarks/run.py --dataset busi --budget smoke            # minutes, proves the pipeline
    python benchmarks/run.py --dataset busi --budget cpu              # ~1 h on 2 CPU cores
    python benchmarks/run.py --dataset ddti --budget full --parallel 3   # the protocol, for a GPU
    python benchmarks/run.py --dataset busi --budget full --rows 'malunet-*' --seeds 0 1 2
    python benchmarks/run.py --dataset busi --budget cpu --report-only   # rebuild tables only

On a CPU shared with other jobs give ``--threads 1``: torch threads spinning on an
oversubscribed CPU made epochs 5-10x slower here.

Writes ``benchmarks/results/<dataset>-<budget>.{json,md,png}`` and regenerates the results
section of README.md (between ``<!-- results:start -->`` and ``<!-- results:end -->``) from
every ``benchmarks/results/*.json``. Numbers are never edited by hand.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py, however loaded
from provenance import commit, machine, usable_cores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
DIRTY_PATHS = ["semiseg_caw", "configs", "benchmarks/run.py"]  # changes here: commit "-dirty"

# The paper's pooled test figures (their splits, 256 px, 300 epochs). UNeXt rows: the
# paper's backbone table ("UNeXt" read as the full-data baseline; DDTI SemiSeg-CAW at 48).
PAPER = {
    "busi": {
        "malunet-full": (0.672, 0.506),
        "malunet-reduced": (0.662, 0.494),
        "malunet-semiseg-caw": (0.684, 0.520),
        "unext-full": (0.710, 0.595),
        "unext-semiseg-caw": (0.813, 0.704),
    },
    "ddti": {
        "malunet-full": (0.628, 0.457),
        "malunet-reduced-48": (0.614, 0.443),
        "malunet-semiseg-caw-48": (0.656, 0.488),
        "malunet-semiseg-caw-96": (0.640, 0.470),
        "malunet-semiseg-caw-144": (0.633, 0.463),
        "unext-full": (0.678, 0.519),
        "unext-semiseg-caw-48": (0.710, 0.552),
    },
}
CLASS_ONLY = {"busi": [100], "ddti": [48, 96, 144]}
ABLATIONS = ["no-classelevate", "static-weights", "imtl", "no-classelevate-no-wgm", "layercam"]
# Controls beyond the paper: what the class-only images add (SemiSeg-CAW without them),
# and the most they could add (SemiSeg-CAW given their masks too).
CONTROLS = ["no-class-only", "all-masks"]
# Our variants of the method: pseudo-labels on class-only images; a frozen auxiliary model
# whose maps are cached (the fast stage 2, see benchmarks/speed.py).
VARIANTS = ["pseudo-labels", "frozen-aux-cached"]
# Rows whose stage 1 is the same as malunet-semiseg-caw's (same data, seed and settings):
# they reuse its stage-1 checkpoint when that run has finished, and so differ from it in
# stage 2 only (LayerCAM reads the same ClassElevateSeg's classifier).
SHARES_STAGE1 = {"semiseg-caw", "static-weights", "imtl", "layercam", *VARIANTS}

# Budgets: trainer/data settings, default rows and seeds.
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "image_size": 64,
        "epochs": 1,
        "stage1_epochs": 1,
        "seeds": [0],
        "rows": ["malunet-full", "malunet-reduced*", "malunet-semiseg-caw*"],
        "trainer": ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"],
        "first_budget_only": True,
        "note": "smoke test: 64 px, 1 epoch of 3 batches per stage; proves loaders and metrics "
        "on the real files, the numbers mean nothing",
    },
    "cpu": {
        "image_size": 96,
        "epochs": 8,
        "stage1_epochs": 6,
        "seeds": [0],
        "rows": ["malunet-full", "malunet-reduced*", "malunet-semiseg-caw*"],
        "trainer": [],
        "first_budget_only": True,
        "note": "CPU budget: 96 px, 8 epochs (stage 1 of SemiSeg-CAW: 6) instead of 256 px and 300. "
        "Good for comparing rows against each other, not for headline numbers",
    },
    "full": {
        "image_size": 256,
        "epochs": 300,
        "stage1_epochs": None,
        "seeds": [0, 1, 2],
        "rows": ["*"],
        "trainer": [],
        "first_budget_only": False,
        "note": "the protocol as written: 256 px, 300 epochs, 3 seeds, every row (for a GPU)",
    },
}

SEG_KEYS = [
    "dice",
    "iou",
    "recall",
    "precision",
    "specificity",
    "accuracy",
    "dice_per_image",
    "iou_per_image",
]
CLS_KEYS = ["accuracy", "balanced_accuracy", "auroc"]


# ----------------------------------------------------------------------------- rows


def all_rows(dataset: str) -> list[dict[str, Any]]:
    """Every row of the protocol for a data set: name, config deltas, class-only count."""
    rows = []
    budgets = CLASS_ONLY[dataset]
    for backbone in ("malunet", "unext"):
        bb = [] if backbone == "malunet" else ["configs/backbones/unext.yaml"]
        rows.append(
            {
                "name": f"{backbone}-full",
                "configs": bb + ["configs/baselines/full.yaml"],
                "class_only": budgets[0],
                "method": "full",
            }
        )
        for k in budgets:
            suffix = "" if len(budgets) == 1 else f"-{k}"
            rows.append(
                {
                    "name": f"{backbone}-reduced{suffix}",
                    "configs": bb + ["configs/baselines/reduced.yaml"],
                    "class_only": k,
                    "method": "reduced",
                }
            )
        for k in budgets:
            suffix = "" if len(budgets) == 1 else f"-{k}"
            rows.append(
                {
                    "name": f"{backbone}-semiseg-caw{suffix}",
                    "configs": bb,
                    "class_only": k,
                    "method": "semiseg-caw",
                }
            )
        for ab in ABLATIONS + CONTROLS + VARIANTS:
            rows.append(
                {
                    "name": f"{backbone}-{ab}",
                    "configs": bb + [f"configs/ablations/{ab}.yaml"],
                    "class_only": budgets[0],
                    "method": ab,
                }
            )
    for row in rows:
        row["backbone"] = row["name"].split("-")[0]
    # Not trained on its own: the stage-1 ClassElevateSeg of each malunet-semiseg-caw run,
    # tested alone (the auxiliary U-Net's own masks, without the core model).
    for k in budgets:
        suffix = "" if len(budgets) == 1 else f"-{k}"
        rows.append(
            {
                "name": f"classelevate-alone{suffix}",
                "configs": ["configs/stage1.yaml"],
                "class_only": k,
                "method": "classelevate-alone",
                "backbone": "classelevate",
                "derived": True,
            }
        )
    return rows


def select_rows(dataset: str, patterns: list[str], first_budget_only: bool) -> list[dict]:
    rows = all_rows(dataset)
    if first_budget_only:  # default row lists of small budgets: the first label budget only
        first = CLASS_ONLY[dataset][0]
        rows = [r for r in rows if r["class_only"] == first]
    rows = [r for r in rows if not r.get("derived")]  # written by the runs they come from
    chosen = [r for r in rows if any(fnmatch.fnmatch(r["name"], p) for p in patterns)]
    if not chosen:
        names = ", ".join(r["name"] for r in all_rows(dataset))
        raise SystemExit(f"no row matches {patterns}; rows: {names}")
    return chosen


# ----------------------------------------------------------------------------- callbacks
# Used inside the run subprocesses (importable as benchmarks.run with the repo on sys.path).


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


def _with_callbacks(extra: list[L.Callback], args: list[str]):
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


def _test(args: list[str], ckpt: Path) -> dict[str, Any]:
    """``semiseg-caw test`` of one checkpoint: metrics, inference time and parameters."""
    import torch

    recorder = TestRecorder()
    cli = _with_callbacks([recorder], ["test", *args, f"--ckpt_path={ckpt}"])
    model = cli.model
    total = sum(p.numel() for p in model.parameters())
    aux = getattr(getattr(model, "net", None), "aux_model", None)
    aux_n = sum(p.numel() for p in aux.parameters()) if aux is not None else 0
    return {
        "best_checkpoint": str(ckpt),
        "metrics": recorder.metrics,
        "logged": {k: float(v) for k, v in cli.trainer.callback_metrics.items()},
        "test_images": recorder.images,
        "infer_ms_per_image": 1000 * recorder.seconds / max(recorder.images, 1),
        "params": total,
        "params_core": total - aux_n,
        "threads": torch.get_num_threads(),
    }


def _best(ckpts: Path) -> Path:
    best = sorted(ckpts.glob("best-epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not best:
        raise RuntimeError(f"no best checkpoint in {ckpts}")
    return best[-1]


def _worker(spec_file: Path) -> None:
    """One run, in its own process: ``semiseg-caw fit`` (unless a best checkpoint exists),
    then ``semiseg-caw test --ckpt_path <best-on-val>``; writes test.json. With
    ``"mode": "stage1"`` only tests the run's best stage-1 checkpoint (stage1_test.json)."""
    spec = json.loads(spec_file.read_text())
    rundir = Path(spec["dir"])
    if spec.get("mode") == "stage1":
        result = _test(spec["test"], _best(rundir / "stage1" / "checkpoints"))
        (rundir / "stage1_test.json").write_text(json.dumps(result, indent=1))
        return
    ckpts = rundir / "checkpoints"
    fit_s = None
    if not list(ckpts.glob("best-epoch=*.ckpt")):
        t0 = time.time()
        timer = EpochTimer()
        _with_callbacks([timer], ["fit", *spec["fit"]])
        fit_s = time.time() - t0
        timing = rundir / "timing.json"
        if (rundir / "stage1").is_dir() and timing.is_file():
            record = json.loads(timing.read_text())
            record["stage1_s"] = timer.fit_start - t0  # data setup + stage 1 (train and val)
            record["stage1_epochs"] = spec["stage1_epochs"]
            record["stage1_epoch_s"] = record["stage1_s"] / spec["stage1_epochs"]
            timing.write_text(json.dumps(record))
    result = _test(spec["test"], _best(ckpts))
    result["fit_wall_s"] = fit_s
    (rundir / "test.json").write_text(json.dumps(result, indent=1))


# ----------------------------------------------------------------------------- running


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, **ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_args(dataset: str, row: dict, budget: dict, data_root: str | None) -> list[str]:
    """Config and override arguments shared by a row's fit and test commands."""
    args = [f"--config=configs/{dataset}.yaml", *[f"--config={c}" for c in row["configs"]]]
    if data_root:
        args.append(f"--data.root={data_root}")
    args += [
        f"--data.class_only={row['class_only']}",
        f"--data.image_size={budget['image_size']}",
        "--trainer.accelerator=auto",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    return args


def _suffix(dataset: str, class_only: int) -> str:
    return "" if len(CLASS_ONLY[dataset]) == 1 else f"-{class_only}"


def shared_stage1(job: dict) -> Path | None:
    """The finished malunet-semiseg-caw run's best stage-1 checkpoint this job may reuse."""
    row = job["row"]
    source = f"malunet-semiseg-caw{_suffix(job['dataset'], row['class_only'])}"
    if row["method"] not in SHARES_STAGE1 or row["name"] == source:
        return None
    rundir = job["dir"].parents[1] / source / f"seed{job['seed']}"
    if not (rundir / "result.json").is_file():
        return None
    best = sorted((rundir / "stage1" / "checkpoints").glob("best-epoch=*.ckpt"))
    return best[-1] if best else None


def _run_worker(rundir: Path, spec: dict, threads: int, name: str) -> None:
    spec_file = rundir / name
    spec_file.write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, "-m", "benchmarks.run", "--_worker", str(spec_file)]
    with open(rundir / "log.txt", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        done = subprocess.run(
            cmd, cwd=REPO, env=_env(threads), stdout=log, stderr=subprocess.STDOUT
        )
    if done.returncode:
        raise RuntimeError(f"run failed ({done.returncode}); see {rundir / 'log.txt'}")


def _record(job: dict, row: dict, tested: dict, started_at: str, timing: dict) -> dict:
    best = Path(tested["best_checkpoint"])
    record = {
        "row": row["name"],
        "method": row["method"],
        "backbone": row["backbone"],
        "class_only": row["class_only"] if row["method"] != "full" else 0,
        "seed": job["seed"],
        "commit": started_at,
        "best_epoch": int(re.search(r"epoch=(\d+)", best.name).group(1)),
        "train_s_per_epoch": statistics.mean(timing["train_s"]) if timing.get("train_s") else None,
        "epoch_s": statistics.mean(timing["epoch_s"]) if timing.get("epoch_s") else None,
        "stage1_epoch_s": timing.get("stage1_epoch_s"),
        **tested,
    }
    if best.is_relative_to(REPO):
        record["best_checkpoint"] = str(best.relative_to(REPO))
    return record


def run_one(job: dict, threads: int, force: bool) -> dict:
    """Fit (unless done) and test one row and seed in a subprocess; returns its record."""
    rundir: Path = job["dir"]
    result_file = rundir / "result.json"
    if result_file.is_file() and not force:
        record = json.loads(result_file.read_text())
        test_stage1(job, threads)
        return record
    if force and rundir.exists():
        import shutil

        shutil.rmtree(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    started_at = commit(*DIRTY_PATHS)  # the code the run used (the tree may change while it runs)
    budget, row = job["budget"], job["row"]
    common = run_args(job["dataset"], row, budget, job["data_root"])
    fit = [
        *common,
        f"--seed_everything={job['seed']}",
        f"--trainer.max_epochs={budget['epochs']}",
        f"--trainer.default_root_dir={rundir}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={rundir}",
        *budget["trainer"],
    ]
    stage1 = shared_stage1(job)
    if stage1 is not None:
        fit.append(f"--model.init_args.stage1_checkpoint={stage1}")
    elif row["method"] not in ("full", "reduced") and budget["stage1_epochs"]:
        fit.append(f"--model.init_args.stage1_epochs={budget['stage1_epochs']}")
    test = [*common, f"--trainer.default_root_dir={rundir / 'test'}", "--trainer.logger=false"]
    spec = {
        "dir": str(rundir),
        "fit": fit,
        "test": test,
        "stage1_epochs": budget["stage1_epochs"] or budget["epochs"],
    }
    _run_worker(rundir, spec, threads, "spec.json")
    timing_file = rundir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    tested = json.loads((rundir / "test.json").read_text())
    record = _record(job, row, tested, started_at, timing)
    if stage1 is not None:
        record["stage1_from"] = str(
            stage1.relative_to(REPO) if stage1.is_relative_to(REPO) else stage1
        )
    result_file.write_text(json.dumps(record, indent=1))
    test_stage1(job, threads)
    return record


def test_stage1(job: dict, threads: int) -> None:
    """For a run that trained its own stage 1 (malunet-semiseg-caw): test that
    ClassElevateSeg alone and file it as the ``classelevate-alone`` row of the same seed."""
    row, rundir = job["row"], job["dir"]
    if row["name"] != f"malunet-semiseg-caw{_suffix(job['dataset'], row['class_only'])}":
        return
    if not list((rundir / "stage1" / "checkpoints").glob("best-epoch=*.ckpt")):
        return
    derived = next(
        r
        for r in all_rows(job["dataset"])
        if r.get("derived") and r["class_only"] == row["class_only"]
    )
    out = rundir.parents[1] / derived["name"] / f"seed{job['seed']}" / "result.json"
    if out.is_file():
        return
    if not (rundir / "stage1_test.json").is_file():
        common = run_args(job["dataset"], derived, job["budget"], job["data_root"])
        test = [
            *common,
            f"--trainer.default_root_dir={rundir / 'stage1' / 'test'}",
            "--trainer.logger=false",
        ]
        _run_worker(
            rundir,
            {"dir": str(rundir), "mode": "stage1", "test": test},
            threads,
            "spec_stage1.json",
        )
    tested = json.loads((rundir / "stage1_test.json").read_text())
    timing_file = rundir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    parent = json.loads((rundir / "result.json").read_text())
    record = _record(job, derived, tested, parent.get("commit"), {})
    record["stage1_epoch_s"] = timing.get("stage1_epoch_s")
    record["derived_from"] = str(
        rundir.relative_to(REPO) if rundir.is_relative_to(REPO) else rundir
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


# ----------------------------------------------------------------------------- reporting


def run_commits(records: list[dict], previous: Path) -> str:
    """The commit(s) the runs used; for runs that did not record one, the commit in the
    previous report of the same table, else the commit now."""
    found = sorted({r["commit"] for r in records if r.get("commit")})
    if len(found) < len(records) and previous.is_file():
        old = json.loads(previous.read_text()).get("commit") or ""
        found = sorted({*found, *(c.split(" (")[0] for c in old.split(", ") if c)})
    return ", ".join(found) or f"{commit(*DIRTY_PATHS)} (at report time)"


def _stats(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.mean(vals), "std": std, "n": len(vals)}


METRICS = [(f"seg/{k}", k) for k in SEG_KEYS] + [(f"cls/{k}", f"cls_{k}") for k in CLS_KEYS]
COSTS = [
    "params",
    "params_core",
    "train_s_per_epoch",
    "epoch_s",
    "stage1_epoch_s",
    "infer_ms_per_image",
    "fit_wall_s",
    "best_epoch",
]


def summarise(records: list[dict], order: list[str]) -> list[dict]:
    rows = []
    for name in order:
        runs = [r for r in records if r["row"] == name]
        if not runs:
            continue
        entry = {k: runs[0][k] for k in ("row", "method", "backbone", "class_only")}
        entry["seeds"] = sorted(r["seed"] for r in runs)
        for key, short in METRICS:
            entry[short] = _stats([r["metrics"].get(key) for r in runs])
        for key in COSTS:
            entry[key] = _stats([r.get(key) for r in runs])
        rows.append(entry)
    return rows


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def markdown(report: dict) -> str:
    ds, bud = report["dataset"], report["budget"]
    hw = report["hardware"]
    lines = [
        f"# Benchmark: {ds.upper()}, budget `{bud}`",
        "",
        f"Generated by `benchmarks/run.py` on {report['finished']} — do not edit by hand.",
        "",
        f"- Setting: {report['note']}.",
        f"- Resolution {report['image_size']} px; epochs per stage {report['epochs']}"
        f" (stage 1: {report['stage1_epochs'] or report['epochs']}); seeds {report['seeds']};"
        " data split and class-only selection fixed (seed 42, "
        f"`configs/splits/{ds}.json`).",
        "- Checkpoint: best on validation Dice (`val/dice`); every number below is on the"
        " **test** split. Pooled metrics: one confusion matrix over all test pixels at the"
        " run's resolution; per image: mean over test images. Mean ± std over seeds.",
        f"- Commit `{report['commit']}`; hardware: {hw['cpu']}, {hw['cores']} cores, "
        f"{hw['gpu'] or 'no GPU'} (torch {hw['torch']}; the CPU was shared with other jobs, "
        "so times are upper bounds); fit wall time summed over the runs "
        f"{sum(r.get('fit_wall_s') or 0 for r in report['runs']) / 60:.1f} min; this "
        f"invocation {report['wall_s'] / 60:.1f} min"
        f"{' (tables rebuilt from finished runs)' if report.get('report_only') else ''}.",
        "",
        "| row | class-only | seeds | Dice | IoU | recall | precision | specificity | pixel acc. "
        "| Dice/img | IoU/img | cls acc. | cls bal. acc. | AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        cells = [r["row"], str(r["class_only"] or "–"), ", ".join(map(str, r["seeds"]))]
        cells += [_fmt(r[k]) for k in SEG_KEYS]
        cells += [_fmt(r[f"cls_{k}"]) for k in CLS_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| row | params (total) | params (core, without ClassElevateSeg) | s / epoch (stage 2,"
        " train) | s / epoch (stage 2, with val) | s / epoch (stage 1, with val, data setup"
        " spread over the epochs) | inference ms / image"
        " (test loop) | best epoch | fit wall (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        p, pc = r["params"]["mean"], r["params_core"]["mean"]
        cells = [
            r["row"],
            f"{p:,.0f}" if p else "–",
            f"{pc:,.0f}" if pc else "–",
            _fmt(r["train_s_per_epoch"], 1),
            _fmt(r["epoch_s"], 1),
            _fmt(r["stage1_epoch_s"], 1),
            _fmt(r["infer_ms_per_image"], 1),
            _fmt(r["best_epoch"], 0),
        ]
        wall = r["fit_wall_s"]["mean"]
        cells.append(f"{wall / 60:.1f}" if wall else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *comparison(report), ""]
    if report.get("plot"):
        lines += [f"![test Dice per row]({Path(report['plot']).name})", ""]
    if report.get("failed"):
        lines += ["Failed runs: " + ", ".join(report["failed"]), ""]
    lines.append(
        "The `full` budget (256 px, 300 epochs, 3 seeds, every row) needs a GPU; "
        "results/…-full.* appear only once it has been run there."
    )
    return "\n".join(lines) + "\n"


def comparison(report: dict) -> list[str]:
    """The bar (SemiSeg-CAW vs reduced vs full) and the paper's figures beside ours."""
    ds = report["dataset"]
    by = {r["row"]: r for r in report["rows"]}
    out = [
        "## Against the bar and the paper",
        "",
        "The paper's numbers come from **different splits** (not public), 256 px and 300 "
        "epochs; ours from the budget above. Compare the gaps, not the absolute values.",
        "",
        "| row | ours: Dice | ours: IoU | paper: Dice | paper: IoU |",
        "|---|---|---|---|---|",
    ]
    for name, (dice, iou) in PAPER[ds].items():
        r = by.get(name)
        out.append(
            f"| {name} | {_fmt(r['dice']) if r else 'not run'} | "
            f"{_fmt(r['iou']) if r else 'not run'} | {dice:.3f} | {iou:.3f} |"
        )
    out.append("")
    for bb in ("malunet", "unext"):
        full = by.get(f"{bb}-full")
        for k in CLASS_ONLY[ds]:
            suffix = "" if len(CLASS_ONLY[ds]) == 1 else f"-{k}"
            semi, red = by.get(f"{bb}-semiseg-caw{suffix}"), by.get(f"{bb}-reduced{suffix}")
            if not semi or semi["dice"]["mean"] is None:
                continue
            s = semi["dice"]["mean"]
            parts = []
            if red and red["dice"]["mean"] is not None:
                d = s - red["dice"]["mean"]
                parts.append(
                    f"{'above' if d > 0 else 'NOT above'} {bb}-reduced{suffix} ({d:+.3f} Dice)"
                )
            if full and full["dice"]["mean"] is not None:
                d = s - full["dice"]["mean"]
                level = "level with or above" if d >= -0.01 else "below"
                parts.append(f"{level} {bb}-full ({d:+.3f} Dice; 'level' = within 0.01)")
            if parts:
                out.append(f"- {bb}-semiseg-caw{suffix}: " + "; ".join(parts) + ".")
    stalled = [
        r["row"]
        for r in report["rows"]
        if r["best_epoch"]["mean"] is not None and r["best_epoch"]["mean"] >= report["epochs"] - 1
    ]
    if stalled and report["epochs"] < 100:
        out.append(
            f"- Caution: the best validation epoch of {', '.join(stalled)} is the last "
            f"one ({report['epochs']} epochs): still improving when stopped."
        )
    semi = [r for r in report["rows"] if r["method"] == "semiseg-caw"]
    if semi and report["epochs"] < 100 and semi[0]["params"]["mean"]:
        r = semi[0]
        out.append(
            f"- Caution: SemiSeg-CAW runs a {r['params']['mean'] / 1e6:.1f} M-parameter model at "
            f"test time (ClassElevateSeg included; the core alone "
            f"{r['params_core']['mean'] / 1e6:.2f} M) against the baselines' "
            "MALUNet/UNeXt alone; under a short budget part of its lead may come from that "
            "capacity (faster convergence) rather than from the class-only images. The "
            "control rows below separate the two."
        )
    out += controls(report, by)
    paper = PAPER[ds]
    if ds == "busi":
        out.append(
            f"- Paper (BUSI): SemiSeg-CAW {paper['malunet-semiseg-caw'][0] - paper['malunet-reduced'][0]:+.3f} "
            f"over reduced, {paper['malunet-semiseg-caw'][0] - paper['malunet-full'][0]:+.3f} over full."
        )
    else:
        out.append(
            f"- Paper (DDTI): SemiSeg-CAW@48 "
            f"{paper['malunet-semiseg-caw-48'][0] - paper['malunet-reduced-48'][0]:+.3f} "
            f"over reduced, "
            f"{paper['malunet-semiseg-caw-48'][0] - paper['malunet-full'][0]:+.3f} over full."
        )
    out.append(
        "- The paper's ablation table (SemiSeg-CAW 0.610 Dice; without ClassElevateSeg "
        "0.571, static weights 0.572, IMTL 0.537, neither 0.601, LayerCAM 0.583) does not "
        "name its data set in the outline we have, so it is not matched to rows here."
    )
    return out


def controls(report: dict, by: dict[str, dict]) -> list[str]:
    """What the control rows say: the class-only images' share of SemiSeg-CAW's lead, and
    the stage-1 U-Net on its own. Also which rows reused a stage-1 checkpoint."""
    out = []
    for k in CLASS_ONLY[report["dataset"]]:
        suffix = _suffix(report["dataset"], k)
        semi = by.get(f"malunet-semiseg-caw{suffix}")
        if not semi or semi["dice"]["mean"] is None:
            continue
        s = semi["dice"]["mean"]
        ctrl = by.get("malunet-no-class-only") if k == CLASS_ONLY[report["dataset"]][0] else None
        if ctrl and ctrl["dice"]["mean"] is not None:
            c = ctrl["dice"]["mean"]
            red = by.get(f"malunet-reduced{suffix}")
            gain = f"; over malunet-reduced{suffix} {c - red['dice']['mean']:+.3f}" if red else ""
            out.append(
                f"- Control malunet-no-class-only (SemiSeg-CAW trained without the class-only "
                f"images): {_fmt(ctrl['dice'])} Dice. What the class-only images add to "
                f"SemiSeg-CAW: {s - c:+.3f} Dice; what the auxiliary model adds without them"
                f"{gain or ': (no reduced row)'}."
            )
        for name in (
            [f"malunet-{v}" for v in VARIANTS] if k == CLASS_ONLY[report["dataset"]][0] else []
        ):
            var = by.get(name)
            if var and var["dice"]["mean"] is not None:
                out.append(
                    f"- Variant {name}: {_fmt(var['dice'])} Dice "
                    f"({var['dice']['mean'] - s:+.3f} against malunet-semiseg-caw{suffix})."
                )
        ceiling = by.get("malunet-all-masks") if k == CLASS_ONLY[report["dataset"]][0] else None
        if ceiling and ceiling["dice"]["mean"] is not None:
            out.append(
                f"- Control malunet-all-masks (SemiSeg-CAW given the class-only images' masks "
                f"too): {_fmt(ceiling['dice'])} Dice, the most the class-only images could add "
                f"({ceiling['dice']['mean'] - s:+.3f} above SemiSeg-CAW)."
            )
        alone = by.get(f"classelevate-alone{suffix}")
        if alone and alone["dice"]["mean"] is not None:
            out.append(
                f"- classelevate-alone{suffix}: the stage-1 ClassElevateSeg of the "
                f"malunet-semiseg-caw{suffix} runs tested on its own, {_fmt(alone['dice'])} Dice "
                f"({s - alone['dice']['mean']:+.3f} for the full SemiSeg-CAW over it)."
            )
    shared = sorted({r["row"] for r in report["runs"] if r.get("stage1_from")})
    if shared:
        out.append(
            f"- {', '.join(shared)} reused the stage-1 checkpoint of malunet-semiseg-caw (same "
            "seed and data): they differ from it in stage 2 only, and their fit time "
            "excludes stage 1."
        )
    return out


def plot(report: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["rows"]
    names = [r["row"] for r in rows]
    means = [r["dice"]["mean"] or 0 for r in rows]
    stds = [r["dice"]["std"] or 0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(rows) + 2), 3.6))
    colors = [
        "tab:gray"
        if r["method"] in ("full", "reduced")
        else "tab:orange"
        if r["method"] in ("classelevate-alone", *CONTROLS)
        else "tab:blue"
        for r in rows
    ]
    ax.bar(range(len(rows)), means, yerr=stds, color=colors, capsize=3)
    for i, m in enumerate(means):
        ax.text(i, m + 0.02, f"{m:.3f}", ha="center", fontsize=8)
    for name, (dice, _) in PAPER[report["dataset"]].items():
        if name in names:
            i = names.index(name)
            ax.plot([i - 0.4, i + 0.4], [dice, dice], "r--", lw=1)
    ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test Dice (pooled)")
    ax.set_title(
        f"{report['dataset'].upper()} — budget {report['budget']} "
        f"({report['image_size']} px, {report['epochs']} ep.); red: paper",
        fontsize=9,
    )
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def update_readme() -> None:
    """Regenerate the README results section from every results JSON."""
    parts = [
        START,
        "",
        "## Benchmark results",
        "",
        "Generated by `benchmarks/run.py` from `benchmarks/results/*.json`; do not edit.",
        "Pooled test Dice / IoU of each row (best-on-validation checkpoint, test split).",
        "The paper's splits are not public: compare gaps, not absolute values.",
        "",
    ]
    files = sorted(RESULTS.glob("*.json"))
    reports = [json.loads(f.read_text()) for f in files]
    # Other scripts' results (speed, ...) share the folder: keep this harness's reports.
    reports = [
        r for r in reports if isinstance(r, dict) and r.get("kind") == "semiseg-caw-benchmark"
    ]
    for rep in reports:
        stem = f"{rep['dataset']}-{rep['budget']}"
        parts += [
            f"### {rep['dataset'].upper()}, budget `{rep['budget']}` "
            f"([table](benchmarks/results/{stem}.md))",
            "",
            f"{rep['note']}; commit `{rep['commit']}`; {rep['hardware']['cpu']}, "
            f"{rep['hardware']['cores']} cores, {rep['hardware']['gpu'] or 'no GPU'}.",
            "",
            "| row | class-only | seeds | Dice | IoU | Dice/img | cls AUROC | paper Dice |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rep["rows"]:
            paper = PAPER[rep["dataset"]].get(r["row"])
            parts.append(
                f"| {r['row']} | {r['class_only'] or '–'} | {len(r['seeds'])} | "
                f"{_fmt(r['dice'])} | "
                f"{_fmt(r['iou'])} | {_fmt(r['dice_per_image'])} | "
                f"{_fmt(r['cls_auroc'])} | {f'{paper[0]:.3f}' if paper else '–'} |"
            )
        parts.append("")
        if rep.get("plot"):
            parts += [f"![{stem}]({rep['plot']})", ""]
    if not any(r["budget"] == "full" for r in reports):
        parts += [
            "The `full` budget (the protocol: 256 px, 300 epochs, 3 seeds, every row) has "
            "not been run yet: it needs a GPU (`python benchmarks/run.py --dataset busi "
            "--budget full --parallel 3`).",
            "",
        ]
    parts.append(END)
    section = "\n".join(parts)
    text = README.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    README.write_text(text)


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", choices=sorted(CLASS_ONLY), default="busi")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    p.add_argument("--seeds", type=int, nargs="+", help="default: the budget's")
    p.add_argument(
        "--rows",
        nargs="+",
        help="row name patterns (fnmatch), e.g. 'malunet-*'; default: the budget's",
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores/parallel)")
    p.add_argument("--data-root", help="data set folder (default: the data set config's)")
    p.add_argument("--epochs", type=int, help="override the budget's epochs (both stages)")
    p.add_argument("--work", type=Path, help="run folders (default runs/bench/<dataset>-<budget>)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables")
    p.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    p.add_argument("--list", action="store_true", help="print the selected rows and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_worker":  # internal: one run in its own process
        _worker(Path(argv[1]))
        return {}
    a = parse(argv)
    budget = dict(BUDGETS[a.budget])
    if a.epochs:
        budget["epochs"] = a.epochs
        budget["stage1_epochs"] = a.epochs
    rows = select_rows(
        a.dataset, a.rows or budget["rows"], budget["first_budget_only"] and not a.rows
    )
    seeds = a.seeds if a.seeds is not None else budget["seeds"]
    if a.list:
        for r in rows:
            print(r["name"], r["configs"], r["class_only"])
        return {}
    stem = f"{a.dataset}-{a.budget}"
    work = a.work or REPO / "runs" / "bench" / stem
    jobs = [
        {
            "dataset": a.dataset,
            "row": r,
            "seed": s,
            "budget": budget,
            "data_root": a.data_root,
            "dir": work / r["name"] / f"seed{s}",
        }
        for r in rows
        for s in seeds
    ]
    # Longest first (two-stage rows), so that parallel slots finish together.
    jobs.sort(key=lambda j: j["row"]["method"] in ("full", "reduced"))
    threads = a.threads or max(1, usable_cores() // max(1, a.parallel))
    started = time.time()
    records, failed = [], []

    def go(job: dict) -> dict | None:
        name = f"{job['row']['name']}/seed{job['seed']}"
        if a.report_only:
            f = job["dir"] / "result.json"
            return json.loads(f.read_text()) if f.is_file() else None
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] start {name} -> {job['dir']}", flush=True)
        try:
            rec = run_one(job, threads, a.force)
        except Exception as err:  # keep the other runs going; report the failure
            print(f"[{time.strftime('%H:%M:%S')}] FAILED {name}: {err}", flush=True)
            failed.append(name)
            return None
        print(
            f"[{time.strftime('%H:%M:%S')}] done {name} in {time.time() - t0:.0f} s: "
            f"test Dice {rec['metrics'].get('seg/dice', float('nan')):.4f}",
            flush=True,
        )
        return rec

    with ThreadPoolExecutor(max_workers=max(1, a.parallel)) as pool:
        records = [r for r in pool.map(go, jobs) if r is not None]
    # The table holds every finished run of this data set and budget, not only this
    # invocation's (several invocations may fill one table: other rows, more seeds).
    done = {(r["row"], r["seed"]) for r in records}
    for f in sorted(work.glob("*/seed*/result.json")):
        rec = json.loads(f.read_text())
        if (rec["row"], rec["seed"]) not in done:
            records.append(rec)
            done.add((rec["row"], rec["seed"]))
    known = [r["name"] for r in all_rows(a.dataset)]
    order = [n for n in known if any(r["row"] == n for r in records)]
    seeds = sorted({r["seed"] for r in records}) or seeds
    a.out.mkdir(parents=True, exist_ok=True)
    report = {
        "kind": "semiseg-caw-benchmark",
        "dataset": a.dataset,
        "budget": a.budget,
        "note": budget["note"],
        "image_size": budget["image_size"],
        "epochs": budget["epochs"],
        "stage1_epochs": budget["stage1_epochs"],
        "seeds": seeds,
        "trainer_overrides": budget["trainer"],
        "commit": run_commits(records, a.out / f"{stem}.json"),
        "hardware": machine(),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": time.time() - started,
        "rows": summarise(records, order),
        "runs": records,
        "failed": failed,
        "work_dir": str(work),
        "report_only": a.report_only,
        "paper": PAPER[a.dataset],
    }
    if report["rows"]:
        report["plot"] = plot(report, a.out / f"{stem}.png")
        (a.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
        (a.out / f"{stem}.md").write_text(markdown(report))
        if a.out == RESULTS and not a.no_readme:
            update_readme()
        print((a.out / f"{stem}.md").read_text())
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(1 if report.get("failed") else 0)
