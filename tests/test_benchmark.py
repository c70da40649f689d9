"""The benchmark harness (benchmarks/run.py, protocol.py, report.py): rows, tables, the
smoke budget on real files, and the external check (a trained checkpoint tested on another
data set given as a manifest)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scripts import load_script

from semiseg_caw.checkpoints import CheckpointError
from semiseg_caw.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
SOURCE = "runs/bench/busi-cpu"  # where a reused stage-1 checkpoint's run lies
TEST_KEYS = (
    "test/dice",
    "test/iou",
    "test/recall",
    "test/precision",
    "test/specificity",
    "test/dice_per_image",
    "test/iou_per_image",
)


bench = load_script("run")
import protocol  # noqa: E402  (benchmarks/ is on sys.path once run.py is loaded)
import report as tables  # noqa: E402

# ----------------------------------------------------------------------------- no data


def test_rows_cover_the_protocol() -> None:
    for dataset, budgets in protocol.CLASS_ONLY.items():
        names = [r["name"] for r in protocol.all_rows(dataset)]
        assert len(names) == len(set(names))
        for bb in ("malunet", "unext"):
            assert f"{bb}-full" in names
            for ab in protocol.ABLATIONS:
                assert f"{bb}-{ab}" in names
            semi = [n for n in names if n.startswith(f"{bb}-semiseg-caw")]
            assert len(semi) == len(budgets)
        for row in protocol.all_rows(dataset):
            for setting in row["configs"]:  # config files, or options with a value
                assert (REPO / setting).is_file() or setting.startswith("--model."), setting
                assert not setting.startswith("--") or "=" in setting, setting
    smoke = protocol.select_rows("ddti", protocol.BUDGETS["smoke"]["rows"], True)
    assert [r["name"] for r in smoke] == [
        "malunet-full",
        "malunet-reduced-48",
        "malunet-semiseg-caw-48",
    ]
    # full, reduced, SemiSeg-CAW, then one row per ablation, control and variant.
    extra = protocol.ABLATIONS + protocol.CONTROLS + protocol.VARIANTS
    assert len(protocol.select_rows("busi", ["unext-*"], False)) == 3 + len(extra)
    # The stage-1-alone row comes from the SemiSeg-CAW runs: listed, never scheduled.
    assert "classelevate-alone-48" in [r["name"] for r in protocol.all_rows("ddti")]
    assert not protocol.select_rows("busi", ["*"], False)[-1].get("derived")
    assert all(not r.get("derived") for r in protocol.select_rows("busi", ["*"], False))
    with pytest.raises(SystemExit, match="no row matches"):
        protocol.select_rows("busi", ["nothing"], False)


def test_long_baselines_train_the_budgets_long_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = protocol.BUDGETS["cpu"]
    names = [r["name"] for r in protocol.select_rows("ddti", cpu["rows"], True, 128)]
    assert names == ["malunet-full", "malunet-reduced-48", "malunet-semiseg-caw-48"]
    long = protocol.select_rows("ddti", ["*-long*"], False, cpu["long_epochs"])
    assert [r["name"] for r in long] == [
        "malunet-full-long",
        "malunet-reduced-48-long",
        "malunet-frozen-aux-cached-long",
        "malunet-frozen-aux-cached-long-both",
        "malunet-no-classelevate-long",
        "malunet-aux-dropout-long-both",
        "malunet-aux-dropout-0.25-long-both",
        "malunet-aux-dropout-0.75-long-both",
        "malunet-aux-dropout-0.9-long-both",
        "malunet-pseudo-aux-dropout-0.75-long-both",
        "malunet-mean-teacher-aux-dropout-0.75-long-both",
        "malunet-stage1-no-presence-long-both",
        "unext-full-long",
        "unext-reduced-48-long",
        "unext-frozen-aux-cached-long",
        "unext-frozen-aux-cached-long-both",
        "unext-no-classelevate-long",
        "unext-aux-dropout-long-both",
        "unext-aux-dropout-0.25-long-both",
        "unext-aux-dropout-0.75-long-both",
        "unext-aux-dropout-0.9-long-both",
        "unext-pseudo-aux-dropout-0.75-long-both",
        "unext-mean-teacher-aux-dropout-0.75-long-both",
        "unext-stage1-no-presence-long-both",
    ]
    assert long[5]["configs"] == [
        "configs/ablations/frozen-aux-cached.yaml",
        "configs/ablations/aux-dropout.yaml",
    ]
    # An option in a row's settings reaches the command as itself, after the config files.
    args = bench.run_args("ddti", long[6], cpu, None)
    frozen = args.index("--config=configs/ablations/frozen-aux-cached.yaml")
    assert args.index("--model.init_args.aux_dropout=0.25") == frozen + 1
    by_name = {r["name"]: r for r in long}
    pseudo = bench.run_args("ddti", by_name["unext-pseudo-aux-dropout-0.75-long-both"], cpu, None)
    assert pseudo.index("--model.init_args.loss_terms=[bce,dice,ftv,ce,pseudo]") == (
        pseudo.index("--model.init_args.aux_dropout=0.75") + 1
    )
    teacher = bench.run_args(
        "ddti", by_name["unext-mean-teacher-aux-dropout-0.75-long-both"], cpu, None
    )
    assert teacher.index("--model.init_args.pseudo_teacher=ema") == (
        teacher.index("--model.init_args.loss_terms=[bce,dice,ftv,ce,pseudo]") + 1
    )
    with pytest.raises(SystemExit, match=r"need a budget with long_epochs \(smoke, cpu\)"):
        protocol.select_rows("busi", ["*-long"], False, protocol.BUDGETS["full"].get("long_epochs"))
    # Other budgets run them when given the epochs (the -long-both rows, stage 1's too).
    listed = ["--dataset=busi", "--budget=gpu", "--list", "--long-epochs=300"]
    assert bench.main([*listed, "--rows", "malunet-*-long"]) == {}
    with pytest.raises(SystemExit, match="need --long-stage1-epochs under this budget"):
        bench.main([*listed, "--rows", "malunet-*long*"])
    assert bench.main([*listed, "--rows", "malunet-*long*", "--long-stage1-epochs=100"]) == {}
    # The fit gets the long epochs; a baseline no stage 1, a variant the budget's or, for
    # -long-both, its long stage 1.
    specs = []

    def capture(rundir: Path, spec: dict, threads: int, name: str) -> None:
        specs.append(spec)
        raise RuntimeError("captured")

    monkeypatch.setattr(bench, "_run_worker", capture)
    for row in (*long[1:4], protocol.select_rows("ddti", ["malunet-reduced-48"], False)[0]):
        job = {"dataset": "ddti", "row": row, "seed": 0, "budget": cpu, "data_root": None}
        with pytest.raises(RuntimeError, match="captured"):
            bench.run_one(job | {"dir": tmp_path / row["name"]}, threads=1, force=False)
    epochs = [[a for a in s["fit"] if "max_epochs" in a or "stage1" in a] for s in specs]
    assert epochs == [
        ["--trainer.max_epochs=128"],
        ["--trainer.max_epochs=128", "--model.init_args.stage1_epochs=6"],
        ["--trainer.max_epochs=128", "--model.init_args.stage1_epochs=32"],
        ["--trainer.max_epochs=8"],
    ]


def test_stage1_is_shared_only_once_its_source_finished(tmp_path: Path) -> None:
    rows = {r["name"]: r for r in protocol.all_rows("ddti")}

    def job(name: str) -> dict:
        return {"dataset": "ddti", "row": rows[name], "seed": 1, "dir": tmp_path / name / "seed1"}

    source = tmp_path / "malunet-semiseg-caw-48" / "seed1"
    ckpt = source / "stage1" / "checkpoints" / "best-epoch=004.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert bench.shared_stage1(job("malunet-imtl")) is None  # source run not finished yet
    (source / "result.json").write_text("{}")
    assert bench.shared_stage1(job("malunet-imtl")) == ckpt
    assert bench.shared_stage1(job("unext-semiseg-caw-48")) == ckpt  # stage 1 has no backbone
    assert bench.shared_stage1(job("malunet-frozen-aux-cached-long")) == ckpt  # stage 2 longer
    assert bench.shared_stage1(job("malunet-reduced-48-long")) is None  # no stage 1
    assert bench.shared_stage1(job("malunet-frozen-aux-cached-long-both")) is None  # its own
    assert bench.shared_stage1(job("malunet-semiseg-caw-48")) is None  # the source itself
    assert bench.shared_stage1(job("malunet-no-class-only")) is None  # other stage-1 data
    assert bench.shared_stage1(job("malunet-no-classelevate")) is None  # no stage 1
    assert bench.shared_stage1(job("malunet-stage1-no-cam")) is None  # its own stage 1
    # The other long-stage-1 rows reuse MALUNet's -long-both: the same 32-epoch stage 1.
    both = tmp_path / "malunet-frozen-aux-cached-long-both" / "seed1"
    long_ckpt = both / "stage1" / "checkpoints" / "best-epoch=030.ckpt"
    long_ckpt.parent.mkdir(parents=True)
    long_ckpt.write_bytes(b"")
    assert bench.shared_stage1(job("unext-frozen-aux-cached-long-both")) is None  # unfinished
    (both / "result.json").write_text("{}")
    assert bench.shared_stage1(job("unext-frozen-aux-cached-long-both")) == long_ckpt
    assert bench.shared_stage1(job("malunet-aux-dropout-long-both")) == long_ckpt
    assert bench.shared_stage1(job("unext-aux-dropout-long-both")) == long_ckpt
    assert bench.shared_stage1(job("malunet-frozen-aux-cached-long-both")) is None
    # A long row that changes stage 1 trains its own, of the long stage 1's epochs.
    own = job("malunet-stage1-no-presence-long-both")
    assert bench.shared_stage1(own) is None
    assert bench.stage1_epochs_of(own["row"], protocol.BUDGETS["cpu"]) == 32


@pytest.mark.parametrize(
    "name",
    [
        "malunet-stage1-ce-only",
        "malunet-frozen-aux-cached-long-both",
        "malunet-stage1-no-presence-long-both",
    ],
)
def test_a_row_with_its_own_stage1_keeps_its_stage1_test_in_its_record(
    tmp_path: Path, name: str
) -> None:
    row = next(r for r in protocol.all_rows("busi") if r["name"] == name)
    rundir = tmp_path / row["name"] / "seed0"
    (rundir / "stage1" / "checkpoints").mkdir(parents=True)
    (rundir / "stage1" / "checkpoints" / "best-epoch=002.ckpt").write_bytes(b"")
    (rundir / "result.json").write_text(json.dumps({"row": row["name"], "seed": 0}))
    # Already tested: no worker starts, the metrics go into the run's record.
    (rundir / "stage1_test.json").write_text(json.dumps({"metrics": {"seg/dice": 0.5}}))
    job = {"dataset": "busi", "row": row, "seed": 0, "dir": rundir}
    bench.test_stage1(job, threads=1)
    record = json.loads((rundir / "result.json").read_text())
    assert record["stage1_alone"] == {"seg/dice": 0.5}
    assert not (tmp_path / "classelevate-alone").exists()  # not filed as the derived row


def test_a_run_fitted_with_other_settings_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run is reused only if it was fitted as asked: another -long schedule or a
    speed lever (which its folder's name does not hold) is refused, before anything trains;
    where the folders lie, and a stage 1 reused instead of trained, are no settings."""
    row = next(r for r in protocol.all_rows("busi") if r["name"] == "malunet-aux-dropout-long-both")
    cpu = protocol.BUDGETS["cpu"]
    rundir = tmp_path / "work" / row["name"] / "seed0"
    job = {"dataset": "busi", "row": row, "seed": 0, "budget": cpu, "data_root": None}
    job["dir"] = rundir
    # Fitted in another checkout, on the stage 1 of its source run.
    elsewhere = job | {"dir": Path("/elsewhere") / row["name"] / "seed0", "data_root": "/d"}
    stage1 = Path("/elsewhere/source/seed0/stage1/checkpoints/best-epoch=030.ckpt")
    rundir.mkdir(parents=True)
    (rundir / "spec.json").write_text(json.dumps(bench.worker_spec(elsewhere, stage1)))
    record = _fake_record(row["name"], row["method"], 0, 0.7) | {"epochs": 128}
    (rundir / "result.json").write_text(json.dumps(record))
    monkeypatch.setattr(bench, "test_stage1", lambda job, threads: None)
    assert bench.run_one(job, threads=1, force=False) == record
    longer = job | {"budget": cpu | {"long_epochs": 256}}
    with pytest.raises(SystemExit, match=r"-.*max_epochs=128, \+.*max_epochs=256\).*\n.*--force"):
        bench.run_one(longer, threads=1, force=False)
    other_stage1 = job | {"budget": cpu | {"long_stage1_epochs": 64}}
    with pytest.raises(SystemExit, match="-stage 1: 32 epochs, \\+stage 1: 64 epochs"):
        bench.run_one(other_stage1, threads=1, force=False)
    monkeypatch.setattr(bench, "run_one", lambda *a: pytest.fail("trained"))
    args = ["--dataset", "busi", "--budget", "cpu", "--rows", row["name"], "--seeds", "0"]
    args += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--no-readme"]
    with pytest.raises(SystemExit, match=f"{rundir} was fitted with other settings "):
        bench.main([*args, "--bf16"])


def test_rows_that_share_a_stage1_start_after_their_source_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    events = []

    def fake_run_one(job: dict, threads: int, force: bool) -> dict:
        name = job["row"]["name"]
        events.append(("start", name))
        time.sleep(0.3 if name == "malunet-semiseg-caw" else 0.0)
        events.append(("end", name))
        return _fake_record(name, job["row"]["method"], job["seed"], 0.6)

    monkeypatch.setattr(bench, "run_one", fake_run_one)
    rows = ["unext-semiseg-caw", "malunet-imtl", "malunet-full", "malunet-semiseg-caw"]
    args = ["--dataset", "busi", "--budget", "cpu", "--rows", *rows, "--seeds", "0"]
    args += ["--parallel", "4", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]
    bench.main([*args, "--no-readme"])
    source_done = events.index(("end", "malunet-semiseg-caw"))
    assert events.index(("start", "unext-semiseg-caw")) > source_done
    assert events.index(("start", "malunet-imtl")) > source_done
    assert events.index(("start", "malunet-full")) < source_done  # nothing to wait for


def test_stage1_tested_alone_records_the_epochs_of_stage_1(tmp_path: Path) -> None:
    row = next(r for r in protocol.all_rows("busi") if r["name"] == "malunet-semiseg-caw")
    rundir = tmp_path / row["name"] / "seed0"
    ckpt = rundir / "stage1" / "checkpoints" / "best-epoch=004.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    (rundir / "result.json").write_text(json.dumps({"row": row["name"], "seed": 0}))
    tested = {"best_checkpoint": str(ckpt), "metrics": {"seg/dice": 0.5}}
    (rundir / "stage1_test.json").write_text(json.dumps(tested))
    job = {"dataset": "busi", "row": row, "seed": 0, "dir": rundir, "data_root": None}
    bench.test_stage1(job | {"budget": protocol.BUDGETS["cpu"]}, threads=1)
    record = json.loads((tmp_path / "classelevate-alone" / "seed0" / "result.json").read_text())
    assert (record["epochs"], record["best_epoch"]) == (6, 4)  # stage 1's 6, not stage 2's 8


def test_a_recorded_run_drops_only_its_resume_checkpoints(tmp_path: Path) -> None:
    names = ("checkpoints/last.ckpt", "checkpoints/best-epoch=003.ckpt")
    files = [tmp_path / n for n in names] + [tmp_path / "stage1" / n for n in names]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert bench.drop_resume_checkpoints(tmp_path) == []  # unfinished: last.ckpt resumes it
    assert all(f.is_file() for f in files)
    (tmp_path / "result.json").write_text("{}")
    assert bench.drop_resume_checkpoints(tmp_path) == [files[0], files[2]]
    assert [f.is_file() for f in files] == [False, True, False, True]


@pytest.mark.parametrize(
    "left_behind, fits_with",
    [
        ([], []),  # a new run
        (["stage1/checkpoints/last.ckpt"], ["--ckpt_path=last"]),  # killed in stage 1
        (["checkpoints/last.ckpt", "checkpoints/best-epoch=002.ckpt"], ["--ckpt_path=last"]),
        (["fit.done", "checkpoints/last.ckpt", "checkpoints/best-epoch=002.ckpt"], None),
    ],
)
def test_a_killed_run_continues_its_fit_and_a_finished_one_is_only_tested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left_behind: list[str], fits_with
) -> None:
    for name in left_behind:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    fits: list[list[str]] = []

    def fake_cli(callbacks, args):
        fits.append(args)
        best = tmp_path / "checkpoints" / "best-epoch=003.ckpt"
        best.parent.mkdir(parents=True, exist_ok=True)
        best.write_bytes(b"x")

    monkeypatch.setattr(bench, "_with_callbacks", fake_cli)
    monkeypatch.setattr(bench, "_test", lambda args, ckpt: {"best_checkpoint": str(ckpt)})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dir": str(tmp_path), "fit": ["--seed_everything=0"], "test": []}))
    bench._worker(spec)
    if fits_with is None:
        assert fits == []
    else:
        assert fits == [["fit", "--seed_everything=0", *fits_with]]
    assert (tmp_path / "fit.done").is_file() and (tmp_path / "test.json").is_file()


def test_a_resumed_run_counts_the_fit_time_of_its_killed_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    now = time.time()
    (tmp_path / "fit.started").write_text(repr(now - 1000))
    os.utime(last, (now - 400, now - 400))  # killed 600 s into its fit
    (tmp_path / "checkpoints" / "best-epoch=001.ckpt").write_bytes(b"x")
    monkeypatch.setattr(bench, "_with_callbacks", lambda callbacks, args: None)
    monkeypatch.setattr(bench, "_test", lambda args, ckpt: {})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dir": str(tmp_path), "fit": [], "test": []}))
    bench._worker(spec)
    result = json.loads((tmp_path / "test.json").read_text())
    assert 600 <= result["fit_wall_s"] < 630


def test_parallel_check_runs_each_read_their_own_result(tmp_path: Path, monkeypatch) -> None:
    # speed_check.py --parallel: workers run at once in one folder; each must get its result.
    import argparse
    import time
    from concurrent.futures import ThreadPoolExecutor

    speed_check = load_script("speed_check")
    threads = []

    def fake_worker(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        # A worker writes its result, then takes a while to exit (torch's teardown): the
        # other one writes in between.
        threads.append(kwargs["env"]["OMP_NUM_THREADS"])
        job = cmd[cmd.index("--worker") + 1]
        first = job.endswith("42")
        time.sleep(0.0 if first else 0.1)
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"job": job}))
        time.sleep(0.3 if first else 0.0)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(speed_check.subprocess, "run", fake_worker)
    args = argparse.Namespace(device="cpu", stage1="", epochs=0, stage1_epochs=0, parallel=2)
    jobs = ["malunet:42", "malunet:43"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda j: speed_check._run_worker(args, j, tmp_path), jobs))
    assert [r["job"] for r in results] == jobs
    # Two at once share the cores instead of each spinning threads on all of them.
    cores = speed_check.usable_cores()
    assert threads == [str(max(1, cores // 2))] * 2


def test_check_runs_name_their_levers_and_keep_gpu_levers_off_a_cpu() -> None:
    speed_check = load_script("speed_check")
    cpu = speed_check.selected_runs([""], "cpu")
    assert cpu and not any(r.graphs for r in cpu) and any(r.bf16 for r in cpu)
    gpu = speed_check.selected_runs(["bf16"], "cuda")
    assert {r.job for r in gpu} == {
        *(
            f"{v}:{seed}:0:0:0:1"
            for v in ("malunet", "caw-finetune", "caw-decoder")
            for seed in (42, 43)
        ),
        "caw-finetune:42:0:0:1:1",
    }


def test_another_schedule_gets_its_own_table() -> None:
    # --epochs that changes a budget's schedule must not mix its runs into the budget's table.
    assert bench.table_stem("busi", "gpu", None) == "busi-gpu"
    assert bench.table_stem("busi", "gpu", protocol.BUDGETS["gpu"]["epochs"]) == "busi-gpu"
    assert bench.table_stem("busi", "gpu", 60) == "busi-gpu-60ep"
    assert bench.table_stem("ddti", "cpu", 8) == "ddti-cpu-8ep"  # stage 1 was 6


def test_speed_levers_reach_the_fit_command(tmp_path: Path, monkeypatch) -> None:
    specs = []

    def fake_worker(rundir: Path, spec: dict, threads: int, name: str) -> None:
        specs.append(spec)
        raise InterruptedError  # the spec is all this test needs

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    row = next(r for r in protocol.all_rows("busi") if r["name"] == "malunet-full")
    job = {"dataset": "busi", "row": row, "seed": 0, "budget": protocol.BUDGETS["smoke"]}
    job |= {"data_root": None, "dir": tmp_path / "run"}
    for levers in ({}, {"cuda_graphs": True, "augment_on_device": True, "bf16": True}):
        with pytest.raises(InterruptedError):
            bench.run_one(job | levers, threads=1, force=False)
    plain, fast = specs
    levers = {
        "--model.init_args.cuda_graphs=true",
        "--data.augment_on_device=true",
        "--trainer.precision=bf16-mixed",
    }
    assert not levers & set(plain["fit"])
    assert levers <= set(fast["fit"])
    assert not levers & set(fast["test"])  # evaluation as without them
    assert set(bench.SPEED_LEVERS) == set(tables.LEVERS)  # the tables name each


def test_speed_table_keeps_the_runs_that_finished_before_a_kill(
    tmp_path: Path, monkeypatch
) -> None:
    # A device call has a hard time limit: the table must be on disk after every run, so
    # a run killed later loses only itself.
    speed = load_script("speed")
    info = {"name": "fake", "train": 472, "cached": 674}
    monkeypatch.setattr(speed, "_prepare_data", lambda args, path: info)

    def fake_worker(args, variant: str, data: Path) -> dict:
        if variant == "caw-finetune":
            raise KeyboardInterrupt  # what a time limit does to the parent
        return {"epoch_s": 1.25, "infer_b1_ms": 2.0, "infer_big_ips": 100.0, "compile": "off"}

    monkeypatch.setattr(speed, "_run_worker", fake_worker)
    out = tmp_path / "speed.md"
    with pytest.raises(KeyboardInterrupt):
        speed.main(["--variants", "malunet", "caw-finetune", "--rounds", "1", "--out", str(out)])
    table = out.read_text()
    assert "| bare MALUNet (baseline) | 1.25 | 1.00 |" in table
    assert "| SemiSeg-CAW, aux fine-tuned | – |" in table


def test_speed_keeps_every_failure_of_a_variant(tmp_path: Path, monkeypatch) -> None:
    # --share after the rounds: its failures are added to the rounds', not put in their place.
    speed = load_script("speed")
    monkeypatch.setattr(
        speed, "_prepare_data", lambda args, path: {"name": "fake", "train": 8, "cached": 8}
    )
    attempts: list[str] = []

    def fake_worker(args, variant: str, data: Path) -> dict:
        attempts.append(f"failure {len(attempts)}")
        return {"failed": attempts[-1]}

    monkeypatch.setattr(speed, "_run_worker", fake_worker)
    out = tmp_path / "speed.md"
    speed.main(["--variants", "malunet", "--rounds", "1", "--share", "2", "--out", str(out)])
    assert "- malunet: failure 0; failure 1; failure 2" in out.read_text()


def test_speed_passes_cudnn_autotuning_to_its_workers_and_says_so(
    tmp_path: Path, monkeypatch
) -> None:
    speed = load_script("speed")
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "no GPU here")

    monkeypatch.setattr(speed.subprocess, "run", fake_run)
    monkeypatch.setattr(
        speed, "_prepare_data", lambda args, path: {"name": "fake", "train": 8, "cached": 8}
    )
    out = tmp_path / "speed.md"
    speed.main(["--variants", "malunet", "--rounds", "1", "--cudnn-benchmark", "--out", str(out)])
    assert "--cudnn-benchmark" in commands[0]
    assert "cuDNN autotuning on" in out.read_text()


def _fake_record(row: str, method: str, seed: int, dice: float) -> dict:
    iou = dice / (2 - dice)
    metrics = {f"seg/{k}": 0.5 for k in protocol.SEG_KEYS}
    metrics.update({"seg/dice": dice, "seg/iou": iou, "cls/auroc": 0.8})
    return {
        "row": row,
        "method": method,
        "backbone": "malunet",
        "class_only": 100,
        "seed": seed,
        "metrics": metrics,
        "params": 1000,
        "params_core": 1000,
        "train_s_per_epoch": 1.0,
        "epoch_s": 1.2,
        "stage1_epoch_s": None,
        "infer_ms_per_image": 2.0,
        "fit_wall_s": 60.0,
        "best_epoch": 3,
    }


def test_a_table_keeps_the_runs_of_its_previous_report(tmp_path: Path) -> None:
    """A fresh checkout has no runs folder: rebuilding a table from new runs keeps the runs
    the committed report holds, unless a run of the same row and seed replaces them."""
    previous = tmp_path / "busi-cpu.json"
    old = [_fake_record("malunet-full", "full", s, 0.60) for s in (0, 1)]
    old += [_fake_record("malunet-reduced", "reduced", 0, 0.55)]
    previous.write_text(json.dumps({"runs": old}))
    work = tmp_path / "runs"
    (work / "malunet-full" / "seed1").mkdir(parents=True)
    rerun = json.dumps(_fake_record("malunet-full", "full", 1, 0.61))
    (work / "malunet-full" / "seed1" / "result.json").write_text(rerun)
    new = [_fake_record("malunet-semiseg-caw", "semiseg-caw", 0, 0.70)]
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
    runs = [_fake_record("malunet-full", "full", 0, 0.70)]
    runs += [_fake_record("malunet-full-long", "full-long", 0, 0.72) | {"epochs": 60}]
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
        bench, "run_one", lambda job, threads, force: _fake_record("malunet-full", "full", 1, 0.7)
    )
    report = bench.main([*common, "--rows", "malunet-full", "--seeds", "1"])
    assert (
        report["long_epochs"] == 60 and "-long rows: 60" in (tmp_path / "busi-gpu.md").read_text()
    )
    # Refused before anything trains: long runs of another length, or runs that disagree.
    monkeypatch.setattr(bench, "run_one", lambda *a: pytest.fail("trained"))
    with pytest.raises(SystemExit, match="--long-epochs 80, but"):
        bench.main([*common, "--rows", "malunet-full-long", "--long-epochs", "80"])
    runs.append(_fake_record("malunet-reduced-long", "reduced-long", 0, 0.7) | {"epochs": 80})
    (tmp_path / "busi-gpu.json").write_text(json.dumps(previous))
    with pytest.raises(SystemExit, match="-long runs trained 60, 80 epochs"):
        bench.main(args)


def test_a_table_of_runs_from_two_machines_says_which_ran_where(tmp_path: Path) -> None:
    """Runs recorded before records named their machine take the previous table's; a
    table mixing machines lists each with its rows."""
    gpu = {"cpu": "Xeon", "cores": 16, "memory_gib": 126.0, "gpu": "NVIDIA H200", "torch": "x"}
    old = [_fake_record("malunet-full", "full", 0, 0.70)]  # no "hardware": the GPU table's
    here = {"cpu": "EPYC", "cores": 2, "gpu": None, "torch": "y"}
    new = _fake_record("malunet-reduced", "reduced", 0, 0.65) | {"hardware": here}
    found = bench.gather_records([new], tmp_path / "runs", {"runs": old, "hardware": gpu})
    assert found[1]["hardware"] == {"cpu": "Xeon", "cores": 16, "gpu": "NVIDIA H200", "torch": "x"}
    listed = bench.machines(found)
    assert [m["rows"] for m in listed] == [["malunet-reduced"], ["malunet-full"]]
    note = tables.machines_note({"machines": listed})
    assert note[0] == "- The runs ran on 2 machines:"
    assert note[2] == "  - Xeon, 16 cores, NVIDIA H200 (torch x): 1 run (malunet-full)"
    assert tables.machines_note({"machines": listed[:1]}) == []  # one machine: the header says it


def test_tables_and_readme_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [_fake_record("malunet-full", "full", s, 0.60 + 0.01 * s) for s in range(3)]
    records += [_fake_record("malunet-semiseg-caw", "semiseg-caw", 0, 0.65)]
    records += [_fake_record("malunet-no-class-only", "no-class-only", 0, 0.62)]
    records += [_fake_record("malunet-all-masks", "all-masks", 0, 0.68)]
    records += [_fake_record("malunet-pseudo-labels", "pseudo-labels", 0, 0.66)]
    records += [_fake_record("classelevate-alone", "classelevate-alone", 0, 0.64)]
    records[-5]["stage1_from"] = f"{SOURCE}/malunet-semiseg-caw/seed0/stage1/checkpoints/b.ckpt"
    records += [_fake_record("malunet-stage1-no-cam", "stage1-no-cam", 0, 0.67)]
    records[-1]["stage1_alone"] = {"seg/dice": 0.66}  # its own stage 1, tested alone
    records[3]["val_dice"], records[4]["val_dice"] = 0.70, 0.73  # SemiSeg-CAW, no-class-only
    records[5]["val_dice"] = 0.80  # all-masks: sees more masks, never picked
    records[6]["val_dice"] = 0.75  # pseudo-labels: picked
    order = [r["name"] for r in protocol.all_rows("busi")]
    rows = tables.summarise(records, order)
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
    assert tables.plot_labels(report, tmp_path / "labels.png") is None
    for r in records:  # 450 masks in all; rows that withhold masks lose their 100
        r["train_masks"] = 450 if r["method"] in ("full", "all-masks") else 350
    x = tables.pixel_labelled(report)
    assert x["malunet-full"] == x["malunet-all-masks"] == 450
    assert x["malunet-semiseg-caw"] == x["malunet-no-class-only"] == 350
    assert tables.plot_labels(report, tmp_path / "labels.png") is not None
    assert (tmp_path / "labels.png").stat().st_size > 0
    records[0]["train_masks"] = 449  # another split: no plot rather than a wrong one
    assert tables.pixel_labelled(report) == {}

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
    assert tables.favoured(tiny_gains) == ["y"]  # x is printed as +0.0000: no gain
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    assert tables.tta_lines("busi-cpu") == []  # no TTA results: no line
    (tmp_path / "busi-cpu-tta.json").write_text(json.dumps(report))
    (line,) = tables.tta_lines("busi-cpu")
    assert "validation +0.0067 (-0.010 to +0.020; higher in 2)" in line
    assert "test +0.0133 (-0.010 to +0.030; higher in 2)" in line
    assert "favours it on 1 of 2 rows" in line
    # Each setting's file gets its line; a table's setting names its columns.
    report["setting"] = "largest"
    assert "| val Dice, largest lesion |" in tta.markdown(report)
    (tmp_path / "busi-cpu-largest.json").write_text(json.dumps(report))
    lines = tables.tta_lines("busi-cpu")
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
            "--data.dataset=synthetic",
            "--data.root=null",
            "--data.split_file=null",
            "--data.image_size=32",
            "--data.batch_size=4",
            "--data.synthetic_samples=40",
            "--data.class_only=6",
            "--model.init_args.stage1_epochs=1",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu",
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


def test_device_scripts_parse_and_refuse_to_run_without_out() -> None:
    for name in ("device_run.sh", "device_prepare.sh"):
        script = REPO / "benchmarks" / name
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, name
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_run.sh"), "bench", "busi"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "OUT must name" in done.stderr


def test_tables_hold_semiseg_caw_against_the_long_baselines() -> None:
    records = [
        _fake_record("malunet-full", "full", 0, 0.62),
        _fake_record("malunet-reduced", "reduced", 0, 0.60),
        _fake_record("malunet-semiseg-caw", "semiseg-caw", 0, 0.65),
        _fake_record("malunet-full-long", "full-long", 0, 0.70),
        _fake_record("malunet-reduced-long", "reduced-long", 0, 0.66),
        _fake_record("unext-semiseg-caw", "semiseg-caw", 0, 0.64),
        _fake_record("malunet-frozen-aux-cached-long", "frozen-aux-cached-long", 0, 0.71),
        _fake_record("malunet-no-classelevate-long", "no-classelevate-long", 0, 0.69),
        _fake_record("malunet-frozen-aux-cached-long-both", "frozen-aux-cached-long-both", 0, 0.72),
    ]
    records[-1]["stage1_alone"] = {"seg/dice": 0.74}
    records[1]["best_epoch"] = 7  # the last of 8: still improving
    records[2]["fit_wall_s"], records[2]["stage1_epoch_s"] = 600.0, 30.0
    records[3]["fit_wall_s"], records[4]["fit_wall_s"] = 620.0, 500.0
    records[3]["best_epoch"] = 127  # the last of 128, but 128 epochs is no short budget
    records[5].update(backbone="unext", fit_wall_s=300.0)
    records[5]["stage1_from"] = f"{SOURCE}/malunet-semiseg-caw/seed0/stage1/checkpoints/b.ckpt"
    records += [
        _fake_record("unext-frozen-aux-cached-long-both", "frozen-aux-cached-long-both", 0, 0.7)
    ]
    records[-1]["stage1_from"] = (
        f"{SOURCE}/malunet-frozen-aux-cached-long-both/seed0/stage1/checkpoints/b.ckpt"
    )
    records[-1].update(backbone="unext", fit_wall_s=120.0)
    records[-2]["stage1_epoch_s"] = 15.0  # malunet-frozen-aux-cached-long-both's, 32 epochs
    dropout = "aux-dropout-0.75-long-both"  # the rate validation picks: held to the bar too
    records += [_fake_record(f"malunet-{dropout}", dropout, 0, 0.73)]
    order = [r["name"] for r in protocol.all_rows("busi")]
    rows = tables.summarise(records, order)
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
    assert tables.fit_minutes(report, "unext-semiseg-caw") == pytest.approx(8.0)
    assert tables.fit_minutes(report, "unext-frozen-aux-cached-long-both") == pytest.approx(10.0)
    assert (
        "- unext-frozen-aux-cached-long-both reused the stage-1 checkpoint of "
        "malunet-frozen-aux-cached-long-both (same seed and data)" in text
    )
    assert "- unext-semiseg-caw reused the stage-1 checkpoint of malunet-semiseg-caw" in text
    # On the plot of Dice against pixel-labelled images, as their short baselines.
    for r in records:
        full = r["method"].startswith("full")
        r.update(class_only=0 if full else 100, train_masks=400 if full else 300)
    report["rows"] = tables.summarise(records, order)
    x = tables.pixel_labelled(report)
    assert (
        (x["malunet-full-long"], x["malunet-reduced-long"])
        == (400, 300)
        == (
            x["malunet-full"],
            x["malunet-reduced"],
        )
    )
    # A panel per backbone; the -long-both row a curve of its own, named with both lengths.
    labels = {
        bb: [c[1] for c in tables._label_curves(report, x, bb)] for bb in ("malunet", "unext")
    }
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
    return report | {"runs": records, "rows": tables.summarise(records, order)} | extra


def test_bar_verdicts_read_the_seed_paired_gap_as_printed() -> None:
    """Above, level or below: on the gap paired by seed (the row means only where no seed is
    common, said so), unrounded, and printed with a 4th decimal where 3 would hide why."""
    records = [_fake_record("malunet-reduced", "reduced", s, 0.60) for s in range(3)]
    records += [_fake_record("malunet-reduced", "reduced", s, 0.90) for s in (3, 4)]
    records += [_fake_record("malunet-full", "full", s, 0.70) for s in (5, 6)]
    records += [_fake_record("malunet-semiseg-caw", "semiseg-caw", s, 0.6896) for s in range(3)]
    records += [_fake_record("malunet-all-masks", "all-masks", s, 0.70) for s in range(3)]
    records += [_fake_record("classelevate-alone", "classelevate-alone", 0, 0.5)]
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
    d, printed = tables.bar_gap(report, by, "malunet-semiseg-caw", "malunet-all-masks")
    assert d == pytest.approx(-0.0104)  # below the bar's -0.01, and printed so:
    assert printed == "Dice paired -0.0104 over seeds 0, 1, 2"
    assert tables.bar_gap(report, by, "malunet-full", "malunet-semiseg-caw")[1] == (
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
    records = [_fake_record("malunet-semiseg-caw", "semiseg-caw", s, 0.7) for s in (0, 1)]
    records += [_fake_record("malunet-aux-decoder", "aux-decoder", s, 0.7) for s in (0, 1)]
    records[-1]["stage1_from"] = f"{SOURCE}/malunet-semiseg-caw/seed1/stage1/checkpoints/b.ckpt"
    records += [_fake_record("malunet-aux-lr-0.3", "aux-lr-0.3", 0, 0.7)]  # trained its own
    records += [_fake_record(f"malunet-{both}", both, s, 0.7) for s in (0, 1)]
    records += [_fake_record("malunet-aux-dropout-long-both", "aux-dropout-long-both", 0, 0.71)]
    records[-1]["stage1_from"] = source
    records += [_fake_record("malunet-aux-dropout-long-both", "aux-dropout-long-both", 1, 0.72)]
    no_presence = "stage1-no-presence-long-both"  # changes stage 1: its own is no difference
    records += [_fake_record(f"malunet-{no_presence}", no_presence, s, 0.73) for s in (0, 1)]
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
    monkeypatch.setattr(bench, "_with_callbacks", lambda callbacks, args: cli)
    result = bench._test([], tmp_path / "best.ckpt")
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
    monkeypatch.setattr(bench, "_test", lambda args, ckpt: {"params": 2})
    bench._worker(spec)
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
