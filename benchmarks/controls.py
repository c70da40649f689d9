"""What the controls, variants and ablations of a benchmark table say: each row's
seed-paired gap to SemiSeg-CAW of its backbone, on test and on validation."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however loaded
from protocol import (  # noqa: E402
    ABLATIONS,
    CLASS_ONLY,
    VARIANTS,
    shares_long_stage1,
    stage1_source,
    suffix,
)
from seed_gaps import gap, other_stage1, seeds_text, stage1_row  # noqa: E402
from summary import fmt_stat  # noqa: E402


def controls(report: dict, by: dict[str, dict]) -> list[str]:
    """What the controls, variants and ablations say, each as a seed-paired gap to
    SemiSeg-CAW of the same backbone, on the test split and on validation (the split to
    choose settings by): the class-only images' share of its lead, the stage-1 U-Net on
    its own, the paper's ablations. Also which rows reused a stage-1 checkpoint."""
    ds = report["dataset"]
    out = []
    for backbone in ("malunet", "unext"):
        for k in CLASS_ONLY[ds]:
            sfx = suffix(ds, k)
            semi = f"{backbone}-semiseg-caw{sfx}"
            if semi not in by:
                continue
            named = {f"{backbone}-reduced{sfx}": f"the plain {backbone} on the same masks"}
            if backbone == "malunet":
                named[f"classelevate-alone{sfx}"] = (
                    "the stage-1 ClassElevateSeg of these runs, alone"
                )
            if k == CLASS_ONLY[ds][0]:  # control, variant and ablation rows use this budget
                named[f"{backbone}-no-class-only"] = "trained without the class-only images"
                named[f"{backbone}-all-masks"] = (
                    "given the class-only images' masks too: the most those images could add"
                )
                named |= {f"{backbone}-{v}": f"variant {v}" for v in VARIANTS}
                named |= {f"{backbone}-{a}": f"ablation {a}" for a in ABLATIONS}
                named[f"{backbone}-reduced{sfx}-long"] = (
                    f"the plain {backbone} on the same masks, {report.get('long_epochs')} epochs"
                )
                named[f"{backbone}-full-long"] = (
                    f"the plain {backbone} on every mask, {report.get('long_epochs')} epochs"
                )
                named[f"{backbone}-frozen-aux-cached-long"] = (
                    f"variant frozen-aux-cached, {report.get('long_epochs')} epochs"
                )
                named[f"{backbone}-no-classelevate-long"] = (
                    f"ablation no-classelevate, {report.get('long_epochs')} epochs"
                )
                named[f"{backbone}-frozen-aux-cached-long-both"] = (
                    f"the same on a stage 1 of {report.get('long_stage1_epochs')} epochs"
                )
                named[f"{backbone}-aux-dropout-long-both"] = (
                    "the same, half the training maps dropped: variant aux-dropout"
                )
            gaps = []
            for name, text in named.items():
                if name in by and (g := gap(report, name, semi)):
                    val = gap(report, name, semi, "val")
                    gaps.append(
                        f"  - {name} ({text}): {fmt_stat(by[name]['dice'])}, {g}"
                        + (f"; validation {val}" if val else "")
                        + stage1_alone(report, name, f"classelevate-alone{sfx}")
                        + own_stage1(report, by, name)
                    )
            if gaps:
                out += [
                    f"- Against {semi}, test Dice and the seed-paired gap to it (test; "
                    "validation, the split settings are chosen on):",
                    *gaps,
                ]
        out += long_pairs(report, by, backbone)
    sources: dict[str, set[str]] = {}
    for r in report["runs"]:
        if r.get("stage1_from"):
            sources.setdefault(stage1_row(r), set()).add(r["row"])
    for source, rows in sorted(sources.items()):
        out.append(
            f"- {', '.join(sorted(rows))} reused the stage-1 checkpoint of {source} (same "
            "seed and data): they differ from it in stage 2 only, and their fit time "
            "excludes stage 1."
        )
    return out


def stage1_alone(report: dict, row: str, reference: str) -> str:
    """For a row that trained its own stage 1 (a ``stage1-*`` variant): that ClassElevateSeg's
    test Dice alone, and its seed-paired gap to ``reference`` (SemiSeg-CAW's stage 1)."""
    own = {
        r["seed"]: r["stage1_alone"]["seg/dice"]
        for r in report["runs"]
        if r["row"] == row and "seg/dice" in r.get("stage1_alone", {})
    }
    if not own:
        return ""
    ref = {r["seed"]: r["metrics"].get("seg/dice") for r in report["runs"] if r["row"] == reference}
    text = f"; its stage 1 alone {statistics.mean(own.values()):.3f}"
    seeds = sorted(s for s in own if ref.get(s) is not None)
    if seeds:
        paired = statistics.mean(own[s] - ref[s] for s in seeds)
        text += f", {paired:+.3f} against {reference} (seeds {seeds_text(seeds)})"
    return text


def own_stage1(report: dict, by: dict[str, dict], name: str) -> str:
    """For a row meant to reuse another's stage 1 (``stage1_source``), whose runs trained
    their own instead (their source had not finished): they differ from it in stage 1 too."""
    row = by[name]
    meant = {"name": name, "method": row["method"], "class_only": row["class_only"]}
    if stage1_source(meant, report["dataset"]) is None:
        return ""
    own = sorted(r["seed"] for r in report["runs"] if r["row"] == name and not r.get("stage1_from"))
    if not own:
        return ""
    if own == row["seeds"]:
        return "; trained its own stage 1 (not shared)"
    return f"; seed{'s' if len(own) > 1 else ''} {seeds_text(own)} trained its own stage 1 (not shared)"


# Changes measured on the long schedule, each against <backbone>-frozen-aux-cached-long-both,
# which differs from it in that change only: stage-2 changes on the shared long stage 1, and
# stage-1 changes (their own long stage 1, stage 2 the same).
LONG_PAIRS = {
    "no-classelevate-long": "without the auxiliary map",
    "aux-dropout-0.25-long-both": "a quarter of the training maps dropped",
    "aux-dropout-long-both": "half the training maps dropped",
    "aux-dropout-0.75-long-both": "three quarters of the training maps dropped",
    "aux-dropout-0.9-long-both": "nine tenths of the training maps dropped",
    "pseudo-aux-dropout-0.75-long-both": "three quarters dropped, pseudo-labels on class-only images",
    "mean-teacher-aux-dropout-0.75-long-both": "three quarters dropped, mean-teacher pseudo-labels",
    "stage1-no-presence-long-both": "its own stage 1 without the lesion-present term",
    "stage1-presence-topk-0.005-long-both": "its own stage 1, the lesion-present term on the "
    "top 0.5% of pixels (not 2%)",
    "stage1-presence-topk-0.005-aux-dropout-0.75-long-both": "the stage 1 of the top-0.5% "
    "lesion-present term, three quarters of the training maps dropped",
}


def long_pairs(report: dict, by: dict[str, dict], backbone: str) -> list[str]:
    """The LONG_PAIRS rows of a backbone, each as a seed-paired gap (test; validation) to
    SemiSeg-CAW on the same long stage 1 and stage-2 schedule; where some seeds' runs stand
    on different stage 1s, the line says so."""
    reference = f"{backbone}-frozen-aux-cached-long-both"
    gaps = []
    for method, change in LONG_PAIRS.items():
        name = f"{backbone}-{method}"
        if name in by and (g := gap(report, name, reference)):
            val = gap(report, name, reference, "val")
            other = other_stage1(report, name, reference) if shares_long_stage1(method) else []
            gaps.append(
                f"  - {name} ({change}): {g}"
                + (f"; validation {val}" if val else "")
                + (
                    f"; not on the same stage 1 at seed{'s' if len(other) > 1 else ''} "
                    f"{seeds_text(other)} (a stage-1 difference too)"
                    if other
                    else ""
                )
            )
    if not gaps:
        return []
    return [f"- Against {reference}, the seed-paired gap (test; validation):", *gaps]
