"""``semiseg-caw predict`` (issues 4 and 7): masks at the original size, overlays and one CSV;
bad, odd and corrupted files reported one by one while the rest of the folder is predicted;
no file outside the output folder, no partial file, no overwriting unless asked."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg_caw import ClassElevateSeg
from semiseg_caw.cli import main
from semiseg_caw.data.io import decode_image
from semiseg_caw.data.predict_folder import PredictFolderDataset
from semiseg_caw.lit import writer as writer_module
from semiseg_caw.lit.writer import CSV_NAME, MAX_STEM, STAGING_NAME, safe_stem

MODEL = ["--model=semiseg_caw.SemiSegCAW", "--model.init_args.aux_encoder=resnet10t"]
TRAINER = [
    "--trainer.accelerator=cpu",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A stage-2 model trained for one step, as ``fit`` saves it."""
    root = tmp_path_factory.mktemp("fit")
    stage1 = root / "stage1.ckpt"
    torch.save({"state_dict": ClassElevateSeg(encoder="resnet10t").state_dict()}, stage1)
    main(
        [
            "fit",
            *MODEL,
            f"--model.init_args.stage1_checkpoint={stage1}",
            "--data.image_size=32",
            "--data.batch_size=4",
            "--data.synthetic_samples=40",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            *TRAINER,
            f"--trainer.default_root_dir={root}",
        ]
    )
    return root / "checkpoints" / "last.ckpt"


def predict(checkpoint: Path, folder: Path, out: Path, *extra: str):
    return main(
        [
            "predict",
            *MODEL,
            "--data.image_size=32",
            "--data.eval_batch_size=4",
            f"--data.predict_dir={folder}",
            f"--prediction.output_dir={out}",
            f"--ckpt_path={checkpoint}",
            *TRAINER,
            f"--trainer.default_root_dir={out.parent / 'run'}",
            *extra,
        ]
    )


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def scan(height: int, width: int, seed: int = 0, noise: float = 8.0) -> np.ndarray:
    """A grayscale picture with a bright blob, uint8 (H, W)."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    blob = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 20) * 150
    speckle = np.random.default_rng(seed).normal(0, noise, (height, width)) if noise else 0
    return np.clip(60 + 40 * yy + blob + speckle, 0, 255).astype(np.uint8)


def png(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, **kwargs).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = {  # file name: (height, width) of the picture it holds
    "plain.png": (30, 40),
    "deep16.png": (35, 50),
    "photo.jpg": (48, 64),
    "scan.bmp": (27, 33),
    "scan16.tif": (30, 45),
    "tiny.png": (20, 20),
    "dot.png": (1, 1),
    "large.png": (3000, 4000),
    "rgba.png": (29, 37),
    "palette.png": (25, 31),
    "x..%2F..%2Fescape.png": (30, 30),
    "odd name (1) ü;$(rm -rf x)'.png": (24, 26),
    "a.png": (22, 22),
    "a.jpg": (23, 23),
}
IGNORED = ("..%2Fescape.png", ".hidden.png", "notes.txt")  # hidden, or not an image
BAD = {  # file name: what the error column must say
    "noise.png": "cannot decode image",
    "empty.png": "empty file",
    "cut.png": "cannot decode image",
}


def write_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    for k, (name, (height, width)) in enumerate(GOOD.items()):
        gray = scan(height, width, seed=k, noise=0 if height > 1000 else 8)  # large: quick
        path = folder / name
        if name == "deep16.png":
            Image.fromarray(gray.astype(np.uint16) * 257).save(path)  # I;16
        elif name == "scan16.tif":
            Image.fromarray(gray.astype(np.uint16) * 257).save(path, format="TIFF")
        elif name == "photo.jpg":
            Image.fromarray(np.stack([gray] * 3, axis=2)).save(path, quality=90)
        elif name == "rgba.png":
            alpha = np.full_like(gray, 200)
            Image.fromarray(np.stack([gray, gray, gray, alpha], axis=2)).save(path)
        elif name == "palette.png":
            Image.fromarray(gray).convert("P").save(path)
        else:
            Image.fromarray(gray).save(path)
    rng = np.random.default_rng(0)
    (folder / "noise.png").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (folder / "empty.png").write_bytes(b"")
    whole = png(scan(60, 60))
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not an image")
    for name in ("..%2Fescape.png", ".hidden.png"):
        Image.fromarray(scan(8, 8)).save(folder / name)


def files_outside(root: Path, out: Path) -> set[Path]:
    """Files under ``root`` but neither in ``out`` nor in the run folder (its config.yaml)."""
    run = out.parent / "run"
    return {p for p in root.rglob("*") if p.is_file() and not {out, run} & set(p.parents)}


def test_predict_folder_of_good_bad_and_odd_images(checkpoint, tmp_path):
    folder, out = tmp_path / "images", tmp_path / "out"
    write_folder(folder)
    before = files_outside(tmp_path, out)
    with pytest.warns(RuntimeWarning, match=r"3 image\(s\) could not be predicted") as caught:
        predict(checkpoint, folder, out)
    messages = [str(w.message) for w in caught]
    listing = next(m for m in messages if "could not be predicted" in m)
    # Warned in the writer's epoch-end hook, and named so: not Lightning's line that called it.
    (where,) = {w.filename for w in caught if "could not be predicted" in str(w.message)}
    assert where.endswith("semiseg_caw/lit/writer.py"), where
    assert all(f"{folder / name}: {reason}" in listing for name, reason in BAD.items())
    skipped = next(m for m in messages if "are not predicted" in m)
    assert skipped.endswith(": " + ", ".join(sorted(IGNORED)))

    rows = read_csv(out / CSV_NAME)
    assert set(rows) == set(GOOD) | set(BAD)  # every image once
    for name, (height, width) in GOOD.items():
        row = rows[name]
        assert row["error"] == "", name
        assert (int(row["height"]), int(row["width"])) == (height, width)
        mask_file = out / row["mask_file"]
        with Image.open(mask_file) as mask:
            assert mask.size == (width, height) and mask.mode == "L", name
            pixels = np.asarray(mask)
        assert set(np.unique(pixels)) <= {0, 255}
        assert int(row["lesion_area_px"]) == int((pixels > 0).sum())
        assert float(row["lesion_fraction"]) == pytest.approx((pixels > 0).mean(), abs=1e-6)
        with Image.open(out / row["mask_file"].replace("_mask.png", "_overlay.png")) as ov:
            assert ov.size == (width, height) and ov.mode == "RGB"
        probs = float(row["p_benign"]) + float(row["p_malignant"])
        assert probs == pytest.approx(1.0, abs=1e-5)
        assert row["predicted_class"] in ("benign", "malignant")
    for name, reason in BAD.items():
        assert reason in rows[name]["error"] and rows[name]["mask_file"] == "", name
    # Two files with one stem keep apart; odd names become safe names inside `out`.
    assert {rows["a.png"]["mask_file"], rows["a.jpg"]["mask_file"]} == {
        "a_mask.png",
        "a_2_mask.png",
    }
    assert rows["x..%2F..%2Fescape.png"]["mask_file"] == "x.._2F.._2Fescape_mask.png"
    written = {p.name for p in out.iterdir()}
    assert len(written) == 2 * len(GOOD) + 2  # a mask and an overlay each, the CSV, the config
    assert "config-predict.yaml" in written
    assert not any(name.endswith(".part") or name.startswith(".") for name in written)
    assert files_outside(tmp_path, out) == before
    umask = os.umask(0)
    os.umask(umask)
    for path in (out / CSV_NAME, out / rows["plain.png"]["mask_file"]):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as `open` makes them


def test_earlier_outputs_are_kept_unless_overwrite_is_asked_for(checkpoint, tmp_path):
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(scan(30, 40)).save(folder / "x.png")
    predict(checkpoint, folder, out)
    first = (out / "x_mask.png").stat().st_mtime_ns
    (out / CSV_NAME).unlink()  # the masks alone mark an earlier (perhaps killed) run
    with pytest.raises(FileExistsError, match=r"already holds predictions \(x_mask.png, x_over"):
        predict(checkpoint, folder, out)
    assert (out / "x_mask.png").stat().st_mtime_ns == first
    predict(checkpoint, folder, out, "--prediction.overwrite=true")
    assert list(read_csv(out / CSV_NAME)) == ["x.png"]
    assert (out / "x_mask.png").stat().st_mtime_ns != first


def test_overwrite_removes_the_earlier_runs_listed_outputs_only(checkpoint, tmp_path):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    for folder, names in ((first, ["a.png", "b.png"]), (second, ["a.png"])):
        folder.mkdir()
        for name in names:
            Image.fromarray(scan(30, 40)).save(folder / name)
    predict(checkpoint, first, out)
    Image.fromarray(scan(30, 40)).save(out / "mine_mask.png")  # not the earlier run's
    with pytest.warns(UserWarning, match=r"1 file\(s\) .* no earlier predictions.csv lists"):
        predict(checkpoint, second, out, "--prediction.overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.png",
        "a_overlay.png",
        "config-predict.yaml",
        "mine_mask.png",
        CSV_NAME,
    ]
    assert list(read_csv(out / CSV_NAME)) == ["a.png"]


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file directly in ``folder`` (hidden ones too), by name: its bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_an_overwrite_that_fails_its_checks_keeps_the_earlier_outputs(checkpoint, tmp_path):
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(scan(30, 40)).save(folder / "x.png")
    predict(checkpoint, folder, out)
    earlier = files_in(out)
    assert {CSV_NAME, "x_mask.png", "x_overlay.png", "config-predict.yaml"} == set(earlier)
    with pytest.raises(ValueError, match=r"data.image_size must be a multiple of 32"):
        predict(checkpoint, folder, out, "--prediction.overwrite=true", "--data.image_size=48")
    assert files_in(out) == earlier
    assert sorted(p.name for p in out.iterdir()) == sorted(earlier)  # no folder left either


def test_an_overwrite_that_fails_or_is_killed_midway_keeps_the_earlier_outputs(
    checkpoint, tmp_path, monkeypatch
):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    for folder, names in ((first, ["a.png", "b.png"]), (second, ["a.png", "c.png", "d.png"])):
        folder.mkdir()
        for k, name in enumerate(names):
            Image.fromarray(scan(30, 40, seed=k)).save(folder / name)
    predict(checkpoint, first, out)
    earlier = files_in(out)
    real = writer_module.png_bytes
    calls = []

    def full_disk_at_the_third_png(array):
        calls.append(1)
        if len(calls) == 3:  # a.png's mask and overlay are written, then the disk is full
            raise OSError(28, "No space left on device")
        return real(array)

    monkeypatch.setattr(writer_module, "png_bytes", full_disk_at_the_third_png)
    with pytest.raises(OSError, match="No space left"):
        predict(checkpoint, second, out, "--prediction.overwrite=true")
    assert files_in(out) == earlier
    assert sorted(p.name for p in out.iterdir()) == sorted(earlier)  # nothing half-done left
    # A killed run cleans nothing up: no exception handler runs.
    calls.clear()
    monkeypatch.setattr(writer_module.PredictionWriter, "on_exception", lambda *args: None)
    with pytest.raises(OSError, match="No space left"):
        predict(checkpoint, second, out, "--prediction.overwrite=true")
    assert files_in(out) == earlier
    assert (out / STAGING_NAME / "a_mask.png").is_file()  # its outputs, still set apart
    # The next overwrite replaces the earlier run with its own, and tidies up after the
    # killed one.
    monkeypatch.setattr(writer_module, "png_bytes", real)
    predict(checkpoint, second, out, "--prediction.overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CSV_NAME, "config-predict.yaml"]
        + [f"{stem}_{kind}.png" for stem in "acd" for kind in ("mask", "overlay")]
    )
    assert list(read_csv(out / CSV_NAME)) == ["a.png", "c.png", "d.png"]


def test_the_csv_names_the_classes_the_model_was_trained_on(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["class_names"] == ["benign", "malignant"]  # the training data's, saved by fit
    ckpt["class_names"] = ["cyst", "solid"]  # as if trained on a manifest of these classes
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(scan(30, 40)).save(folder / "x.png")
    predict(other, folder, out)  # the config's data would name them benign and malignant
    row = read_csv(out / CSV_NAME)["x.png"]
    assert {"p_cyst", "p_solid"} <= set(row) and row["predicted_class"] in ("cyst", "solid")


def test_the_image_folder_is_never_the_output_folder(checkpoint, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(scan(30, 40)).save(folder / "case0.png")
    truth = png(scan(30, 40, seed=1))
    (folder / "case0_mask.png").write_bytes(truth)  # ground truth beside its scan, as BUSI has
    for extra in ([], ["--prediction.overwrite=true"]):
        with pytest.raises(ValueError, match=r"is the folder of images being predicted"):
            predict(checkpoint, folder, folder, *extra)
    assert sorted(p.name for p in folder.iterdir()) == ["case0.png", "case0_mask.png"]
    assert (folder / "case0_mask.png").read_bytes() == truth


@pytest.mark.parametrize(
    "name",
    [
        "../escape.png",
        "../../etc/passwd",
        "..\\..\\windows\\system32.png",
        "/abs/path.png",
        "..",
        ".",
        "",
        ".hidden.png",
        "....png",
        "a/b/../c.png",
        "x" * 400 + ".png",
        "new\nline.png",
        "nul\x00byte.png",
    ],
)
def test_safe_stem_cannot_leave_the_output_folder(name, tmp_path):
    stem = safe_stem(name)
    assert stem and len(stem) <= MAX_STEM
    assert not set(stem) & {"/", "\\", "\n", "\x00"} and not stem.startswith(".")
    for suffix in ("_mask.png", "_overlay.png"):
        target = (tmp_path / f"{stem}{suffix}").resolve()
        assert target.parent == tmp_path.resolve()
        target.write_bytes(b"")  # a valid file name on this system


def test_unwritable_output_folder_fails_before_predicting(checkpoint, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(scan(30, 30)).save(folder / "x.png")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=r"prediction folder .*afile/out is not writable"):
        predict(checkpoint, folder, blocker / "out")


def test_failure_mid_run_leaves_no_partial_file(checkpoint, tmp_path, monkeypatch):
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    for k in range(6):
        Image.fromarray(scan(30, 30, seed=k)).save(folder / f"{k}.png")
    calls = []
    real = writer_module.png_bytes

    def failing(array):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(array)

    monkeypatch.setattr(writer_module, "png_bytes", failing)
    with pytest.raises(OSError, match="No space left"):
        predict(checkpoint, folder, out)
    left = sorted(p.name for p in out.iterdir())
    assert CSV_NAME not in left and not [n for n in left if n.endswith(".part")]
    assert all(n.endswith(("_mask.png", "_overlay.png", "-predict.yaml")) for n in left)


def test_predict_images_are_decoded_only_when_asked_for(tmp_path):
    for k in range(3):
        Image.fromarray(scan(40, 50, seed=k)).save(tmp_path / f"{k}.png")
    dataset = PredictFolderDataset(sorted(tmp_path.glob("*.png")), image_size=32)
    (tmp_path / "1.png").write_bytes(b"")  # replaced after the folder was listed
    (tmp_path / "2.png").unlink()
    items = [dataset[i] for i in range(3)]
    assert "error" not in items[0] and items[0]["orig_size"].tolist() == [40, 50]
    assert items[1]["error"] == "empty file (0 bytes)"
    assert items[2]["error"] == "file not found"
    assert all(item["image"].shape == (1, 32, 32) for item in items)


def corrupted_variants(data: bytes, count: int = 30, seed: int = 7) -> list[bytes]:
    """Truncations, flipped bytes and overwritten runs of a valid file (seeded)."""
    rng = np.random.default_rng(seed)
    variants = []
    for k in range(count):
        blob = bytearray(data)
        if k % 3 == 0:
            blob = blob[: int(rng.integers(0, len(blob)))]
        elif k % 3 == 1:
            for pos in rng.integers(0, len(blob), int(rng.integers(1, 6))):
                blob[pos] ^= int(rng.integers(1, 256))
        else:
            start = int(rng.integers(0, len(blob) - 16))
            blob[start : start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        variants.append(bytes(blob))
    return variants


def decodable_variants(data: bytes, seed: int = 7) -> list[bytes]:
    """Damaged PNGs that still decode: garbage after IEND, the IEND chunk cut off, and
    pixel bytes flipped inside the compressed data (recompressed, with a valid CRC)."""
    iend = data.rindex(b"IEND") - 4  # the chunk's length field
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    rows = bytearray(zlib.decompress(data[start + 8 : start + 8 + length]))
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, len(rows), 40):
        if rows[pos] > 4:  # leave scanline filter bytes (0-4) alone: those would not decode
            rows[pos] ^= 0x5A
    body = zlib.compress(bytes(rows))
    chunk = b"IDAT" + body
    idat = struct.pack(">I", len(body)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    flipped = data[:start] + idat + data[start + 12 + length :]
    return [data + bytes(rng.integers(0, 256, 64, dtype=np.uint8)), data[:iend], flipped]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail with a TimeoutError instead of hanging (SIGALRM; the main thread only)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_fuzzed_pngs_never_crash_or_hang_the_decoder_or_a_prediction_run(checkpoint, tmp_path):
    folder, out = tmp_path / "fuzz", tmp_path / "out"
    folder.mkdir()
    valid = png(scan(48, 64))
    for k, blob in enumerate([*corrupted_variants(valid), *decodable_variants(valid)]):
        (folder / f"v{k:02d}.png").write_bytes(blob)

    outcomes = []
    with deadline(60):
        for path in sorted(folder.iterdir()):
            try:
                gray = decode_image(path)
            except ValueError:  # the one error type the decoder raises for bad content
                outcomes.append("error")
                continue
            assert gray.dtype == np.uint8 and gray.ndim == 2 and 0 not in gray.shape
            outcomes.append("ok")
    assert outcomes.count("error") >= 1 and outcomes.count("ok") >= 3  # both branches run

    with deadline(240), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict(checkpoint, folder, out)
    rows = read_csv(out / CSV_NAME)
    assert len(rows) == len(outcomes)
    for (name, row), outcome in zip(sorted(rows.items()), outcomes, strict=True):
        assert bool(row["error"]) == (outcome == "error"), name
        if outcome == "ok":
            with Image.open(out / row["mask_file"]) as mask:
                assert mask.size == (int(row["width"]), int(row["height"]))


def test_the_writer_names_what_it_needs_when_given_other_batches(checkpoint, tmp_path):
    import lightning as L

    from semiseg_caw import SemiSegCAW, SemiSegDataModule
    from semiseg_caw.lit.writer import PredictionWriter

    model = SemiSegCAW.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    data = SemiSegDataModule(image_size=32, synthetic_samples=40)
    data.setup("test")
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[writer], limit_predict_batches=1
    )
    with pytest.raises(ValueError, match=r"needs the batches of a folder"):
        trainer.predict(model, dataloaders=data.test_dataloader(), return_predictions=False)
