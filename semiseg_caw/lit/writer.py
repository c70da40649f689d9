"""Writing predictions: a mask and an overlay PNG per image, and one CSV for the folder."""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from semiseg_caw.data.io import decode_image

CSV_NAME = "predictions.csv"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The grayscale image in RGB with the mask tinted red: (H, W, 3) uint8."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    red = np.array([255.0, 40.0, 40.0], dtype=np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * red
    return rgb.round().astype(np.uint8)


def safe_stem(name: str) -> str:
    """A file-name stem that cannot leave the output folder (no separators, no leading dot)."""
    stem = _UNSAFE.sub("_", Path(str(name).replace("\\", "/")).stem).lstrip(".")
    return stem or "image"


class PredictionWriter(BasePredictionWriter):
    """Writes ``<name>_mask.png`` (binary, the image's original size), ``<name>_overlay.png``
    and one ``predictions.csv`` (class probabilities, lesion area) into ``output_dir``.

    Args:
        output_dir: folder for the outputs (None: ``<default_root_dir>/predictions``).
        overwrite: replace outputs of an earlier run instead of refusing to start.
        threshold: probability above which a pixel is lesion.
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
        self.rows: list[dict[str, Any]] = []
        self.used: set[str] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        out = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        self.out = out
        # Fail now, not after an hour of predicting.
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
            probe.close()
        except OSError as err:
            raise PermissionError(f"prediction folder {out} is not writable: {err}") from err
        if (out / CSV_NAME).exists() and not self.overwrite:
            raise FileExistsError(
                f"{out} already holds predictions ({CSV_NAME}); choose another "
                "--prediction.output_dir or pass --prediction.overwrite true"
            )
        self.rows, self.used = [], set()

    def _unique(self, stem: str) -> str:
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f"{stem}_{n}"
        self.used.add(name)
        return name

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
        probs = prediction["mask_prob"].float()  # (B, 1, h, w)
        class_prob = prediction.get("class_prob")
        names = list(getattr(trainer.datamodule, "class_names", []) or [])
        for i, image_id in enumerate(prediction["id"]):
            height, width = (int(v) for v in prediction["orig_size"][i])
            full = F.interpolate(probs[i : i + 1], size=(height, width), mode="bilinear")
            mask = (full[0, 0] >= self.threshold).cpu().numpy()
            stem = self._unique(safe_stem(image_id))
            atomic_write(self.out / f"{stem}_mask.png", png_bytes(mask.astype(np.uint8) * 255))
            if self.overlays:
                gray = decode_image(prediction["path"][i])
                atomic_write(self.out / f"{stem}_overlay.png", png_bytes(overlay(gray, mask)))
            row: dict[str, Any] = {
                "image": str(image_id),
                "mask_file": f"{stem}_mask.png",
                "width": width,
                "height": height,
                "lesion_area_px": int(mask.sum()),
                "lesion_fraction": round(float(mask.mean()), 6),
            }
            if class_prob is not None:
                p = class_prob[i].float().cpu()
                for k in range(p.numel()):
                    label = names[k] if k < len(names) else str(k)
                    row[f"p_{label}"] = round(float(p[k]), 6)
                row["predicted_class"] = names[int(p.argmax())] if names else int(p.argmax())
            self.rows.append(row)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.out / CSV_NAME, buffer.getvalue().encode())
