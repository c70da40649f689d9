"""A benchmark table's rows summarised over seeds (mean ± std of each metric and cost), the
number format the tables share, and the note on a table's long schedule."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for protocol.py, however loaded
from protocol import CLS_KEYS, LONG, LONG_STAGE1, SEG_KEYS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def mean_std(values: list[float | None]) -> dict[str, float | None]:
    """Mean, sample std and count of the values that are there (None and NaN left out)."""
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
        commits = sorted({r["commit"] for r in runs if r.get("commit")})
        entry["commits"] = commits + ["?"] * any(not r.get("commit") for r in runs)
        for key, short in METRICS:
            entry[short] = mean_std([r["metrics"].get(key) for r in runs])
        for key in COSTS:
            entry[key] = mean_std([r.get(key) for r in runs])
        rows.append(entry)
    return rows


def fmt_stat(stat: dict, digits: int = 3) -> str:
    """ "0.712 ± 0.010" over several seeds, "0.712" over one, "–" over none."""
    if stat["mean"] is None:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def long_note(report: dict) -> str:
    """ "; -long rows: 128" where the table has long rows."""
    if not any(r["method"] in LONG for r in report["rows"]):
        return ""
    both = any(r["method"] in LONG_STAGE1 for r in report["rows"])
    stage1 = f", stage 1 of -long-both: {report.get('long_stage1_epochs')}" if both else ""
    return f"; -long rows: {report.get('long_epochs')}{stage1}"
