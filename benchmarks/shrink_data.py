"""A copy of a data set with every image and mask already at the training size.

The device machine of the benchmarks gets only the repository and at most 64 MiB with it:
the real BUSI folder (109 MB) does not travel, a copy at 256 px (about 30 MB) does. The
copy keeps the layout and the file names, so the readers, the committed splits and the
class-only selection work on it unchanged, and a run at the copy's size sees exactly the
pixels it would see on the original: images are resized with the loader's own function
(which leaves an image of the right size alone) and masks are the union of a sample's mask
files, resized with nearest interpolation, which commutes with the union.

    python benchmarks/shrink_data.py busi ../shared/data/busi .device-data/busi --size 256
    python benchmarks/shrink_data.py ddti ../shared/data/ddti .device-data/ddti --size 256

Only for the benchmark machine: the copy lives in the ignored ``.device-data/`` folder and is
never committed. Files the readers do not read as images (``labels.csv``) are copied as
they are. Near-duplicate grouping of BUSI frames hashes the copy, not the original; the
benchmarks use committed splits, which do not depend on it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg_caw.data.busi import scan_busi
from semiseg_caw.data.ddti import scan_ddti
from semiseg_caw.data.io import decode_image, decode_mask, resize_image, resize_mask

SCANNERS = {"busi": scan_busi, "ddti": scan_ddti}


def shrink(dataset: str, src: Path, dst: Path, size: int) -> int:
    """Write the copy; returns the number of samples written."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if dst == src or src in dst.parents:
        raise SystemExit(f"the copy must not go inside the original ({src})")
    samples = SCANNERS[dataset](src)
    image_files = set()
    for sample in samples:
        image_files.add(sample.image)
        gray = decode_image(sample.image)
        _save(Image.fromarray(resize_image(gray, size)), dst / sample.image.relative_to(src))
        if sample.masks:
            union = np.zeros(gray.shape, dtype=bool)
            for path in sample.masks:
                union |= decode_mask(path)
                image_files.add(path)
            mask = Image.fromarray(resize_mask(union, size) * 255)  # 8-bit, {0, 255}
            # Every mask file of the sample gets the union: a reader that unions them again
            # gets the same mask.
            for path in sample.masks:
                _save(mask, dst / path.relative_to(src))
    for path in sorted(src.rglob("*")):  # the rest (e.g. labels.csv), unchanged
        if path.is_file() and path not in image_files and not path.name.startswith("."):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return len(samples)


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(SCANNERS))
    parser.add_argument("src", type=Path, help="the data set folder")
    parser.add_argument("dst", type=Path, help="where the copy goes (e.g. .device-data/busi)")
    parser.add_argument("--size", type=int, default=256, help="the training image size")
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        raise SystemExit(f"no data set folder at {args.src}")
    n = shrink(args.dataset, args.src, args.dst, args.size)
    total = sum(p.stat().st_size for p in args.dst.rglob("*") if p.is_file())
    print(f"{n} samples written to {args.dst} at {args.size} px ({total / 2**20:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
