"""How much does a trained SemiSeg-CAW core model lean on its auxiliary map?

For each stage-2 checkpoint, on the validation and the test images: the pooled Dice of the
core model, of its auxiliary map alone (threshold 0.5), the agreement between the two (the
Dice of the core model's mask against the map's), the core model's Dice when its map is
replaced by zeros, and the Dice of the mean of those two predictions (with and without the
map: a test-time average for models trained with ``aux_dropout``). A core model that
settled for copying the map agrees with it closely and collapses without it; one that
learnt from the image too keeps much of its Dice. Choose between the core model and the
average on validation; the test columns are for reporting.

    python benchmarks/map_reliance.py --dataset busi --image-size 96 --checkpoint \\
        runs/bench/busi-cpu/unext-aux-dropout-long-both/seed*/checkpoints/best-*.ckpt

Writes ``benchmarks/results/<dataset>-map-reliance.{json,md}`` (one row per checkpoint,
and the mean of each run's seeds).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aux_gap import benchmark_data, header, parse, save  # noqa: E402

from semiseg_caw import PooledSegMetrics, SemiSegCAW  # noqa: E402
from semiseg_caw.data.transforms import normalize  # noqa: E402

COLUMNS = {
    "core": "core model",
    "map": "its map alone",
    "agreement": "core against map",
    "core_without_map": "core model, map zeroed",
    "mean_with_without": "mean of core with and without map",
}
SPLITS = {"val": "validation", "test": "test"}


@torch.no_grad()
def measure(checkpoint: Path, dm) -> dict:
    model = SemiSegCAW.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    if model.net.aux_model is None:
        raise SystemExit(f"{checkpoint}: a model without an auxiliary map (aux_source none)")
    dice = {split: split_dice(model, dm, split) for split in SPLITS}
    images = {split: len(dm.splits[split]) for split in SPLITS}
    return {"checkpoint": str(checkpoint), "images": images, "dice": dice}


def split_dice(model: SemiSegCAW, dm, split: str) -> dict[str, float]:
    """Every column's pooled Dice on one split."""
    cache = dm.data.cache
    rows = [cache.index[s.id] for s in dm.splits[split]]
    metrics = {key: PooledSegMetrics() for key in COLUMNS}
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        x = torch.stack([normalize(cache.images[r], model.in_channels) for r in chunk])
        target = torch.from_numpy(cache.masks[chunk]).float()[:, None]
        out = model.net(x)
        zeroed = model.net(x, aux_map=torch.zeros_like(out.aux_map))
        mean = (torch.sigmoid(out.mask_logits) + torch.sigmoid(zeroed.mask_logits)) / 2
        metrics["core"].update(out.mask_logits, target)
        metrics["map"].update(_logit(out.aux_map), target)
        metrics["agreement"].update(out.mask_logits, (out.aux_map >= 0.5).float())
        metrics["core_without_map"].update(zeroed.mask_logits, target)
        metrics["mean_with_without"].update(_logit(mean), target)
    return {key: float(m.compute()["dice"]) for key, m in metrics.items()}


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(1e-6, 1 - 1e-6))


def run_of(checkpoint: str) -> str:
    """The run a checkpoint belongs to: its path without the seed folder and the file
    (``runs/bench/busi-cpu/unext-aux-dropout-long-both/seed0/checkpoints/best.ckpt`` ->
    ``runs/bench/busi-cpu/unext-aux-dropout-long-both``; its stage 1's, in ``seed0/stage1/``,
    -> ``runs/bench/busi-cpu/unext-aux-dropout-long-both/stage1``)."""
    parts = Path(checkpoint).parts
    seeds = [i for i, part in enumerate(parts) if part.startswith("seed")]
    if not seeds:
        return checkpoint
    run = Path(*parts[: seeds[-1]])
    return str(run / "stage1") if "stage1" in parts[seeds[-1] + 1 : -1] else str(run)


def markdown(record: dict) -> str:
    images = record["rows"][0]["images"]
    setting = (
        f"Validation ({images['val']} images) and test ({images['test']}), "
        f'{record["image_size"]} px; pooled Dice at threshold 0.5. "core against map": the '
        "core model's mask scored against the map's; \"map zeroed\": the same model given an "
        'empty map; "mean": the mean of those two probabilities. Settings are chosen on '
        "validation."
    )
    title = "How much the core model leans on its auxiliary map"
    lines = header(record, title, "map_reliance.py", setting)
    for split, name in SPLITS.items():
        lines += [
            f"## {name.capitalize()}",
            "",
            "| checkpoint | " + " | ".join(COLUMNS.values()) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        runs: dict[str, list[dict]] = {}
        for row in record["rows"]:
            dice = row["dice"][split]
            runs.setdefault(run_of(row["checkpoint"]), []).append(dice)
            cells = [f"{dice[key]:.3f}" for key in COLUMNS]
            lines.append(f"| `{row['checkpoint']}` | " + " | ".join(cells) + " |")
        for run, dices in runs.items():
            if len(dices) > 1:
                cells = [f"{statistics.mean(d[key] for d in dices):.3f}" for key in COLUMNS]
                lines.append(f"| mean of `{run}` ({len(dices)}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    a = parse(__doc__, argv)
    started = time.perf_counter()
    dm = benchmark_data(a)
    return save(a, "map-reliance", [measure(c, dm) for c in a.checkpoint], started, markdown)


if __name__ == "__main__":
    main()
