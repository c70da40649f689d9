"""Do CUDA graphs train SemiSeg-CAW like eager? The first four losses (and loss terms) of
a few SemiSegCAW settings on tiny batches: eager twice (the run-to-run noise of the GPU),
the whole objective graphed, and the networks alone graphed (GPU only).

    python benchmarks/graphs_vs_eager.py                          # every setting, TF32 on
    python benchmarks/graphs_vs_eager.py --fp32 --cases default   # convolutions in fp32

Prints one line of losses per run (and the terms of some), and writes them to --out.
What it showed on an H200 is in ``results/graphs-vs-eager-h200-log.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from semiseg_caw import SemiSegCAW  # noqa: E402

CASES = {
    "default": {},
    "no-aux-term": dict(loss_terms=["bce", "dice", "ftv", "ce"]),
    "no-ce": dict(loss_terms=["bce", "dice", "ftv", "aux"]),
    "no-classifier": dict(classifier=False, loss_terms=["bce", "dice", "ftv", "aux"]),
    "frozen": dict(aux_mode="frozen"),
    "static": dict(weighting="static"),
    "bce-only": dict(classifier=False, loss_terms=["bce"]),
}


def graph_batch(device: str = "cpu", batch: int = 4, size: int = 64, seed: int = 0) -> dict:
    """A random batch whose every four samples are two with mask and label, one with
    neither, and one class-only (``batch`` a multiple of 4)."""
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, 1, size, size, generator=gen) > 0.7).float()
    out = {
        "image": torch.randn(batch, 1, size, size, generator=gen),
        "mask": mask,
        "label": torch.tensor([0, 1, -1, 1] * (batch // 4)),
        "has_mask": torch.tensor([True, True, False, False] * (batch // 4)),
        "has_label": torch.tensor([True, True, False, True] * (batch // 4)),
        "id": [f"s{i}" for i in range(batch)],
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def first_steps(
    task: type, kwargs: dict, mode: str, steps: int = 2, device: str = "cuda"
) -> tuple[list[str], list[float], list[list[float]]]:
    """(parts graphed, losses, loss terms) of ``steps`` AdamW steps of ``task(**kwargs)``
    from seed 0 on ``graph_batch`` batches: eager, or after ``capture_cuda_graphs`` with the whole
    objective (mode "objective") or the networks alone (any other mode). The GPU tests of
    ``tests/test_speed_levers.py`` take their steps from here too."""
    batches = [graph_batch(device, seed=i) for i in range(steps)]
    torch.manual_seed(0)
    model = task(**kwargs).to(device).train()
    for module in model.modules():  # graphs draw their own random numbers
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    graphed = []
    if mode != "eager":
        graphed = model.capture_cuda_graphs(batches[0], mode == "objective")
    losses, terms = [], []
    for batch in batches:
        loss, stacked = model.objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        terms.append(stacked.tolist())
    return graphed, losses, terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--fp32", action="store_true", help="convolutions without TF32")
    parser.add_argument("--out", type=Path, default=Path("graphs-vs-eager.txt"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("graphs_vs_eager.py needs a GPU")
    if args.fp32:
        torch.backends.cudnn.allow_tf32 = False
    lines = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)
        args.out.write_text("\n".join(lines) + "\n")  # after every line: a kill loses nothing

    start = time.time()
    for name in args.cases:
        modes = ["eager", "eager", "objective", "network"] if name == "default" else None
        for mode in modes or ["eager", "objective"]:
            try:
                graphed, losses, terms = first_steps(SemiSegCAW, CASES[name], mode, args.steps)
            except Exception:
                say(f"{name} {mode} FAILED {traceback.format_exc()[-800:]}")
                continue
            say(f"{name:14s} {mode:9s} {graphed} {[round(x, 5) for x in losses]}")
            if name == "default" or mode == "objective":
                say(f"   terms {[[round(x, 4) for x in t] for t in terms]}")
        say(f"  ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
