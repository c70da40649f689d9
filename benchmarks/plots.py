"""A benchmark table's plots: test Dice of every row as bars, and test Dice against the
number of pixel-labelled training images (a panel per backbone, a line per method)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however loaded
from protocol import BASELINES, CONTROLS, PAPER  # noqa: E402
from summary import REPO, long_note  # noqa: E402


def plot(report: dict, path: Path) -> str | None:
    """Test Dice of every row as bars, the paper's figure as a red line where it has one."""
    plt = _pyplot()
    if plt is None:
        return None
    rows = report["rows"]
    names = [r["row"] for r in rows]
    means = [r["dice"]["mean"] or 0 for r in rows]
    stds = [r["dice"]["std"] or 0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(rows) + 2), 3.6))
    colors = [
        "tab:gray"
        if r["method"] in BASELINES
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
        f"({report['image_size']} px, {report['epochs']} ep.{long_note(report)}); red: paper",
        fontsize=9,
    )
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# Dice against pixel-labelled training images, one panel per backbone: per method (one
# colour in both panels), the rows that differ only in how many masks they get (the
# class-only images' masks withheld, or given).
CURVES = {
    "masks only": ["reduced", "full"],
    "SemiSeg-CAW": ["semiseg-caw", "all-masks"],
    "SemiSeg-CAW, class-only images left out": ["no-class-only"],
    "masks only, {long} epochs": ["reduced-long", "full-long"],
    "SemiSeg-CAW, {long} epochs on a {long_stage1}-epoch stage 1": ["frozen-aux-cached-long-both"],
}


ALL_MASKS = ("full", "full-long", "all-masks")  # rows trained with every training mask


def pixel_labelled(report: dict) -> dict[str, int]:
    """Pixel-labelled training images of each row, from the counts the runs recorded (all
    rows share one training split; rows that withhold masks lose their class-only count)."""
    totals = {
        r["train_masks"] + (0 if r["method"] in ALL_MASKS else r["class_only"])
        for r in report["runs"]
        if r.get("train_masks") is not None
    }
    if len(totals) != 1:  # none recorded yet (older runs), or inconsistent splits
        return {}
    total = totals.pop()
    return {
        r["row"]: total if r["method"] in ALL_MASKS else total - r["class_only"]
        for r in report["rows"]
    }


def plot_labels(report: dict, path: Path) -> str | None:
    """Test Dice against the number of pixel-labelled training images: a panel per backbone,
    a line per method."""
    x_of = pixel_labelled(report)
    plt = _pyplot()
    if not x_of or plt is None:
        return None
    panels = {
        backbone: curves
        for backbone in ("malunet", "unext")
        if (curves := _label_curves(report, x_of, backbone))
    }
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.6, 3.6), sharey=True)
    axes = axes if len(panels) > 1 else [axes]
    for ax, (backbone, curves) in zip(axes, panels.items(), strict=True):
        for i, label, xs, ys, es in curves:
            # A small sideways offset per method, so that points at the same count stay visible.
            xs = [x + (i - 2) * 1.5 for x in xs]
            ax.errorbar(xs, ys, yerr=es, marker="osDPX"[i], color=f"C{i}", capsize=3, label=label)
        ax.set_title({"malunet": "MALUNet", "unext": "UNeXt"}[backbone], fontsize=9)
        ax.set_xlabel("pixel-labelled training images")
    axes[0].set_ylabel("test Dice (pooled)")
    fig.suptitle(
        f"{report['dataset'].upper()} — budget {report['budget']} "
        f"({report['image_size']} px, {report['epochs']} ep.)",
        fontsize=9,
    )
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    axes[-1].legend(
        handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1)
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _label_curves(report: dict, x_of: dict[str, int], backbone: str) -> list[tuple]:
    """``(index, label, xs, ys, errors)`` of each CURVES method ``backbone`` has rows for."""
    curves = []
    for i, (label, methods) in enumerate(CURVES.items()):
        points = sorted(
            (x_of[r["row"]], r["dice"]["mean"], r["dice"]["std"] or 0)
            for r in report["rows"]
            if r["backbone"] == backbone and r["method"] in methods and r["dice"]["mean"]
        )
        if points:
            label = label.format(
                long=report.get("long_epochs"), long_stage1=report.get("long_stage1_epochs")
            )
            curves.append((i, label, *zip(*points, strict=True)))
    return curves


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
