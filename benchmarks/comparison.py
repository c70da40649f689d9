"""The closing section of a benchmark table: the paper's figures beside ours, each
SemiSeg-CAW row against the bar (above reduced, level with full), the setting validation
picks, cautions, and what the test-time settings found."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however loaded
from controls import controls  # noqa: E402
from protocol import (  # noqa: E402
    ABLATIONS,
    CLASS_ONLY,
    LONG,
    PAPER,
    TEST_TIME_SETTINGS,
    VARIANTS,
    suffix,
)
from seed_gaps import bar_gap, fit_minutes, gap, paired  # noqa: E402
from summary import RESULTS, fmt_stat, long_note  # noqa: E402


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
            f"| {name} | {fmt_stat(r['dice']) if r else 'not run'} | "
            f"{fmt_stat(r['iou']) if r else 'not run'} | {dice:.3f} | {iou:.3f} |"
        )
    out.append("")
    out += bar_lines(report, by)
    stalled = [
        r["row"]
        for r in report["rows"]
        if r["best_epoch"]["mean"] is not None
        and r["best_epoch"]["mean"] >= epochs_of(report, r) - 1
        and epochs_of(report, r) < 100
    ]
    if stalled:
        alone = any(by[name]["method"] == "classelevate-alone" for name in stalled)
        stage1 = f"; stage 1 alone: {report['stage1_epochs'] or report['epochs']}" if alone else ""
        out.append(
            f"- Caution: the best validation epoch of {', '.join(stalled)} is the last "
            f"one ({report['epochs']} epochs{long_note(report)}{stage1}): still improving "
            "when stopped."
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
            "control rows below separate the two"
            + (
                "; the -long rows give the baselines as much training time (the lines on "
                "them above)."
                if long_note(report)
                else "."
            )
        )
    out += controls(report, by)
    out += tta_lines(report.get("stem", f"{ds}-{report['budget']}"))
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


def epochs_of(report: dict, row: dict) -> int:
    """The epochs a table row trained for: the budget's, its long_epochs for a long row, or
    stage 1's for a stage 1 tested alone."""
    if row["method"] in LONG:
        return report.get("long_epochs") or 0
    if row["method"] == "classelevate-alone":
        return report["stage1_epochs"] or report["epochs"]
    return report["epochs"]


def bar_lines(report: dict, by: dict[str, dict]) -> list[str]:
    """SemiSeg-CAW of each backbone and label budget against the bar, and the setting that
    validation picks with where it stands."""
    ds = report["dataset"]
    out = []
    for bb in ("malunet", "unext"):
        for k in CLASS_ONLY[ds]:
            sfx = suffix(ds, k)
            semi = f"{bb}-semiseg-caw{sfx}"
            if parts := against_bar(report, by, semi, f"{bb}-reduced{sfx}", f"{bb}-full"):
                out.append(f"- {semi}: " + "; ".join(parts) + ".")
            if k == CLASS_ONLY[ds][0]:
                out += against_long(report, by, semi, bb, sfx)
        out += chosen_on_validation(report, by, bb)
    return out


def against_long(report: dict, by: dict[str, dict], semi: str, bb: str, sfx: str) -> list[str]:
    """SemiSeg-CAW, its long frozen-aux-cached variants and its long-both aux-dropout rows
    against the baselines trained ``long_epochs``, with the fit minutes of each: the bar once
    no baseline is short of training."""
    long = (f"{bb}-reduced{sfx}-long", f"{bb}-full-long")
    if not any(name in by for name in long):
        return []
    out = []
    both = [f"{bb}-{m}-long-both" for m in ("frozen-aux-cached", "aux-dropout", "aux-dropout-0.75")]
    for row in (semi, f"{bb}-frozen-aux-cached-long", *both):
        if parts := against_bar(report, by, row, *long):
            minutes = {name: fit_minutes(report, name) for name in (row, *long)}
            times = ", ".join(f"{n} {m:.1f}" for n, m in minutes.items() if m)
            out.append(
                f"- {row} against the baselines trained {report['long_epochs']} epochs (fit "
                f"minutes, median over runs, stage 1 included: {times}): " + "; ".join(parts) + "."
            )
    return out


def against_bar(report: dict, by: dict[str, dict], row: str, reduced: str, full: str) -> list[str]:
    """How ``row`` stands against the bar: above the ``reduced`` row, level with ``full``;
    each decided on the Dice gap as printed (see ``bar_gap``)."""
    semi, red, full = by.get(row), by.get(reduced), by.get(full)
    if not semi or semi["dice"]["mean"] is None:
        return []
    parts = []
    if red and red["dice"]["mean"] is not None:
        d, text = bar_gap(report, by, row, reduced)
        parts.append(f"{'above' if d > 0 else 'NOT above'} {reduced} ({text})")
    if full and full["dice"]["mean"] is not None:
        d, text = bar_gap(report, by, row, full["row"])
        level = "level with or above" if d >= -0.01 else "below"
        parts.append(f"{level} {full['row']} ({text}; 'level' = within 0.01)")
    return parts


def chosen_on_validation(report: dict, by: dict[str, dict], bb: str) -> list[str]:
    """Among the ablations and variants of SemiSeg-CAW with backbone ``bb`` (first label
    budget; not all-masks, which sees more masks), the one with the largest seed-paired
    gain in validation Dice over SemiSeg-CAW, and how its test Dice stands against the bar.
    SemiSeg-CAW itself when no setting gains."""
    ds = report["dataset"]
    k = CLASS_ONLY[ds][0]
    sfx = suffix(ds, k)
    base = f"{bb}-semiseg-caw{sfx}"
    methods = {"no-class-only", *ABLATIONS, *VARIANTS}
    settings = {
        r["row"]
        for r in report["runs"]
        if r["backbone"] == bb and r["class_only"] == k and r["method"] in methods
    }
    gains = {
        row: found[0]
        for row in sorted(settings)
        if (found := paired(report, row, base, "val")) is not None
    }
    if not gains:
        return []
    best = max(gains, key=gains.get)
    head = (
        f"- Chosen on validation ({bb}; the largest seed-paired validation gain over {base} "
        f"among {len(gains)} setting{'s' if len(gains) > 1 else ''}): "
    )
    if gains[best] <= 0:
        return [head + f"none gains, {base} stays."]
    parts = against_bar(report, by, best, f"{bb}-reduced{sfx}", f"{bb}-full")
    return [
        head
        + f"{best} (validation {gap(report, best, base, 'val')}); on test "
        + "; ".join(parts)
        + "."
    ]


def tta_lines(stem: str) -> list[str]:
    """What ``benchmarks/tta.py`` found re-evaluating this table's checkpoints with each
    test-time setting (flip TTA, the largest lesion, both)."""
    lines = []
    for setting in TEST_TIME_SETTINGS.values():
        name, label = setting.part, setting.title
        flags = setting.flags
        option = f"`model.init_args.{flags[0]}`" if len(flags) == 1 else "both options"
        path = RESULTS / f"{stem}-{name}.json"
        if not path.is_file():
            continue
        tta = json.loads(path.read_text())
        runs, rows = tta["runs"], tta["rows"]

        def gains(split: str, runs: list[dict] = runs) -> str:
            values = [r[f"{split}_tta"]["dice"] - r[split]["dice"] for r in runs]
            higher = sum(v > 0 for v in values)
            return (
                f"{statistics.mean(values):+.4f} ({min(values):+.3f} to {max(values):+.3f}; "
                f"higher in {higher})"
            )

        lines.append(
            f"- {label} ({option}; [table]({stem}-{name}.md)), the same "
            f"checkpoints re-evaluated ({len(runs)} runs of {len(rows)} rows; commit "
            f"`{tta['commit']}`): Dice gain, mean over runs, validation {gains('val')}, test "
            f"{gains('test')}; validation favours it on {len(favoured(rows))} of {len(rows)} rows."
        )
    return lines


def favoured(rows: list[dict]) -> list[str]:
    """Rows whose mean validation gain is positive as printed (4 decimals): a row shown as
    +0.0000 is not counted as favouring the setting."""
    return [r["row"] for r in rows if round(r["val_gain"][0], 4) > 0]
