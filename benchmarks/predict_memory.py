"""Peak memory of ``semiseg-caw predict`` over folders of 200 and 2,000 synthetic PNGs.

Prediction decodes each image only when the loader asks for it, writes its outputs and
forgets it (``return_predictions`` off, the CSV written row by row), so memory should not
grow with the folder. Each measurement runs in a fresh process (peak RSS: its high-water
mark, RSS sampled after every batch with psutil); for comparison, the same folders
are also decoded whole into an ``ImageCache`` the way ``load_image_folder`` does (the
predict setup before it decoded lazily). Writes a Markdown table with the commit, the
hardware and the settings beside the numbers.

    python benchmarks/predict_memory.py            # 200 and 2000 images
    python benchmarks/predict_memory.py --sizes 200 2000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py, however loaded
from provenance import commit, describe, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "predict-memory.md"
IMAGE_SIDE = 256  # pixels of each synthetic PNG
MODEL_SIZE = 128  # image_size the model sees
BATCH = 16
MODEL = ["--model=semiseg_caw.SemiSegCAW", "--model.init_args.aux_source=none"]
QUIET = [
    "--trainer.accelerator=cpu",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
# Changes here make the commit "-dirty" in the report.
DIRTY_PATHS = [
    "semiseg_caw/data",
    "semiseg_caw/lit/writer.py",
    "semiseg_caw/cli.py",
    "semiseg_caw/checkpoint_match.py",
    "semiseg_caw/command_line.py",
    "benchmarks",
]


def _peak_mib() -> float:
    """This process's peak RSS (MiB) since it started (since its exec)."""
    try:  # Linux: the high-water mark of this program's memory map
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    # Elsewhere: getrusage, which on Linux would also count a forking parent's memory.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


# -- child processes: one measurement each ------------------------------------------------


class SampleRSS(Callback):
    """Records the process's RSS (MiB) after every predict batch, in ``samples``."""

    samples: list[float] = []

    def on_predict_batch_end(self, trainer, *args, **kwargs) -> None:
        import psutil

        self.samples.append(psutil.Process().memory_info().rss / 2**20)


def _child_predict(checkpoint: str, folder: str, out: str) -> dict:
    from semiseg_caw.cli import main

    start = time.perf_counter()
    main(
        [
            "predict",
            *MODEL,
            f"--data.image_size={MODEL_SIZE}",
            f"--data.eval_batch_size={BATCH}",
            f"--data.predict_dir={folder}",
            f"--prediction.output_dir={out}",
            f"--ckpt_path={checkpoint}",
            *QUIET,
            f"--trainer.default_root_dir={Path(out).parent / 'run'}",
            "--trainer.callbacks+=__main__.SampleRSS",
        ]
    )
    samples = SampleRSS.samples
    lines = (Path(out) / "predictions.csv").read_text().splitlines()
    return {
        "peak_mib": _peak_mib(),
        "rss_at_10pct_mib": samples[max(0, len(samples) // 10 - 1)],
        "rss_at_end_mib": samples[-1],
        "seconds": time.perf_counter() - start,
        "rows": len(lines) - 1,
    }


def _child_cache(folder: str) -> dict:
    from semiseg_caw.data.readers import load_image_folder

    base = _peak_mib()
    start = time.perf_counter()
    paths, cache = load_image_folder(folder, MODEL_SIZE)
    return {
        "peak_mib": _peak_mib(),
        "before_mib": base,
        "seconds": time.perf_counter() - start,
        "cache_mib": cache.images.nbytes / 2**20,
        "images": len(paths),
    }


def _run_child(*args: str) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the parent: data, model, table ------------------------------------------------------


def _write_images(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE] / IMAGE_SIDE
    for k in range(count):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) * 30) * 120
        noise = rng.normal(0, 10, yy.shape)
        gray = np.clip(50 + 40 * yy + blob + noise, 0, 255).astype(np.uint8)
        Image.fromarray(gray).save(folder / f"img{k:05d}.png")


def _train_checkpoint(root: Path) -> Path:
    from semiseg_caw.cli import main

    main(
        [
            "fit",
            *MODEL,
            "--seed_everything=0",
            f"--data.image_size={MODEL_SIZE}",
            "--data.batch_size=8",
            "--data.synthetic_samples=40",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            *QUIET,
            f"--trainer.default_root_dir={root}",
        ]
    )
    return root / "checkpoints" / "last.ckpt"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = _child_predict(*rest) if kind == "predict" else _child_cache(*rest)
        print(json.dumps(result))
        return

    import torch

    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "disabled")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        checkpoint = _train_checkpoint(tmp_path / "fit")
        for count in args.sizes:
            folder = tmp_path / f"images{count}"
            _write_images(folder, count)
            predicted = _run_child(
                "predict", str(checkpoint), str(folder), str(tmp_path / f"out{count}")
            )
            cached = _run_child("cache", str(folder))
            rows.append((count, predicted, cached))
            print(count, predicted, cached, flush=True)

    lines = [
        "# Prediction memory: 200 vs 2,000 images",
        "",
        "Written by `benchmarks/predict_memory.py`; do not edit by hand.",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit(*DIRTY_PATHS)}",
        f"- hardware: {describe({**machine(), 'gpu': None})} at the end (the CPU is shared)",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}",
        f"- settings: synthetic {IMAGE_SIDE}x{IMAGE_SIDE} 8-bit PNGs; SemiSegCAW (MALUNet, "
        f"aux_source none, classifier) trained 2 steps; image_size {MODEL_SIZE}, "
        f"eval_batch_size {BATCH}, num_workers 0, CPU, {torch.get_num_threads()} torch "
        "thread(s); mask + overlay PNG per image and "
        "predictions.csv written; each measurement a fresh process",
        "",
        "`predict`: the whole `semiseg-caw predict` run in one process (CLI, model, loader, "
        "writer). Peak RSS: the process's high-water mark (`VmHWM`); RSS sampled after every batch with psutil, "
        "shown after the first tenth of the batches and after the last. `decode-all cache`: "
        "the same folder decoded at once into an `ImageCache` (`load_image_folder`), the way "
        "the predict setup worked before it decoded lazily, in a fresh process.",
        "",
        "| images | predict: peak RSS (MiB) | RSS after 10 % / 100 % of batches (MiB) "
        "| predict time (s) | decode-all cache: peak RSS (MiB) | cache arrays (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for count, p, c in rows:
        lines.append(
            f"| {count} | {p['peak_mib']:.0f} | {p['rss_at_10pct_mib']:.0f} / "
            f"{p['rss_at_end_mib']:.0f} | {p['seconds']:.1f} | {c['peak_mib']:.0f} "
            f"| {c['cache_mib']:.1f} |"
        )
    lines += [
        "",
        f"About {rows[0][2]['before_mib']:.0f} MiB of every figure is the libraries loaded at "
        "start (torch, Lightning, ...): the RSS of the decode-all process after its imports.",
    ]
    if len(rows) >= 2:
        (n0, p0, c0), (n1, p1, c1) = rows[0], rows[-1]
        lines.append(
            f"From {n0} to {n1} images the peak RSS of `predict` changes by "
            f"{p1['peak_mib'] - p0['peak_mib']:+.0f} MiB "
            f"({(p1['peak_mib'] - p0['peak_mib']) / (n1 - n0) * 1024:+.1f} KiB per image); "
            f"that of decoding the folder whole by {c1['peak_mib'] - c0['peak_mib']:+.0f} MiB."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
