"""Test-time settings on the benchmark's trained runs: flip TTA (``model.init_args.flip_tta``),
keeping the largest lesion (``keep_largest_lesion``), or both.

For every run of ``benchmarks/results/<dataset>-<budget>.json`` (the rows asked for), loads
its best-on-validation checkpoint once and evaluates it four times: on the validation and
the test split, with and without the setting. No training: the weights are the benchmark's
own. Writes ``benchmarks/results/<dataset>-<budget>-<name>.{json,md}`` (name: ``tta``,
``largest`` or ``tta-largest``); in them ``val_tta`` and ``test_tta`` are the numbers with
the setting, whichever it is.

Whether a setting is worth switching on is read from validation (the seed-paired gain per
row); the test columns say what it then gives. Without it, the numbers must reproduce the
benchmark's (its test Dice, and the validation Dice its checkpoint was chosen on): the
table shows the largest difference, as a check that the same model and data were loaded.
Each run's result is kept beside its checkpoints (``settings-<name>.json``), so an
interrupted re-evaluation resumes where it stopped; ``--force`` evaluates again. A table
written before keeps its other rows, and the results of runs whose folders are gone from
this machine (while the benchmark's result of the run is the same), so a call for a few
rows adds them to it.

    python benchmarks/tta.py --dataset busi --budget cpu --rows 'malunet-*' classelevate-alone
    python benchmarks/tta.py --dataset ddti --setting largest
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however loaded
from comparison import favoured  # noqa: E402
from protocol import TEST_TIME_SETTINGS  # noqa: E402
from provenance import commit, machine  # noqa: E402
from summary import RESULTS, mean_std  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = ("dice", "iou", "dice_per_image", "cls_auroc")


def spec_of(record: dict) -> dict:
    """The benchmark worker's spec of a run: its test command's arguments."""
    if record.get("derived_from"):  # a stage 1 tested alone
        return json.loads((REPO / record["derived_from"] / "spec_stage1.json").read_text())
    rundir = (REPO / record["best_checkpoint"]).parents[1]
    return json.loads((rundir / "spec.json").read_text())


def evaluate_run(record: dict, setting: str = "flip") -> dict[str, dict[str, float]]:
    """``{"val": {...}, "val_tta": ..., "test": ..., "test_tta": ...}`` of one run's best
    checkpoint without and with the setting (pooled and per-image Dice, IoU, class AUROC)."""
    from semiseg_caw.cli import main

    ckpt = REPO / record["best_checkpoint"]
    args = [a for a in spec_of(record)["test"] if not a.startswith("--trainer.default_root_dir")]
    # Off for the first pass, whatever the checkpoint trained with (options given win).
    args += [f"--model.init_args.{name}=false" for name in TEST_TIME_SETTINGS[setting].flags]
    out: dict[str, dict[str, float]] = {}
    # A folder of its own for the command's config record: none is kept, and calls running
    # at once do not share one.
    with tempfile.TemporaryDirectory(prefix="semiseg-caw-tta-") as scratch:
        cli = main(["validate", *args, f"--trainer.default_root_dir={scratch}",
                    f"--ckpt_path={ckpt}"])  # fmt: skip
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        for on in (False, True):
            for name in TEST_TIME_SETTINGS[setting].flags:
                model.hparams[name] = on
            suffix = "_tta" if on else ""
            if on:  # the first pass ran inside main(), from the checkpoint
                trainer.validate(model, datamodule=data, verbose=False)
            out["val" + suffix] = _metrics(trainer.callback_metrics, "val")
            trainer.test(model, datamodule=data, verbose=False)
            out["test" + suffix] = _metrics(trainer.callback_metrics, "test")
    return out


def cached_or_evaluated(record: dict, setting: str, code: str, force: bool) -> tuple[dict, bool]:
    """``evaluate_run``'s result, kept beside the checkpoint's folder so that an interrupted
    re-evaluation resumes where it stopped; reused while the checkpoint file is the same.
    Also whether it was evaluated now."""
    ckpt = REPO / record["best_checkpoint"]
    cache = ckpt.parents[1] / f"settings-{TEST_TIME_SETTINGS[setting].part}.json"
    stamp = {"checkpoint": record["best_checkpoint"], "mtime_ns": ckpt.stat().st_mtime_ns}
    if cache.is_file() and not force:
        kept = json.loads(cache.read_text())
        # The same file, whichever checkout (e.g. a git worktree sharing runs/) evaluated it.
        path = str(kept.get("checkpoint"))
        same = path == stamp["checkpoint"] or path.endswith(f"/{stamp['checkpoint']}")
        if same and kept.get("mtime_ns") == stamp["mtime_ns"]:
            return kept["result"], False
    result = {**evaluate_run(record, setting), "commit": code}
    cache.write_text(json.dumps({**stamp, "result": result}, indent=1))
    return result, True


def earlier_results(path: Path, bench: dict) -> dict[tuple[str, int], dict]:
    """The runs of an earlier table at ``path`` that are still the benchmark's (the same
    test Dice: not retrained since), by (row, seed). A call evaluates the rows asked for and
    keeps these for the others, and for runs whose folders are gone from this machine."""
    if not path.is_file():
        return {}
    now = {(r["row"], r["seed"]): r["metrics"]["seg/dice"] for r in bench["runs"]}
    kept = {}
    for run in json.loads(path.read_text())["runs"]:
        key = (run["row"], run["seed"])
        if key in now and abs(run["test"]["dice"] - run["test_diff"] - now[key]) < 1e-9:
            kept[key] = run
    return kept


def _metrics(logged: dict, stage: str) -> dict[str, float]:
    return {k: float(logged[f"{stage}/{k}"]) for k in KEYS if f"{stage}/{k}" in logged}


def _mean_std(values: list[float]) -> list[float]:
    stats = mean_std(values)  # the benchmark tables' mean and sample std
    return [stats["mean"], stats["std"]]


def summarise(runs: list[dict]) -> list[dict]:
    """Per row: mean ± std of each split without and with the setting, and the seed-paired
    gains."""
    rows = []
    for name in dict.fromkeys(r["row"] for r in runs):
        mine = [r for r in runs if r["row"] == name]
        row: dict[str, Any] = {"row": name, "seeds": [r["seed"] for r in mine]}
        for split in ("val", "val_tta", "test", "test_tta"):
            row[split] = {
                k: _mean_std([r[split][k] for r in mine])
                for k in KEYS
                if all(k in r[split] for r in mine)
            }
        for split in ("val", "test"):
            row[f"{split}_gain"] = _mean_std(
                [r[f"{split}_tta"]["dice"] - r[split]["dice"] for r in mine]
            )
        row["check"] = max(max(abs(r["val_diff"]), abs(r["test_diff"])) for r in mine)
        rows.append(row)
    return rows


# What each setting does, for the tables.
DOES = {
    "flip": "the mean over the image and its left-right mirror",
    "largest": "only the largest predicted region of each mask kept",
    "flip+largest": "the mirror mean, then its largest region",
}


def _evaluated_now(report: dict) -> str:
    """How many runs the call whose wall time is given evaluated (the others' results were
    kept beside their checkpoints by earlier calls)."""
    done, total = report.get("evaluated"), len(report["runs"])
    if done is None or done == total:
        return ""
    kept = "the others' results were" if done else "every result was"
    return (
        f", evaluating {done} of {total} runs ({kept} kept from earlier calls, at the commits "
        "listed)"
    )


def markdown(report: dict) -> str:
    hw = report["hardware"]
    setting = report.get("setting", "flip")  # tables written before settings were named
    label = TEST_TIME_SETTINGS[setting].label
    lines = [
        f"# {label[0].upper() + label[1:]} on {report['dataset'].upper()}, budget "
        f"`{report['budget']}`",
        "",
        f"Written by `benchmarks/tta.py` on {report['finished']}; commit `{report['commit']}`; "
        f"{hw['cpu']}, {hw['cores']} cores, {hw['gpu'] or 'no GPU'}; {report['wall_s']:.0f} s"
        + _evaluated_now(report)
        + ". "
        f"The best-on-validation checkpoints of `{report['source']}` (no retraining), each "
        f"evaluated with and without {label} ({DOES[setting]}).",
        f"Pooled Dice, mean ± std over seeds; gain: with {label} minus without, paired by seed. "
        f"Check: the largest difference, without {label}, from the benchmark's own validation "
        "and test Dice (the same model and data).",
        "",
        f"| row | seeds | val Dice | val Dice, {label} | val gain | test Dice | "
        f"test Dice, {label} | test gain | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        f = "{:.3f} ± {:.3f}".format
        g = "{:+.4f} ± {:.4f}".format
        lines.append(
            f"| {r['row']} | {len(r['seeds'])} | {f(*r['val']['dice'])} | "
            f"{f(*r['val_tta']['dice'])} | {g(*r['val_gain'])} | {f(*r['test']['dice'])} | "
            f"{f(*r['test_tta']['dice'])} | {g(*r['test_gain'])} | {r['check']:.1e} |"
        )
    up = favoured(report["rows"])
    lines += [
        "",
        f"Validation favours {label} on {len(up)} of {len(report['rows'])} rows"
        + (f" ({', '.join(up)})." if up else "."),
        "",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--budget", default="cpu")
    p.add_argument("--rows", nargs="+", default=["*"], help="row names or glob patterns")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--setting", choices=list(TEST_TIME_SETTINGS), default="flip")
    p.add_argument(
        "--source", type=Path, default=None, help="default: results/<dataset>-<budget>.json"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--force", action="store_true", help="evaluate runs evaluated before again")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    source = args.source or RESULTS / f"{args.dataset}-{args.budget}.json"
    bench = json.loads(source.read_text())
    chosen = [
        r
        for r in bench["runs"]
        if any(fnmatch.fnmatchcase(r["row"], p) for p in args.rows)
        and (args.seeds is None or r["seed"] in args.seeds)
    ]
    if not chosen:
        raise SystemExit(f"no run of {source} matches rows {args.rows} and seeds {args.seeds}")
    order = {row["row"]: i for i, row in enumerate(bench.get("rows", []))}  # the table's
    chosen.sort(key=lambda r: (order.get(r["row"], len(order)), r["seed"]))
    stem = args.out / f"{source.stem}-{TEST_TIME_SETTINGS[args.setting].part}"  # its table's
    earlier = earlier_results(stem.with_suffix(".json"), bench)
    started, runs, evaluated = time.perf_counter(), [], 0
    code = commit("semiseg_caw", "benchmarks/tta.py")
    for record in chosen:
        key = (record["row"], record["seed"])
        if (REPO / record["best_checkpoint"]).is_file():
            result, fresh = cached_or_evaluated(record, args.setting, code, args.force)
        elif key in earlier:  # its run folder is gone from this machine; its result is not
            result, fresh = earlier.pop(key), False
        else:
            raise SystemExit(
                f"{record['row']} seed {record['seed']}: {record['best_checkpoint']} is gone "
                f"and {stem.name}.json holds no earlier result of it"
            )
        earlier.pop(key, None)
        evaluated += fresh
        result.update(row=record["row"], seed=record["seed"])
        result["val_diff"] = result["val"]["dice"] - record["val_dice"]
        result["test_diff"] = result["test"]["dice"] - record["metrics"]["seg/dice"]
        runs.append(result)
        print(
            f"{record['row']} seed {record['seed']}: val {result['val']['dice']:.4f} -> "
            f"{result['val_tta']['dice']:.4f}, test {result['test']['dice']:.4f} -> "
            f"{result['test_tta']['dice']:.4f}",
            flush=True,
        )
    runs += earlier.values()  # rows not asked for this time stay in the table
    runs.sort(key=lambda r: (order.get(r["row"], len(order)), r["seed"]))
    report = {
        "kind": "semiseg-caw-tta",
        "setting": args.setting,
        "dataset": args.dataset,
        "budget": args.budget,
        "source": str(source.relative_to(REPO) if source.is_relative_to(REPO) else source),
        "commit": ", ".join(sorted({r["commit"] for r in runs})),
        "hardware": machine(),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": time.perf_counter() - started,
        "evaluated": evaluated,  # the other runs' results were kept from earlier calls
        "rows": summarise(runs),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {stem}.md")
    return report


if __name__ == "__main__":
    main()
