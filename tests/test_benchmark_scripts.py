"""The other benchmark scripts that need no smoke run: benchmarks/lesion_size.py on images
without a lesion, and benchmarks/stage1_variants.py (a control and each stage-1 variant,
trained on real BUSI shrunk to 32 px, then scored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripts import load_script


def test_lesion_size_scores_images_without_a_lesion_without_an_area_ratio() -> None:
    """A group of lesion-free images (e.g. BUSI normal) has no predicted / true area ratio:
    reported as missing, not a crash; a false positive there counts as missed, and far from
    any lesion."""
    sizes = load_script("lesion_size")
    # counts per image: predicted, true, overlapping, and false-positive pixels far from a lesion
    group = sizes._group([1, 2], {1: 1.0, 2: 0.0}, {1: [0, 0, 0, 0], 2: [5, 0, 0, 5]})
    assert group == {
        "images": 2, "per_image": 0.5, "missed": 1, "area_ratio": None, "precision": 0.0,
        "recall": 0.0, "far_fp": 1.0,
    }  # fmt: skip
    # 4 false positives, 1 of them far; an exact mask has none to share out
    lesion = sizes._group([1, 2], {1: 0.7, 2: 1.0}, {1: [10, 8, 6, 1], 2: [3, 3, 3, 0]})
    assert lesion["far_fp"] == pytest.approx(1 / 4) and lesion["area_ratio"] == pytest.approx(1.125)
    assert sizes._group([2], {2: 1.0}, {2: [3, 3, 3, 0]})["far_fp"] is None
    mean = sizes._mean_scores(
        [{"pooled": 1.0, "per_image": 0.5, "groups": {"none": group}}] * 2, ["none"]
    )
    assert mean["groups"]["none"]["far_fp"] == 1.0
    assert mean["groups"]["none"]["area_ratio"] is None and sizes._fmt(None, 2) == "–"


def test_stage1_variants_trains_a_control_and_each_variant_then_scores_them(
    shared_data: Path, tmp_path: Path
) -> None:
    """benchmarks/stage1_variants.py: one stage 1 per variant and seed beside a control, and
    a core model on each, every run trained with its recorded arguments and scored by lesion
    size; a finished run is reused, one trained otherwise refused."""
    variants = load_script("stage1_variants")
    # BUSI already at 32 px: each run's subprocess loads it in a moment.
    small = tmp_path / "busi-32"
    load_script("shrink_data").main(["busi", str(shared_data / "busi"), str(small), "--size", "32"])
    quick = [
        "--fit-option=--trainer.limit_train_batches=2",
        "--fit-option=--trainer.limit_val_batches=1",
    ]
    args = [
        "--root", str(small), "--image-size", "32", "--stage1-epochs", "1", "--stage2-epochs", "1",
        "--seeds", "0", "--parallel", "2", "--work", str(tmp_path / "runs"),
        "--out", str(tmp_path / "out"), *quick,
        "--variant", "no-cam=--model.init_args.stage1_loss_weights={cam: 0.0}",
    ]  # fmt: skip
    record = variants.main(args)
    no_cam = ["--model.init_args.stage1_loss_weights={cam: 0.0}"]
    assert [(r["variant"], r["stage"], r["settings"]) for r in record["runs"]] == [
        ("control", 1, []), ("no-cam", 1, no_cam), ("control", 2, []), ("no-cam", 2, no_cam),
    ]  # fmt: skip
    assert all(r["fit_s"] > 0 for r in record["runs"])
    tasks = ["ClassElevateSeg", "ClassElevateSeg", "SemiSegCAW", "SemiSegCAW"]
    assert [r["task"] for r in record["rows"]] == tasks
    assert record["packages"]["timm"] and record["packages"]["albumentations"]
    run = tmp_path / "runs/no-cam/seed0"
    trained = json.loads((run / "fit-args.json").read_text())
    assert trained[0] == "fit" and trained[-1].endswith("{cam: 0.0}")
    assert "cam: 0.0" in (run / "stage1/logs/version_0/hparams.yaml").read_text()  # it applied
    # The core model trains on that run's stage 1, not on one of its own.
    core = json.loads((run / "stage2-1ep/fit-args.json").read_text())
    stage1 = record["runs"][1]["checkpoint"]
    assert f"--model.init_args.stage1_checkpoint={stage1}" in core
    text = (tmp_path / "out/busi-stage1-variants.md").read_text()
    assert "| no-cam | 1 | val |" in text and "| control | 2 | test |" in text
    assert (tmp_path / "out/busi-lesion-size.md").is_file()
    # A finished run is reused, not retrained; one trained otherwise is refused.
    assert (run / "fit.done").is_file() and variants.train(trained, run, threads=1) is None
    changed = [a.replace("cam: 0.0", "cam: 0.1") for a in trained]
    with pytest.raises(SystemExit, match="trained with other arguments"):
        variants.train(changed, run, threads=1)
    with pytest.raises(SystemExit):
        variants.parse(["--variant", "control=--seed_everything=1"])
