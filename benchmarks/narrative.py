"""The figures the hand-written passages of README.md and benchmarks/README.md quote from the
benchmark tables, recomputed from the committed results (``benchmarks/results/*.json``) and
printed under a heading per passage, in the order of the two files, so that each sentence
can be checked against its data.

Their wording rounds these to 3 decimals (4 where it says so); seed-paired gaps
come from ``seed_gaps.paired`` / ``seed_gaps.gap``, the functions the generated tables use. Reads
only; writes nothing.

    python benchmarks/narrative.py [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however loaded
from comparison import favoured  # noqa: E402
from lesion_size import row_of  # noqa: E402
from protocol import LONG  # noqa: E402
from seed_gaps import fit_minutes, gap, paired, seeds_text  # noqa: E402
from stage1_variants import by_variant, seed_means  # noqa: E402
from summary import RESULTS, fmt_stat, mean_std  # noqa: E402

DATASETS = {"busi": "", "ddti": "-48"}  # the row suffix of each data set's first label budget


# --- helpers -------------------------------------------------------------------------------


def load(results: Path, stem: str) -> dict:
    return json.loads((results / f"{stem}.json").read_text())


def by_seed(rep: dict, row: str, split: str = "test") -> dict[int, float]:
    """A row's Dice per seed: test (pooled), test per image, or validation (the best
    epoch's)."""
    get = {
        "test": lambda r: r["metrics"]["seg/dice"],
        "per_image": lambda r: r["metrics"]["seg/dice_per_image"],
        "val": lambda r: r["val_dice"],
    }[split]
    return {r["seed"]: get(r) for r in rep["runs"] if r["row"] == row}


def by_row(rep: dict, row: str) -> dict[int, dict]:
    """A row's run records by seed."""
    return {r["seed"]: r for r in rep["runs"] if r["row"] == row}


def row_line(rep: dict, row: str, seeds: list[int] | None = None) -> str:
    """Test Dice mean ± std and mean validation Dice of a row, over its seeds or ``seeds``."""
    test, val = by_seed(rep, row), by_seed(rep, row, "val")
    keep = sorted(test if seeds is None else set(seeds) & set(test))
    stats = mean_std([test[s] for s in keep])
    val_mean = statistics.mean(val[s] for s in keep)
    return f"{row}: test {fmt_stat(stats)}, validation {val_mean:.4f} (seeds {seeds_text(keep)})"


def gaps(rep: dict, row: str, other: str) -> str:
    """Seed-paired gap of ``row`` over ``other``, test and validation, 3 and 4 decimals."""
    parts = []
    for split in ("test", "val"):
        found = paired(rep, row, other, split)
        if found is not None:
            parts.append(f"{split} {gap(rep, row, other, split)} [{found[0]:+.4f}]")
    return f"{row} - {other}: " + "; ".join(parts)


def per_seed_signs(rep: dict, row: str, other: str, split: str = "test") -> str:
    """Whether ``row`` beats ``other`` at every common seed ("every seed agrees")."""
    a, b = by_seed(rep, row, split), by_seed(rep, other, split)
    diffs = {s: a[s] - b[s] for s in sorted(set(a) & set(b))}
    above = sum(d > 0 for d in diffs.values())
    return f"{row} above {other} on {split} at {above} of {len(diffs)} seeds"


def ratio_range(rep: dict, rows: list[str], references: list[str]) -> str:
    """Fit minutes (median, stage 1 included, as the tables print) of ``rows`` over those of
    ``references``: the smallest and largest ratio."""
    ratios = [fit_minutes(rep, r) / fit_minutes(rep, ref) for r in rows for ref in references]
    minutes = {n: round(fit_minutes(rep, n), 1) for n in (*rows, *references)}
    return f"{min(ratios):.3f} to {max(ratios):.3f} (fit minutes {minutes})"


def across(rep: dict, row: str, other_rep: dict, other: str, split: str = "test") -> str:
    """``row`` of ``rep`` against ``other`` of another table (runs on another machine, or
    rerun), seed-paired over their common seeds: the two means, the mean gap and how many
    seeds are above."""
    own, ctl = by_seed(rep, row, split), by_seed(other_rep, other, split)
    seeds = sorted(set(own) & set(ctl))
    diffs = [own[s] - ctl[s] for s in seeds]
    return (
        f"{statistics.mean(own[s] for s in seeds):.4f} against "
        f"{statistics.mean(ctl[s] for s in seeds):.4f}: {statistics.mean(diffs):+.4f}, above at "
        f"{sum(d > 0 for d in diffs)} of {len(seeds)} seeds ({seeds_text(seeds)})"
    )


def heading(text: str) -> None:
    print(f"\n== {text}")


# --- README "Configs, baselines and ablations" ---------------------------------------------


def aux_lr(cpu: dict[str, dict]) -> None:
    heading("Configs: aux-full-lr and aux-lr-0.3 against SemiSeg-CAW")
    for ds, sfx in DATASETS.items():
        for bb in ("unext", "malunet"):
            for variant in ("aux-full-lr", "aux-lr-0.3"):
                print(f"  {ds}: {gaps(cpu[ds], f'{bb}-{variant}', f'{bb}-semiseg-caw{sfx}')}")
    # "within seed noise (std about 0.01)": the rows' own test std.
    for ds, sfx in DATASETS.items():
        by = {r["row"]: r for r in cpu[ds]["rows"]}
        names = [f"{bb}-{v}" for bb in ("unext", "malunet") for v in ("aux-full-lr", "aux-lr-0.3")]
        names += [f"{bb}-semiseg-caw{sfx}" for bb in ("unext", "malunet")]
        print(f"  {ds} test std: " + ", ".join(f"{n} {by[n]['dice']['std']:.4f}" for n in names))


def balance_classes(cpu: dict[str, dict]) -> None:
    heading("Configs: balance_classes")
    for ds, sfx in DATASETS.items():
        by = {r["row"]: r for r in cpu[ds]["rows"]}
        base = f"malunet-semiseg-caw{sfx}"
        for name in (base, "malunet-balanced-classes", "malunet-balanced-classes-stage2"):
            if name in by:
                balanced = by[name]["cls_balanced_accuracy"]
                print(
                    f"  {ds}: {name} cls balanced accuracy {fmt_stat(balanced)} (n={balanced['n']})"
                )
                if name != base:
                    print(f"  {ds}: {gaps(cpu[ds], name, base)}")


# --- flip TTA and the largest lesion (benchmarks/tta.py) -----------------------------------


def gain(runs: list[dict], split: str) -> str:
    """Mean Dice gain of a test-time setting over ``runs``, to 3 decimals and, since a mean
    near a rounding boundary is easily misquoted, to 5."""
    mean = statistics.mean(r[f"{split}_tta"]["dice"] - r[split]["dice"] for r in runs)
    return f"{mean:+.3f} [{mean:+.5f}]"


def flip_tta(cpu: dict[str, dict], tta: dict[str, dict]) -> None:
    heading("Configs: flip TTA on the CPU checkpoints")
    for ds in DATASETS:
        t = tta[ds]
        runs, rows = t["runs"], t["rows"]
        print(
            f"  {ds}: {len(runs)} runs, {len(rows)} rows; validation favours it on "
            f"{len(favoured(rows))} of {len(rows)} rows; mean gain over runs "
            f"validation {gain(runs, 'val')}, test {gain(runs, 'test')}"
        )
        # Rows re-evaluated at fewer seeds than the benchmark ran (their folders were gone).
        bench = {r["row"]: r["seeds"] for r in cpu[ds]["rows"]}
        partial = {r["row"]: r["seeds"] for r in rows if r["seeds"] != bench.get(r["row"])}
        print(f"  {ds}: rows at fewer seeds than the benchmark: {partial}")
        method = {r["row"]: r["method"] for r in cpu[ds]["rows"]}
        long_runs = [r for r in runs if method[r["row"]] in LONG]
        print(
            f"  {ds}: {len(long_runs)} runs of rows trained {cpu[ds]['long_epochs']} epochs: "
            f"validation {gain(long_runs, 'val')}, test {gain(long_runs, 'test')}"
        )
        row = "unext-aux-dropout-0.75-long-both"
        these = [r for r in runs if r["row"] == row]
        print(
            f"  {ds}: {row} ({len(these)} runs): validation {gain(these, 'val')}, "
            f"test {gain(these, 'test')}"
        )


def largest_lesion(tta: dict[str, dict], largest: dict[str, dict], both: dict[str, dict]) -> None:
    heading("Configs: keep_largest_lesion, alone and after flip TTA")
    for ds in DATASETS:
        runs, rows = largest[ds]["runs"], largest[ds]["rows"]
        unext = [r["row"] for r in rows if r["row"].startswith("unext")]
        lower = [r["row"] for r in rows if r["row"].startswith("unext") and r["val_gain"][0] < 0]
        print(
            f"  {ds}: largest, {len(runs)} runs: validation {gain(runs, 'val')}, "
            f"test {gain(runs, 'test')}; UNeXt rows lower on validation: "
            f"{len(lower)} of {len(unext)}"
        )
        # Flip alone on the runs both settings were evaluated on (the first pass).
        first = {(r["row"], r["seed"]) for r in both[ds]["runs"]}
        flip = [r for r in tta[ds]["runs"] if (r["row"], r["seed"]) in first]
        print(
            f"  {ds}: flip+largest, {len(both[ds]['runs'])} runs: validation "
            f"{gain(both[ds]['runs'], 'val')} (flip alone on the same {len(flip)} runs "
            f"{gain(flip, 'val')}); test {gain(both[ds]['runs'], 'test')} "
            f"(flip alone {gain(flip, 'test')})"
        )


# --- README "Speed" and benchmarks/README.md "Speed in detail" ---------------------------


def decoder(cpu: dict[str, dict]) -> None:
    heading("Speed: aux_mode decoder (s / epoch in the BUSI CPU runs; gaps to SemiSeg-CAW)")
    by = {r["row"]: r for r in cpu["busi"]["rows"]}
    # The fine-tuned variants next to it in the table, run in the same period ("beside it").
    beside = ("aux-output-skip", "aux-full-lr", "aux-lr-0.3", "ftv-balanced")
    for bb in ("malunet", "unext"):
        others = {v: round(by[f"{bb}-{v}"]["train_s_per_epoch"]["mean"], 1) for v in beside}
        print(
            f"  {bb}-aux-decoder stage 2 train s/epoch "
            f"{by[f'{bb}-aux-decoder']['train_s_per_epoch']['mean']:.1f}; beside it {others}"
        )
    for ds, sfx in DATASETS.items():
        for bb in ("malunet", "unext"):
            print(f"  {ds}: {gaps(cpu[ds], f'{bb}-aux-decoder', f'{bb}-semiseg-caw{sfx}')}")


def sharing(gpu: dict[str, dict]) -> None:
    heading("Speed: sharing the H200 (GPU tables: s / epoch and fit minutes, row means)")
    for ds, rep in gpu.items():
        for r in rep["rows"]:
            if r["fit_wall_s"]["mean"]:
                runs = [round(x["fit_wall_s"] / 60, 2) for x in rep["runs"] if x["row"] == r["row"]]
                print(
                    f"  {ds}: {r['row']}: train s/epoch {r['train_s_per_epoch']['mean']:.2f} "
                    f"(with val {r['epoch_s']['mean']:.2f}), fit minutes "
                    f"{r['fit_wall_s']['mean'] / 60:.2f} (runs {runs})"
                )


# --- benchmarks/README.md "What the CPU tables can and cannot show" ------------------------


def cpu_intro(cpu: dict[str, dict]) -> None:
    heading("CPU tables: budget, model sizes and the -long rows' fit minutes against SemiSeg-CAW")
    for ds, rep in cpu.items():
        print(
            f"  {ds}: {rep['image_size']} px, {rep['epochs']} epochs (stage 1: "
            f"{rep['stage1_epochs']}); -long rows {rep['long_epochs']} (stage 1 of -long-both: "
            f"{rep['long_stage1_epochs']}); class-only images {rep['runs'][0]['train_class_only']}"
        )
    by = {r["row"]: r for r in cpu["busi"]["rows"]}
    semi = by["malunet-semiseg-caw"]
    stage1 = semi["params"]["mean"] - semi["params_core"]["mean"]
    print(
        f"  stage 1 parameters {stage1 / 1e6:.2f} M;"
        f" MALUNet {by['malunet-full']['params']['mean'] / 1e6:.3f} M;"
        f" UNeXt {by['unext-full']['params']['mean'] / 1e6:.3f} M"
    )
    for ds, sfx in DATASETS.items():
        rep = cpu[ds]
        ratios = [
            ratio_range(
                rep, [f"{bb}-reduced{sfx}-long", f"{bb}-full-long"], [f"{bb}-semiseg-caw{sfx}"]
            )
            for bb in ("malunet", "unext")
        ]
        print(f"  {ds}: long baselines / SemiSeg-CAW: malunet {ratios[0]}; unext {ratios[1]}")


def malunet_long(cpu: dict[str, dict]) -> None:
    heading("MALUNet long baselines against SemiSeg-CAW at 8 epochs")
    for ds, sfx in DATASETS.items():
        rep = cpu[ds]
        for row in (f"malunet-reduced{sfx}-long", "malunet-full-long", f"malunet-semiseg-caw{sfx}"):
            print(f"  {ds}: {row_line(rep, row)}")
        print(f"  {ds}: {gaps(rep, f'malunet-semiseg-caw{sfx}', f'malunet-reduced{sfx}')}")
        print(f"  {ds}: {gaps(rep, 'malunet-no-class-only', f'malunet-semiseg-caw{sfx}')}")


def malunet_frozen_long(cpu: dict[str, dict]) -> None:
    heading("MALUNet SemiSeg-CAW trained long on the 6-epoch stage 1 (frozen-aux-cached-long)")
    for ds, sfx in DATASETS.items():
        rep = cpu[ds]
        print(f"  {ds}: {row_line(rep, 'malunet-frozen-aux-cached-long')}")
        print(
            f"  {ds}: {gaps(rep, 'malunet-frozen-aux-cached-long', f'malunet-reduced{sfx}-long')}"
        )


def stage1_test(rep: dict, row: str) -> tuple[list[float], list[float]]:
    """The stage-1 test Dice a row's runs recorded, and each run's test Dice minus it."""
    runs = [r for r in rep["runs"] if r["row"] == row and "seg/dice" in r.get("stage1_alone", {})]
    own = [r["stage1_alone"]["seg/dice"] for r in runs]
    return own, [r["metrics"]["seg/dice"] - s for r, s in zip(runs, own, strict=True)]


def malunet_long_both(cpu: dict[str, dict]) -> None:
    heading("MALUNet -long-both (32-epoch stage 1) against the long baselines")
    for ds, sfx in DATASETS.items():
        rep, row = cpu[ds], "malunet-frozen-aux-cached-long-both"
        long = [f"malunet-reduced{sfx}-long", "malunet-full-long"]
        print(f"  {ds}: -long-both / long baselines: {ratio_range(rep, [row], long)}")
        print(f"  {ds}: {row_line(rep, row)}")
        for other in long:
            print(f"  {ds}: {gaps(rep, row, other)}")
        own, added = stage1_test(rep, row)
        print(
            f"  {ds}: its stage 1 alone {statistics.mean(own):.4f} ({len(own)} seeds); "
            f"core model adds {statistics.mean(added):+.4f} (per seed, mean)"
        )


def unext_long(cpu: dict[str, dict]) -> None:
    heading("UNeXt long baselines, -long-both and no-classelevate-long")
    for ds, sfx in DATASETS.items():
        rep, semi = cpu[ds], "unext-frozen-aux-cached-long-both"
        reduced = f"unext-reduced{sfx}-long"
        for row in ("unext-full-long", reduced, semi, "unext-no-classelevate-long"):
            print(f"  {ds}: {row_line(rep, row)}")
        print(
            f"  {ds}: -long-both / long baselines: "
            f"{ratio_range(rep, [semi], [reduced, 'unext-full-long'])}"
        )
        print(f"  {ds}: {gaps(rep, semi, reduced)}")
        print(f"  {ds}: {gaps(rep, 'unext-no-classelevate-long', semi)}")
        print(f"  {ds}: {gaps(rep, 'unext-no-classelevate-long', reduced)}")


def map_rows(rep: dict) -> dict[str, list[dict]]:
    """map_reliance.py's rows grouped by benchmark row (from the checkpoint path
    ``runs/bench/<stem>/<row>/seed<N>/...``)."""
    groups: dict[str, list[dict]] = {}
    for r in rep["rows"]:
        groups.setdefault(Path(r["checkpoint"]).parts[3], []).append(r)
    return groups


def map_reliance(maps: dict[str, dict], aux: dict[str, dict]) -> None:
    heading("The core model copies the map (map_reliance.py, aux_gap.py)")
    agree, zeroed = [], []
    for ds, rep in maps.items():
        for row, rows in map_rows(rep).items():
            if "aux-dropout" in row:  # trained with the map on every image only
                continue
            print(f"  {ds}: {row}: {len(rows)} checkpoint(s)")
            for r in rows:
                for split in ("val", "test"):
                    agree.append(r["dice"][split]["agreement"])
                    zeroed.append(r["dice"][split]["core_without_map"])
    print(
        f"  agreement with the map {min(agree):.4f} to {max(agree):.4f}; "
        f"map zeroed at most {max(zeroed):.4f}"
    )
    for ds, rep in aux.items():
        means = {
            k: statistics.mean(r["dice"][k] for r in rep["rows"]) for k in rep["rows"][0]["dice"]
        }
        print(
            f"  {ds}: stage-1 maps, mean of {len(rep['rows'])} checkpoints: "
            + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
        )


def aux_dropout(cpu: dict[str, dict], maps: dict[str, dict], aux: dict[str, dict]) -> None:
    heading("aux-dropout (half the maps dropped) on the 32-epoch stage 1")
    for ds, sfx in DATASETS.items():
        rep, ref = cpu[ds], "unext-frozen-aux-cached-long-both"
        print(f"  {ds}: {row_line(rep, 'unext-aux-dropout-long-both')}")
        print(f"  {ds}: {gaps(rep, 'unext-aux-dropout-long-both', ref)}")
        print(f"  {ds}: {gaps(rep, 'unext-aux-dropout-long-both', f'unext-reduced{sfx}-long')}")
    for ds, rep in maps.items():
        rows = map_rows(rep)["unext-aux-dropout-long-both"]
        for split in ("test", "val"):
            alone = [r["dice"][split]["core_without_map"] for r in rows]
            print(
                f"  {ds}: unext-aux-dropout-long-both, map zeroed, {split}: "
                f"{min(alone):.4f} to {max(alone):.4f}"
            )
        mean = {
            k: statistics.mean(r["dice"]["val"][k] for r in rows)
            for k in ("core", "core_without_map", "mean_with_without")
        }
        print(
            f"  {ds}: validation, mean of {len(rows)}: with map {mean['core']:.4f} / without "
            f"{mean['core_without_map']:.4f} / mean of the two {mean['mean_with_without']:.4f}"
        )
    for ds, sfx in DATASETS.items():
        rep, ref = cpu[ds], "malunet-frozen-aux-cached-long-both"
        for row in ("malunet-aux-dropout-long-both", "malunet-aux-dropout-0.75-long-both"):
            print(f"  {ds}: {gaps(rep, row, ref)}")
        maps_test = statistics.mean(r["dice"]["test"] for r in aux[ds]["rows"])
        print(
            f"  {ds}: {row_line(rep, f'malunet-reduced{sfx}-long')}; the maps' test {maps_test:.4f}"
        )
        # "with or without dropout it stays above both long MALUNet baselines"
        for row in ("malunet-aux-dropout-long-both", "malunet-aux-dropout-0.75-long-both"):
            print(f"  {ds}: {row_line(rep, row)}")
            for other in (f"malunet-reduced{sfx}-long", "malunet-full-long"):
                print(f"  {ds}: {gaps(rep, row, other)}")


def dropout_rates(cpu: dict[str, dict], bb: str, rates: tuple[str, ...]) -> None:
    """Each aux-dropout rate of backbone ``bb`` on seeds 0 to 2 (0: no dropout, the
    frozen-aux-cached-long-both row), and the mean validation Dice over the data sets."""
    name = {"unext": "UNeXt", "malunet": "MALUNet"}[bb]
    heading(f"{name} aux-dropout rates (seeds 0 to 2, the seeds every rate ran)")
    names = {"0": "frozen-aux-cached-long-both", "0.5": "aux-dropout-long-both"}
    val_means: dict[str, list[float]] = {rate: [] for rate in rates}
    for ds in DATASETS:
        rep = cpu[ds]
        for rate in rates:
            row = f"{bb}-{names.get(rate, f'aux-dropout-{rate}-long-both')}"
            print(f"  {ds}: rate {rate}: {row_line(rep, row, [0, 1, 2])}")
            val_means[rate].append(statistics.mean(by_seed(rep, row, "val")[s] for s in (0, 1, 2)))
        half, three = f"{bb}-aux-dropout-long-both", f"{bb}-aux-dropout-0.75-long-both"
        print(f"  {ds}: {gaps(rep, three, half)}; {per_seed_signs(rep, three, half, 'val')}")
    print(
        "  mean validation over the two data sets: "
        + ", ".join(f"{rate} {statistics.mean(v):.4f}" for rate, v in val_means.items())
    )


def unext_dropout(cpu: dict[str, dict]) -> None:
    dropout_rates(cpu, "unext", ("0.25", "0.5", "0.75", "0.9"))
    heading("UNeXt aux-dropout 0.75 at 5 seeds against the long baselines")
    for ds, sfx in DATASETS.items():
        rep, row = cpu[ds], "unext-aux-dropout-0.75-long-both"
        print(f"  {ds}: {row_line(rep, row)}")
        for other in (f"unext-reduced{sfx}-long", "unext-full-long"):
            print(f"  {ds}: {gaps(rep, row, other)}")


def malunet_dropout(cpu: dict[str, dict]) -> None:
    dropout_rates(cpu, "malunet", ("0", "0.5", "0.75", "0.9"))
    for ds, sfx in DATASETS.items():
        rep, row = cpu[ds], "malunet-aux-dropout-0.9-long-both"
        for other in (
            "malunet-frozen-aux-cached-long-both",
            f"malunet-reduced{sfx}-long",
            "malunet-full-long",
        ):
            print(f"  {ds}: {gaps(rep, row, other)}")


def pseudo(cpu: dict[str, dict]) -> None:
    heading("Pseudo-labels and a mean teacher on top of aux-dropout 0.75")
    for ds in DATASETS:
        rep, ref = cpu[ds], "unext-aux-dropout-0.75-long-both"
        for row in (
            "unext-pseudo-aux-dropout-0.75-long-both",
            "unext-mean-teacher-aux-dropout-0.75-long-both",
        ):
            print(f"  {ds}: {row_line(rep, row)}")
            print(f"  {ds}: {gaps(rep, row, ref)}")
        counts = {(r["train_class_only"], r["train_masks"]) for r in rep["runs"] if r["row"] == ref}
        print(f"  {ds}: (class-only images, masks) in training: {counts}")


# --- benchmarks/README.md "What the GPU tables show" ----------------------------------------


def lesion_sizes(sizes: dict[str, dict], cpu: dict[str, dict]) -> None:
    heading("Dice per image by lesion size (lesion_size.py)")
    rep, semi = cpu["busi"], "malunet-semiseg-caw"
    per_image = by_seed(rep, semi, "per_image")
    for row in ("malunet-stage1-no-cam", "malunet-stage1-ce-only", "malunet-no-class-only"):
        runs = [r for r in rep["runs"] if r["row"] == row]
        diffs = [r["metrics"]["seg/dice_per_image"] - per_image[r["seed"]] for r in runs]
        print(
            f"  busi: {row} - {semi}: Dice per image {statistics.mean(diffs):+.4f} "
            f"(seeds {seeds_text(r['seed'] for r in runs)}; the 8-epoch budget)"
        )
    for ds, rep in sizes.items():
        runs = sizes_by_row(rep)  # runs/bench/<stem>/<row>/seed<N>/[stage1/]checkpoints/...
        worst = _largest_difference_from_table(runs, cpu[ds])
        print(f"  {ds}: largest test Dice difference from the table's runs: {worst:.5f}")
        semi = runs.get("malunet-frozen-aux-cached-long-both", [])
        for split in ("val", "test"):
            for other in ("malunet-reduced-long", "malunet-reduced-48-long", "malunet-full-long"):
                paired = _small_third_gaps(semi, runs.get(other, []), split)
                if paired:
                    print(f"  {ds} {split}: small third, -long-both - {other} by seed: {paired}")
        for split in ("val", "test"):
            thirds = rep["groups"][split]
            print(
                f"  {ds} {split}: thirds {{name: (images, area)}}: "
                + str({n: (g["images"], g["area"]) for n, g in thirds.items()})
            )
            for run, rows in runs.items():
                seeds = sorted(Path(r["checkpoint"]).parts[4] for r in rows)
                cells = ", ".join(
                    f"{n} {statistics.mean(r[split]['groups'][n]['per_image'] for r in rows):.4f}"
                    for n in thirds
                )
                pooled = statistics.mean(r[split]["pooled"] for r in rows)
                per_image = statistics.mean(r[split]["per_image"] for r in rows)
                print(
                    f"  {ds} {split}: {run} ({', '.join(seeds)}): pooled {pooled:.4f}, "
                    f"per image {per_image:.4f}; {cells}"
                )
                small = {
                    k: statistics.mean(r[split]["groups"]["small"][k] for r in rows)
                    for k in ("area_ratio", "precision", "recall")
                }
                print(
                    f"  {ds} {split}: {run}: small third: predicted / true area "
                    f"{small['area_ratio']:.2f}, precision {small['precision']:.3f}, "
                    f"recall {small['recall']:.3f}"
                )


def _largest_difference_from_table(runs: dict[str, list[dict]], table: dict) -> float:
    """How far lesion_size.py's pooled test Dice of each stage-2 checkpoint is from the
    table's run of that row and seed: checkpoints retrained in another folder are the
    table's runs if they score as they do."""
    dice = {(r["row"], r["seed"]): r["metrics"]["seg/dice"] for r in table["runs"]}
    return max(
        abs(r["test"]["pooled"] - dice[(row, int(Path(r["checkpoint"]).parts[4][4:]))])
        for row, rows in runs.items()
        if not row.endswith("/stage1")
        for r in rows
    )


def _small_third_gaps(rows: list[dict], others: list[dict], split: str) -> dict[str, float]:
    """Seed-paired difference in the small third's Dice per image (lesion_size.py rows)."""

    def by_seed(rs: list[dict]) -> dict[str, float]:
        return {
            Path(r["checkpoint"]).parts[4]: r[split]["groups"]["small"]["per_image"] for r in rs
        }

    a, b = by_seed(rows), by_seed(others)
    return {seed: round(a[seed] - b[seed], 4) for seed in sorted(set(a) & set(b))}


def sizes_by_row(*records: dict) -> dict[str, list[dict]]:
    """lesion_size.py's rows of ``records`` grouped by benchmark row (``row_of``), stage-1
    checkpoints as ``<row>/stage1``."""
    runs: dict[str, list[dict]] = {}
    for record in records:
        for r in record["rows"]:
            runs.setdefault(row_of(r["checkpoint"]), []).append(r)
    return runs


def size_summary(scores: list[dict]) -> str:
    """Seed means of lesion_size.py's scores of one split: pooled, per image, the thirds,
    and the small third's predicted area, precision and share of far false positives."""
    pooled, per_image, *thirds, area, precision, far = seed_means(scores)
    return (
        f"pooled {pooled:.4f}, per image {per_image:.4f}, thirds "
        + ", ".join(f"{t:.4f}" for t in thirds)
        + f"; small: area {area:.2f}, precision {precision:.3f}, far {far:.2f}"
    )


def stage1_variants(variants: dict, sizes: dict[str, dict]) -> None:
    heading("Stage 1 variants by lesion size (stage1_variants.py)")
    groups = by_variant(variants)
    # The control retrains the benchmark's stage 1 (in another environment it need not
    # repeat it bit for bit): how far it is from lesion_size.py's rows of the same seeds.
    bench = {
        int(Path(r["checkpoint"]).parts[4][4:]): r
        for r in sizes["busi"]["rows"]
        if row_of(r["checkpoint"]) == "malunet-frozen-aux-cached-long-both/stage1"
    }
    for seed, row in groups[("control", 1)].items():
        diffs = {
            split: round(row[split]["per_image"] - bench[seed][split]["per_image"], 4)
            for split in ("val", "test")
        }
        print(f"  busi: control stage 1, seed {seed}, per image - the benchmark's: {diffs}")
    for (name, stage), rows in groups.items():
        control = groups[("control", stage)]
        settings = next(r["settings"] for r in variants["runs"] if r["variant"] == name)
        for split in ("val", "test"):
            line = (
                f"  busi {split}: {name} stage {stage} {settings} (seeds "
                f"{seeds_text(sorted(rows))}): "
                + size_summary([rows[s][split] for s in sorted(rows)])
            )
            if name != "control":
                line += "; - control: " + ", ".join(
                    f"{key} {statistics.mean(get(rows[s][split]) - get(control[s][split]) for s in rows):+.4f}"
                    for key, get in (
                        ("pooled", lambda r: r["pooled"]),
                        ("per image", lambda r: r["per_image"]),
                        ("small", lambda r: r["groups"]["small"]["per_image"]),
                        ("large", lambda r: r["groups"]["large"]["per_image"]),
                    )
                )
            print(line)
    # The core models against the long baselines of the same seeds (lesion_size.py's rows).
    for base in ("malunet-reduced-long", "malunet-full-long"):
        rows = {
            int(Path(r["checkpoint"]).parts[4][4:]): r
            for r in sizes["busi"]["rows"]
            if row_of(r["checkpoint"]) == base
        }
        for split in ("val", "test"):
            seeds = sorted(groups[("control", 2)]) if ("control", 2) in groups else []
            if not seeds:
                continue
            cells = ", ".join(
                f"{k} {statistics.mean(rows[s][split][k] for s in seeds):.4f}"
                for k in ("pooled", "per_image")
            )
            print(f"  busi {split}: {base} (seeds {seeds_text(seeds)}): {cells}")


def no_presence_long(cpu: dict[str, dict], variants: dict) -> None:
    heading("MALUNet -long-both on a stage 1 without the lesion-present term (5 seeds)")
    rep, row = cpu["busi"], "malunet-stage1-no-presence-long-both"
    both, long = (
        "malunet-frozen-aux-cached-long-both",
        ["malunet-reduced-long", "malunet-full-long"],
    )
    for name in (row, both, *long):
        print(f"  busi: {row_line(rep, name)}; per image {per_image_mean(rep, name):.4f}")
    for other in (both, *long):
        print(f"  busi: {gaps(rep, row, other)}; {per_seed_signs(rep, row, other, 'val')}")
        a, b = by_seed(rep, row, "per_image"), by_seed(rep, other, "per_image")
        seeds = sorted(set(a) & set(b))
        per_image = statistics.mean(a[s] - b[s] for s in seeds)
        print(f"  busi: per image, test {per_image:+.4f} (seeds {seeds_text(seeds)})")
    for name in (row, both):
        own, added = stage1_test(rep, name)
        print(
            f"  busi: {name} stage 1 alone {statistics.mean(own):.4f}; core adds "
            f"{statistics.mean(added):+.4f}"
        )
    print(f"  busi: {gaps(rep, 'malunet-stage1-no-presence', 'malunet-semiseg-caw')}")
    # Seeds 3 and 4 were trained before by stage1_variants.py with the same arguments.
    earlier = by_variant(variants)
    for stage, key in ((1, "stage1_alone"), (2, "metrics")):
        for r in rep["runs"]:
            if r["row"] == row and r["seed"] in earlier.get(("no-presence", stage), {}):
                then = earlier[("no-presence", stage)][r["seed"]]["test"]["pooled"]
                print(
                    f"  busi: seed {r['seed']} stage {stage} test pooled {r[key]['seg/dice']:.6f}, "
                    f"stage1_variants.py {then:.6f}"
                )


def no_presence_sizes(sizes: dict[str, dict], own: dict) -> None:
    heading("The same by lesion size (lesion_size.py, against -long-both's 5 seeds)")
    runs = sizes_by_row(sizes["busi"], own)
    for stage in ("/stage1", ""):
        for row in ("malunet-frozen-aux-cached-long-both", "malunet-stage1-no-presence-long-both"):
            rows = runs[row + stage]
            for split in ("val", "test"):
                summary = size_summary([r[split] for r in rows])
                print(f"  busi {split}: {row}{stage} ({len(rows)} seeds): {summary}")


# Stage-1 variants run on one processor, each against -long-both retrained on it.
SAME_MACHINE_VARIANTS = {
    "malunet-stage1-no-presence-long-both": "no-presence",
    "malunet-stage1-presence-topk-0.005-long-both": "presence-topk-0.005",
}


def same_machine(cpu: dict[str, dict], again: dict, ds: str = "busi") -> None:
    rep, row = cpu[ds], "malunet-frozen-aux-cached-long-both"
    retrained = by_row(again, row)
    seeds = sorted(retrained)
    heading(f"{ds}: -long-both retrained on the variant's processor (same-machine), seeds {seeds}")
    table = by_row(rep, row)
    variants = {  # the variants run at every retrained seed
        short: runs
        for name, short in SAME_MACHINE_VARIANTS.items()
        if set(seeds) <= set(runs := by_row(rep, name))
    }
    measures = (
        ("test pooled", lambda x: x["metrics"]["seg/dice"]),
        ("test per image", lambda x: x["metrics"]["seg/dice_per_image"]),
        ("validation", lambda x: x["val_dice"]),
        ("stage 1 test pooled", lambda x: x["stage1_alone"]["seg/dice"]),
    )
    for seed, r in sorted(retrained.items()):
        old = table[seed]
        print(
            f"  {ds}: seed {seed} on {r['hardware']['cpu']}, the table's on {old['hardware']['cpu']}"
        )
        for key, get in measures:
            gaps_ = ", ".join(
                f"{short} - retrained {get(runs[seed]) - get(r):+.4f}"
                for short, runs in variants.items()
            )
            print(
                f"  {ds}: seed {seed} {key}: retrained {get(r):.4f}, table {get(old):.4f}, {gaps_}"
            )
    for key, get in measures:  # over the seeds retrained; the paired gaps seed by seed
        mean = {
            name: statistics.mean(get(runs[s]) for s in seeds)
            for name, runs in (("retrained", retrained), ("table", table), *variants.items())
        }
        print(
            f"  {ds}: mean of seeds {seeds} {key}: retrained {mean['retrained']:.4f}, table "
            f"{mean['table']:.4f} (retrained - table {mean['retrained'] - mean['table']:+.4f})"
        )
        for short, runs in variants.items():
            above = sum(get(runs[s]) > get(retrained[s]) for s in seeds)
            print(
                f"  {ds}: mean of seeds {seeds} {key}: {short} {mean[short]:.4f} (- retrained "
                f"{mean[short] - mean['retrained']:+.4f}, above at {above} of {len(seeds)} seeds)"
            )


def presence_topk(cpu: dict[str, dict], same: dict, topk: dict) -> None:
    """BUSI's stage-1 lesion-present term on the top 0.5% of pixels, against the
    -long-both control and the no-presence row, all run on one processor (5 seeds), and by
    lesion size (lesion_size.py on each run's stage 1 and core model)."""
    heading("MALUNet -long-both, stage 1's lesion-present term on the top 0.5% (5 seeds)")
    rep, row = cpu["busi"], "malunet-stage1-presence-topk-0.005-long-both"
    no_presence = "malunet-stage1-no-presence-long-both"
    for name in (row, no_presence, "malunet-reduced-long", "malunet-full-long"):
        print(f"  busi: {row_line(rep, name)}; per image {per_image_mean(rep, name):.4f}")
    for other in (no_presence, "malunet-reduced-long", "malunet-full-long"):
        print(f"  busi: {gaps(rep, row, other)}; {per_seed_signs(rep, row, other, 'val')}")
    own, added = stage1_test(rep, row)
    print(
        f"  busi: stage 1 alone {statistics.mean(own):.4f}; core adds {statistics.mean(added):+.4f}"
    )
    runs = sizes_by_row(same, topk)  # row_of names the same-machine control by its row
    for stage in ("/stage1", ""):
        for name in ("malunet-frozen-aux-cached-long-both", row):
            rows = runs[name + stage]
            for split in ("val", "test"):
                summary = size_summary([r[split] for r in rows])
                print(f"  busi {split}: {name}{stage} ({len(rows)} seeds, same machine): {summary}")


def topk_dropout(cpu: dict[str, dict], same: dict) -> None:
    """The top-0.5% stage 1 under the aux-dropout-0.75 core model (BUSI), each backbone's
    against aux-dropout-0.75-long-both retrained on the same processor (same-machine) and
    against the table's long baselines (another processor: within its 0.01)."""
    heading("aux-dropout 0.75 on the top-0.5% stage 1, against its same-machine control")
    rep = cpu["busi"]
    for bb in ("malunet", "unext"):
        row, control = (
            f"{bb}-stage1-presence-topk-0.005-aux-dropout-0.75-long-both",
            f"{bb}-aux-dropout-0.75-long-both",
        )
        runs, again = by_row(rep, row), by_row(same, control)
        seeds = sorted(set(runs) & set(again))
        if not seeds:
            continue
        for split in ("test", "per_image", "val"):
            print(f"  busi {bb} {split}: {across(rep, row, same, control, split)} (retrained)")
        table = by_seed(rep, control)
        moved = [again[s]["metrics"]["seg/dice"] - table[s] for s in seeds if s in table]
        print(f"  busi {bb}: retrained - table's {control} (test): {statistics.mean(moved):+.4f}")
        print(f"  busi: {row_line(rep, row)}; per image {per_image_mean(rep, row):.4f}")
        for other in (f"{bb}-reduced-long", f"{bb}-full-long", control):
            print(f"  busi: {gaps(rep, row, other)}; {per_seed_signs(rep, row, other)}")


def topk_ddti_amd(cpu: dict[str, dict], amd: dict) -> None:
    """DDTI: the top-0.5% rows rerun on the processor of the table's long rows (an AMD
    EPYC), against those rows directly; unext-full-long rerun beside them says whether this
    machine repeats the table's runs."""
    heading("DDTI: the top-0.5% rows rerun on the AMD EPYC of the table's long rows")
    rep = cpu["ddti"]
    again, table = by_seed(amd, "unext-full-long"), by_seed(rep, "unext-full-long")
    differences = {s: round(again[s] - table[s], 5) for s in sorted(set(again) & set(table))}
    print(f"  ddti: unext-full-long rerun - table's, test Dice by seed: {differences}")
    row = "malunet-stage1-presence-topk-0.005-long-both"
    print(f"  ddti: {row} here - table's (Intel Xeon) runs: {across(amd, row, rep, row)}")
    rows = {
        "malunet": (row, "malunet-frozen-aux-cached-long-both"),
        "unext": (
            "unext-stage1-presence-topk-0.005-aux-dropout-0.75-long-both",
            "unext-aux-dropout-0.75-long-both",
        ),
    }
    for bb, (row, control) in rows.items():
        if not by_seed(amd, row):
            continue
        print(f"  ddti: {row_line(amd, row)}; per image {per_image_mean(amd, row):.4f}")
        own, _ = stage1_test(amd, row)
        if own:  # recorded by the run that trained it
            print(f"  ddti {bb}: stage 1 alone {statistics.mean(own):.4f}")
        for other in (control, f"{bb}-reduced-48-long", f"{bb}-full-long"):
            for split in ("test", "per_image", "val"):
                print(
                    f"  ddti {bb} {split}: - table's {other}: {across(amd, row, rep, other, split)}"
                )


def gpu_bar(gpu: dict[str, dict]) -> None:
    heading("GPU: SemiSeg-CAW against the bar")
    for ds, sfx in DATASETS.items():
        rep, semi = gpu[ds], f"malunet-semiseg-caw{sfx}"
        print(
            f"  {ds}: {rep['hardware']['gpu']}, {rep['image_size']} px, {rep['epochs']} epochs "
            f"(stage 1: {rep['stage1_epochs']}), seeds {rep['seeds']}"
        )
        for row in (semi, f"malunet-reduced{sfx}", "malunet-full"):
            print(f"  {ds}: {row_line(rep, row)}")
        for other in (f"malunet-reduced{sfx}", "malunet-full"):
            print(f"  {ds}: {gaps(rep, semi, other)}; {per_seed_signs(rep, semi, other)}")
        print(f"  {ds}: paper's SemiSeg-CAW {rep['paper'][semi][0]:.3f}")
        # Sorted as text: a set holding None prints in a different order at each run.
        levers = sorted(
            {(r["cuda_graphs"], r.get("augment_on_device")) for r in rep["runs"]}, key=str
        )
        print(f"  {ds}: (cuda_graphs, augment_on_device) of its runs: {levers}")


def per_image_mean(rep: dict, row: str) -> float:
    """A row's mean Dice per test image, averaged over its seeds (the tables' Dice/img)."""
    return statistics.mean(
        r["metrics"]["seg/dice_per_image"] for r in rep["runs"] if r["row"] == row
    )


def gpu_long(gpu: dict[str, dict]) -> None:
    heading("GPU: the baselines' best epoch, and the -long controls")
    for ds, sfx in DATASETS.items():
        rep, semi = gpu[ds], f"malunet-semiseg-caw{sfx}"
        by = {r["row"]: r for r in rep["rows"]}
        best = {
            n: round(by[n]["best_epoch"]["mean"], 2)
            for n in (f"malunet-reduced{sfx}", "malunet-full")
        }
        print(f"  {ds}: mean best validation epoch (from 0, of {rep['epochs']}): {best}")
        long = [f"malunet-reduced{sfx}-long", "malunet-full-long"]
        print(
            f"  {ds}: long controls of {rep['long_epochs']} epochs; fit minutes (median) "
            + ", ".join(f"{n} {fit_minutes(rep, n):.2f}" for n in (semi, *long))
        )
        for short, row in zip((f"malunet-reduced{sfx}", "malunet-full"), long, strict=True):
            print(f"  {ds}: {row_line(rep, row)}; {gaps(rep, row, short)}")
        for row in long:
            test, val = by_seed(rep, semi), by_seed(rep, row)
            seeds = {s: round(test[s] - val[s], 4) for s in sorted(val)}
            val_gaps = {
                s: round(by_seed(rep, semi, "val")[s] - by_seed(rep, row, "val")[s], 4)
                for s in sorted(val)
            }
            print(
                f"  {ds}: {gaps(rep, semi, row)}; test per seed {seeds}; validation per seed {val_gaps}"
            )
        per_image = {n: round(per_image_mean(rep, n), 4) for n in (semi, *long)}
        print(f"  {ds}: Dice per test image, mean over seeds: {per_image}")


def gpu_stage1(gpu: dict[str, dict]) -> None:
    heading("GPU: where the lead comes from (stage 1 alone)")
    for ds, sfx in DATASETS.items():
        rep = gpu[ds]
        print(f"  {ds}: {row_line(rep, f'classelevate-alone{sfx}')}")
        print(f"  {ds}: {gaps(rep, f'malunet-semiseg-caw{sfx}', f'classelevate-alone{sfx}')}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the results JSON")
    results = p.parse_args(argv).results

    def each(part: str) -> dict[str, dict]:
        return {ds: load(results, f"{ds}-{part}") for ds in DATASETS}

    cpu, gpu = each("cpu"), each("gpu")
    tta, largest, both = each("cpu-tta"), each("cpu-largest"), each("cpu-tta-largest")
    maps, aux = each("map-reliance"), each("aux-gap")
    sizes = each("lesion-size")

    aux_lr(cpu)
    balance_classes(cpu)
    flip_tta(cpu, tta)
    largest_lesion(tta, largest, both)
    decoder(cpu)
    sharing(gpu)
    cpu_intro(cpu)
    malunet_long(cpu)
    malunet_frozen_long(cpu)
    malunet_long_both(cpu)
    unext_long(cpu)
    map_reliance(maps, aux)
    aux_dropout(cpu, maps, aux)
    unext_dropout(cpu)
    malunet_dropout(cpu)
    pseudo(cpu)
    lesion_sizes(sizes, cpu)
    variants = load(results / "stage1-variants", "busi-stage1-variants")
    stage1_variants(variants, sizes)
    no_presence_long(cpu, variants)
    no_presence_sizes(sizes, load(results / "stage1-no-presence", "busi-lesion-size"))
    same_machine(cpu, load(results / "same-machine", "busi-cpu"))
    if (results / "stage1-presence-topk" / "busi-lesion-size.json").is_file():
        presence_topk(
            cpu,
            load(results / "same-machine", "busi-lesion-size"),
            load(results / "stage1-presence-topk", "busi-lesion-size"),
        )
    topk_dropout(cpu, load(results / "same-machine", "busi-cpu"))
    if (results / "same-machine" / "ddti-cpu.json").is_file():
        same_machine(cpu, load(results / "same-machine", "ddti-cpu"), "ddti")
    if (results / "stage1-presence-topk" / "ddti-cpu.json").is_file():
        topk_ddti_amd(cpu, load(results / "stage1-presence-topk", "ddti-cpu"))
    gpu_bar(gpu)
    gpu_long(gpu)
    gpu_stage1(gpu)


if __name__ == "__main__":
    main()
