"""Writing predictions: a mask and an overlay PNG per image, and one CSV for the folder.

Every file appears whole or not at all (written to a hidden ``.part`` file, then
renamed); the CSV grows on disk as batches arrive, so memory does not grow with the
folder. An image that cannot be read gets a row with its reason in the ``error`` column
and no PNGs, and the run goes on; one warning at the end lists every such file.

A run that replaces an earlier one's outputs (``overwrite``) writes into a hidden staging
folder inside the output folder and moves its files out only when it has finished: a run
that fails its checks, fails midway or is killed leaves the earlier outputs as they were.

On several processes (``--trainer.devices 2``: Lightning gives each its share of the
images) the outputs are those of one process: file names are chosen from the whole
folder, each process writes its rows to a CSV of its own, and the first merges them, in
name order, into the one ``predictions.csv``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

import lightning as L
import numpy as np
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch.utils.data import DataLoader

from semiseg_caw.data.io import decode_image, describe_error
from semiseg_caw.postprocess import largest_region
from semiseg_caw.warn import warn

CSV_NAME = "predictions.csv"
OUTPUT_PATTERNS = (CSV_NAME, "*_mask.png", "*_overlay.png")
"""Files that mark a folder as holding an earlier run's predictions."""
STAGING_NAME = ".predictions-in-progress"
"""Where a run replacing an earlier one's outputs writes its own until it has finished."""
MAX_STEM = 120
"""Longest stem of an output file (file names stay well below the usual 255 bytes)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_mode() -> int:
    """The mode ``open`` gives new files (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and prove that a file can be written there.

    Raises a PermissionError naming ``what`` and the folder otherwise, so that a run fails
    at its start rather than when it first saves.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"{what} {folder} is not writable: {err}") from err
    return folder


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The grayscale image in RGB with the mask tinted red: (H, W, 3) uint8."""
    rgb = np.repeat(gray[..., None], 3, axis=2)  # uint8: no float copy of a large image
    red = np.array([255.0, 40.0, 40.0], dtype=np.float32)
    rgb[mask] = ((1 - alpha) * rgb[mask].astype(np.float32) + alpha * red).round()
    return rgb


def safe_stem(name: str) -> str:
    """A file-name stem that cannot leave the output folder (no separators, no leading dot)."""
    stem = _UNSAFE.sub("_", Path(str(name).replace("\\", "/")).stem).lstrip(".")
    return stem[:MAX_STEM] or "image"


def _listed_outputs(out: Path) -> set[str]:
    """The files the CSV in ``out`` lists (masks, their overlays) and the CSV itself; empty
    without a CSV. Files it does not list (a killed run's, the user's own) are never removed."""
    table = out / CSV_NAME
    if not table.is_file():
        return set()
    listed = {CSV_NAME}
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            mask = Path(row.get("mask_file") or "").name  # a bare name in `out`
            if mask.endswith("_mask.png"):
                listed |= {mask, mask[: -len("_mask.png")] + "_overlay.png"}
    return listed


def _remove_staging(out: Path) -> None:
    staging = out / STAGING_NAME
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)
    else:
        staging.unlink(missing_ok=True)


def _rank(trainer: Any) -> int:
    return getattr(trainer, "global_rank", 0)


def _world_size(trainer: Any) -> int:
    return getattr(trainer, "world_size", 1)


def _barrier(trainer: Any) -> None:
    if _world_size(trainer) > 1:
        trainer.strategy.barrier()


def _rank_csv(rank: int) -> str:
    """One process's rows until they are merged (a `.part`: a killed run's is tidied up)."""
    return f".{CSV_NAME}.rank{rank}.part"


def _folder_paths(trainer: Any) -> list[Path] | None:
    """The image paths of the folder being predicted (every process has all of them), or
    None when the prediction batches do not come from a folder."""
    loaders = getattr(trainer, "predict_dataloaders", None)
    if isinstance(loaders, DataLoader):
        loaders = [loaders]
    if not loaders or len(loaders) != 1:
        return None
    paths = getattr(loaders[0].dataset, "paths", None)
    return [Path(p) for p in paths] if paths is not None else None


class PredictionWriter(BasePredictionWriter):
    """Writes ``<name>_mask.png`` (binary, the image's original size), ``<name>_overlay.png``
    and one ``predictions.csv`` (class probabilities, lesion area, ``error``) into
    ``output_dir``; refuses a folder holding an earlier run's outputs unless ``overwrite``.

    Args:
        output_dir: folder for the outputs (None: ``<default_root_dir>/predictions``).
        overwrite: replace outputs of an earlier run instead of refusing to start; they
            are kept until this run has finished.
        threshold: probability at or above which a pixel is lesion.
        overlays: also write the overlay PNGs.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        overwrite: bool = False,
        threshold: float = 0.5,
        overlays: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.threshold = threshold
        self.overlays = overlays
        self.used: set[str] = set()
        self.stems: dict[str, str] | None = None  # output stem per image name, see on_predict_start
        self.paths: dict[str, str] = {}  # the folder's image paths by name
        self.failed: list[tuple[str, str]] = []
        self._destination: Path | None = None  # where staged outputs go once the run ends
        self._csv: IO[str] | None = None
        self._csv_part: Path | None = None
        self._rows: csv.DictWriter | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        out = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        images = getattr(trainer.datamodule, "predict_dir", None)
        if images is not None and out.resolve() == Path(images).resolve():
            # Its masks would overwrite files there (BUSI keeps ground truth as *_mask.png).
            raise ValueError(
                f"--prediction.output_dir {out} is the folder of images being predicted; "
                "choose another folder"
            )
        # Fail now, not after an hour of predicting.
        self.out = check_writable(out, "prediction folder")
        earlier = [p.name for pattern in OUTPUT_PATTERNS for p in sorted(out.glob(pattern))]
        if earlier and not self.overwrite:
            raise FileExistsError(
                f"{out} already holds predictions ({', '.join(earlier[:3])}"
                f"{', ...' if len(earlier) > 3 else ''}); choose another "
                "--prediction.output_dir or pass --prediction.overwrite true"
            )
        # Every process has looked at the folder before any tidies or writes in it.
        _barrier(trainer)
        if _rank(trainer) == 0:
            for stale in out.glob(".*.part"):  # left by a killed run
                stale.unlink(missing_ok=True)
            _remove_staging(out)  # a killed overwrite's unfinished outputs
        _barrier(trainer)
        self.used, self.failed, self.stems, self.paths = set(), [], None, {}
        self._close_csv()
        self._destination = None
        if earlier:  # kept until this run has finished
            self._destination = out
            self.out = check_writable(out / STAGING_NAME, "prediction folder")

    def _finish_overwrite(self) -> None:
        """Move the staged outputs into the output folder, in place of the earlier run's."""
        staging, out = self.out, self._destination
        if out is None:
            return
        new = sorted(p.name for p in staging.iterdir())
        stale = _listed_outputs(out) - set(new)
        # The CSV last: until it is replaced, the earlier one lists the files still to
        # remove, should this be cut short.
        for name in new:
            if name != CSV_NAME:
                os.replace(staging / name, out / name)
        for name in sorted(stale, key=lambda name: name == CSV_NAME):
            (out / name).unlink(missing_ok=True)
        if CSV_NAME in new:
            os.replace(staging / CSV_NAME, out / CSV_NAME)
        staging.rmdir()
        self.out, self._destination = out, None
        left = [
            p.name
            for pattern in OUTPUT_PATTERNS[1:]
            for p in sorted(out.glob(pattern))
            if p.name not in new
        ]
        if left:
            warn(
                f"--prediction.overwrite: {len(left)} file(s) in {out} that no earlier "
                f"{CSV_NAME} lists were left there ({', '.join(left[:3])}"
                f"{', ...' if len(left) > 3 else ''})",
                UserWarning,
            )

    def _abandon_overwrite(self) -> None:
        """A failed overwrite: drop its staged outputs; the earlier run's stay as they were."""
        if self._destination is not None:
            _remove_staging(self._destination)
            self.out, self._destination = self._destination, None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Names from the whole folder, in name order, so that they do not depend on which
        # process predicts which image (`x.png` is `x`, `x.jpg` beside it `x_2`).
        paths = _folder_paths(trainer)
        if paths is None:
            if _world_size(trainer) > 1:
                raise ValueError(
                    "PredictionWriter on several processes needs the batches of a folder, "
                    "SemiSegDataModule(predict_dir=...).predict_dataloader()"
                )
            return  # names are chosen as the images come (one process: in their order)
        self.paths = {path.name: str(path) for path in paths}
        self.stems = {name: self._unique(safe_stem(name)) for name in self.paths}

    def _stem(self, image_id: str) -> str:
        if self.stems is not None and image_id in self.stems:
            return self.stems[image_id]
        return self._unique(safe_stem(image_id))

    def _unique(self, stem: str) -> str:
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f"{stem}_{n}"
        self.used.add(name)
        return name

    def _open_csv(self, num_classes: int, names: list[str]) -> None:
        fields = ["image", "mask_file", "width", "height", "lesion_area_px", "lesion_fraction"]
        if num_classes:
            labels = [names[k] if k < len(names) else str(k) for k in range(num_classes)]
            fields += [f"p_{label}" for label in labels] + ["predicted_class"]
        fd, part = tempfile.mkstemp(dir=self.out, prefix=f".{CSV_NAME}.", suffix=".part")
        self._csv_part = Path(part)
        self._csv = os.fdopen(fd, "w", newline="", encoding="utf-8")
        os.fchmod(fd, _file_mode())
        self._rows = csv.DictWriter(self._csv, fieldnames=[*fields, "error"], restval="")
        self._rows.writeheader()

    def _close_csv(self, keep: bool = False, name: str = CSV_NAME) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._csv_part is not None:
            if keep:
                os.replace(self._csv_part, self.out / name)
            else:
                self._csv_part.unlink(missing_ok=True)
        self._csv = self._csv_part = self._rows = None

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "orig_size" not in prediction or "path" not in prediction:
            raise ValueError(
                "PredictionWriter writes masks at each file's original size: it needs the "
                "batches of a folder, SemiSegDataModule(predict_dir=...).predict_dataloader(), "
                "which carry path and orig_size"
            )
        probs = prediction["mask_prob"].float()  # (B, 1, h, w)
        class_prob = prediction.get("class_prob")  # (B, K) or None
        # The classes the model was trained on, when its checkpoint says (older ones do not).
        names = getattr(pl_module, "class_names", None)
        names = list(names or getattr(trainer.datamodule, "class_names", []) or [])
        if self._rows is None:
            self._open_csv(0 if class_prob is None else class_prob.shape[1], names)
        # The model kept its largest region at probability 0.5; at another threshold the
        # removed regions' rims would come back, so the written mask is cut again.
        one_region = bool(getattr(pl_module, "hparams", {}).get("keep_largest_lesion"))
        errors = batch.get("error") or [""] * len(prediction["id"])
        for i, image_id in enumerate(prediction["id"]):
            row: dict[str, Any] = {"image": str(image_id)}
            problem = errors[i]
            if not problem:
                try:
                    row.update(self._write_image(prediction, probs, i, one_region))
                except (FileNotFoundError, ValueError) as err:  # changed since it was read
                    problem = describe_error(err)
            if problem:
                row["error"] = problem
                self.failed.append((str(prediction["path"][i]), problem))
            elif class_prob is not None:
                p = class_prob[i].float().cpu()
                for k in range(p.numel()):
                    label = names[k] if k < len(names) else str(k)
                    row[f"p_{label}"] = round(float(p[k]), 6)
                row["predicted_class"] = names[int(p.argmax())] if names else int(p.argmax())
            self._rows.writerow(row)

    def _write_image(
        self, prediction: dict[str, Any], probs, i: int, one_region: bool
    ) -> dict[str, Any]:
        """Write one image's mask (and overlay) PNG; its CSV fields."""
        height, width = (int(v) for v in prediction["orig_size"][i])
        gray = decode_image(prediction["path"][i]) if self.overlays else None
        full = F.interpolate(probs[i : i + 1], size=(height, width), mode="bilinear")
        mask = (full[0, 0] >= self.threshold).cpu().numpy()  # (H, W) bool
        if one_region:
            mask = largest_region(mask)
        stem = self._stem(str(prediction["id"][i]))
        atomic_write(self.out / f"{stem}_mask.png", png_bytes(mask.astype(np.uint8) * 255))
        if gray is not None:
            atomic_write(self.out / f"{stem}_overlay.png", png_bytes(overlay(gray, mask)))
        return {
            "mask_file": f"{stem}_mask.png",
            "width": width,
            "height": height,
            "lesion_area_px": int(mask.sum()),
            "lesion_fraction": round(float(mask.mean()), 6),
        }

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        world = _world_size(trainer)
        if world == 1:
            self._close_csv(keep=self._rows is not None)
        else:
            self._close_csv(keep=self._rows is not None, name=_rank_csv(_rank(trainer)))
            _barrier(trainer)  # every process's rows are on disk
            if _rank(trainer) != 0:
                return  # the first process merges them and finishes the run
            self._merge_rank_csvs(world)
        self._finish_overwrite()
        if self.failed:
            listing = "\n".join(f"  {path}: {problem}" for path, problem in self.failed)
            warn(
                f"{len(self.failed)} image(s) could not be predicted (listed in "
                f"{self.out / CSV_NAME}, column 'error'):\n{listing}",
                RuntimeWarning,
            )

    def _merge_rank_csvs(self, world: int) -> None:
        """Merge the processes' CSVs into one, rows in name order; its failed images are
        those of every process."""
        parts = [self.out / _rank_csv(rank) for rank in range(world)]
        parts = [part for part in parts if part.is_file()]  # a process may have had no image
        if not parts:
            return
        rows, fields = [], None
        for part in parts:
            with open(part, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows += list(reader)
                fields = reader.fieldnames
        order = {name: k for k, name in enumerate(self.paths)}
        rows.sort(key=lambda row: order.get(row["image"], len(order)))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.out / CSV_NAME, buffer.getvalue().encode("utf-8"))
        for part in parts:
            part.unlink()
        self.failed = [
            (self.paths.get(row["image"], row["image"]), row["error"])
            for row in rows
            if row["error"]
        ]

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._close_csv()  # no partial CSV
        self._abandon_overwrite()
