"""How much does a trained SemiSeg-CAW core model lean on its auxiliary map?

For each stage-2 checkpoint, on the test images: the pooled Dice of the core model, of its
auxiliary map alone (threshold 0.5), the agreement between the two (the Dice of the core
model's mask against the map's), and the core model's Dice when its map is replaced by
zeros. A core model that settled for copying the map agrees with it closely and collapses
without it; one that learnt from the image too keeps much of its Dice.

    python benchmarks/map_reliance.py --dataset busi --image-size 96 --checkpoint \\
        runs/bench/busi-cpu/unext-aux-dropout-long-both/seed*/checkpoints/best-*.ckpt

Writes ``benchmarks/results/<dataset>-map-reliance.{json,md}`` (one row per checkpoint).
"""

from __future__ import annotations

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
}


@torch.no_grad()
def measure(checkpoint: Path, dm) -> dict:
    model = SemiSegCAW.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    if model.net.aux_model is None:
        raise SystemExit(f"{checkpoint}: a model without an auxiliary map (aux_source none)")
    cache = dm.data.cache
    rows = [cache.index[s.id] for s in dm.splits["test"]]
    metrics = {key: PooledSegMetrics() for key in COLUMNS}
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        x = torch.stack([normalize(cache.images[r], model.in_channels) for r in chunk])
        target = torch.from_numpy(cache.masks[chunk]).float()[:, None]
        out = model.net(x)
        map_logits = torch.logit(out.aux_map.clamp(1e-6, 1 - 1e-6))
        metrics["core"].update(out.mask_logits, target)
        metrics["map"].update(map_logits, target)
        metrics["agreement"].update(out.mask_logits, (out.aux_map >= 0.5).float())
        zeroed = model.net(x, aux_map=torch.zeros_like(out.aux_map))
        metrics["core_without_map"].update(zeroed.mask_logits, target)
    dice = {key: float(m.compute()["dice"]) for key, m in metrics.items()}
    return {"checkpoint": str(checkpoint), "test_images": len(rows), "dice": dice}


def markdown(record: dict) -> str:
    setting = (
        f"Test split ({record['rows'][0]['test_images']} images), {record['image_size']} px; "
        'pooled Dice at threshold 0.5. "core against map": the core model\'s mask scored '
        'against the map\'s; "map zeroed": the same model given an empty map.'
    )
    title = "How much the core model leans on its auxiliary map"
    lines = [
        *header(record, title, "map_reliance.py", setting),
        "| checkpoint | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for row in record["rows"]:
        cells = [f"{row['dice'][key]:.3f}" for key in COLUMNS]
        lines.append(f"| `{row['checkpoint']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    a = parse(__doc__, argv)
    started = time.perf_counter()
    dm = benchmark_data(a)
    return save(a, "map-reliance", [measure(c, dm) for c in a.checkpoint], started, markdown)


if __name__ == "__main__":
    main()
