"""Data loading time of SemiSegDataModule on real BUSI: first epoch vs second epoch.

The first epoch pays for ``setup`` (decoding, validating and resizing every image once,
into memory); later epochs only augment and collate cached arrays, or, with
``augment_on_device``, only index them (the augmentation then runs on the training device,
which ``speed.py`` times). Writes a Markdown table with the commit, the hardware and the
settings beside the times.

    python benchmarks/data_loading.py --root ../shared/data/busi
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py, however loaded
from provenance import commit, describe, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _epoch(loader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["id"])
    return time.perf_counter() - start, n


def run(
    root: str, split_file: str, image_size: int, batch_size: int, workers: int, on_device: bool
) -> dict:
    """Time setup and two training epochs (plus one validation pass) for one setting."""
    from semiseg_caw.data import SemiSegDataModule

    dm = SemiSegDataModule(
        "busi",
        root,
        split_file=split_file,
        image_size=image_size,
        batch_size=batch_size,
        class_only=100,
        class_only_per_batch=0.25,
        num_workers=workers,
        augment_on_device=on_device,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    setup = time.perf_counter() - start
    loader = dm.train_dataloader()
    first, n = _epoch(loader)
    second, _ = _epoch(loader)
    val, n_val = _epoch(dm.val_dataloader())
    return {
        "workers": workers,
        "on_device": on_device,
        "setup": setup,
        "first": setup + first,
        "first_iter": first,
        "second": second,
        "val": val,
        "n": n,
        "n_val": n_val,
        "cached": len(dm.data.cache),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--split-file", default=str(REPO / "configs" / "splits" / "busi.json"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--no-on-device", action="store_true", help="skip the augment_on_device row (0 workers)"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data-loading.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import

    import albumentations
    import torch

    settings = [(w, False) for w in args.workers] + [(0, True)] * (not args.no_on_device)
    results = [
        run(args.root, args.split_file, args.image_size, args.batch_size, w, on_device)
        for w, on_device in settings
    ]
    lines = [
        "# Data loading: first vs second epoch (real BUSI)",
        "",
        "Written by `benchmarks/data_loading.py`; do not edit by hand.",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit('semiseg_caw/data', 'benchmarks')}",
        f"- hardware: {describe(machine())} at the end (the CPU may be shared)",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"albumentations {albumentations.__version__}",
        f"- settings: BUSI benign + malignant, split `{Path(args.split_file).name}`, "
        f"image_size {args.image_size}, batch_size {args.batch_size}, class_only 100, "
        "class_only_per_batch 0.25, augmentation on (in the loader, or on the training "
        "device after the loader: `augment_on_device`, not timed here); data set decoded whole "
        f"({results[0]['cached']} images kept in the cache)",
        "",
        "First epoch = `setup` (decode, validate, resize and cache every image once) + one "
        "pass over the training loader; second epoch = one pass only (cached arrays: "
        "augmentation and collation, no decoding).",
        "",
        "| workers | augmentation | setup (s) | first epoch (s) | second epoch (s) "
        "| train samples/s (2nd) | val pass (s) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['workers']} | {'on the device' if r['on_device'] else 'loader'} "
            f"| {r['setup']:.2f} | {r['first']:.2f} "
            f"(iteration {r['first_iter']:.2f}) | {r['second']:.2f} | "
            f"{r['n'] / r['second']:.0f} | {r['val']:.2f} ({r['n_val']} images) |"
        )
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
