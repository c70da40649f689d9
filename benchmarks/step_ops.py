"""What one training step asks of the device, counted on any machine (issue 6).

On a GPU, small networks like MALUNet are limited by the host: every aten operator is a
kernel launch (or at least a trip through the dispatcher), and every host sync (``.item()``,
``bool(tensor)``, ``.cpu()``, ``.tolist()``) stalls the queue. Both are properties of the
code, not of the hardware, so they can be counted on a CPU:

- aten operators per training step (the real Lightning step: forward, loss, WGM, backward,
  optimiser, logging), split into those that ``cuda_graphs`` captures and those that stay
  eager, for its two scopes: the whole objective (networks, loss terms, WGM; what it tries
  first) and the networks alone (the backbone and a fine-tuned auxiliary model, its
  fallback; ClassElevateSeg's network in stage 1);
- host syncs per step, with where they happen.

The eager remainder is what separates SemiSeg-CAW from the bare backbone once the graphs
replay, so this table says where the time beyond the graphs goes.

    python benchmarks/step_ops.py                  # writes results/step-ops.md and .json

Counts are at 64 px, batch 8, on the synthetic data; operator counts do not depend on the
image size.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for provenance.py and speed.py
from provenance import commit, describe, machine  # noqa: E402
from speed import VARIANTS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive"}
SYNC_METHODS = ("item", "tolist", "cpu", "numpy")  # host copies of a device tensor
OURS = ("/semiseg_caw/", "/benchmarks/")


def _where(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of this package (else of Lightning) that led to a call."""
    stack = [f for f in stack if f.filename != __file__]  # not the counter itself
    for frame in reversed(stack):
        if any(part in frame.filename for part in OURS):
            return f"{frame.filename.split('/work/')[-1].split('main/')[-1]}:{frame.lineno}"
    for frame in reversed(stack):
        if "site-packages/" in frame.filename:
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
    return "?"


def _bool_index(name: str, args: tuple) -> bool:
    """Indexing with a boolean mask: on a GPU it finds the mask's nonzeros on the host."""
    if name not in ("index", "index_put", "index_put_", "_index_put_impl_") or len(args) < 2:
        return False
    return any(t is not None and t.dtype == torch.bool for t in args[1])


class OpCounter(TorchDispatchMode):
    """Counts aten operators, and the ones that would wait for a GPU, by call site.

    Python-level host copies (``.cpu()``, ``.tolist()``, ``.numpy()``) do not reach the
    dispatcher for a CPU tensor, so those methods are wrapped while the mode is active.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.syncs: collections.Counter[str] = collections.Counter()
        self._saved: dict[str, Any] = {}
        self._in_method = False
        self._host_copies: dict[int, torch.Tensor] = {}  # held, so their ids stay unique

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if (name in SYNC_OPS or _bool_index(name, args)) and not self._in_method:
            self.syncs[f"{name} at {_where(traceback.extract_stack())}"] += 1
        return func(*args, **(kwargs or {}))

    def _wrap(self, method: str):
        original = getattr(torch.Tensor, method)
        counter = self

        def wrapped(tensor, *args, **kwargs):
            if counter._in_method or id(tensor) in counter._host_copies:
                return original(tensor, *args, **kwargs)
            counter.syncs[f".{method}() at {_where(traceback.extract_stack())}"] += 1
            counter._in_method = True  # .item() inside .tolist() is one sync, not two
            try:
                result = original(tensor, *args, **kwargs)
            finally:
                counter._in_method = False
            if isinstance(result, torch.Tensor):  # .cpu().tolist(): one copy, one sync
                counter._host_copies[id(result)] = result
            return result

        return original, wrapped

    def __enter__(self):
        for method in SYNC_METHODS:
            self._saved[method], wrapped = self._wrap(method)
            setattr(torch.Tensor, method, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, original)
        return super().__exit__(*exc)


def _network_ops(module: Any, batch: dict[str, Any]) -> int:
    """Operators of the forward + backward of the networks that ``cuda_graphs`` captures,
    on inputs shaped like the step's (the graph replaces exactly these)."""
    image = batch["image"]
    b, c, h, w = image.shape
    net = module.net
    if not hasattr(net, "backbone"):  # ClassElevateSeg: its whole network is graphed
        targets = [(net, c, False)]
    else:
        extra = 0 if net.aux_source == "none" else 1
        targets = [(net.backbone, c + extra, net.aux_trainable)]
        if net.aux_trainable:
            targets.append((net.aux_model, c, False))
    total = 0
    for network, channels, grad in targets:
        x = torch.randn(b, channels, h, w, requires_grad=grad)
        with OpCounter() as counter:
            out = network(x)
            # Every output the step differentiates (mask, class logits, features for a head).
            outputs = [t for t in out if torch.is_tensor(t) and t.requires_grad]
            seeds = [torch.ones_like(t) for t in outputs]
            torch.autograd.backward(outputs, seeds)
        total += sum(counter.ops.values()) - len(seeds)  # not the harness's ones_like
        network.zero_grad(set_to_none=True)
    return total


def _objective_ops(module: Any, batch: dict[str, Any]) -> int:
    """Operators of the objective's forward + backward (what a graphed objective replays)."""
    with OpCounter() as counter:
        loss, _ = module.objective(batch)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return sum(counter.ops.values())


def count_variant(variant: str, dm: Any, step: int = 3, progress_bar: bool = False) -> dict:
    """Fit ``variant`` for a few steps and count operators and syncs of step ``step``."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    import semiseg_caw

    _, cls_name, kwargs = VARIANTS[variant]

    class Probe(Callback):
        def __init__(self) -> None:
            self.counter: OpCounter | None = None
            self.result: OpCounter | None = None
            self.batch: dict[str, Any] | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == step:
                self.batch = batch
                self.counter = OpCounter().__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.result, self.counter = self.counter, None

    L.seed_everything(0, verbose=False)
    module = getattr(semiseg_caw, cls_name)(num_classes=2, in_channels=1, **kwargs)
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=step + 1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        callbacks=[probe],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    assert probe.result is not None and probe.batch is not None
    total = sum(probe.result.ops.values())
    inside = _network_ops(module, probe.batch)
    objective = _objective_ops(module, probe.batch)
    return {
        "variant": variant,
        "label": VARIANTS[variant][0],
        "ops": total,
        "ops_in_graphed_networks": inside,
        "ops_eager": total - inside,
        "ops_in_graphed_objective": objective,
        "ops_eager_objective_graphed": total - objective,
        "syncs": sum(probe.result.syncs.values()),
        "sync_sites": dict(probe.result.syncs),
        "top_ops": dict(probe.result.ops.most_common(15)),
    }


def markdown(rows: list[dict], meta: dict[str, Any]) -> str:
    base = next((r for r in rows if r["variant"] == "malunet"), None)
    lines = [
        "# Operators and host syncs per training step",
        "",
        "Written by `benchmarks/step_ops.py`; do not edit by hand.",
        "",
        f"- date: {meta['date']}",
        f"- commit: {meta['commit']}",
        f"- counted on: {meta['hardware']} (torch {meta['torch']}); counts do not depend on "
        "the hardware: each aten operator is a kernel launch or a dispatcher trip on a GPU too",
        f"- step: the Lightning training step {meta['step']} (forward, loss terms, WGM, "
        f"backward, fused AdamW, logging), batch {meta['batch_size']}, {meta['image_size']} px, "
        "synthetic data, no logger; it logs the loss, as every step does, but not the loss "
        "terms and WGM weights, which go only to the steps a logger writes (every "
        "`log_every_n_steps`, 50 by default)",
        "- *objective graphed*: what `cuda_graphs: true` captures first, the objective "
        "(networks, loss terms, WGM; forward and backward) as one graph; *networks graphed*: "
        "its fallback, the backbone and a fine-tuned auxiliary model (ClassElevateSeg's "
        "network in stage 1); *eager*: everything else, "
        "launched one by one even with CUDA graphs (optimiser, logging, the non-finite guard)",
        f"- wall time: {meta['wall_s']:.0f} s",
        "",
        "| variant | ops / step | eager, objective graphed | × MALUNet | eager, networks "
        "graphed | × MALUNet | host syncs / step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(r: dict, key: str) -> str:
        return f"{r[key] / base[key]:.2f}" if base else "–"

    for r in rows:
        lines.append(
            f"| {r['label']} | {r['ops']} | {r['ops_eager_objective_graphed']} "
            f"| {ratio(r, 'ops_eager_objective_graphed')} | {r['ops_eager']} "
            f"| {ratio(r, 'ops_eager')} | {r['syncs']} |"
        )
    lines += ["", "Host syncs, where they happen:", ""]
    sites = collections.Counter()
    for r in rows:
        for site, n in r["sync_sites"].items():
            sites[f"{site} ({r['variant']})"] += n
    lines += [f"- {n}× {site}" for site, n in sorted(sites.items())] or ["- none"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from semiseg_caw.data import SemiSegDataModule

    torch.set_num_threads(1)
    start = time.perf_counter()
    dm = SemiSegDataModule(
        "synthetic",
        synthetic_samples=80,
        class_only=12,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=42,
    )
    rows = [count_variant(v, dm) for v in args.variants]
    for r in rows:
        print(f"{r['variant']}: {r['ops']} ops ({r['ops_eager']} eager), {r['syncs']} syncs")
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit("semiseg_caw", "benchmarks/step_ops.py"),
        "hardware": describe({**machine(), "gpu": None}),
        "torch": torch.__version__,
        "step": 3,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "wall_s": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step-ops.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "step-ops.md").write_text(markdown(rows, meta))
    print(f"wrote {args.out / 'step-ops.md'}")


if __name__ == "__main__":
    main()
