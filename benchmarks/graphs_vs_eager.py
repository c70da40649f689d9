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
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from test_speed_levers import first_steps  # noqa: E402  (the GPU test's steps and batches)

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
