"""Which lesions does a model get right? Dice per image by lesion size.

The pooled Dice (the paper's) weighs every image by its lesion's area; the mean Dice per
image weighs the images equally. Where the two order models differently (on BUSI,
SemiSeg-CAW leads the MALUNet baselines trained as long in pooled Dice and trails them per
image) the difference lies in how each model does on small and on large lesions. This
script scores checkpoints (of either stage, and the plain baselines) image by image on the
validation and the test split, with each split's images put into thirds by the area of
their ground-truth lesion (the same thirds for every checkpoint): the mean Dice per image in
each third, over the split, the pooled Dice, the lesions missed (Dice below 0.1), and
whether a model over- or under-segments each third (predicted / true lesion area, precision
and recall).

    python benchmarks/lesion_size.py --dataset busi --image-size 96 --checkpoint \\
        runs/bench/busi-cpu/malunet-full-long/seed*/checkpoints/best-*.ckpt

Writes ``benchmarks/results/<dataset>-lesion-size.{json,md}`` (one row per checkpoint, and
the mean of each benchmark row's seeds, whichever work folder they ran in).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aux_gap import benchmark_data, header, parse, save  # noqa: E402
from map_reliance import run_of  # noqa: E402

from semiseg_caw import PooledSegMetrics  # noqa: E402
from semiseg_caw.checkpoints import checkpoint_writer, import_class, read_checkpoint  # noqa: E402
from semiseg_caw.data.transforms import normalize  # noqa: E402
from semiseg_caw.metrics import dice_per_image  # noqa: E402

THIRDS = ("small", "medium", "large")
SPLITS = {"val": "validation", "test": "test"}
MISSED = 0.1  # a lesion scored below this Dice counts as missed
# False positives farther than this (a fraction of the image side) from the lesion are "far":
# a second region, not a too-wide border.
FAR = 0.05


def row_of(checkpoint: str) -> str:
    """The benchmark row a checkpoint's run belongs to, by name, so that seeds trained in
    different work folders are averaged together: ``malunet-full-long``, or
    ``malunet-frozen-aux-cached-long-both/stage1`` for a stage 1 trained inside a fit."""
    run = Path(run_of(checkpoint))
    return f"{run.parent.name}/stage1" if run.name == "stage1" else run.name


def load_task(checkpoint: Path) -> torch.nn.Module:
    """The task that wrote ``checkpoint`` (ClassElevateSeg or SemiSegCAW), in eval mode."""
    writer = checkpoint_writer(read_checkpoint(checkpoint))
    task = import_class(writer) if writer else None
    if task is None:
        raise SystemExit(f"{checkpoint}: does not name the task that wrote it")
    return task.load_from_checkpoint(checkpoint, map_location="cpu").eval()


def size_groups(dm, split: str) -> dict[str, list[int]]:
    """Cache rows of a split's images in thirds by lesion area (ties kept together: the
    boundaries are the 1/3 and 2/3 quantiles); images without a lesion in a group of their
    own."""
    cache = dm.data.cache
    rows = [cache.index[s.id] for s in dm.splits[split]]
    area = {r: _area(cache, r) for r in rows}
    lesions = sorted(a for a in area.values() if a > 0)
    groups: dict[str, list[int]] = {name: [] for name in THIRDS}
    groups["no lesion"] = [r for r in rows if area[r] == 0]
    if lesions:
        low, high = (lesions[int(len(lesions) * q)] for q in (1 / 3, 2 / 3))
        for r in rows:
            if area[r] > 0:
                groups[
                    "small" if area[r] < low else "medium" if area[r] < high else "large"
                ].append(r)
    return {name: rs for name, rs in groups.items() if rs}


@torch.no_grad()
def measure(checkpoint: Path, dm, groups: dict[str, dict[str, list[int]]]) -> dict:
    task = load_task(checkpoint)
    cache = dm.data.cache
    result = {"checkpoint": str(checkpoint), "task": type(task).__name__}
    for split, by_size in groups.items():
        rows = [r for rs in by_size.values() for r in rs]
        dice, counts, pooled = {}, {}, PooledSegMetrics()
        for start in range(0, len(rows), 32):
            chunk = rows[start : start + 32]
            x = torch.stack([normalize(cache.images[r], task.in_channels) for r in chunk])
            target = torch.from_numpy(cache.masks[chunk]).float()[:, None]
            logits, _ = task.evaluate_batch({"image": x})
            pooled.update(logits, target)
            dice.update(zip(chunk, dice_per_image(logits, target).tolist(), strict=True))
            pred, true = torch.sigmoid(logits) >= 0.5, target > 0.5  # the metrics' threshold
            reach = round(FAR * true.shape[-1])
            near = F.max_pool2d(true.float(), 2 * reach + 1, 1, reach) > 0
            pixels = torch.stack(
                [
                    pred.sum((1, 2, 3)),
                    true.sum((1, 2, 3)),
                    (pred & true).sum((1, 2, 3)),
                    (pred & ~near).sum((1, 2, 3)),
                ],
                1,
            )
            counts.update(zip(chunk, pixels.tolist(), strict=True))
        result[split] = {
            "pooled": float(pooled.compute()["dice"]),
            "per_image": statistics.mean(dice.values()),
            "groups": {name: _group(rs, dice, counts) for name, rs in by_size.items()},
        }
    return result


def _group(rows: list[int], dice: dict[int, float], counts: dict[int, list[int]]) -> dict:
    """A third's scores: mean Dice per image, lesions missed, and whether the model over- or
    under-segments there (median predicted / true lesion area; pooled precision and recall;
    the share of its false-positive pixels that lie far from the lesion)."""
    predicted, true, hit, far = (sum(counts[r][i] for r in rows) for i in range(4))
    ratios = [counts[r][0] / counts[r][1] for r in rows if counts[r][1]]
    return {
        "images": len(rows),
        "per_image": statistics.mean(dice[r] for r in rows),
        "missed": sum(dice[r] < MISSED for r in rows),
        "area_ratio": statistics.median(ratios) if ratios else None,  # None: no lesion
        "precision": hit / predicted if predicted else 0.0,
        "recall": hit / true if true else 0.0,
        "far_fp": far / (predicted - hit) if predicted > hit else None,  # None: no false positive
    }


def markdown(record: dict) -> str:
    setting = (
        f"{record['image_size']} px; per split, its images in thirds by ground-truth lesion "
        "area (fraction of the image; the boundaries in each heading); in each third the "
        f"mean Dice per image and, in brackets, the lesions missed (Dice below {MISSED}); "
        "threshold 0.5. Diagnostic only: nothing here chooses a setting."
    )
    lines = header(record, "Dice per image by lesion size", "lesion_size.py", setting)
    for split, name in SPLITS.items():
        groups = record["groups"][split]
        cols = [f"{g} ({groups[g]['images']}, area {groups[g]['area']})" for g in groups]
        lines += [
            f"## {name.capitalize()}",
            "",
            "| checkpoint | pooled Dice | Dice per image | " + " | ".join(cols) + " |",
            "|---|---|---|" + "---|" * len(cols),
        ]
        runs: dict[str, list[dict]] = {}
        for row in record["rows"]:
            scores = row[split]
            runs.setdefault(row_of(row["checkpoint"]), []).append(scores)
            lines.append(f"| `{row['checkpoint']}` | " + " | ".join(_cells(scores, groups)) + " |")
        for run, seeds in runs.items():
            if len(seeds) > 1:
                mean = _mean_scores(seeds, groups)
                lines.append(
                    f"| mean of `{run}` ({len(seeds)}) | " + " | ".join(_cells(mean, groups)) + " |"
                )
        lines += [
            "",
            "Predicted / true lesion area (median over the third's images); precision, recall; "
            f"the share of false-positive pixels farther than {FAR:.0%} of the image side from "
            "the lesion:",
            "",
        ]
        lines += [
            "| checkpoint | " + " | ".join(groups) + " |",
            "|---|" + "---|" * len(groups),
        ]
        for run, seeds in runs.items():
            g = _mean_scores(seeds, groups)["groups"] if len(seeds) > 1 else seeds[0]["groups"]
            label = f"mean of `{run}` ({len(seeds)})" if len(seeds) > 1 else f"`{run}`"
            cells = [
                f"{_fmt(g[n]['area_ratio'], 2)}; {g[n]['precision']:.3f}, {g[n]['recall']:.3f}; "
                f"{_fmt(g[n].get('far_fp'), 2)}"
                for n in groups
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cells(scores: dict, groups: dict) -> list[str]:
    g = scores["groups"]
    return [
        f"{scores['pooled']:.3f}",
        f"{scores['per_image']:.3f}",
        *(f"{g[name]['per_image']:.3f} ({g[name]['missed']:g})" for name in groups),
    ]


def _fmt(value: float | None, decimals: int) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def _mean_scores(seeds: list[dict], groups: dict) -> dict:
    def mean(get) -> float | None:
        values = [get(s) for s in seeds]
        return None if None in values else statistics.mean(values)

    return {
        "pooled": mean(lambda s: s["pooled"]),
        "per_image": mean(lambda s: s["per_image"]),
        "groups": {
            name: {
                key: mean(lambda s, n=name, k=key: s["groups"][n][k])
                for key in ("per_image", "missed", "area_ratio", "precision", "recall", "far_fp")
            }
            for name in groups
        },
    }


def main(argv: list[str] | None = None) -> dict:
    a = parse(__doc__, argv)
    started = time.perf_counter()
    dm = benchmark_data(a)
    groups = {split: size_groups(dm, split) for split in SPLITS}
    rows = [measure(c, dm, groups) for c in a.checkpoint]
    cache = dm.data.cache
    described = {  # each third's images and lesion areas: the Markdown's column heads
        split: {
            name: {"images": len(rs), "area": _area_range([_area(cache, r) for r in rs])}
            for name, rs in by_size.items()
        }
        for split, by_size in groups.items()
    }
    return save(a, "lesion-size", rows, started, markdown, groups=described)


def _area(cache, row: int) -> float:
    """The fraction of an image its ground-truth lesion covers."""
    return float(cache.masks[row].astype(bool).mean())


def _area_range(areas: list[float]) -> str:
    return f"{min(areas):.3f}–{max(areas):.3f}"


if __name__ == "__main__":
    main()
