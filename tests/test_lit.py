"""The LightningModules: reproducibility, checkpoints, stage-1 hand-over and parameter groups."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule
from semiseg_caw.checkpoints import CheckpointError

MakeTrainer = Callable[..., L.Trainer]  # the ``make_trainer`` fixture of conftest.py


def datamodule() -> SemiSegDataModule:
    return SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, class_only=6)


def fit_semiseg(make_trainer: MakeTrainer, seed: int = 0, **model_kwargs) -> SemiSegCAW:
    L.seed_everything(seed)
    model = SemiSegCAW(**model_kwargs)
    make_trainer().fit(model, datamodule=datamodule())
    return model


def test_two_runs_with_one_seed_match(make_trainer: MakeTrainer) -> None:
    a = fit_semiseg(make_trainer)
    b = fit_semiseg(make_trainer)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_checkpoint_reloads_to_same_outputs(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    L.seed_everything(0)
    model = SemiSegCAW(backbone="unext", aux_source="layercam")
    t = make_trainer()
    t.fit(model, datamodule=datamodule())
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    again = SemiSegCAW.load_from_checkpoint(path, weights_only=True)
    image = torch.randn(2, 1, 32, 32)
    model.eval()
    again.eval()
    with torch.no_grad():
        out, out_again = model(image), again(image)
    assert torch.equal(out.mask_logits, out_again.mask_logits)
    assert torch.equal(out.class_logits, out_again.class_logits)


def test_stage1_weights_become_the_auxiliary_model(
    tmp_path: Path, make_trainer: MakeTrainer
) -> None:
    L.seed_everything(0)
    stage1 = ClassElevateSeg()
    t = make_trainer()
    t.fit(stage1, datamodule=datamodule())
    path = tmp_path / "stage1.ckpt"
    t.save_checkpoint(path)

    model = SemiSegCAW(stage1_checkpoint=str(path))
    model.load_stage1_once()
    image = torch.randn(2, 1, 32, 32)
    stage1.eval()
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(stage1(image).mask_logits)
        assert torch.allclose(model(image).aux_map, expected)

    with pytest.raises(CheckpointError, match="does not exist"):
        SemiSegCAW(stage1_checkpoint=str(tmp_path / "missing.ckpt")).load_stage1_once()
    with pytest.raises(CheckpointError, match="other shapes"):
        SemiSegCAW(stage1_checkpoint=str(path), in_channels=3).load_stage1_once()


def test_a_stage2_checkpoint_keeps_its_auxiliary_model_without_the_stage1_file(
    tmp_path: Path, make_trainer: MakeTrainer
) -> None:
    L.seed_everything(0)
    stage1_path = tmp_path / "stage1.ckpt"
    t = make_trainer()
    t.fit(ClassElevateSeg(), datamodule=datamodule())
    t.save_checkpoint(stage1_path)
    t = make_trainer()
    t.fit(SemiSegCAW(stage1_checkpoint=str(stage1_path)), datamodule=datamodule())
    stage2_path = tmp_path / "stage2.ckpt"
    t.save_checkpoint(stage2_path)
    fine_tuned = {k: v.clone() for k, v in t.lightning_module.net.aux_model.state_dict().items()}
    stage1_path.unlink()  # the run copied elsewhere: its stage-1 file stays behind

    loaded = SemiSegCAW.load_from_checkpoint(stage2_path, weights_only=True)
    make_trainer().test(loaded, datamodule=datamodule())  # as README's "Use from Python"
    fresh = SemiSegCAW(stage1_checkpoint=loaded.hparams.stage1_checkpoint)
    make_trainer().test(fresh, datamodule=datamodule(), ckpt_path=stage2_path)  # as the CLI
    for model in (loaded, fresh):
        for key, value in model.net.aux_model.state_dict().items():
            assert torch.equal(value, fine_tuned[key]), key


def test_stage1_run_takes_its_loss_weights_from_the_model() -> None:
    from semiseg_caw.lit.stages import stage1_module

    default = stage1_module(SemiSegCAW())
    assert set(default.term_weights) == {"ce", "bce", "dice", "cam", "presence"}
    no_cam = stage1_module(SemiSegCAW(stage1_loss_weights={"cam": 0.0, "presence": 0.5}))
    assert "cam" not in no_cam.term_weights and no_cam.term_weights["presence"] == 0.5


def test_frozen_auxiliary_model_does_not_change(make_trainer: MakeTrainer) -> None:
    L.seed_everything(0)
    model = SemiSegCAW(aux_mode="frozen")
    before = {k: v.clone() for k, v in model.net.aux_model.state_dict().items()}
    make_trainer().fit(model, datamodule=datamodule())
    for key, value in model.net.aux_model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_finetuned_auxiliary_model_has_its_own_smaller_learning_rate() -> None:
    model = SemiSegCAW(lr=1e-3, aux_lr_scale=0.1)
    groups = model.parameter_groups()
    aux_ids = {id(p) for p in model.net.aux_model.parameters()}
    aux_groups = [g for g in groups if {id(p) for p in g["params"]} == aux_ids]
    assert len(aux_groups) == 1 and aux_groups[0]["lr"] == pytest.approx(1e-4)
    wgm = [g for g in groups if g.get("weight_decay") == 0.0]
    assert len(wgm) == 1 and len(wgm[0]["params"]) == 1  # the WGM's log-scales, undecayed
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == sum(1 for _ in model.parameters())


def test_wgm_weights_are_logged_and_move(make_trainer: MakeTrainer) -> None:
    L.seed_everything(0)
    model = SemiSegCAW(lr=1e-2)
    make_trainer(log_every_n_steps=1).fit(model, datamodule=datamodule())
    logged = {
        k: float(v) for k, v in model.trainer.callback_metrics.items() if k.startswith("wgm/")
    }
    assert set(logged) == {f"wgm/{t}" for t in ("bce", "dice", "ftv", "ce", "aux")}
    assert all(w > 0 for w in logged.values())
    assert any(abs(w - 1.0) > 1e-4 for w in logged.values())


def test_terms_and_weights_are_logged_only_on_the_steps_the_logger_writes(
    tmp_path: Path, make_trainer: MakeTrainer
) -> None:
    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0)
    model = SemiSegCAW(aux_source="none", loss_terms=["bce", "dice", "ce"])
    logged_at = []
    log_dict = model.log_dict
    model.log_dict = lambda values, **kw: (
        logged_at.append(model.global_step),
        log_dict(values, **kw),
    )
    logger = CSVLogger(tmp_path, name="logs")
    trainer = make_trainer(limit_train_batches=4, limit_val_batches=0, log_every_n_steps=2)
    trainer.logger = logger
    trainer.fit(model, datamodule=datamodule())
    assert logged_at == [1, 1, 3, 3]  # train/* and wgm/* on the 2nd and 4th steps only
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    written = [int(r["step"]) for r in rows if r.get("wgm/bce")]
    assert written == [1, 3] and all(r["train/bce"] for r in rows if r.get("wgm/bce"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_terms=["bce", "nope"]), "loss_terms"),
        (dict(classifier=False, loss_terms=["bce", "ce"]), "needs classifier"),
        (dict(aux_source="none", loss_terms=["bce", "pseudo"]), "auxiliary model"),
        (dict(weighting="wgm", loss_weights={"bce": 2.0}), "static only"),
        (dict(pseudo_threshold=0.3), "pseudo_threshold"),
        (dict(stage1_loss_weights={"camm": 0.0}), "stage1_loss_weights"),
        (dict(stage1_loss_weights={"cam": -1.0}), "stage1_loss_weights"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SemiSegCAW(**kwargs)


def test_stage1_consistency_term_is_off_by_default_and_needs_class_only_images() -> None:
    L.seed_everything(0)
    assert "consistency" not in ClassElevateSeg(encoder="resnet10t").term_weights
    model = ClassElevateSeg(encoder="resnet10t", loss_weights={"consistency": 1.0})
    dm = datamodule()
    dm.setup("fit")
    batch = next(b for b in dm.train_dataloader() if (b["has_label"] & ~b["has_mask"]).any())
    consistency = model.loss_terms(batch)["consistency"]
    assert consistency > 0 and consistency.requires_grad
    # A batch without class-only images: a graph-connected zero.
    masked = {**batch, "has_mask": torch.ones_like(batch["has_mask"])}
    assert model.loss_terms(masked)["consistency"] == 0
