"""Training and inference speed of SemiSeg-CAW and its baselines, side by side (issue 6).

One run measures, on one machine and with the same data:

- bare MALUNet (the baseline config: ``aux_source none``, no classifier, BCE + Dice, static
  weights), bare UNeXt, ClassElevateSeg alone (stage 1), SemiSeg-CAW with the auxiliary
  model fine-tuned, only its decoder fine-tuned (``aux_mode decoder``), frozen (maps
  computed live in every step) and frozen with its maps computed once and cached
  (``cache_aux_maps``);
- training seconds per 472-image epoch (the real Lightning fit loop: data loading,
  augmentation, forward, backward, optimiser, logging; no validation), the loader alone,
  inference ms per image at batch 1 and images/s at a large batch, peak memory;
- every time also as a ratio to the bare MALUNet of the same round.

Each (variant, round) runs in its own process (fresh memory peak, no state carried over);
rounds interleave the variants in rotated order, and the table gives medians over rounds,
ratios taken within each round first. The data set is loaded once and handed to the
workers pickled.

    python benchmarks/speed.py --threads 1                       # CPU: 128 px, timed steps
    python benchmarks/speed.py --device cuda --epochs 2 --rounds 1                   # ~4 min
    python benchmarks/speed.py --device cuda --epochs 2 --rounds 1 --cuda-graph --tag graphs
    python benchmarks/speed.py --device cuda --epochs 2 --rounds 1 --precision bf16-mixed \
        --channels-last --variants malunet caw-finetune caw-cached --tag bf16-cl
    python benchmarks/speed.py --device cuda --epochs 2 --rounds 0 --share 3 --variants malunet
    python benchmarks/speed.py --device cuda --epochs 2 --rounds 1 --cuda-graph --host-guard \
        --variants malunet caw-finetune --tag host-guard   # what a host sync per step costs
    python benchmarks/speed.py --device cuda --epochs 2 --rounds 1 --compile reduce-overhead \
        --variants malunet --worker-timeout 300 --tag compile

On the H200 a worker process needs about 30 s (imports, CUDA start) before its first step,
so a round takes about 35 s a variant (3.3 min for the six of ``results/speed-h200.md``;
about 4 min for all seven): size ``--rounds`` and the device call to that.

Writes ``benchmarks/results/speed-<hardware>.md`` (and ``.json``).

Whether a lever changes the training result as well: ``speed_check.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py, however loaded
from provenance import commit, describe, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DIRTY_PATHS = ["semiseg_caw", "benchmarks/speed.py"]  # changes here make the commit "-dirty"
ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
EPOCH_IMAGES = 472  # the reference epoch (BUSI benign + malignant train images)

# name: (label, LightningModule, init arguments)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "malunet": (
        "bare MALUNet (baseline)",
        "SemiSegCAW",
        dict(aux_source="none", classifier=False, loss_terms=["bce", "dice"], weighting="static"),
    ),
    "unext": (
        "bare UNeXt",
        "SemiSegCAW",
        dict(
            backbone="unext",
            aux_source="none",
            classifier=False,
            loss_terms=["bce", "dice"],
            weighting="static",
        ),
    ),
    "classelevate": ("ClassElevateSeg alone (stage 1)", "ClassElevateSeg", {}),
    "caw-finetune": ("SemiSeg-CAW, aux fine-tuned", "SemiSegCAW", {}),
    "caw-decoder": (
        "SemiSeg-CAW, aux decoder fine-tuned",
        "SemiSegCAW",
        dict(aux_mode="decoder"),
    ),
    "caw-frozen": ("SemiSeg-CAW, aux frozen, live maps", "SemiSegCAW", dict(aux_mode="frozen")),
    "caw-cached": (
        "SemiSeg-CAW, aux frozen, cached maps",
        "SemiSegCAW",
        dict(aux_mode="frozen", cache_aux_maps=True),
    ),
}


# ---------------------------------------------------------------------------- the worker
def _rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _build_module(variant: str, args: argparse.Namespace):
    import semiseg_caw

    _, cls_name, kwargs = VARIANTS[variant]
    if args.cuda_graph:
        kwargs = {**kwargs, "cuda_graphs": True}
    cls = getattr(semiseg_caw, cls_name)
    module = cls(num_classes=2, in_channels=1, **kwargs)
    if args.host_guard:  # as before the device guard: the loss checked on the host each step
        module._make_device_guard = lambda: None
    return module


def _channels_last(module) -> None:
    """Weights and every image-like batch tensor in channels-last memory format."""
    import torch

    module.to(memory_format=torch.channels_last)
    original = module.on_after_batch_transfer

    def on_after_batch_transfer(batch, dataloader_idx):
        batch = original(batch, dataloader_idx)
        for key in ("image", "mask", "aux_map"):
            if key in batch:
                batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        return batch

    module.on_after_batch_transfer = on_after_batch_transfer


def _compile(module, mode: str, device: str, sample: dict) -> str:
    """torch.compile the module's network in place; back to eager (with the reason) when
    compiling or a first forward + backward fails. Only tried on CUDA."""
    import torch

    if mode == "off":
        return "off"
    if device != "cuda":
        return "skipped (CPU: compile is only tried on CUDA)"
    eager = module.net
    try:
        compiled = torch.compile(eager, mode=mode)
        module.net = compiled
        module.to(device)
        start = time.perf_counter()
        compiled(sample["image"].to(device)).mask_logits.float().mean().backward()
        module.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return f"{mode} (first compile {time.perf_counter() - start:.0f} s)"
    except Exception as err:  # compile failures come in many kinds
        module.net = eager
        module.zero_grad(set_to_none=True)
        message = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        print(f"torch.compile failed, running eager: {message}", file=sys.stderr)
        return f"failed, eager ({message})"


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.worker`` for the timed steps or epochs, then time inference."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.data_file, "rb") as f:
        dm = pickle.load(f)
    dm.num_workers = args.workers
    rss_data = _rss_mib()
    L.seed_everything(0, verbose=False)
    module = _build_module(args.worker, args)
    device = args.device
    if args.channels_last:
        _channels_last(module)
    sample = next(iter(dm.val_dataloader()))
    compile_note = _compile(module, args.compile, device, sample)

    class Timer(Callback):
        def __init__(self) -> None:
            self.batch_ends: list[float] = []
            self.epochs: list[float] = []
            self.fit_start = self.train_start = 0.0
            self.epoch_start = 0.0
            self.images = 0

        def on_fit_start(self, trainer, pl_module) -> None:
            self.fit_start = time.perf_counter()

        def on_train_start(self, trainer, pl_module) -> None:
            _sync(device)
            self.train_start = time.perf_counter()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            _sync(device)
            self.epoch_start = time.perf_counter()
            self.images = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync(device)
            self.batch_ends.append(time.perf_counter())
            self.images += len(batch["id"])

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            _sync(device)
            self.epochs.append((time.perf_counter() - self.epoch_start, self.images))

    timer = Timer()
    steps_per_epoch = len(dm.train_dataloader())
    if args.epochs:
        limits = dict(max_epochs=args.epochs)
    else:
        limits = dict(max_steps=args.warmup + args.steps, max_epochs=-1)
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        precision=args.precision,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        benchmark=True if args.cudnn_benchmark else None,  # None: torch's default (off)
        **limits,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    train_peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None

    result: dict[str, Any] = {
        "variant": args.worker,
        "setup_s": timer.train_start - timer.fit_start,
        "batch_size": dm.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "train_images": len(dm.train_dataloader().dataset),
        "compile": compile_note,
    }
    if args.cuda_graph:
        graphed = ", ".join(module.cuda_graphed) or "none"
        result["compile"] += f"; CUDA graphs ({args.worker}): {graphed}"
    if args.epochs:
        # First epoch is warm-up; later epochs timed whole (epoch-boundary costs included).
        timed = timer.epochs[1:] or timer.epochs
        per_image = statistics.median(t / n for t, n in timed)
        result["epoch_s"] = per_image * EPOCH_IMAGES
        result["epochs_timed"] = [round(t, 4) for t, _ in timed]
    else:
        ends = timer.batch_ends[args.warmup - 1 :] if args.warmup else timer.batch_ends
        intervals = [b - a for a, b in zip(ends, ends[1:], strict=False)]
        step = statistics.median(intervals)
        result["step_s"] = step
        result["epoch_s"] = step / dm.batch_size * EPOCH_IMAGES
        result["step_intervals"] = [round(x, 4) for x in intervals]

    # The loader alone: one pass over the training batches (augmentation and collation).
    loader = dm.train_dataloader()
    start, n = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        n += len(batch["id"])
        if not args.epochs and i + 1 >= args.steps:
            break
    result["loader_epoch_s"] = (time.perf_counter() - start) / n * EPOCH_IMAGES

    # Inference: the network alone on evaluation images (live auxiliary maps: new images
    # have no cached map), under the trainer's precision.
    module.eval()
    module.to(device)
    images = torch.cat([b["image"] for b in dm.val_dataloader()])
    while len(images) < args.infer_batch:
        images = torch.cat([images, images])
    images = images.to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device, dtype=torch.bfloat16)
        if args.precision.startswith("bf16")
        else torch.autocast(device, enabled=False)
    )

    def infer(x):
        with torch.inference_mode(), autocast:
            return module.evaluate_batch({"image": x})

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(3):
        infer(images[i : i + 1])
    times = []
    for i in range(args.infer_reps_b1):
        x = images[i % len(images)][None]
        _sync(device)
        start = time.perf_counter()
        infer(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    result["infer_b1_ms"] = statistics.median(times) * 1e3
    big = images[: args.infer_batch]
    infer(big)
    times = []
    for _ in range(args.infer_reps):
        _sync(device)
        start = time.perf_counter()
        infer(big)
        _sync(device)
        times.append(time.perf_counter() - start)
    result["infer_big_ips"] = len(big) / statistics.median(times)
    result["infer_batch"] = len(big)
    if device == "cuda":
        result["train_peak_mib"] = train_peak_cuda
        result["infer_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["train_peak_mib"] = _peak_rss_mib()
        result["rss_data_mib"] = rss_data
        result["rss_before_fit_mib"] = rss_before
    return result


# ---------------------------------------------------------------------------- the parent
def hardware_names(device: str) -> tuple[str, str]:
    """A description and a file-name slug of the machine."""
    m = machine()
    if device == "cuda":
        return describe(m), m["gpu"].lower().replace("nvidia", "").strip().replace(" ", "-")
    return describe({**m, "gpu": None}), f"cpu-{m['cores']}core"


def _prepare_data(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    from semiseg_caw.data import SemiSegDataModule

    busi = Path(args.busi_root)
    common = dict(
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=42,
        augment_on_device=args.augment_on_device,
    )
    if args.data == "busi" or (args.data == "auto" and busi.is_dir()):
        dm = SemiSegDataModule(
            "busi",
            str(busi),
            split_file=str(REPO / "configs" / "splits" / "busi.json"),
            class_only=100,
            **common,
        )
        name = "real BUSI (benign + malignant, committed split, 100 class-only)"
    else:
        # 674 images: a 70 % train split of about 472.
        dm = SemiSegDataModule("synthetic", synthetic_samples=674, class_only=100, **common)
        name = "synthetic ultrasound (674 images, 100 class-only)"
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    with open(path, "wb") as f:
        pickle.dump(dm, f)
    return {
        "name": name,
        "train": len(dm.train_dataloader().dataset),
        "cached": len(dm.data.cache),
        "setup_s": time.perf_counter() - start,
    }


def _run_worker(args: argparse.Namespace, variant: str, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant]
    cmd += ["--data-file", str(data)]
    for key in (
        "device",
        "precision",
        "steps",
        "warmup",
        "epochs",
        "infer_batch",
        "infer_reps",
        "infer_reps_b1",
        "threads",
        "workers",
        "compile",
    ):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.cuda_graph:
        cmd.append("--cuda-graph")
    if args.host_guard:
        cmd.append("--host-guard")
    if args.cudnn_benchmark:
        cmd.append("--cudnn-benchmark")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd += ["--json", str(out)]
    try:
        proc = subprocess.run(
            cmd,
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=args.worker_timeout or None,
        )
        failure = f"exit {proc.returncode}" if proc.returncode else ""
        log = proc.stdout[-2000:] + proc.stderr[-4000:]
    except subprocess.TimeoutExpired as err:
        failure, log = f"timed out after {err.timeout:.0f} s", ""
    if failure or not out.stat().st_size:
        sys.stderr.write(log)
        out.unlink(missing_ok=True)
        lines = [line for line in log.splitlines() if line.strip()]
        reason = lines[-1][:200] if lines else ""
        print(f"worker {variant} failed ({failure}): {reason}", file=sys.stderr, flush=True)
        return {"variant": variant, "failed": f"{failure}: {reason}"}
    result = json.loads(out.read_text())
    out.unlink()
    return result


def _share(args: argparse.Namespace, variant: str, data: Path, n: int) -> list[dict]:
    """``n`` copies of one variant training at the same time (one GPU shared)."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: _run_worker(args, variant, data), range(n)))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:.{digits}f}"


def report(
    args: argparse.Namespace,
    data_info: dict,
    rounds: list[dict],
    shared: dict[str, list[dict]],
    failures: dict[str, list[str]],
    wall: float,
    echo: bool = True,
) -> None:
    import albumentations
    import lightning
    import torch

    hardware, slug = hardware_names(args.device)
    names = [v for v in args.variants]
    base = "malunet"

    def per_round(key: str, v: str) -> list[float]:
        return [r[v][key] for r in rounds if v in r and r[v].get(key) is not None]

    def ratio(key: str, v: str) -> float:
        if base not in names:
            return float("nan")
        values = []
        for r in rounds:
            if v in r and base in r:
                values.append(r[v][key] / r[base][key])
        return _median(values)

    cuda = args.device == "cuda"
    mem = "peak CUDA memory allocated (MiB), train" if cuda else "peak RSS of the process (MiB)"
    lines = [
        f"# Speed: SemiSeg-CAW and its baselines side by side ({hardware.split(';')[0]})",
        "",
        "Written by `benchmarks/speed.py`; do not edit by hand.",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit(*DIRTY_PATHS)}",
        f"- hardware: {hardware}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, albumentations {albumentations.__version__}",
        f"- data: {data_info['name']}; {data_info['train']} training images, "
        f"{data_info['cached']} images cached in memory; image size {args.image_size} px"
        + (" (256 px is the protocol's: CPU budget)" if args.image_size != 256 else ""),
        f"- training: batch {args.batch_size}, precision {args.precision}, "
        f"{'channels-last' if args.channels_last else 'contiguous (NCHW)'} memory format, "
        f"compile {args.compile}, CUDA graphs {'on' if args.cuda_graph else 'off'}, "
        f"cuDNN autotuning {'on' if args.cudnn_benchmark else 'off'}, "
        f"{args.workers} loader workers, "
        + (
            "augmentation on the device, "
            if args.augment_on_device
            else "augmentation in the loader, "
        )
        + f"{f'{args.threads} torch thread(s)' if args.threads else 'default torch threads'}, "
        "fused AdamW, "
        + (
            "non-finite guard on the host (the loss read every step), "
            if args.host_guard
            else "non-finite guard on the device (no host sync), "
        )
        + "no validation in the timed loop",
    ]
    if args.epochs:
        lines.append(
            f"- timing: {args.epochs} full epochs per run, the first one warm-up; seconds per "
            f"epoch scaled to {EPOCH_IMAGES} images"
        )
    else:
        lines.append(
            f"- timing: {args.warmup} warm-up steps, then the median interval between the ends "
            f"of {args.steps} consecutive training steps (data loading included) x "
            f"{EPOCH_IMAGES}/{args.batch_size} steps = seconds per {EPOCH_IMAGES}-image epoch "
            "(CPU budget: timed steps scaled up, not whole epochs)"
        )
    lines += [
        f"- inference: `evaluate_batch` under `torch.inference_mode`, median of "
        f"{args.infer_reps_b1} single images (ms per image) and of {args.infer_reps} batches of "
        f"{args.infer_batch} (images/s)"
        + (" (batch 64 on a GPU)" if args.infer_batch != 64 else "")
        + "; SemiSeg-CAW computes the auxiliary map live at inference in every mode "
        "(new images have no cached map), so its three rows are one network",
        f"- {len(rounds)} rounds, each variant a fresh process per round, variants in "
        "rotated order; table = median over rounds; ratio = median over rounds of the "
        "ratio to the bare MALUNet of the same round",
        f"- memory: {mem}" + ("" if cuda else " (includes Python, torch and the cached data set)"),
        f"- wall time of the whole benchmark: {wall / 60:.1f} min",
        "",
        "| variant | train s / epoch | × MALUNet | loader alone s / epoch | setup before "
        "step 1 (s) | infer ms / image (b=1) | × MALUNet | infer images/s "
        f"(b={args.infer_batch}) | × MALUNet | {'train peak MiB' if cuda else 'peak RSS MiB'} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in names:
        label = VARIANTS[v][0]
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    _fmt(_median(per_round("epoch_s", v))),
                    _fmt(ratio("epoch_s", v)),
                    _fmt(_median(per_round("loader_epoch_s", v))),
                    _fmt(_median(per_round("setup_s", v)), 1),
                    _fmt(_median(per_round("infer_b1_ms", v)), 1),
                    _fmt(ratio("infer_b1_ms", v)),
                    _fmt(_median(per_round("infer_big_ips", v)), 0),
                    _fmt(ratio("infer_big_ips", v)),
                    _fmt(_median(per_round("train_peak_mib", v)), 0),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Targets (issue 6): SemiSeg-CAW fine-tuned at most 1.3x the bare MALUNet's time per "
        "epoch (paper: 1.78x), frozen + cached at most 1.1x; on one H200 a 472-image epoch "
        "in under 1 s. `setup before step 1` includes computing the cached maps of every "
        f"cached image ({data_info['cached']}) once, for the cached variant.",
    ]
    if shared:
        lines += [
            "",
            f"Runs sharing the device: {args.share} copies started together, seconds per "
            "epoch of each (alone: the table above).",
            "",
            "| variant | per-process s / epoch | alone s / epoch |",
            "|---|---|---:|",
        ]
        for v, results in shared.items():
            times = ", ".join(_fmt(r["epoch_s"]) for r in results)
            lines.append(
                f"| {VARIANTS[v][0]} | {times} | {_fmt(_median(per_round('epoch_s', v)))} |"
            )
    compiles = {r[v]["compile"] for r in rounds for v in r}
    if args.compile != "off" or args.cuda_graph:
        lines += ["", "torch.compile / CUDA graphs: " + "; ".join(sorted(compiles))]
    failures = {v: f for v, f in failures.items() if f}
    if failures:
        lines += ["", "Failed runs (left out of the table):"]
        lines += [f"- {v}: {'; '.join(sorted(set(f)))}" for v, f in failures.items()]
    text = "\n".join(lines) + "\n"
    suffix = f"-{args.tag}" if args.tag else ""
    out = Path(args.out) if args.out else RESULTS / f"speed-{slug}{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"args": vars(args), "data": data_info, "rounds": rounds, "shared": shared}, indent=1
        )
    )
    if echo:
        sys.stdout.write(text)
        print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default=None, help="trainer precision (default 32-true)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 128 CPU, 256 CUDA")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed steps (without --epochs)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps")
    parser.add_argument("--epochs", type=int, default=0, help="time whole epochs (first: warm-up)")
    parser.add_argument("--infer-batch", type=int, default=None, help="default: 16 CPU, 64 CUDA")
    parser.add_argument("--infer-reps", type=int, default=5)
    parser.add_argument("--infer-reps-b1", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--augment-on-device",
        action="store_true",
        help="augment training batches on the device (data.augment_on_device), not in the loader",
    )
    parser.add_argument(
        "--compile",
        default="off",
        choices=["off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="torch.compile the network (CUDA only; falls back to eager with a message)",
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture the networks' training forward + backward as CUDA graphs (CUDA only)",
    )
    parser.add_argument(
        "--host-guard",
        action="store_true",
        help="check each loss for non-finite values on the host (a sync per step), as the "
        "package did before its device guard: to time what the sync costs",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its convolution algorithms for each shape (trainer.benchmark)",
    )
    parser.add_argument("--share", type=int, default=0, help="also run N copies at once")
    parser.add_argument("--worker-timeout", type=float, default=0, help="seconds per run (0: none)")
    parser.add_argument("--data", default="auto", choices=["auto", "busi", "synthetic"])
    parser.add_argument("--busi-root", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--out", default="", help="result file (default: results/speed-<hw>.md)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.update({k: os.environ.get(k, v) for k, v in ENV.items()})
    cuda = args.device == "cuda"
    args.precision = args.precision or "32-true"
    args.image_size = args.image_size or (256 if cuda else 128)
    args.infer_batch = args.infer_batch or (64 if cuda else 16)

    if args.worker:
        Path(args.json).write_text(json.dumps(worker(args)))
        return

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "datamodule.pkl"
        data_info = _prepare_data(args, data)
        print(f"data: {data_info}", flush=True)
        rounds: list[dict] = []
        failures: dict[str, list[str]] = {}
        for r in range(args.rounds):
            order = (
                args.variants[r % len(args.variants) :] + args.variants[: r % len(args.variants)]
            )
            results: dict[str, dict] = {}
            rounds.append(results)
            for v in order:
                result = _run_worker(args, v, data)
                if "failed" in result:
                    failures.setdefault(v, []).append(result["failed"])
                    continue
                results[v] = result
                print(
                    f"round {r} {v}: {result['epoch_s']:.2f} s/epoch, "
                    f"b1 {result['infer_b1_ms']:.1f} ms",
                    flush=True,
                )
                # The table so far, rewritten after every run: a time limit loses nothing.
                elapsed = time.perf_counter() - start
                report(args, data_info, rounds, {}, failures, elapsed, echo=False)
        shared = {}
        if args.share > 1:
            for v in [v for v in ("malunet", "caw-cached") if v in args.variants]:
                results = _share(args, v, data, args.share)
                failures.setdefault(v, []).extend(r["failed"] for r in results if "failed" in r)
                shared[v] = [r for r in results if "failed" not in r]
    report(args, data_info, rounds, shared, failures, time.perf_counter() - start)


if __name__ == "__main__":
    main()
