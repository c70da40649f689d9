"""Devices, strategy and precision come from the Trainer alone: 2-process DDP on the CPU, bf16.

The DDP runs are real ``python -m semiseg_caw`` processes: Lightning's launcher
starts the second process by running the same command again.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from semiseg_caw.cli import main

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed"),
]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# 40 synthetic images split 28 / 4 / 8 (the DDP fit below makes 51).
DATA = [
    f"--config={CONFIGS / 'demo.yaml'}",
    "--data.image_size=32",
    "--data.batch_size=4",
    "--data.eval_batch_size=2",
    "--data.synthetic_samples=40",
    "--data.class_only=6",
    "--model.init_args.aux_encoder=test_resnet",  # timm's tiny ResNet: small checkpoints
]
TRAINER = [
    "--trainer.max_epochs=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2"]


def run_cli(args: list[str], cwd: Path) -> str:
    """Run ``python -m semiseg_caw ARGS`` in ``cwd``; returns its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A session of its own, so that a hung run is killed together with the process it started.
    proc = subprocess.Popen(
        [sys.executable, "-m", "semiseg_caw", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"timed out: {' '.join(args)}\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output


def read_csv_metrics(folder: Path) -> list[dict[str, float]]:
    """The rows of the one metrics.csv a CSVLogger wrote under ``folder``, empty cells left out."""
    (path,) = folder.rglob("metrics.csv")
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Stage 1 and stage 2 (one epoch each) on 2 processes in bf16 mixed precision.

    Returns the run's root folder and the command's output.
    """
    root = tmp_path_factory.mktemp("ddp_fit")
    args = [
        "fit",
        *DATA,
        *TRAINER,
        *DDP,
        "--trainer.precision=bf16-mixed",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={root / 'stage2'}",
        "--model.init_args.stage1_epochs=1",
        # Mixed batches: Lightning must give the batch sampler each process's shard.
        "--data.class_only_per_batch=0.25",
        # 51 images split 36 / 5 / 10: the 5 validation images in 2 batches on one process
        # and 1 on the other (each scored once), a no-grad pass through DDP more on one.
        "--data.synthetic_samples=51",
        f"--trainer.default_root_dir={root}",
    ]
    return root, run_cli(args, cwd=root)


def test_ddp_fit_runs_both_stages_on_two_processes(ddp_fit: tuple[Path, str]) -> None:
    root, output = ddp_fit
    assert "distributed_backend=gloo" in output
    assert "Starting with 2 processes" in output
    assert "sync_dist=True" not in output  # the epoch metrics are logged as synced
    # 36 training images, 18 per process, batches of 4 without the last partial one: 4 steps
    # per epoch in each stage (one process would take 9, as would a mixed batch sampler that
    # ignored the process's shard). A skipped (non-finite) step would not count.
    stage1 = torch.load(root / "stage1" / "checkpoints" / "last.ckpt", weights_only=True)
    stage2 = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert stage1["global_step"] == 4
    assert stage2["global_step"] == 4
    assert "stage1" in stage2["hyper_parameters"]["stage1_checkpoint"]


def test_bf16_mixed_precision_trains_without_nan(ddp_fit: tuple[Path, str]) -> None:
    """The DDP fit above ran both stages under bf16 autocast: losses and weights stay finite."""
    root, output = ddp_fit
    assert output.count("Using bfloat16 Automatic Mixed Precision") >= 2  # stage 1 and 2
    for folder in (root / "stage1", root / "stage2"):
        rows = [row for row in read_csv_metrics(folder) if "train/loss" in row]
        assert len(rows) == 4, folder  # every step logged, none skipped
        (val,) = [row for row in read_csv_metrics(folder) if "val/dice" in row]  # uneven shares
        assert math.isfinite(val["val/loss"]) and 0 <= val["val/dice"] <= 1
        assert all(math.isfinite(v) for row in rows for v in row.values())
    wgm = [row for row in read_csv_metrics(root / "stage2") if "wgm/bce" in row]
    assert {k for k in wgm[0] if k.startswith("wgm/")} == {
        f"wgm/{t}" for t in ("bce", "dice", "ftv", "ce", "aux")
    }
    assert all(v > 0 for row in wgm for k, v in row.items() if k.startswith("wgm/"))
    for ckpt in (root / "stage1" / "checkpoints", root / "checkpoints"):
        state = torch.load(ckpt / "last.ckpt", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_test_metrics_are_the_same_on_one_and_two_processes(
    ddp_fit: tuple[Path, str], tmp_path: Path
) -> None:
    """The same checkpoint tested by 1 and by 2 processes: metric states sync across
    processes, and each image is scored once: 9 test images, 5 on one process and 4 on the
    other (Lightning's DistributedSampler would score one of them twice)."""
    ckpt = ddp_fit[0] / "checkpoints" / "last.ckpt"
    common = ["test", *DATA, "--data.synthetic_samples=45", *TRAINER, f"--ckpt_path={ckpt}"]
    single = main([*common, "--trainer.devices=1", f"--trainer.default_root_dir={tmp_path / '1'}"])
    expected = {k: float(v) for k, v in single.trainer.callback_metrics.items()}

    csv_logger = [
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path / '2'}",
    ]
    run_cli([*common, *DDP, *csv_logger, f"--trainer.default_root_dir={tmp_path / '2'}"], tmp_path)
    got = {k: v for row in read_csv_metrics(tmp_path / "2") for k, v in row.items()}
    got = {k: v for k, v in got.items() if k.startswith("test/")}

    for key in ("dice", "iou", "dice_per_image", "recall", "precision", "accuracy", "cls_auroc"):
        assert f"test/{key}" in expected, key
    assert set(got) == {k for k in expected if k.startswith("test/")}
    for key, value in got.items():
        assert value == pytest.approx(expected[key], abs=1e-5), key


def test_a_process_whose_share_holds_no_mask_computes_the_metrics_with_the_other(
    ddp_fit: tuple[Path, str], tmp_path: Path
) -> None:
    """A manifest's test split of one masked and one class-only image: each process scores
    one. The one without a mask skipped computing the (syncing) metrics, and gloo aborted
    on the mismatched collectives (NCCL would hang)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / name)
    lesion = np.zeros((32, 32), dtype=np.uint8)
    lesion[8:20, 10:24] = 255
    Image.fromarray(lesion).save(tmp_path / "a_mask.png")
    (tmp_path / "test.csv").write_text(
        "image,mask,label,group,split\na.png,a_mask.png,benign,,test\nb.png,,malignant,,test\n"
    )
    common = [
        "test",
        *TRAINER,
        f"--ckpt_path={ddp_fit[0] / 'checkpoints' / 'last.ckpt'}",
        "--data.dataset=manifest",
        f"--data.root={tmp_path / 'test.csv'}",
    ]
    single = main([*common, "--trainer.devices=1", f"--trainer.default_root_dir={tmp_path / '1'}"])
    expected = {k: float(v) for k, v in single.trainer.callback_metrics.items() if "test/" in k}
    csv_logger = [
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path / '2'}",
    ]
    output = run_cli(
        [*common, *DDP, *csv_logger, f"--trainer.default_root_dir={tmp_path / '2'}"], tmp_path
    )
    got = {k: v for row in read_csv_metrics(tmp_path / "2") for k, v in row.items()}
    got = {k: v for k, v in got.items() if k.startswith("test/")}
    assert "test/dice" in expected and "test/cls_accuracy" in expected
    assert got == pytest.approx(expected, abs=1e-5)
    assert "sync_dist=True" not in output  # Lightning's advice for unsynced epoch logs


def write_images(folder: Path, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        pixels = rng.integers(0, 256, (30 + k, 40), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def run_in(out: Path) -> list[str]:
    return [f"--trainer.default_root_dir={out.parent / (out.name + '-run')}"]


def test_predictions_on_two_processes_are_those_of_one(
    ddp_fit: tuple[Path, str], tmp_path: Path
) -> None:
    """Each process predicts its share of the folder; the outputs are one process's: the
    same names (`x.jpg` beside `x.png` too), masks and one CSV with every row in name order."""
    folder = tmp_path / "images"
    names = ["x.png", "x.jpg", *(f"case{k}.png" for k in range(6))]  # 8 images and a bad one
    write_images(folder, names)
    (folder / "y.png").write_bytes(b"not an image")
    common = ["predict", *DATA, *TRAINER, f"--ckpt_path={ddp_fit[0] / 'checkpoints' / 'last.ckpt'}"]
    common += [f"--data.predict_dir={folder}", "--data.eval_batch_size=3"]  # 2 batches each
    single = tmp_path / "one"
    main([*common, "--trainer.devices=1", f"--prediction.output_dir={single}", *run_in(single)])
    two = tmp_path / "two"
    output = run_cli([*common, *DDP, f"--prediction.output_dir={two}", *run_in(two)], tmp_path)
    assert "Starting with 2 processes" in output
    assert output.count("1 image(s) could not be predicted") == 1  # said once, for the folder
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in single.iterdir())
    for png in single.glob("*.png"):
        assert (two / png.name).read_bytes() == png.read_bytes(), png.name
    rows = {}
    for run in (single, two):
        with open(run / "predictions.csv", newline="") as f:
            rows[run] = list(csv.DictReader(f))
    assert [r["image"] for r in rows[two]] == sorted([*names, "y.png"])
    for got, expected in zip(rows[two], rows[single], strict=True):
        for key, value in expected.items():  # the class probabilities to batch-order noise
            assert got[key] == value or float(got[key]) == pytest.approx(float(value), abs=1e-5)
    assert {r["image"]: r["mask_file"] for r in rows[two]}["x.png"] == "x_2_mask.png"

    # Overwritten by a run on two processes: the earlier outputs go, the new ones come.
    (folder / "case5.png").unlink()
    run_cli(
        [*common, *DDP, f"--prediction.output_dir={two}", "--prediction.overwrite=true"], tmp_path
    )
    assert not (two / "case5_mask.png").exists() and (two / "case4_mask.png").is_file()
    assert not [p.name for p in two.iterdir() if p.name.startswith(".")]  # nothing left over
    with open(two / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 8
