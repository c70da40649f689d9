"""Tiny data sets written to disk in the real layouts (BUSI, DDTI, manifest) for data tests."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg_caw.data import load_dataset

SIZE = (40, 32)  # (width, height) of the tiny images
BUSI_DIR = "Dataset_BUSI_with_GT"  # the folder a BUSI download unpacks to


def noise_image(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A random grayscale image (H, W) uint8; different seeds give unrelated images."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)


def blob_mask(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A bool (H, W) rectangle somewhere in the image."""
    rng = np.random.default_rng(seed + 1000)
    mask = np.zeros((size[1], size[0]), bool)
    y, x = rng.integers(2, size[1] // 2), rng.integers(2, size[0] // 2)
    mask[y : y + 8, x : x + 10] = True
    return mask


def save(path: Path, gray: np.ndarray, mode: str = "L") -> Path:
    """Save a grayscale or bool array as PNG in ``mode`` (1, L, RGB, RGBA; RGBA is opaque)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = gray.astype(np.uint8) * 255 if gray.dtype == bool else gray
    image = Image.fromarray(gray)
    if mode == "1":
        image = image.point(lambda v: 255 if v > 127 else 0).convert("1")
    elif mode != "L":
        image = image.convert(mode)
    image.save(path)
    return path


def write_busi(root: Path, counts: dict[str, int] | None = None, *, nested: bool = True) -> Path:
    """A BUSI download in miniature; returns the folder holding Dataset_BUSI_with_GT.

    Images cycle through L / RGB / RGBA, masks through 1-bit / RGBA / L. ``benign (1)`` has
    two mask files (``_mask`` and ``_mask_1``) whose union is its lesion.
    """
    counts = counts or {"benign": 6, "malignant": 4, "normal": 2}
    base = root / BUSI_DIR if nested else root
    modes = ("L", "RGB", "RGBA")
    mask_modes = ("1", "RGBA", "L")
    seed = 0
    for cls, n in counts.items():
        for i in range(1, n + 1):
            seed += 1
            stem = f"{cls} ({i})"
            save(base / cls / f"{stem}.png", noise_image(seed), modes[i % 3])
            mask = blob_mask(seed) if cls != "normal" else np.zeros(SIZE[::-1], bool)
            save(base / cls / f"{stem}_mask.png", mask, mask_modes[i % 3])
    second = np.zeros(SIZE[::-1], bool)
    second[-6:, -6:] = True
    save(base / "benign" / "benign (1)_mask_1.png", second, "1")
    return root


def write_ddti(root: Path, n: int = 12) -> Path:
    """A DDTI folder: image/, mask/, labels.csv; images 1..n, cases of two images each.

    Labels: case 1 (images 1, 2) unscored (empty label); image ``n`` has no case and no
    label; the others alternate between labels 1 and 0 by case.
    """
    rows = []
    for i in range(1, n + 1):
        save(root / "image" / f"{i}.PNG", noise_image(100 + i))
        save(root / "mask" / f"{i}.PNG", blob_mask(100 + i))
        case = (i + 1) // 2
        if i == n:
            rows.append((f"{i}.PNG", "", "", ""))
        elif case == 1:
            rows.append((f"{i}.PNG", str(case), "", ""))
        else:
            label = case % 2
            rows.append((f"{i}.PNG", str(case), "4b" if label else "3", str(label)))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "case", "tirads", "label"])
        writer.writerows(rows)
    return root


def write_manifest(root: Path, rows: list[dict[str, str]] | None = None) -> Path:
    """A manifest.csv with images under ``imgs/`` and masks under ``masks/``; returns its path.

    Default rows: 8 images, labels given as names and as indices, groups in pairs, the
    last two without a label (mask-only) and one without a mask (class-only).
    """
    if rows is None:
        rows = []
        for i in range(8):
            save(root / "imgs" / f"{i}.png", noise_image(200 + i))
            save(root / "masks" / f"{i}.png", blob_mask(200 + i))
            label = ["benign", "1", "malignant", "0"][i % 4] if i < 6 else ""
            rows.append(
                {
                    "image": f"imgs/{i}.png",
                    "mask": f"masks/{i}.png" if i != 1 else "",
                    "label": label,
                    "group": f"g{i // 2}",
                }
            )
    path = root / "manifest.csv"
    with open(path, "w", newline="") as handle:
        columns = list(dict.fromkeys(k for row in rows for k in row))  # as the rows give them
        writer = csv.DictWriter(handle, fieldnames=columns or ["image", "mask", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_with_warnings(*args, **kwargs):
    """load_dataset with warnings recorded; returns (data, [warning messages])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(*args, **kwargs)
    return data, [str(w.message) for w in caught]


def problem_paths(excinfo) -> str:
    """A DataValidationError's problems, one "path: problem" line each."""
    return "\n".join(f"{p.path}: {p.problem}" for p in excinfo.value.problems)
