"""The benchmark harness without data (benchmarks/run.py, protocol.py): its rows, stage 1
shared between rows, finished runs reused, killed runs resumed, the speed levers, and the
device scripts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from scripts import REPO, bench, fake_record, load_script, protocol, tables, worker


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
    with pytest.raises(SystemExit, match="no row matches 'nothing'"):
        protocol.select_rows("busi", ["nothing"], False)
    # A typo beside a good pattern is an error too, not a silently shorter run.
    with pytest.raises(SystemExit, match="no row matches 'malunet-fulll'"):
        protocol.select_rows("busi", ["malunet-reduced", "malunet-fulll"], False)
    with pytest.raises(SystemExit, match="needs 'long' in the pattern"):
        protocol.select_rows("busi", ["*reduced*", "*-both"], False, 2)


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
        "malunet-stage1-presence-topk-0.005-long-both",
        "malunet-stage1-presence-topk-0.005-aux-dropout-0.75-long-both",
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
        "unext-stage1-presence-topk-0.005-long-both",
        "unext-stage1-presence-topk-0.005-aux-dropout-0.75-long-both",
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
    topk = job("malunet-stage1-presence-topk-0.005-long-both")
    assert bench.shared_stage1(topk) is None
    assert bench.stage1_epochs_of(topk["row"], protocol.BUDGETS["cpu"]) == 32
    # A row named in LONG_STAGE1_FROM reuses that stage1-* row's stage 1 once it finished.
    topk_dropout = job("unext-stage1-presence-topk-0.005-aux-dropout-0.75-long-both")
    assert bench.shared_stage1(topk_dropout) is None
    topk_ckpt = topk["dir"] / "stage1" / "checkpoints" / "best-epoch=029.ckpt"
    topk_ckpt.parent.mkdir(parents=True)
    topk_ckpt.write_bytes(b"")
    (topk["dir"] / "result.json").write_text("{}")
    assert bench.shared_stage1(topk_dropout) == topk_ckpt
    assert bench.shared_stage1(topk) is None  # the source itself


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
    record = fake_record(row["name"], row["method"], 0, 0.7) | {"epochs": 128}
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
        return fake_record(name, job["row"]["method"], job["seed"], 0.6)

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

    monkeypatch.setattr(worker, "cli_with_callbacks", fake_cli)
    monkeypatch.setattr(
        worker, "evaluate_checkpoint", lambda args, ckpt: {"best_checkpoint": str(ckpt)}
    )
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dir": str(tmp_path), "fit": ["--seed_everything=0"], "test": []}))
    worker.fit_and_test(spec)
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
    monkeypatch.setattr(worker, "cli_with_callbacks", lambda callbacks, args: None)
    monkeypatch.setattr(worker, "evaluate_checkpoint", lambda args, ckpt: {})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dir": str(tmp_path), "fit": [], "test": []}))
    worker.fit_and_test(spec)
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
