"""The CLI's W&B run, offline: config, metrics, WGM weights and the validation image panel."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import semiseg_caw.cli as cli_module

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NUM_IMAGES = 3


def tiny(root: Path) -> list[str]:
    return [
        f"--config={CONFIGS / 'demo.yaml'}",
        "--data.image_size=32",
        "--data.batch_size=4",
        "--data.synthetic_samples=40",
        "--data.class_only=6",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={root}",
        "--model.init_args.stage1_epochs=1",
        "--model.init_args.aux_encoder=test_resnet",  # timm's tiny ResNet: small checkpoints
    ]


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline ``run-*.wandb`` file (a LevelDB-style log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, pending = 32768, 7, b""  # after the 7-byte file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding up to the end of the block
            pos += (block - pos % block) % block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # full/first, middle/last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run config and the history rows of an offline run folder."""
    (log,) = run_dir.glob("run-*.wandb")
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                key = item.key or "/".join(item.nested_key)
                config[key] = json.loads(item.value_json)
        elif kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return config, history


@pytest.fixture
def offline_wandb(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """W&B offline for this test. A (disabled) run left open by an earlier in-process
    command would be reused, and W&B reads WANDB_MODE once per process: close it and make
    W&B read the mode again, before and after (later tests' runs read 'disabled')."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.finish()
    wandb.teardown()
    yield
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb.teardown()


def fit_offline(args: list[str]) -> None:
    """``semiseg-caw fit`` in-process, its W&B run flushed and closed after it."""
    import wandb

    try:
        cli_module.main(["fit", *args])
    finally:
        wandb.finish()
        wandb.teardown()


def test_offline_run_records_config_metrics_wgm_and_images(
    tmp_path: Path, offline_wandb: None
) -> None:
    fit_offline(
        [
            *tiny(tmp_path),
            "--image_logger.every_n_epochs=1",
            f"--image_logger.num_images={NUM_IMAGES}",
        ]
    )

    # Stage 1 has a run of its own; the stage-2 run lies under the run's root folder.
    assert len(list((tmp_path / "stage1" / "wandb").glob("offline-run-*"))) == 1
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    config, history = read_run(run_dir)

    # Hyper-parameters of model and data, and the whole resolved CLI config.
    assert config["backbone"] == "malunet" and config["weighting"] == "wgm"
    assert config["lr"] == pytest.approx(3e-3) and config["image_size"] == 32
    assert config["config"]["seed_everything"] == 42
    assert config["config"]["trainer"]["max_epochs"] == 1
    assert "seed_everything: 42" in (run_dir / "files" / "cli_config.yaml").read_text()
    assert "seed_everything: 42" in (tmp_path / "config.yaml").read_text()

    # Metrics, and the WGM weight of every loss term at every training step.
    logged = set().union(*history)
    for key in ("train/loss", "train/bce", "val/loss", "val/dice", "val/iou", "val/cls_auroc"):
        assert key in logged, key
    wgm_rows = [row for row in history if "wgm/bce" in row]
    assert len(wgm_rows) == 2  # one per training step
    for term in ("bce", "dice", "ftv", "ce", "aux"):
        assert all(row[f"wgm/{term}"] > 0 for row in wgm_rows)

    # The image panel: images with three mask overlays each, and the per-image Dice table.
    (panel,) = [row for row in history if "val/examples/_type" in row]
    assert panel["val/examples/count"] == NUM_IMAGES
    assert all(
        set(masks) == {"ground_truth", "prediction", "auxiliary_map"}
        for masks in panel["val/examples/all_masks"]
    )
    media = run_dir / "files" / "media"
    assert len(list((media / "images" / "val").glob("*.png"))) == NUM_IMAGES
    assert len(list((media / "images" / "mask" / "val").glob("*.png"))) == 3 * NUM_IMAGES
    (table_file,) = (media / "table" / "val").glob("per_image_dice_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["id", "overlay", "dice"]
    assert len(table["data"]) == NUM_IMAGES
    assert all(0.0 <= row[2] <= 1.0 for row in table["data"])


def test_wandb_init_gets_no_anonymous_setting_unless_one_is_asked_for(tmp_path: Path) -> None:
    # Lightning passes anonymous=None to wandb.init, which W&B (0.31) warns about at every run.
    from lightning.pytorch.loggers import WandbLogger

    from semiseg_caw.lit.stages import drop_anonymous_setting

    cli = cli_module.main(tiny(tmp_path), run=False)
    assert isinstance(cli.trainer.logger, WandbLogger)
    assert "anonymous" not in cli.trainer.logger._wandb_init  # what wandb.init is given
    asked = WandbLogger(project="x", anonymous=True, save_dir=str(tmp_path))
    drop_anonymous_setting(asked)
    assert asked._wandb_init["anonymous"] == "allow"


def test_the_offline_default_is_not_left_in_the_callers_environment(monkeypatch, capsys):
    # A notebook that runs the CLI and then W&B runs of its own must not find them offline.
    from semiseg_caw.cli import main

    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    assert "WANDB_MODE" not in os.environ


def test_a_failed_command_ends_the_wandb_run_it_started(tmp_path: Path, monkeypatch) -> None:
    """Left open, it would take the next command's logs (a notebook running main() again)."""
    import wandb

    from semiseg_caw.lit.semiseg import SemiSegCAW

    def fail(self) -> None:
        raise RuntimeError("stage 2 failed")

    monkeypatch.setattr(SemiSegCAW, "on_train_start", fail)
    with pytest.raises(RuntimeError, match="stage 2 failed"):
        cli_module.main(["fit", *tiny(tmp_path)])
    assert wandb.run is None


def run_ids(folder: Path) -> list[str]:
    """The run ids of the offline runs in ``folder``, oldest first (named ...-<date>-<id>)."""
    return [run.name.rsplit("-", 1)[1] for run in sorted(folder.glob("offline-run-*"))]


def test_a_resumed_fit_logs_on_in_the_wandb_run_it_continues(
    tmp_path: Path, offline_wandb: None
) -> None:
    from semiseg_caw.checkpoints import wandb_run_id

    fit_offline(tiny(tmp_path))
    (first,) = run_ids(tmp_path / "wandb")
    assert wandb_run_id(tmp_path / "checkpoints" / "last.ckpt") == first
    (stage1,) = run_ids(tmp_path / "stage1" / "wandb")
    assert wandb_run_id(tmp_path / "stage1" / "checkpoints" / "last.ckpt") == stage1

    fit_offline([*tiny(tmp_path), "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert run_ids(tmp_path / "wandb") == [first, first]  # stage 2 continued, in its run

    # Without stage 2's checkpoints, `last` continues stage 1 (in its own run) and starts
    # stage 2 afresh: a new run.
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    fit_offline([*tiny(tmp_path), "--trainer.max_epochs=1", "--ckpt_path=last"])
    assert run_ids(tmp_path / "stage1" / "wandb") == [stage1, stage1]
    *_, third = run_ids(tmp_path / "wandb")
    assert third != first


def test_wandb_run_id_reads_the_id_or_none(tmp_path: Path) -> None:
    import torch

    from semiseg_caw.checkpoints import WANDB_RUN_KEY, wandb_run_id

    torch.save({"state_dict": {"w": torch.ones(3)}, WANDB_RUN_KEY: "abc123"}, tmp_path / "a.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "b.ckpt")
    (tmp_path / "c.ckpt").write_bytes(b"not a checkpoint")
    assert wandb_run_id(tmp_path / "a.ckpt") == "abc123"
    assert wandb_run_id(tmp_path / "b.ckpt") is None  # written without W&B
    assert wandb_run_id(tmp_path / "c.ckpt") is None  # the resumed fit names the problem
    assert wandb_run_id(tmp_path / "missing.ckpt") is None
