"""Benchmark harness of the protocol (../shared/docs/PROTOCOL.md): train every row, test the best
checkpoint on the test split, write the tables.

Each run is its own subprocess (``worker.py``): ``semiseg-caw fit`` (stage 1 then stage 2
for SemiSeg-CAW rows) with a timing callback, then ``semiseg-caw test`` of the
best-on-validation checkpoint (``checkpoints/best-epoch=NNN.ckpt``; chosen on val/dice only)
on the test split. Runs already finished (their ``result.json`` exists)
are reused unless ``--force``; so an interrupted benchmark resumes where it stopped.

    python benchmarks/run.py --dataset busi --budget smoke            # minutes, proves the pipeline
    python benchmarks/run.py --dataset busi --budget cpu              # ~1 h on 2 CPU cores
    python benchmarks/run.py --dataset ddti --budget full --parallel 3   # the protocol, for a GPU
    python benchmarks/run.py --dataset busi --budget full --rows 'malunet-*' --seeds 0 1 2
    python benchmarks/run.py --dataset busi --budget cpu --report-only   # rebuild tables only
    python benchmarks/run.py --dataset busi --budget cpu --rows 'malunet-*long*'  # compute controls
    python benchmarks/run.py --dataset busi --budget gpu --rows 'malunet-*-long' --long-epochs 300

On a CPU shared with other jobs give ``--threads 1``: torch threads spinning on an
oversubscribed CPU made epochs 5-10x slower here.

Writes ``benchmarks/results/<dataset>-<budget>.{json,md,png}`` and regenerates the results
section of README.md (between ``<!-- results:start -->`` and ``<!-- results:end -->``) from
every ``benchmarks/results/*.json``. Numbers are never edited by hand.

The rows, budgets and paper figures are in ``protocol.py``; the tables in ``report.py``
(with ``summary.py``, ``seed_gaps.py``, ``comparison.py``, ``controls.py``, ``plots.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however loaded
from plots import plot, plot_labels  # noqa: E402
from protocol import (  # noqa: E402
    BASELINES,
    BUDGETS,
    CLASS_ONLY,
    LONG,
    LONG_STAGE1,
    PAPER,
    all_rows,
    select_rows,
    stage1_source,
    suffix,
)
from provenance import commit, machine, package_versions, usable_cores  # noqa: E402
from report import markdown, update_readme  # noqa: E402
from summary import RESULTS, summarise  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
# Changes here make the commit "-dirty" (the table modules only tabulate: they change no run).
DIRTY_PATHS = [
    "semiseg_caw",
    "configs",
    "benchmarks/run.py",
    "benchmarks/worker.py",
    "benchmarks/protocol.py",
]


# ----------------------------------------------------------------------------- running


def run_env(threads: int) -> dict[str, str]:
    """The environment of a run's process: offline, the checkout importable, ``threads``
    threads for torch's CPU kernels."""
    env = dict(os.environ, **ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_args(dataset: str, row: dict, budget: dict, data_root: str | None) -> list[str]:
    """Config and override arguments shared by a row's fit and test commands."""
    # A row's settings: config files, and options ("--...") that differ from them.
    settings = [c if c.startswith("--") else f"--config={c}" for c in row["configs"]]
    args = [f"--config=configs/{dataset}.yaml", *settings]
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


# Speed levers a run may train with (run.py's options of the same names): the fit option
# each adds. The test always runs without them; the tables say which runs used which.
SPEED_LEVERS = {
    "cuda_graphs": "--model.init_args.cuda_graphs=true",  # the same steps, replayed
    "augment_on_device": "--data.augment_on_device=true",  # the same augmentations, batched
    "bf16": "--trainer.precision=bf16-mixed",  # both stages in mixed precision
}


def shared_stage1(job: dict) -> Path | None:
    """The best stage-1 checkpoint of the finished run this job may reuse (``stage1_source``)."""
    source = stage1_source(job["row"], job["dataset"])
    if source is None:
        return None
    rundir = job["dir"].parents[1] / source / f"seed{job['seed']}"
    if not (rundir / "result.json").is_file():
        return None
    best = sorted((rundir / "stage1" / "checkpoints").glob("best-epoch=*.ckpt"))
    return best[-1] if best else None


def source_stage1_epochs(ckpt: Path, default: int) -> int:
    """The epochs of the reused stage 1 ``ckpt``: its run's spec's (``default`` if unknown)."""
    spec = ckpt.parents[2] / "spec.json"
    return json.loads(spec.read_text()).get("stage1_epochs", default) if spec.is_file() else default


def _run_worker(rundir: Path, spec: dict, threads: int, name: str) -> None:
    spec_file = rundir / name
    spec_file.write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, "-m", "benchmarks.worker", str(spec_file)]
    with open(rundir / "log.txt", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        done = subprocess.run(
            cmd, cwd=REPO, env=run_env(threads), stdout=log, stderr=subprocess.STDOUT
        )
    if done.returncode:
        raise RuntimeError(f"run failed ({done.returncode}); see {rundir / 'log.txt'}")


def best_val_dice(rundir: Path) -> float | None:
    """The best validation Dice of a run's stage-2 fit (its CSV log): what the checkpoint
    was chosen on, and the number to choose settings by (never the test split)."""
    best = None
    for log in rundir.glob("version_*/metrics.csv"):
        with open(log) as f:
            for line in csv.DictReader(f):
                if line.get("val/dice"):
                    value = float(line["val/dice"])
                    best = value if best is None else max(best, value)
    return best


def load_record(path: Path) -> dict:
    """A run's ``result.json``; its best validation Dice added for runs recorded before it was."""
    rec = json.loads(path.read_text())
    if "val_dice" not in rec:
        logs = path.parent
        if rec.get("derived_from"):  # the stage 1 of another run, tested alone
            logs = (REPO / rec["derived_from"]) / "stage1" / "logs"
        rec["val_dice"] = best_val_dice(logs)
    return rec


def _record(job: dict, row: dict, tested: dict, started_at: str, timing: dict) -> dict:
    best = Path(tested["best_checkpoint"])
    record = {
        "row": row["name"],
        "method": row["method"],
        "backbone": row["backbone"],
        "class_only": row["class_only"] if row["method"] not in ("full", "full-long") else 0,
        "seed": job["seed"],
        "commit": started_at,
        "best_epoch": int(re.search(r"epoch=(\d+)", best.name).group(1)),
        "epochs": epochs_of(row, job["budget"]),
        "train_s_per_epoch": statistics.mean(timing["train_s"]) if timing.get("train_s") else None,
        "epoch_s": statistics.mean(timing["epoch_s"]) if timing.get("epoch_s") else None,
        "stage1_epoch_s": timing.get("stage1_epoch_s"),
        "val_dice": best_val_dice(job["dir"]),
        "hardware": run_machine(),
        "packages": package_versions(),
        **tested,
    }
    if best.is_relative_to(REPO):
        record["best_checkpoint"] = str(best.relative_to(REPO))
    return record


def epochs_of(row: dict, budget: dict) -> int:
    """The epochs a row trains for: the budget's, or its ``long_epochs`` for a long row."""
    return budget["long_epochs"] if row.get("long") else budget["epochs"]


def stage1_epochs_of(row: dict, budget: dict) -> int | None:
    """A two-stage row's stage-1 epochs: the budget's, or its ``long_stage1_epochs``."""
    return budget["long_stage1_epochs"] if row.get("long_stage1") else budget["stage1_epochs"]


def worker_spec(job: dict, stage1: Path | None) -> dict:
    """The worker's spec of a run: its fit and test arguments; ``stage1`` the checkpoint of
    a stage 1 it reuses (None: it trains its own, if it has one)."""
    rundir, budget, row = job["dir"], job["budget"], job["row"]
    common = run_args(job["dataset"], row, budget, job["data_root"])
    fit = [
        *common,
        f"--seed_everything={job['seed']}",
        f"--trainer.max_epochs={epochs_of(row, budget)}",
        f"--trainer.default_root_dir={rundir}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={rundir}",
        *budget["trainer"],
    ]
    fit += [option for key, option in SPEED_LEVERS.items() if job.get(key)]
    if stage1 is not None:
        fit.append(f"--model.init_args.stage1_checkpoint={stage1}")
    elif row["method"] not in BASELINES and stage1_epochs_of(row, budget):
        fit.append(f"--model.init_args.stage1_epochs={stage1_epochs_of(row, budget)}")
    test = [*common, f"--trainer.default_root_dir={rundir / 'test'}", "--trainer.logger=false"]
    return {
        "dir": str(rundir),
        "fit": fit,
        "test": test,
        "stage1_epochs": stage1_epochs_of(row, budget) or budget["epochs"],
    }


# Fit options that say where a run lies, not how it trains (they differ between checkouts
# and machines); and how it gets its stage 1 (trained, or reused from a run of the same
# settings), compared through the spec's stage1_epochs instead.
WHERE = (
    "--trainer.default_root_dir=",
    "--trainer.logger.init_args.save_dir=",
    "--data.root=",
    "--model.init_args.stage1_checkpoint=",
    "--model.init_args.stage1_epochs=",
)


def fit_settings(spec: dict) -> list[str]:
    """How a spec's run trains: its fit arguments but those in WHERE, and its stage-1 epochs."""
    return [a for a in spec["fit"] if not a.startswith(WHERE)] + [
        f"stage 1: {spec.get('stage1_epochs')} epochs"
    ]


def reuse_conflict(job: dict) -> str | None:
    """Why the run already in ``job["dir"]`` (finished, or to resume) cannot be reused for
    ``job``: it was fitted with other settings (e.g. another --long-epochs, which the folder
    name does not hold). None when it can, or when there is none."""
    spec_file = job["dir"] / "spec.json"
    if not spec_file.is_file():
        return None
    before, now = (
        fit_settings(json.loads(spec_file.read_text())),
        fit_settings(worker_spec(job, None)),
    )
    if before == now:
        return None
    changed = [f"-{a}" for a in before if a not in now] + [f"+{a}" for a in now if a not in before]
    return f"{job['dir']} was fitted with other settings ({', '.join(changed) or 'their order'})"


def refuse_reuse(conflicts: list[str]) -> None:
    if conflicts:
        raise SystemExit(
            "\n".join(conflicts) + "\ngive --force to train them again, or another --work"
        )


def run_one(job: dict, threads: int, force: bool) -> dict:
    """Fit (unless done) and test one row and seed in a subprocess; returns its record."""
    rundir: Path = job["dir"]
    result_file = rundir / "result.json"
    if not force:
        refuse_reuse([c] if (c := reuse_conflict(job)) else [])
    if result_file.is_file() and not force:
        test_stage1(job, threads)
        return json.loads(result_file.read_text())  # as test_stage1 may have added to it
    if force and rundir.exists():
        import shutil

        shutil.rmtree(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    started_at = commit(*DIRTY_PATHS)  # the code the run used (the tree may change while it runs)
    row = job["row"]
    stage1 = shared_stage1(job)
    if stage1 is None and (source := stage1_source(row, job["dataset"])):
        print(f"{row['name']}: no finished {source} run to share stage 1 with: trains its own")
    spec = worker_spec(job, stage1)
    _run_worker(rundir, spec, threads, "spec.json")
    timing_file = rundir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    tested = json.loads((rundir / "test.json").read_text())
    record = _record(job, row, tested, started_at, timing)
    record.update({key: bool(job.get(key)) for key in SPEED_LEVERS})
    if stage1 is not None:
        record["stage1_from"] = str(
            stage1.relative_to(REPO) if stage1.is_relative_to(REPO) else stage1
        )
        record["stage1_epochs"] = source_stage1_epochs(stage1, spec["stage1_epochs"])
    elif (rundir / "stage1").is_dir():  # trained its own
        record["stage1_epochs"] = spec["stage1_epochs"]
    result_file.write_text(json.dumps(record, indent=1))
    drop_resume_checkpoints(rundir)
    test_stage1(job, threads)
    return json.loads(result_file.read_text())


def drop_resume_checkpoints(rundir: Path) -> list[Path]:
    """Delete a recorded run's ``last.ckpt`` files (stage 1's and stage 2's); returns them.

    They exist only to resume an interrupted fit. At ~150 MB each for SemiSeg-CAW they filled
    the disk after a few hundred runs. The best-on-validation checkpoints stay: the record's
    numbers come from them, and later rows reuse stage 1's.
    """
    if not (rundir / "result.json").is_file():
        return []  # not finished: last.ckpt is what resumes it
    dropped = sorted(rundir.glob("checkpoints/last.ckpt")) + sorted(
        rundir.glob("stage1/checkpoints/last.ckpt")
    )
    for ckpt in dropped:
        ckpt.unlink()
    return dropped


def test_stage1(job: dict, threads: int) -> None:
    """For a run that trained its own stage 1, test that ClassElevateSeg alone: for
    malunet-semiseg-caw, filed as the ``classelevate-alone`` row of the same seed; for a
    stage-1 variant (``stage1-*``) or a row with a long stage 1, kept in the run's record
    as ``stage1_alone``."""
    row, rundir = job["row"], job["dir"]
    variant = row["method"].startswith("stage1-") or row.get("long_stage1")
    if (
        not variant
        and row["name"] != f"malunet-semiseg-caw{suffix(job['dataset'], row['class_only'])}"
    ):
        return
    if not list((rundir / "stage1" / "checkpoints").glob("best-epoch=*.ckpt")):
        return
    derived = next(
        r
        for r in all_rows(job["dataset"])
        if r.get("derived") and r["class_only"] == row["class_only"]
    )
    out = rundir.parents[1] / derived["name"] / f"seed{job['seed']}" / "result.json"
    parent = json.loads((rundir / "result.json").read_text())
    if (out.is_file() and not variant) or (variant and "stage1_alone" in parent):
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
    if variant:
        parent["stage1_alone"] = tested["metrics"]
        (rundir / "result.json").write_text(json.dumps(parent, indent=1))
        return
    timing_file = rundir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    record = _record(job, derived, tested, parent.get("commit"), {})
    record["epochs"] = stage1_epochs_of(row, job["budget"]) or job["budget"]["epochs"]  # stage 1's
    record["stage1_epoch_s"] = timing.get("stage1_epoch_s")
    record["val_dice"] = best_val_dice(rundir / "stage1" / "logs")  # stage 1's, not stage 2's
    record.update({key: parent.get(key, False) for key in SPEED_LEVERS})
    record["derived_from"] = str(
        rundir.relative_to(REPO) if rundir.is_relative_to(REPO) else rundir
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


def gather_records(records: list[dict], work: Path, previous: dict) -> list[dict]:
    """Every finished run of a table, not only this invocation's (several invocations fill
    one table: other rows, more seeds): this invocation's runs, then the others in ``work``,
    then those recorded in the previous report but absent here (a fresh checkout has no
    runs folder), so that adding rows never drops the results it had. One run per row and
    seed, the newest source first. A run recorded before runs named their machine is
    given the previous report's (the machine that table said its runs ran on).
    ``previous``: the table's previous report ({} for none)."""
    found = list(records)
    done = {(r["row"], r["seed"]) for r in found}
    earlier = [load_record(f) for f in sorted(work.glob("*/seed*/result.json"))]
    earlier += previous.get("runs", [])
    for rec in earlier:
        if (rec["row"], rec["seed"]) not in done:
            found.append(rec)
            done.add((rec["row"], rec["seed"]))
    for rec in found:
        if not rec.get("hardware") and previous.get("hardware"):
            rec["hardware"] = {k: previous["hardware"].get(k) for k in MACHINE_KEYS}
    return found


MACHINE_KEYS = ("cpu", "cores", "gpu", "torch")  # what tells machines apart (not their load)


def run_machine() -> dict:
    """The machine a run ran on, as its record keeps it."""
    m = machine()
    return {k: m[k] for k in MACHINE_KEYS}


def machines(records: list[dict]) -> list[dict]:
    """The machines a table's runs ran on, each with its rows, most runs first."""
    by: dict[tuple, dict] = {}
    for rec in records:
        hw = rec.get("hardware")
        if not hw:
            continue
        key = tuple(hw.get(k) for k in MACHINE_KEYS)
        entry = by.setdefault(key, {"hardware": hw, "runs": 0, "rows": set()})
        entry["runs"] += 1
        entry["rows"].add(rec["row"])
    out = sorted(by.values(), key=lambda e: -e["runs"])
    return [{**e, "rows": sorted(e["rows"])} for e in out]


# ----------------------------------------------------------------------------- schedule

# The -long rows' schedule, each as its report key, the record's field and the rows it is of.
LONG_SCHEDULE = (
    ("long_epochs", "epochs", LONG),
    ("long_stage1_epochs", "stage1_epochs", LONG_STAGE1),
)


def long_schedule(records: list[dict], given: dict, fallback: dict) -> dict:
    """The epochs a table's -long rows trained (and their stage 1's): those their records
    hold, which must agree with each other and with ``given`` (the options' values, None
    where not given); else ``given``'s, else ``fallback``'s (for runs recorded before their
    records held them)."""
    out = {}
    for key, field, methods in LONG_SCHEDULE:
        found = sorted({r[field] for r in records if r["method"] in methods and r.get(field)})
        option = "--" + key.replace("_", "-")
        if len(found) > 1:
            raise SystemExit(
                f"this table's -long runs trained {', '.join(map(str, found))} epochs ({field}): "
                "one table holds one schedule; keep the others apart (--work and --out)"
            )
        if found and given.get(key) and given[key] != found[0]:
            raise SystemExit(
                f"{option} {given[key]}, but this table's -long runs trained {found[0]} "
                f"epochs ({field}): give {found[0]}, or keep the others apart (--work and --out)"
            )
        out[key] = found[0] if found else given.get(key) or fallback.get(key)
    return out


def job_order(jobs: list[dict]) -> list[dict]:
    """Rows that share another's stage 1 after every row that trains its own (so that their
    source has started before them: ``go`` waits for it); within each, the longest first
    (two-stage rows), so that parallel slots finish together."""
    return sorted(
        jobs,
        key=lambda j: (
            stage1_source(j["row"], j["dataset"]) is not None,
            j["row"]["method"] in BASELINES,
        ),
    )


# ----------------------------------------------------------------------------- provenance


def run_commits(records: list[dict], previous: dict) -> str:
    """The commit(s) the runs used; for runs that did not record one, the commit in the
    previous report of the same table, else the commit now."""
    found = sorted({r["commit"] for r in records if r.get("commit")})
    if any(not r.get("commit") for r in records):  # theirs is only in the previous report
        old = previous.get("commit") or ""
        found = sorted({*found, *(c for c in old.split(", ") if c)})
    return ", ".join(found) or f"{commit(*DIRTY_PATHS)} (at report time)"


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
        help="row name patterns (fnmatch), e.g. 'malunet-*'; a -long row only where the pattern "
        "says 'long' ('*topk*long*'); default: the budget's",
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores/parallel)")
    p.add_argument("--data-root", help="data set folder (default: the data set config's)")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="train with model.cuda_graphs (a speed lever; the tables say which runs used it)",
    )
    p.add_argument(
        "--augment-on-device",
        action="store_true",
        help="train with data.augment_on_device (a speed lever; the tables say which runs used it)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="train with trainer.precision bf16-mixed, test in float32 (a speed lever; the "
        "tables say which runs used it)",
    )
    p.add_argument("--epochs", type=int, help="override the budget's epochs (both stages)")
    p.add_argument("--long-epochs", type=int, help="the -long rows' epochs (default: budget's)")
    p.add_argument(
        "--long-stage1-epochs", type=int, help="the -long-both rows' stage 1 (default: budget's)"
    )
    p.add_argument("--work", type=Path, help="run folders (default runs/bench/<dataset>-<budget>)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables")
    p.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    p.add_argument("--list", action="store_true", help="print the selected rows and exit")
    return p.parse_args(argv)


def table_stem(dataset: str, budget: str, epochs: int | None) -> str:
    """The name of a table's files (and run folders): ``<dataset>-<budget>``, and the
    epochs where ``--epochs`` changes the budget's schedule, so that runs of another length
    never fill, or are taken for, the budget's own."""
    default = BUDGETS[budget]
    if epochs is None or epochs == default["epochs"] == default["stage1_epochs"]:
        return f"{dataset}-{budget}"
    return f"{dataset}-{budget}-{epochs}ep"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    budget = dict(BUDGETS[a.budget])
    if a.epochs:
        budget["epochs"] = a.epochs
        budget["stage1_epochs"] = a.epochs
        budget["note"] += f"; run with --epochs {a.epochs}: {a.epochs} epochs in each stage"
    budget["long_epochs"] = a.long_epochs or budget.get("long_epochs")
    budget["long_stage1_epochs"] = a.long_stage1_epochs or budget.get("long_stage1_epochs")
    rows = select_rows(
        a.dataset,
        a.rows or budget["rows"],
        budget["first_budget_only"] and not a.rows,
        budget.get("long_epochs"),
    )
    if any(r.get("long_stage1") for r in rows) and not budget["long_stage1_epochs"]:
        raise SystemExit("the -long-both rows need --long-stage1-epochs under this budget")
    seeds = a.seeds if a.seeds is not None else budget["seeds"]
    if a.list:
        for r in rows:
            print(r["name"], r["configs"], r["class_only"])
        return {}
    stem = table_stem(a.dataset, a.budget, a.epochs)
    work = a.work or REPO / "runs" / "bench" / stem
    previous_file = a.out / f"{stem}.json"  # this table's last report: its runs are kept
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    jobs = [
        {
            "dataset": a.dataset,
            "row": r,
            "seed": s,
            "budget": budget,
            "data_root": a.data_root,
            "dir": work / r["name"] / f"seed{s}",
            **{key: getattr(a, key) for key in SPEED_LEVERS},
        }
        for r in rows
        for s in seeds
    ]
    # A table describes the runs it holds (a rebuilt one too): their -long schedule, which
    # new runs must share, and the machine they ran on, which may not be this one.
    given = {key: getattr(a, key) for key, _, _ in LONG_SCHEDULE}
    fallback = {key: previous.get(key) or budget.get(key) for key, _, _ in LONG_SCHEDULE}
    if not a.report_only:
        planned = {(j["row"]["name"], j["seed"]) for j in jobs}
        kept = [
            r
            for r in gather_records([], work, previous)
            if not (a.force and (r["row"], r["seed"]) in planned)  # retrained
        ]
        # The schedule the new -long runs get (the budget's unless given) must be the table's.
        new = dict(given)
        if any(r.get("long") for r in rows):
            new["long_epochs"] = budget["long_epochs"]
        if any(r.get("long_stage1") for r in rows):
            new["long_stage1_epochs"] = budget["long_stage1_epochs"]
        long_schedule(kept, new, fallback)
        if not a.force:
            refuse_reuse([c for j in jobs if (c := reuse_conflict(j))])
    jobs = job_order(jobs)
    threads = a.threads or max(1, usable_cores() // max(1, a.parallel))
    started = time.time()
    records, failed = [], []
    finished = {(j["row"]["name"], j["seed"]): threading.Event() for j in jobs}

    def go(job: dict) -> dict | None:
        try:
            return attempt(job)
        finally:
            finished[job["row"]["name"], job["seed"]].set()

    def attempt(job: dict) -> dict | None:
        name = f"{job['row']['name']}/seed{job['seed']}"
        if a.report_only:
            f = job["dir"] / "result.json"
            return load_record(f) if f.is_file() else None
        source = finished.get((stage1_source(job["row"], a.dataset), job["seed"]))
        if source is not None:  # its stage 1 comes from a run of this call: wait for it
            source.wait()
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
    records = gather_records(records, work, previous)
    budget.update(long_schedule(records, given, fallback))
    known = [r["name"] for r in all_rows(a.dataset)]
    order = [n for n in known if any(r["row"] == n for r in records)]
    seeds = sorted({r["seed"] for r in records}) or seeds
    a.out.mkdir(parents=True, exist_ok=True)
    report = {
        "kind": "semiseg-caw-benchmark",
        "dataset": a.dataset,
        "budget": a.budget,
        "stem": stem,
        "note": budget["note"],
        "image_size": budget["image_size"],
        "epochs": budget["epochs"],
        "stage1_epochs": budget["stage1_epochs"],
        "long_epochs": budget.get("long_epochs"),
        "long_stage1_epochs": budget.get("long_stage1_epochs"),
        "seeds": seeds,
        "trainer_overrides": budget["trainer"],
        "commit": run_commits(records, previous),
        "hardware": (a.report_only and previous.get("hardware")) or machine(),
        "machines": machines(records),
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
        report["plot_labels"] = plot_labels(report, a.out / f"{stem}-labels.png")
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
