"""The benchmark's tables and reports (benchmarks/report.py, narrative.py): a table keeps the
runs of its previous report, the README section, the bars, verdicts and notes of each table,
and the README's figures recomputed from the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripts import (
    bench,
    fake_record,
    load_script,
    plots,
    protocol,
    seed_gaps,
    summary,
    tables,
    worker,
)

SOURCE = "runs/bench/busi-cpu"  # where a reused stage-1 checkpoint's run lies


def test_a_table_keeps_the_runs_of_its_previous_report(tmp_path: Path) -> None:
    """A fresh checkout has no runs folder: rebuilding a table from new runs keeps the runs
    the committed report holds, unless a run of the same row and seed replaces them."""
    previous = tmp_path / "busi-cpu.json"
    old = [fake_record("malunet-full", "full", s, 0.60) for s in (0, 1)]
    old += [fake_record("malunet-reduced", "reduced", 0, 0.55)]
    previous.write_text(json.dumps({"runs": old}))
    work = tmp_path / "runs"
    (work / "malunet-full" / "seed1").mkdir(parents=True)
    rerun = json.dumps(fake_record("malunet-full", "full", 1, 0.61))
    (work / "malunet-full" / "seed1" / "result.json").write_text(rerun)
    new = [fake_record("malunet-semiseg-caw", "semiseg-caw", 0, 0.70)]
    found = bench.gather_records(new, work, json.loads(previous.read_text()))
    dice = {(r["row"], r["seed"]): r["metrics"]["seg/dice"] for r in found}
    assert dice == {
        ("malunet-semiseg-caw", 0): 0.70,
        ("malunet-full", 1): 0.61,  # the run in the work folder, not the report's
        ("malunet-full", 0): 0.60,
        ("malunet-reduced", 0): 0.55,
    }
    without = bench.gather_records(new, work, {})
    assert [(r["row"], r["seed"]) for r in without] == [
        ("malunet-semiseg-caw", 0),
        ("malunet-full", 1),
    ]


def test_a_table_rebuilt_elsewhere_keeps_its_runs_machine_and_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilding a GPU table here (--report-only) must not relabel its runs with this
    machine, nor forget the -long rows' epochs given when they ran; nor must a new run of a
    budget without -long rows; another --long-epochs than theirs is refused."""
    gpu = {"cpu": "Xeon", "cores": 16, "memory_gib": 126.0, "gpu": "NVIDIA H200", "torch": "x"}
    runs = [fake_record("malunet-full", "full", 0, 0.70)]
    runs += [fake_record("malunet-full-long", "full-long", 0, 0.72) | {"epochs": 60}]
    previous = {"runs": runs, "hardware": gpu, "long_epochs": 60, "commit": "abc1234"}
    (tmp_path / "busi-gpu.json").write_text(json.dumps(previous))
    common = ["--dataset", "busi", "--budget", "gpu", "--no-readme"]
    common += ["--work", str(tmp_path / "runs"), "--out", str(tmp_path)]
    args = [*common, "--report-only"]
    report = bench.main(args)
    assert report["hardware"] == gpu and report["long_epochs"] == 60
    table = (tmp_path / "busi-gpu.md").read_text()
    assert "NVIDIA H200" in table and "-long rows: 60" in table
    with pytest.raises(
        SystemExit, match="--long-epochs 80, but this table's -long runs trained 60"
    ):
        bench.main([*args, "--long-epochs", "80"])
    # A new run of the budget's rows (gpu has no long_epochs): the kept runs' 60 stay.
    monkeypatch.setattr(
        bench, "run_one", lambda job, threads, force: fake_record("malunet-full", "full", 1, 0.7)
    )
    report = bench.main([*common, "--rows", "malunet-full", "--seeds", "1"])
    assert (
        report["long_epochs"] == 60 and "-long rows: 60" in (tmp_path / "busi-gpu.md").read_text()
    )
    # Refused before anything trains: long runs of another length, or runs that disagree.
    monkeypatch.setattr(bench, "run_one", lambda *a: pytest.fail("trained"))
    with pytest.raises(SystemExit, match="--long-epochs 80, but"):
        bench.main([*common, "--rows", "malunet-full-long", "--long-epochs", "80"])
    runs.append(fake_record("malunet-reduced-long", "reduced-long", 0, 0.7) | {"epochs": 80})
    (tmp_path / "busi-gpu.json").write_text(json.dumps(previous))
    with pytest.raises(SystemExit, match="-long runs trained 60, 80 epochs"):
        bench.main(args)


def test_a_table_of_runs_from_two_machines_says_which_ran_where(tmp_path: Path) -> None:
    """Runs recorded before records named their machine take the previous table's; a
    table mixing machines lists each with its rows."""
    gpu = {"cpu": "Xeon", "cores": 16, "memory_gib": 126.0, "gpu": "NVIDIA H200", "torch": "x"}
    old = [fake_record("malunet-full", "full", 0, 0.70)]  # no "hardware": the GPU table's
    here = {"cpu": "EPYC", "cores": 2, "gpu": None, "torch": "y"}
    new = fake_record("malunet-reduced", "reduced", 0, 0.65) | {"hardware": here}
    found = bench.gather_records([new], tmp_path / "runs", {"runs": old, "hardware": gpu})
    assert found[1]["hardware"] == {"cpu": "Xeon", "cores": 16, "gpu": "NVIDIA H200", "torch": "x"}
    listed = bench.machines(found)
    assert [m["rows"] for m in listed] == [["malunet-reduced"], ["malunet-full"]]
    note = tables.machines_note({"machines": listed})
    assert note[0] == "- The runs ran on 2 machines:"
    assert note[2] == "  - Xeon, 16 cores, NVIDIA H200 (torch x): 1 run (malunet-full)"
    assert tables.machines_note({"machines": listed[:1]}) == []  # one machine: the header says it
    # The README's line under each table names both, not only the machine that wrote it.
    assert tables.hardware_brief({"machines": listed, "hardware": here}) == (
        "runs on 2 machines (1 on EPYC, 2 cores, no GPU; 1 on Xeon, 16 cores, NVIDIA H200; "
        "which rows ran where: the table)"
    )
    assert tables.hardware_brief({"machines": listed[:1], "hardware": here}) == (
        "EPYC, 2 cores, no GPU"
    )


def test_tables_and_readme_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [fake_record("malunet-full", "full", s, 0.60 + 0.01 * s) for s in range(3)]
    records += [fake_record("malunet-semiseg-caw", "semiseg-caw", 0, 0.65)]
    records += [fake_record("malunet-no-class-only", "no-class-only", 0, 0.62)]
    records += [fake_record("malunet-all-masks", "all-masks", 0, 0.68)]
    records += [fake_record("malunet-pseudo-labels", "pseudo-labels", 0, 0.66)]
    records += [fake_record("classelevate-alone", "classelevate-alone", 0, 0.64)]
    records[-5]["stage1_from"] = f"{SOURCE}/malunet-semiseg-caw/seed0/stage1/checkpoints/b.ckpt"
    records += [fake_record("malunet-stage1-no-cam", "stage1-no-cam", 0, 0.67)]
    records[-1]["stage1_alone"] = {"seg/dice": 0.66}  # its own stage 1, tested alone
    records[3]["val_dice"], records[4]["val_dice"] = 0.70, 0.73  # SemiSeg-CAW, no-class-only
    records[5]["val_dice"] = 0.80  # all-masks: sees more masks, never picked
    records[6]["val_dice"] = 0.75  # pseudo-labels: picked
    order = [r["name"] for r in protocol.all_rows("busi")]
    rows = summary.summarise(records, order)
    assert [r["row"] for r in rows] == [
        "malunet-full",
        "malunet-semiseg-caw",
        "malunet-no-class-only",
        "malunet-all-masks",
        "malunet-pseudo-labels",
        "malunet-stage1-no-cam",
        "classelevate-alone",
    ]
    assert rows[0]["dice"]["mean"] == pytest.approx(0.61)
    assert rows[0]["dice"]["std"] == pytest.approx(0.01)
    assert rows[0]["dice"]["n"] == 3
    report = {
        "kind": "semiseg-caw-benchmark",
        "dataset": "busi",
        "budget": "cpu",
        "note": "n",
        "image_size": 96,
        "epochs": 2,
        "stage1_epochs": 2,
        "seeds": [0, 1, 2],
        "commit": "abc",
        "hardware": {"cpu": "x", "cores": 2, "gpu": None, "torch": "t"},
        "finished": "now",
        "wall_s": 60.0,
        "rows": rows,
        "failed": [],
        "runs": records,
    }
    text = tables.markdown(report)
    assert "0.610 ± 0.010" in text and "0.672" in text  # ours with std, and the paper's
    assert "level with or above malunet-full" in text
    # Controls, variants and ablations as seed-paired gaps to SemiSeg-CAW (seed 0 only here).
    assert (
        "malunet-no-class-only (trained without the class-only images): 0.620, -0.030 (seed 0); "
        "validation +0.030 (seed 0)" in text
    )
    assert (
        "classelevate-alone (the stage-1 ClassElevateSeg of these runs, alone): 0.640, -0.010"
        in text
    )
    assert "malunet-semiseg-caw reused the stage-1 checkpoint" in text
    assert "CUDA graphs" not in text and "-long rows" not in text
    assert (
        "- Chosen on validation (malunet; the largest seed-paired validation gain over "
        "malunet-semiseg-caw among 2 settings): malunet-pseudo-labels (validation +0.050 "
        "(seed 0)); on test level with or above malunet-full (Dice paired +0.060 over seed 0; "
        "row means +0.050 over 1 and 3 seeds; 'level' = within 0.01)" in text
    )
    records[4]["val_dice"] = records[6]["val_dice"] = 0.60  # now nothing beats SemiSeg-CAW
    assert "among 2 settings): none gains, malunet-semiseg-caw stays." in tables.markdown(report)
    records[4]["val_dice"], records[6]["val_dice"] = 0.73, 0.75
    records[0]["cuda_graphs"] = records[1]["augment_on_device"] = True
    text_levers = tables.markdown(report)
    assert "CUDA graphs (`model.cuda_graphs`): on in 1 of 9 runs" in text_levers
    assert "augmentation on the device (`data.augment_on_device`): on in 1 of 9" in text_levers
    records[0]["cuda_graphs"] = records[1]["augment_on_device"] = False
    assert "the most those images could add): 0.680, +0.030 (seed 0)" in text
    assert (
        "malunet-pseudo-labels (variant pseudo-labels): 0.660, +0.010 (seed 0); validation +0.050"
        in text
    )
    assert "paired +0.050 over seed 0; row means +0.040" in text  # malunet-full's seed 0
    assert (
        "malunet-stage1-no-cam (variant stage1-no-cam): 0.670, +0.020 (seed 0); its stage 1 "
        "alone 0.660, +0.020 against classelevate-alone (seeds 0)" in text
    )

    # Dice against pixel-labelled images: unknown until the runs record their counts.
    assert plots.plot_labels(report, tmp_path / "labels.png") is None
    for r in records:  # 450 masks in all; rows that withhold masks lose their 100
        r["train_masks"] = 450 if r["method"] in ("full", "all-masks") else 350
    x = plots.pixel_labelled(report)
    assert x["malunet-full"] == x["malunet-all-masks"] == 450
    assert x["malunet-semiseg-caw"] == x["malunet-no-class-only"] == 350
    assert plots.plot_labels(report, tmp_path / "labels.png") is not None
    assert (tmp_path / "labels.png").stat().st_size > 0
    records[0]["train_masks"] = 449  # another split: no plot rather than a wrong one
    assert plots.pixel_labelled(report) == {}

    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nkeep me\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "busi-cpu.json").write_text(json.dumps(report))
    (results / "speed-check.json").write_text("[]")  # another script's result: ignored
    monkeypatch.setattr(tables, "README", readme)
    monkeypatch.setattr(tables, "RESULTS", results)
    tables.update_readme()
    tables.update_readme()  # idempotent: one section, other text untouched
    text = readme.read_text()
    assert text.startswith("# title\n\nkeep me\n")
    assert text.count(tables.START) == 1 and text.count(tables.END) == 1
    assert "| malunet-semiseg-caw | 100 | 1 | 0.650 |" in text
    # The short table: the bar's rows and stage 1 alone; the ablations and controls, with
    # their gaps, are in the full table it points to.
    assert "| classelevate-alone |" in text and "| malunet-pseudo-labels |" not in text
    assert "4 more rows (the paper's ablations, controls and variants)" in text
    assert "n; commit `abc`; x, 2 cores, no GPU." in text
    assert tables.commits_brief("a, b, c, d") == "runs from 4 commits (listed in the table)"
    assert "trained without the class-only images): 0.620, -0.030 (seed 0)" not in text
    assert "trained without the class-only images): 0.620, -0.030 (seed 0)" in tables.markdown(
        report
    )
    assert "`-long` rows" not in text  # none here: no pointer to them
    report["rows"] += [dict(report["rows"][0], row="malunet-full-long", method="full-long")]
    report["long_epochs"] = 128
    (results / "busi-cpu.json").write_text(json.dumps(report))
    tables.update_readme()
    assert "read each row against the `-long` rows, which train them longer" in readme.read_text()


def test_tables_hold_semiseg_caw_against_the_long_baselines() -> None:
    records = [
        fake_record("malunet-full", "full", 0, 0.62),
        fake_record("malunet-reduced", "reduced", 0, 0.60),
        fake_record("malunet-semiseg-caw", "semiseg-caw", 0, 0.65),
        fake_record("malunet-full-long", "full-long", 0, 0.70),
        fake_record("malunet-reduced-long", "reduced-long", 0, 0.66),
        fake_record("unext-semiseg-caw", "semiseg-caw", 0, 0.64),
        fake_record("malunet-frozen-aux-cached-long", "frozen-aux-cached-long", 0, 0.71),
        fake_record("malunet-no-classelevate-long", "no-classelevate-long", 0, 0.69),
        fake_record("malunet-frozen-aux-cached-long-both", "frozen-aux-cached-long-both", 0, 0.72),
    ]
    records[-1]["stage1_alone"] = {"seg/dice": 0.74}
    records[1]["best_epoch"] = 7  # the last of 8: still improving
    records[2]["fit_wall_s"], records[2]["stage1_epoch_s"] = 600.0, 30.0
    records[3]["fit_wall_s"], records[4]["fit_wall_s"] = 620.0, 500.0
    records[3]["best_epoch"] = 127  # the last of 128, but 128 epochs is no short budget
    records[5].update(backbone="unext", fit_wall_s=300.0)
    records[5]["stage1_from"] = f"{SOURCE}/malunet-semiseg-caw/seed0/stage1/checkpoints/b.ckpt"
    records += [
        fake_record("unext-frozen-aux-cached-long-both", "frozen-aux-cached-long-both", 0, 0.7)
    ]
    records[-1]["stage1_from"] = (
        f"{SOURCE}/malunet-frozen-aux-cached-long-both/seed0/stage1/checkpoints/b.ckpt"
    )
    records[-1].update(backbone="unext", fit_wall_s=120.0)
    records[-2]["stage1_epoch_s"] = 15.0  # malunet-frozen-aux-cached-long-both's, 32 epochs
    dropout = "aux-dropout-0.75-long-both"  # the rate validation picks: held to the bar too
    records += [fake_record(f"malunet-{dropout}", dropout, 0, 0.73)]
    order = [r["name"] for r in protocol.all_rows("busi")]
    rows = summary.summarise(records, order)
    report = {"dataset": "busi", "budget": "cpu", "note": "n", "image_size": 96, "epochs": 8}
    report |= {"stage1_epochs": 6, "long_epochs": 128, "long_stage1_epochs": 32}
    report |= {"seeds": [0], "commit": "abc"}
    report |= {"hardware": {"cpu": "x", "cores": 2, "gpu": None, "torch": "t"}}
    report |= {"finished": "now", "wall_s": 1.0, "rows": rows, "failed": [], "runs": records}
    text = tables.markdown(report)
    assert "epochs per stage 8 (stage 1: 6; -long rows: 128, stage 1 of -long-both: 32)" in text
    assert "the -long rows give the baselines as much training time" in text
    assert (
        "- malunet-semiseg-caw against the baselines trained 128 epochs (fit minutes, median "
        "over runs, stage 1 included: malunet-semiseg-caw 10.0, malunet-reduced-long 8.3, "
        "malunet-full-long 10.3): NOT above malunet-reduced-long (Dice paired -0.010 over "
        "seed 0); below malunet-full-long (Dice paired -0.050 over seed 0;" in text
    )
    assert "malunet-reduced-long (the plain malunet on the same masks, 128 epochs): 0.660" in text
    assert (
        "- malunet-frozen-aux-cached-long against the baselines trained 128 epochs (fit minutes, "
        "median over runs, stage 1 included: malunet-frozen-aux-cached-long 1.0, "
        "malunet-reduced-long 8.3, malunet-full-long 10.3): above malunet-reduced-long (Dice "
        "paired +0.050" in text
    )
    assert "malunet-frozen-aux-cached-long (variant frozen-aux-cached, 128 epochs): 0.710" in text
    assert "malunet-no-classelevate-long (ablation no-classelevate, 128 epochs): 0.690" in text
    assert (
        "malunet-frozen-aux-cached-long-both (the same on a stage 1 of 32 epochs): 0.720, "
        "+0.070 (seed 0); its stage 1 alone 0.740" in text
    )
    assert "- malunet-frozen-aux-cached-long-both against the baselines trained 128" in text
    assert "- malunet-aux-dropout-0.75-long-both against the baselines trained 128" in text
    # Stage-2 changes on the same long stage 1, paired against -long-both.
    assert (
        "- Against malunet-frozen-aux-cached-long-both, the seed-paired gap (test; validation):\n"
        "  - malunet-no-classelevate-long (without the auxiliary map): -0.030 (seed 0)\n" in text
    )
    assert "unext-frozen-aux-cached-long-both, the seed-paired" not in text  # nothing to pair
    assert "the best validation epoch of malunet-reduced is the last one (8 epochs" in text
    assert (
        "malunet-full-long is the last" not in text
        and "malunet-reduced, malunet-full-long" not in text
    )
    # UNeXt's SemiSeg-CAW reused MALUNet's stage 1: its 180 s are counted in its fit time;
    # UNeXt's -long-both the 32 x 15 s of the MALUNet -long-both's stage 1 it reused.
    assert seed_gaps.fit_minutes(report, "unext-semiseg-caw") == pytest.approx(8.0)
    assert seed_gaps.fit_minutes(report, "unext-frozen-aux-cached-long-both") == pytest.approx(10.0)
    assert (
        "- unext-frozen-aux-cached-long-both reused the stage-1 checkpoint of "
        "malunet-frozen-aux-cached-long-both (same seed and data)" in text
    )
    assert "- unext-semiseg-caw reused the stage-1 checkpoint of malunet-semiseg-caw" in text
    # On the plot of Dice against pixel-labelled images, as their short baselines.
    for r in records:
        full = r["method"].startswith("full")
        r.update(class_only=0 if full else 100, train_masks=400 if full else 300)
    report["rows"] = summary.summarise(records, order)
    x = plots.pixel_labelled(report)
    assert (
        (x["malunet-full-long"], x["malunet-reduced-long"])
        == (400, 300)
        == (
            x["malunet-full"],
            x["malunet-reduced"],
        )
    )
    # A panel per backbone; the -long-both row a curve of its own, named with both lengths.
    labels = {bb: [c[1] for c in plots._label_curves(report, x, bb)] for bb in ("malunet", "unext")}
    assert labels == {
        "malunet": [
            "masks only",
            "SemiSeg-CAW",
            "masks only, 128 epochs",
            "SemiSeg-CAW, 128 epochs on a 32-epoch stage 1",
        ],
        "unext": ["SemiSeg-CAW", "SemiSeg-CAW, 128 epochs on a 32-epoch stage 1"],
    }


def _report(records: list[dict], **extra) -> dict:
    """A BUSI cpu table of ``records``, as run.py writes it."""
    order = [r["name"] for r in protocol.all_rows("busi")]
    report = {"dataset": "busi", "budget": "cpu", "note": "n", "image_size": 96, "epochs": 8}
    report |= {"stage1_epochs": 6, "long_epochs": 128, "long_stage1_epochs": 32}
    report |= {"seeds": [0], "commit": "abc", "finished": "now", "wall_s": 1.0, "failed": []}
    report |= {"hardware": {"cpu": "x", "cores": 2, "gpu": None, "torch": "t"}}
    return report | {"runs": records, "rows": summary.summarise(records, order)} | extra


def test_bar_verdicts_read_the_seed_paired_gap_as_printed() -> None:
    """Above, level or below: on the gap paired by seed (the row means only where no seed is
    common, said so), unrounded, and printed with a 4th decimal where 3 would hide why."""
    records = [fake_record("malunet-reduced", "reduced", s, 0.60) for s in range(3)]
    records += [fake_record("malunet-reduced", "reduced", s, 0.90) for s in (3, 4)]
    records += [fake_record("malunet-full", "full", s, 0.70) for s in (5, 6)]
    records += [fake_record("malunet-semiseg-caw", "semiseg-caw", s, 0.6896) for s in range(3)]
    records += [fake_record("malunet-all-masks", "all-masks", s, 0.70) for s in range(3)]
    records += [fake_record("classelevate-alone", "classelevate-alone", 0, 0.5)]
    records[-1]["best_epoch"] = 5  # the last of stage 1's 6
    for r in records[:3]:
        r["commit"] = "abc1234"
    records[1]["commit"] = None
    report = _report(records)
    text = tables.markdown(report)
    # Paired: above (the row means, over other seeds, would say NOT above).
    assert (
        "- malunet-semiseg-caw: above malunet-reduced (Dice paired +0.090 over seeds 0, 1, 2; "
        "row means -0.030 over 3 and 5 seeds); below malunet-full (Dice row "
        "means -0.0104, unpaired: no seed in common; 'level' = within 0.01)." in text
    )
    by = {r["row"]: r for r in report["rows"]}
    d, printed = seed_gaps.bar_gap(report, by, "malunet-semiseg-caw", "malunet-all-masks")
    assert d == pytest.approx(-0.0104)  # below the bar's -0.01, and printed so:
    assert printed == "Dice paired -0.0104 over seeds 0, 1, 2"
    assert seed_gaps.bar_gap(report, by, "malunet-full", "malunet-semiseg-caw")[1] == (
        "Dice row means +0.010, unpaired: no seed in common"  # 3 decimals cross no threshold
    )
    # Stage 1 alone stopped at its last epoch; the best epochs with their spread.
    assert "of classelevate-alone is the last one (8 epochs; stage 1 alone: 6): still" in text
    assert "| 2.0 ± 0.0 | 3.0 ± 0.0 | 1.0 | abc1234, ? |" in text  # malunet-reduced's commits
    assert "| 3.0 ± 0.0 | 1.0 | ? |" in text  # malunet-full: none recorded
    # A shared CPU's times are upper bounds; a GPU machine's table does not say so.
    assert "the CPU was shared with other jobs" in text
    gpu = {"cpu": "Xeon", "cores": 16, "gpu": "NVIDIA H200", "torch": "t"}
    assert "the CPU was shared" not in tables.markdown(report | {"hardware": gpu})


def test_a_tables_commits_are_its_runs_unless_a_run_has_none() -> None:
    previous = {"commit": "old1, old2 (at report time)"}
    runs = [{"commit": "b"}, {"commit": "a"}]
    assert bench.run_commits(runs, previous) == "a, b"  # the previous table's are gone
    assert bench.run_commits([*runs, {}], previous) == "a, b, old1, old2 (at report time)"


def test_rows_meant_to_share_a_stage1_say_where_they_trained_their_own() -> None:
    source = f"{SOURCE}/malunet-frozen-aux-cached-long-both/seed0/stage1/checkpoints/b.ckpt"
    both = "frozen-aux-cached-long-both"
    records = [fake_record("malunet-semiseg-caw", "semiseg-caw", s, 0.7) for s in (0, 1)]
    records += [fake_record("malunet-aux-decoder", "aux-decoder", s, 0.7) for s in (0, 1)]
    records[-1]["stage1_from"] = f"{SOURCE}/malunet-semiseg-caw/seed1/stage1/checkpoints/b.ckpt"
    records += [fake_record("malunet-aux-lr-0.3", "aux-lr-0.3", 0, 0.7)]  # trained its own
    records += [fake_record(f"malunet-{both}", both, s, 0.7) for s in (0, 1)]
    records += [fake_record("malunet-aux-dropout-long-both", "aux-dropout-long-both", 0, 0.71)]
    records[-1]["stage1_from"] = source
    records += [fake_record("malunet-aux-dropout-long-both", "aux-dropout-long-both", 1, 0.72)]
    no_presence = "stage1-no-presence-long-both"  # changes stage 1: its own is no difference
    records += [fake_record(f"malunet-{no_presence}", no_presence, s, 0.73) for s in (0, 1)]
    text = tables.markdown(_report(records))
    assert (
        f"  - malunet-{no_presence} (its own stage 1 without the lesion-present term): "
        "+0.030 (seeds 0, 1)\n" in text
    )
    assert (
        "  - malunet-aux-decoder (variant aux-decoder): 0.700 ± 0.000, +0.000 (seeds 0, 1); "
        "seed 0 trained its own stage 1 (not shared)\n" in text
    )
    assert "+0.000 (seed 0); trained its own stage 1 (not shared)\n" in text  # aux-lr-0.3
    # The source trains its own; the rows on it say which seeds did not use it.
    assert "stage 1 of 32 epochs): 0.700 ± 0.000, +0.000 (seeds 0, 1)\n" in text
    assert (
        "variant aux-dropout): 0.715 ± 0.007, +0.015 (seeds 0, 1); seed 1 trained its own" in text
    )
    assert (
        "  - malunet-aux-dropout-long-both (half the training maps dropped): +0.015 (seeds 0, "
        "1); not on the same stage 1 at seed 1 (a stage-1 difference too)" in text
    )


def test_a_run_tested_again_counts_the_model_alone_and_keeps_its_fit_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mean teacher is a training aid, not part of the model a table counts; re-testing a
    run (its result.json removed) keeps the fit time its first test recorded."""
    from types import SimpleNamespace

    from semiseg_caw import SemiSegCAW

    model = SemiSegCAW(aux_mode="frozen", loss_terms=["bce", "pseudo"], pseudo_teacher="ema")
    cli = SimpleNamespace(
        model=model,
        datamodule=SimpleNamespace(splits={"train": []}),
        trainer=SimpleNamespace(callback_metrics={}),
    )
    monkeypatch.setattr(worker, "cli_with_callbacks", lambda callbacks, args: cli)
    result = worker.evaluate_checkpoint([], tmp_path / "best.ckpt")
    counted = sum(p.numel() for p in model.parameters())
    assert result["params"] == counted - sum(p.numel() for p in model.teacher.parameters())
    assert result["params"] - result["params_core"] == sum(
        p.numel() for p in model.net.aux_model.parameters()
    )

    rundir = tmp_path / "run"
    (rundir / "checkpoints").mkdir(parents=True)
    (rundir / "checkpoints" / "best-epoch=003.ckpt").write_bytes(b"")
    (rundir / "fit.done").touch()
    (rundir / "test.json").write_text(json.dumps({"fit_wall_s": 123.0, "params": 1}))
    spec = rundir / "spec.json"
    spec.write_text(json.dumps({"dir": str(rundir), "test": []}))
    monkeypatch.setattr(worker, "evaluate_checkpoint", lambda args, ckpt: {"params": 2})
    worker.fit_and_test(spec)
    assert json.loads((rundir / "test.json").read_text()) == {"params": 2, "fit_wall_s": 123.0}


def test_narrative_recomputes_the_readme_figures_from_the_committed_results(capsys) -> None:
    """The README's hand-written passages cite these; the script must keep reading the
    committed results as their layout changes."""
    narrative = load_script("narrative")
    narrative.main([])
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line.startswith("== ")]
    assert len(headings) >= 15
    # One figure the README quotes to 4 decimals, as the results give it.
    assert (
        "ddti: unext-aux-dropout-0.75-long-both - unext-full-long: test -0.010 (seeds 0, 1, 2, 3, 4) [-0.0104]"
        in out
    )
