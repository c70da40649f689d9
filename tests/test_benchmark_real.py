"""The benchmark on real files: the smoke budget on real BUSI, the test-time settings
(benchmarks/tta.py) and the other scripts (aux_gap.py, map_reliance.py, lesion_size.py) run
on its checkpoints, and the external check (a trained checkpoint tested on another data set
given as a manifest)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fit_args import TINY_DATA, quick_trainer
from PIL import Image
from scripts import REPO, bench, comparison, load_script, protocol

from semiseg_caw.checkpoints import CheckpointError
from semiseg_caw.cli import main as cli_main

TEST_KEYS = (
    "test/dice",
    "test/iou",
    "test/recall",
    "test/precision",
    "test/specificity",
    "test/dice_per_image",
    "test/iou_per_image",
)


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def smoke(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The smoke budget on real BUSI (3 MALUNet rows, 1 seed), written to a temp folder."""
    tmp = tmp_path_factory.mktemp("bench")
    report = bench.main(
        [
            "--dataset",
            "busi",
            "--budget",
            "smoke",
            "--parallel",
            "3",
            "--threads",
            "1",
            "--data-root",
            str(shared_data / "busi"),
            "--work",
            str(tmp / "runs"),
            "--out",
            str(tmp / "out"),
            "--no-readme",
        ]
    )
    report["out"] = tmp / "out"
    return report


def test_smoke_budget_on_real_busi(smoke: dict) -> None:
    assert not smoke["failed"]
    assert [r["row"] for r in smoke["rows"]] == [
        "malunet-full",
        "malunet-reduced",
        "malunet-semiseg-caw",
        "classelevate-alone",  # SemiSeg-CAW's stage-1 network, tested on its own
    ]
    for run in smoke["runs"]:
        m = run["metrics"]
        for key in protocol.SEG_KEYS:
            assert 0.0 <= m[f"seg/{key}"] <= 1.0
        assert m["seg/dice"] == pytest.approx(2 * m["seg/iou"] / (1 + m["seg/iou"]), abs=1e-5)
        assert run["test_images"] == 129  # BUSI test split without normal images (default)
        assert run["params"] > 0 and run["infer_ms_per_image"] > 0
        assert 0.0 <= run["val_dice"] <= 1.0  # what settings are chosen on
        # The budget as the run saw it: 100 masks withheld, as class-only images or dropped.
        semi = run["method"] in ("semiseg-caw", "classelevate-alone")
        assert run["train_class_only"] == (100 if semi else 0)
        assert "checkpoints/best-epoch=" in run["best_checkpoint"]
        best = Path(run["best_checkpoint"])
        if run["method"] != "classelevate-alone":
            assert best.is_file() and not (best.parent / "last.ckpt").exists()
            assert run["packages"]["torch"] and run["packages"]["lightning"]  # what it ran on
    semi = next(r for r in smoke["runs"] if r["method"] == "semiseg-caw")
    masks = {r["method"]: r["train_masks"] for r in smoke["runs"]}
    assert masks["full"] == masks["reduced"] + 100 == masks["semiseg-caw"] + 100
    assert 0.0 <= semi["metrics"]["cls/auroc"] <= 1.0
    assert semi["params"] > semi["params_core"]  # ClassElevateSeg counted apart
    out = smoke["out"]
    assert (out / "busi-smoke.json").is_file() and (out / "busi-smoke.png").is_file()
    assert "| malunet-semiseg-caw |" in (out / "busi-smoke.md").read_text()


# ----------------------------------------------------------------------------- test-time settings


def test_test_time_settings_reevaluate_the_smoke_runs(
    smoke: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tta = load_script("tta")
    rows = ["classelevate-alone", "malunet-reduced"]  # a stage 1's checkpoint; a run's own
    args = ["--dataset", "busi", "--budget", "smoke", "--rows", *rows, "--setting", "flip+largest"]
    args += ["--source", str(smoke["out"] / "busi-smoke.json"), "--out", str(tmp_path)]
    report = tta.main(args)
    # A second run reuses each run's kept result instead of evaluating it again.
    monkeypatch.setattr(tta, "evaluate_run", lambda *a: pytest.fail("evaluated again"))
    again = tta.main(args)
    assert again["runs"] == report["runs"] and (report["evaluated"], again["evaluated"]) == (2, 0)
    assert "evaluating 0 of 2 runs" in tta.markdown(again)
    assert "evaluating" not in tta.markdown(report)
    assert [r["row"] for r in report["rows"]] == rows[::-1]  # in the benchmark table's order
    for run in report["runs"]:
        # Without TTA, the benchmark's own test Dice: the same weights, data and metric. (The
        # smoke budget validated 2 batches while training; here the whole split.)
        assert abs(run["test_diff"]) < 1e-5
        assert run["test_tta"]["dice"] != run["test"]["dice"]  # the settings were applied
        assert 0.0 <= run["val_tta"]["dice"] <= 1.0
    table = (tmp_path / "busi-smoke-tta-largest.md").read_text()
    assert "| malunet-reduced | 1 |" in table and "Validation favours both on" in table


def test_a_settings_table_keeps_its_rows_and_runs_whose_folders_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tta = load_script("tta")
    monkeypatch.setattr(tta, "REPO", tmp_path)
    monkeypatch.setattr(tta, "evaluate_run", lambda *a: pytest.fail("nothing to evaluate"))

    def record(row: str, test: float) -> dict:
        ckpt = f"runs/{row}/seed0/checkpoints/best.ckpt"  # never written: the folder is gone
        return {"row": row, "seed": 0, "best_checkpoint": ckpt, "val_dice": 0.5,
                "metrics": {"seg/dice": test}}  # fmt: skip

    def result(row: str, test: float) -> dict:
        split = {"dice": test}
        return {"row": row, "seed": 0, "val": split, "val_tta": split, "test": split,
                "test_tta": split, "val_diff": 0.0, "test_diff": 0.0, "commit": "abc"}  # fmt: skip

    bench = {"rows": [{"row": "a"}, {"row": "b"}], "runs": [record("a", 0.7), record("b", 0.6)]}
    # A table of another schedule than the budget's: the settings table is named after it.
    source = tmp_path / "busi-gpu-60ep.json"
    source.write_text(json.dumps(bench))
    table = tmp_path / "busi-gpu-60ep-tta.json"
    table.write_text(json.dumps({"runs": [result("a", 0.7), result("b", 0.6)]}))
    args = ["--dataset", "busi", "--source", str(source), "--out", str(tmp_path)]
    report = tta.main([*args, "--rows", "a"])
    assert [r["row"] for r in report["rows"]] == ["a", "b"] and report["evaluated"] == 0
    assert (tmp_path / "busi-gpu-60ep-tta.md").is_file()
    assert not (tmp_path / "busi-cpu-tta.json").exists()
    # A run retrained since the table was written: its old result is not reused.
    bench["runs"][0]["metrics"]["seg/dice"] = 0.71
    source.write_text(json.dumps(bench))
    with pytest.raises(SystemExit, match="a seed 0: runs/a/seed0/.* is gone and busi-gpu-60ep-tta"):
        tta.main([*args, "--rows", "a"])


def test_kept_settings_results_are_reused_from_any_checkout_until_the_checkpoint_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tta = load_script("tta")
    monkeypatch.setattr(tta, "REPO", tmp_path)
    record = {"best_checkpoint": "runs/a/seed0/checkpoints/best.ckpt"}
    ckpt = tmp_path / record["best_checkpoint"]
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    cache = ckpt.parents[1] / "settings-tta.json"

    def keep(path: str) -> None:  # as a run from a checkout elsewhere wrote it
        kept = {"checkpoint": path, "mtime_ns": ckpt.stat().st_mtime_ns, "result": {"kept": 1}}
        cache.write_text(json.dumps(kept))

    monkeypatch.setattr(tta, "evaluate_run", lambda *a: {"new": 1})
    keep(f"/work/worktree/{record['best_checkpoint']}")
    assert tta.cached_or_evaluated(record, "flip", "abc", force=False) == ({"kept": 1}, False)
    keep("/work/worktree/runs/b/seed0/checkpoints/best.ckpt")  # another run's file
    assert tta.cached_or_evaluated(record, "flip", "abc", force=False)[0]["new"] == 1
    keep(record["best_checkpoint"])
    os.utime(ckpt, ns=(0, ckpt.stat().st_mtime_ns + 1))  # retrained since
    assert tta.cached_or_evaluated(record, "flip", "abc", force=False)[0]["new"] == 1
    assert json.loads(cache.read_text())["checkpoint"] == record["best_checkpoint"]


def test_a_setting_is_off_in_the_pass_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pass is without the setting even for a checkpoint trained with it on: the
    command names each of its options false (options given win over the checkpoint's)."""
    import semiseg_caw.cli

    tta = load_script("tta")
    monkeypatch.setattr(tta, "REPO", tmp_path)
    run = tmp_path / "runs" / "a" / "seed0"
    run.mkdir(parents=True)
    spec = {"test": ["--config=configs/busi.yaml", "--trainer.default_root_dir=old"]}
    (run / "spec.json").write_text(json.dumps(spec))
    commands = []

    def fake_main(args: list[str]):
        commands.append(args)
        raise InterruptedError  # the command is all this test needs

    monkeypatch.setattr(semiseg_caw.cli, "main", fake_main)
    with pytest.raises(InterruptedError):
        tta.evaluate_run({"best_checkpoint": "runs/a/seed0/checkpoints/b.ckpt"}, "flip+largest")
    (command,) = commands
    assert "--model.init_args.flip_tta=false" in command
    assert "--model.init_args.keep_largest_lesion=false" in command
    assert "--trainer.default_root_dir=old" not in command


def test_flip_tta_tables_and_their_line_in_the_benchmark_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tta = load_script("tta")

    def run(row: str, seed: int, val: float, val_tta: float, test: float, test_tta: float):
        split = lambda dice: {"dice": dice, "iou": dice / (2 - dice)}  # noqa: E731
        return {"row": row, "seed": seed, "val": split(val), "val_tta": split(val_tta),
                "test": split(test), "test_tta": split(test_tta), "val_diff": 0.0,
                "test_diff": 1e-7}  # fmt: skip

    runs = [run("a", 0, 0.60, 0.62, 0.70, 0.69), run("a", 1, 0.64, 0.65, 0.72, 0.74)]
    runs += [run("b", 0, 0.50, 0.49, 0.55, 0.58)]
    rows = tta.summarise(runs)
    assert rows[0]["val_gain"] == pytest.approx([0.015, 0.00707], abs=1e-5)
    assert rows[0]["test"]["dice"] == pytest.approx([0.71, 0.01414], abs=1e-5)
    assert rows[1]["val_gain"] == pytest.approx([-0.01, 0.0]) and rows[1]["check"] == 1e-7
    report = {"dataset": "busi", "budget": "cpu", "source": "x.json", "commit": "abc1234",
              "hardware": {"cpu": "CPU", "cores": 2, "gpu": None}, "finished": "now",
              "wall_s": 1.0, "rows": rows, "runs": runs}  # fmt: skip
    table = tta.markdown(report)
    assert "| a | 2 | 0.620 ± 0.028 | 0.635 ± 0.021 | +0.0150 ± 0.0071 |" in table
    assert "favours flip TTA on 1 of 2 rows (a)." in table
    tiny_gains = [{"row": "x", "val_gain": [0.00004, 0.0]}, {"row": "y", "val_gain": [6e-5, 0]}]
    assert comparison.favoured(tiny_gains) == ["y"]  # x is printed as +0.0000: no gain
    monkeypatch.setattr(comparison, "RESULTS", tmp_path)
    assert comparison.tta_lines("busi-cpu") == []  # no TTA results: no line
    (tmp_path / "busi-cpu-tta.json").write_text(json.dumps(report))
    (line,) = comparison.tta_lines("busi-cpu")
    assert "validation +0.0067 (-0.010 to +0.020; higher in 2)" in line
    assert "test +0.0133 (-0.010 to +0.030; higher in 2)" in line
    assert "favours it on 1 of 2 rows" in line
    # Each setting's file gets its line; a table's setting names its columns.
    report["setting"] = "largest"
    assert "| val Dice, largest lesion |" in tta.markdown(report)
    (tmp_path / "busi-cpu-largest.json").write_text(json.dumps(report))
    lines = comparison.tta_lines("busi-cpu")
    assert lines[0] == line and lines[1].startswith("- Keeping the largest lesion (")


# ----------------------------------------------------------------------------- external check


def _write_split(path: Path, ids: list[str]) -> Path:
    # An external test set: every image in the test split, none for training.
    path.write_text(json.dumps({"train": [], "val": [], "test": ids}))
    return path


def _test_on_manifest(
    ckpt: Path,
    configs: list[str],
    manifest: Path,
    split: Path | None,
    size: int,
    tmp: Path,
    classes: str | None = "[benign, malignant]",
) -> dict[str, float]:
    # classes None: not given (the checkpoint's); then neither the split file nor the size.
    named = [
        f"--data.split_file={split or 'null'}",  # None: the manifest's split column
        f"--data.classes={classes}",
        f"--data.image_size={size}",
    ]
    cli = cli_main(
        [
            "test",
            *[f"--config={REPO / c}" for c in configs],
            "--data.dataset=manifest",
            f"--data.root={manifest}",
            *(named if classes is not None else []),
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp}",
            f"--ckpt_path={ckpt}",
        ]
    )
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in TEST_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/dice"] == pytest.approx(
        2 * metrics["test/iou"] / (1 + metrics["test/iou"]), abs=1e-5
    )
    return metrics


def test_busi_checkpoint_on_ddti_manifest(smoke: dict, shared_data: Path, tmp_path: Path) -> None:
    """A BUSI-trained checkpoint (the smoke run's) tested on DDTI images through a manifest
    with absolute paths: the same metrics come out, and BUSI images through a manifest
    score exactly as through the BUSI reader."""
    ddti = shared_data / "ddti"
    with open(ddti / "labels.csv", newline="") as handle:
        labelled = [r for r in csv.DictReader(handle) if r["label"].strip()]
    picked = [r for r in labelled if r["label"] == "0"][:4] + [
        r for r in labelled if r["label"] == "1"
    ][:3]
    manifest = tmp_path / "external.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label"])
        for r in picked:
            writer.writerow([ddti / "image" / r["image"], ddti / "mask" / r["image"], r["label"]])
    ids = [str(ddti / "image" / r["image"]) for r in picked]
    split = _write_split(tmp_path / "split.json", ids)
    run = next(r for r in smoke["runs"] if r["row"] == "malunet-full")
    ckpt = Path(run["best_checkpoint"])
    ckpt = ckpt if ckpt.is_absolute() else REPO / ckpt
    configs = ["configs/busi.yaml", "configs/baselines/full.yaml"]
    metrics = _test_on_manifest(ckpt, configs, manifest, split, 64, tmp_path)
    assert "test/cls_auroc" not in metrics  # the plain baseline has no classifier
    # BUSI test images through a manifest score as through the BUSI reader: the manifest
    # route loses nothing (same decoding, labels and masks).
    busi = shared_data / "busi" / "Dataset_BUSI_with_GT"
    test_ids = json.loads((REPO / "configs/splits/busi.json").read_text())["test"]
    single = [i for i in test_ids if not (busi / i.replace(".png", "_mask_1.png")).exists()]
    chosen = [i for i in single if i.startswith("benign")][:4]
    chosen += [i for i in single if i.startswith("malignant")][:3]
    manifest = tmp_path / "busi.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label"])
        for i in chosen:
            label = i.split("/")[0]
            writer.writerow([busi / i, busi / i.replace(".png", "_mask.png"), label])
    split = _write_split(tmp_path / "busi-manifest.json", [str(busi / i) for i in chosen])
    through_manifest = _test_on_manifest(ckpt, configs, manifest, split, 64, tmp_path / "m")
    reader = cli_main(
        [
            "test",
            *[f"--config={REPO / c}" for c in configs],
            f"--data.root={shared_data / 'busi'}",
            f"--data.split_file={_write_split(tmp_path / 'busi-reader.json', chosen)}",
            "--data.image_size=64",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'r'}",
            f"--ckpt_path={ckpt}",
        ]
    )
    through_reader = {k: float(v) for k, v in reader.trainer.callback_metrics.items()}
    assert through_manifest == pytest.approx(through_reader, abs=1e-6)


def test_checkpoint_on_synthetic_manifest(tmp_path: Path) -> None:
    """Runs without the real data: tiny synthetic fit, then test on PNGs named in a manifest."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(7):
        image = rng.integers(0, 255, (40, 48), dtype=np.uint8)
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[10 + i : 25, 12 : 30 + i] = 255
        image[mask > 0] //= 3
        Image.fromarray(image).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "img" / f"{i}_mask.png")
        label = ["benign", "malignant"][i % 2]
        rows.append([f"img/{i}.png", f"img/{i}_mask.png", label, "test"])
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "mask", "label", "split"], *rows])
    split = None  # the manifest's split column puts every image in the test split
    configs = ["configs/demo.yaml"]
    cli_main(
        [
            "fit",
            *[f"--config={REPO / c}" for c in configs],
            *TINY_DATA,
            "--model.init_args.stage1_epochs=1",
            *quick_trainer(epochs=1),
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path / 'fit'}",
        ]
    )
    ckpt = next((tmp_path / "fit" / "checkpoints").glob("best-epoch=*.ckpt"))
    # No config: the model and the other data options come from the checkpoint.
    metrics = _test_on_manifest(ckpt, [], manifest, split, 32, tmp_path / "test")
    assert 0.0 <= metrics["test/cls_auroc"] <= 1.0  # SemiSeg-CAW: classification metrics too
    # Only the data set and its file named: the classes and the size are the checkpoint's,
    # and the synthetic set's own options (its split file, label budget) are not carried over.
    same = _test_on_manifest(ckpt, [], manifest, None, 32, tmp_path / "t1", classes=None)
    assert same == pytest.approx(metrics)
    # The classes named in another order would swap the labels: refused, naming the order.
    with pytest.raises(CheckpointError, match=r"trained on \[benign, malignant\], in this order"):
        _test_on_manifest(ckpt, [], manifest, split, 32, tmp_path / "t2", "[malignant, benign]")


# ----------------------------------------------------------------------------- other scripts


def test_aux_gap_scores_the_stage1_maps_on_each_group(
    smoke: dict, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """benchmarks/aux_gap.py on the smoke run's stage 1: the groups are the split as stage 1
    saw it (the 100 withheld masks are the class-only group), each scored."""
    gap = load_script("aux_gap")
    stage1 = next(r for r in smoke["runs"] if r["method"] == "classelevate-alone")
    ckpt = Path(stage1["best_checkpoint"])
    ckpt = ckpt if ckpt.is_absolute() else REPO / ckpt
    args = ["--image-size", "64", "--root", str(shared_data / "busi"), "--out", str(tmp_path)]
    record = gap.main([*args, "--checkpoint", str(ckpt), str(ckpt)])
    row = record["rows"][0]
    assert list(row["images"].values()) == [351, 100, 65, 129]
    assert all(0.0 <= d <= 1.0 for d in row["dice"].values())
    text = (tmp_path / "busi-aux-gap.md").read_text()
    assert "| train (class-only) |" in text
    assert f"| mean | {row['dice']['train (pixel-labelled)']:.3f} |" in text
    capsys.readouterr()
    with pytest.raises(SystemExit):
        gap.main([*args, "--checkpoint", str(tmp_path / "missing.ckpt")])
    assert "no such checkpoint" in capsys.readouterr().err


def test_map_reliance_scores_the_core_model_with_and_without_its_map(
    smoke: dict, shared_data: Path, tmp_path: Path
) -> None:
    """benchmarks/map_reliance.py on the smoke run's SemiSeg-CAW: its core Dice is the one the
    benchmark's test loop measured; a baseline without a map is refused by name."""
    reliance = load_script("map_reliance")

    def checkpoint(method: str) -> Path:
        ckpt = Path(next(r for r in smoke["runs"] if r["method"] == method)["best_checkpoint"])
        return ckpt if ckpt.is_absolute() else REPO / ckpt

    args = ["--image-size", "64", "--root", str(shared_data / "busi"), "--out", str(tmp_path)]
    ckpt = str(checkpoint("semiseg-caw"))
    record = reliance.main([*args, "--checkpoint", ckpt, ckpt])
    dice = record["rows"][0]["dice"]
    semi = next(r for r in smoke["runs"] if r["method"] == "semiseg-caw")
    assert dice["test"]["core"] == pytest.approx(semi["metrics"]["seg/dice"], abs=1e-4)
    assert all(0.0 <= d <= 1.0 for split in dice.values() for d in split.values())
    text = (tmp_path / "busi-map-reliance.md").read_text()
    assert "| core against map |" in text and "## Validation" in text and "## Test" in text
    run = reliance.run_of(ckpt)
    assert f"| mean of `{run}` (2) | {dice['val']['core']:.3f} |" in text
    with pytest.raises(SystemExit, match="without an auxiliary map"):
        reliance.main([*args, "--checkpoint", str(checkpoint("full"))])


def test_lesion_size_scores_each_checkpoint_per_image_in_thirds_by_lesion_area(
    smoke: dict, shared_data: Path, tmp_path: Path
) -> None:
    """benchmarks/lesion_size.py on the smoke run's baseline, SemiSeg-CAW and stage 1: its
    pooled and per-image test Dice are the benchmark's test loop's; the thirds hold every
    test image once, smallest lesions first."""
    sizes = load_script("lesion_size")
    by_method = {r["method"]: r for r in smoke["runs"]}

    def checkpoint(method: str) -> str:
        ckpt = Path(by_method[method]["best_checkpoint"])
        return str(ckpt if ckpt.is_absolute() else REPO / ckpt)

    methods = ("full", "semiseg-caw", "classelevate-alone")
    args = ["--image-size", "64", "--root", str(shared_data / "busi"), "--out", str(tmp_path)]
    record = sizes.main([*args, "--checkpoint", *map(checkpoint, methods)])
    thirds = record["groups"]["test"]
    assert list(thirds) == ["small", "medium", "large"]
    assert sum(g["images"] for g in thirds.values()) == 129
    upper = [float(g["area"].split("–")[1]) for g in thirds.values()]
    lower = [float(g["area"].split("–")[0]) for g in thirds.values()]
    assert upper[0] <= lower[1] and upper[1] <= lower[2]
    for method, row in zip(methods, record["rows"], strict=True):
        metrics = by_method[method]["metrics"]
        assert row["test"]["pooled"] == pytest.approx(metrics["seg/dice"], abs=1e-4)
        assert row["test"]["per_image"] == pytest.approx(metrics["seg/dice_per_image"], abs=1e-4)
        groups = row["test"]["groups"]
        mean = sum(g["per_image"] * thirds[n]["images"] for n, g in groups.items())
        assert mean / 129 == pytest.approx(row["test"]["per_image"])
        # Over- or under-segmentation: proportions, and an area ratio.
        assert all(0 <= g["precision"] <= 1 and 0 <= g["recall"] <= 1 for g in groups.values())
        assert all(g["area_ratio"] >= 0 for g in groups.values())
        assert all(g["far_fp"] is None or 0 <= g["far_fp"] <= 1 for g in groups.values())
    assert [r["task"] for r in record["rows"]] == ["SemiSegCAW", "SemiSegCAW", "ClassElevateSeg"]
    text = (tmp_path / "busi-lesion-size.md").read_text()
    assert "## Validation" in text and "## Test" in text and "| small (" in text
    # Seeds group by benchmark row, wherever they ran; a stage 1 inside a fit is its own row.
    assert sizes.row_of("runs/a/busi-cpu/malunet-full-long/seed0/checkpoints/b.ckpt") == (
        sizes.row_of("runs/other/busi-cpu/malunet-full-long/seed3/checkpoints/c.ckpt")
    )
    assert sizes.row_of("runs/a/x/caw/seed0/stage1/checkpoints/b.ckpt") == "caw/stage1"
