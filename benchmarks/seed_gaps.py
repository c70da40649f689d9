"""Gaps between two rows of a benchmark table, paired by seed (test or validation Dice), as
the tables print them; a row's fit minutes; which stage 1 each run stood on."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for protocol.py, however loaded
from protocol import LONG_STAGE1  # noqa: E402


def _dice(run: dict, split: str) -> float | None:
    return run["metrics"].get("seg/dice") if split == "test" else run.get("val_dice")


def paired(
    report: dict, row: str, other: str, split: str = "test"
) -> tuple[float, list[int]] | None:
    """Dice of ``row`` minus ``other`` on ``split`` (test, or val: each run's best
    validation Dice), paired by seed: the mean of the per-seed differences, and the seeds
    both rows ran (rows of different seeds are not compared); None where they share none."""
    dice = {}
    for r in report["runs"]:
        value = _dice(r, split)
        if r["row"] in (row, other) and value is not None:
            dice[r["row"], r["seed"]] = value
    seeds = sorted(
        {s for name, s in dice if name == row} & {s for name, s in dice if name == other}
    )
    if not seeds:
        return None
    return statistics.mean(dice[row, s] - dice[other, s] for s in seeds), seeds


def seeds_text(seeds: Iterable[int]) -> str:
    """``[2, 0, 1]`` as "0, 1, 2"."""
    return ", ".join(map(str, sorted(seeds)))


def gap(report: dict, row: str, other: str, split: str = "test") -> str | None:
    """``paired`` as text: "+0.012 (seeds 0, 1, 2)"."""
    if (found := paired(report, row, other, split)) is None:
        return None
    mean, seeds = found
    return f"{mean:+.3f} (seed{'s' if len(seeds) > 1 else ''} {seeds_text(seeds)})"


def bar_gap(report: dict, by: dict[str, dict], row: str, other: str) -> tuple[float, str]:
    """The Dice gap of ``row`` over ``other`` that a verdict is decided on, and its text:
    paired by seed over the seeds both ran, with the row means beside it where their seeds
    differ; the row means alone, said so, where none is common. Verdicts take the unrounded
    gap: printed to 3 decimals, or to 4 where 3 would round it across a threshold."""
    # Six decimals: float noise (0.65 - 0.66 is -0.0100000000000000089) decides nothing.
    means = round(by[row]["dice"]["mean"] - by[other]["dice"]["mean"], 6)
    counts = f"{len(by[row]['seeds'])} and {len(by[other]['seeds'])} seeds"
    if (found := paired(report, row, other)) is None:
        return means, f"Dice row means {_signed(means)}, unpaired: no seed in common"
    d, seeds = round(found[0], 6), found[1]
    text = f"Dice paired {_signed(d)} over seed{'s' if len(seeds) > 1 else ''} {seeds_text(seeds)}"
    if not seeds == by[row]["seeds"] == by[other]["seeds"]:
        text += f"; row means {_signed(means)} over {counts}"
    return d, text


def _signed(gap: float) -> str:
    """``gap`` to 3 decimals, or 4 where 3 would move it across 0 or -0.01 (the bar's
    thresholds), so that the printed number never contradicts the verdict."""
    for threshold in (0.0, -0.01):
        if (gap > threshold) != (round(gap, 3) > threshold) or (gap >= threshold) != (
            round(gap, 3) >= threshold
        ):
            return f"{gap:+.4f}"
    return f"{gap:+.3f}"


def fit_minutes(report: dict, row: str) -> float | None:
    """A row's median fit time in minutes over its runs; a run that reused another's stage 1
    gets that stage's time added (its epochs times the source run's seconds per epoch)."""
    stage1_s = {
        (r["row"], r["seed"]): (r.get("stage1_epoch_s") or 0)
        * (
            report.get("long_stage1_epochs")
            if r["method"] in LONG_STAGE1
            else report["stage1_epochs"] or report["epochs"]
        )
        for r in report["runs"]
    }
    times = [
        r["fit_wall_s"] + stage1_s.get((stage1_row(r), r["seed"]), 0)
        for r in report["runs"]
        if r["row"] == row and r.get("fit_wall_s")
    ]
    return statistics.median(times) / 60 if times else None


def stage1_row(record: dict) -> str | None:
    """The row whose stage-1 checkpoint a run reused, from the checkpoint's path
    (``.../<row>/seed<N>/stage1/checkpoints/best-*.ckpt``); None when it trained its own."""
    return Path(record["stage1_from"]).parts[-5] if record.get("stage1_from") else None


def other_stage1(report: dict, row: str, reference: str) -> list[int]:
    """The seeds at which the runs of ``row`` and ``reference`` stand on different stage 1s."""
    source = {
        (r["row"], r["seed"]): stage1_row(r) or r["row"]
        for r in report["runs"]
        if r["row"] in (row, reference)
    }
    return sorted(
        seed
        for (name, seed), used in source.items()
        if name == row and source.get((reference, seed), used) != used
    )
