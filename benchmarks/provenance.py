"""Where a benchmark number came from: the git commit, the machine and the packages.

Shared by the scripts in ``benchmarks/`` so that every result file states its provenance the
same way. Each script puts this folder on ``sys.path`` and imports it as ``provenance``,
which works for ``python benchmarks/X.py``, ``python -m benchmarks.X`` and a test loading
the script from its file.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The packages whose versions change what a run computes (kernels, augmentations, init);
# a fresh environment may resolve newer ones, and then a run no longer repeats bit for bit.
PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "albumentations",
    "albucore",
    "opencv-python-headless",
    "numpy",
    "torchmetrics",
)


def commit(*paths: str, untracked: bool = True) -> str:
    """Short HEAD, e.g. ``abc1234``, or ``abc1234-dirty`` if git sees changes under ``paths``
    (the whole tree if none; untracked files count unless ``untracked=False``).
    ``BENCH_COMMIT`` (or the older ``SPEED_COMMIT``) overrides it, for a tree without .git."""
    override = os.environ.get("BENCH_COMMIT") or os.environ.get("SPEED_COMMIT")
    if override:
        return override

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:  # no git
            return ""
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    flags = [] if untracked else ["--untracked-files=no"]
    dirty = git("status", "--porcelain", *flags, "--", *paths)
    return head + ("-dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_gib() -> float | None:
    """Total RAM (GiB) from /proc/meminfo; None where it cannot be read."""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])  # MemTotal: N kB
    except (OSError, ValueError, IndexError):
        return None
    return round(kib / 2**20, 1)


def machine() -> dict[str, Any]:
    """cpu, cores (usable), memory_gib, gpu (None if none), torch (version), load_avg_1min."""
    import torch

    return {
        "cpu": cpu_name(),
        "cores": usable_cores(),
        "memory_gib": memory_gib(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def package_versions() -> dict[str, str | None]:
    """The installed version of each of ``PACKAGES`` (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe(m: dict[str, Any]) -> str:
    """One line of a ``machine()`` dict, the GPU first where there is one:
    ``NVIDIA H200; host Xeon ..., 16 usable cores, 125 GiB RAM; load average 0.4`` or
    ``Xeon ..., 2 usable cores, 8 GiB RAM, no GPU used; load average 1.9``."""
    host = f"{m['cpu']}, {m['cores']} usable cores"
    if m.get("memory_gib"):
        host += f", {m['memory_gib']:.0f} GiB RAM"
    text = f"{m['gpu']}; host {host}" if m.get("gpu") else f"{host}, no GPU used"
    if m.get("load_avg_1min") is not None:
        text += f"; load average {m['load_avg_1min']:.1f}"
    return text
