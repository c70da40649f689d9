"""The LightningModules: reproducibility, checkpoints, stage-1 hand-over and parameter groups."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

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
    assert a.trained_image_size == 32  # the data module's (what export_onnx exports at)
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
    ckpt = torch.load(stage2_path, map_location="cpu", weights_only=True)
    by_hand = SemiSegCAW(**ckpt["hyper_parameters"])
    by_hand.load_state_dict(ckpt["state_dict"])
    make_trainer().test(by_hand, datamodule=datamodule())
    for model in (loaded, fresh, by_hand):
        for key, value in model.net.aux_model.state_dict().items():
            assert torch.equal(value, fine_tuned[key]), key


def test_stage1_run_takes_its_loss_weights_from_the_model() -> None:
    from semiseg_caw.lit.stages import stage1_module

    default = stage1_module(SemiSegCAW())
    assert set(default.term_weights) == {"ce", "bce", "dice", "cam", "presence"}
    no_cam = stage1_module(SemiSegCAW(stage1_loss_weights={"cam": 0.0, "presence": 0.5}))
    assert "cam" not in no_cam.term_weights and no_cam.term_weights["presence"] == 0.5
    assert default.hparams.presence_topk == 0.02
    assert stage1_module(SemiSegCAW(stage1_presence_topk=0.005)).hparams.presence_topk == 0.005


def test_stage1_run_starts_from_imagenet_weights_when_asked(monkeypatch) -> None:
    from semiseg_caw.lit.stages import stage1_module
    from semiseg_caw.models import class_elevate

    asked = []
    create = class_elevate.timm.create_model

    def recording(*args, pretrained=False, **kwargs):  # no download: record, build random
        asked.append(pretrained)
        return create(*args, pretrained=False, **kwargs)

    models = [SemiSegCAW(aux_encoder="resnet10t", stage1_pretrained=p) for p in (False, True)]
    monkeypatch.setattr(class_elevate.timm, "create_model", recording)
    for model in models:
        stage1_module(model)
    assert asked == [False, True]


def test_balance_classes_weighs_cross_entropy_by_the_training_split(
    make_trainer: MakeTrainer,
) -> None:
    from semiseg_caw.lit.stages import stage1_module

    dm = datamodule()
    dm.setup("fit")
    counts = torch.tensor(dm.class_counts("train"), dtype=torch.float32)
    assert counts.sum() == sum(s.has_label for s in dm.splits["train"])
    model = SemiSegCAW(aux_source="none", balance_classes=True)
    assert model.ce_weight() is not None and torch.equal(model.class_weight, torch.ones(2))
    make_trainer().fit(model, datamodule=dm)
    expected = counts.sum() / (2 * counts)
    assert torch.allclose(model.class_weight, expected)
    assert "class_weight" not in model.state_dict()  # recounted by a resumed run
    model.eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        _, class_logits = model.evaluate_batch(batch)
        ce = model.loss_terms(batch)["ce"]
    weighted = torch.nn.functional.cross_entropy(
        class_logits, batch["label"], weight=expected, ignore_index=-1
    )
    assert ce.item() == pytest.approx(weighted.item(), rel=1e-5)
    assert stage1_module(model).hparams.balance_classes  # stage 1 inherits it
    assert SemiSegCAW(aux_source="none").ce_weight() is None  # off: the plain mean
    # Without a data module that can count classes, the option says what it needs.
    with pytest.raises(ValueError, match=r"balance_classes needs .*class_counts\(\)"):
        make_trainer().fit(
            ClassElevateSeg(balance_classes=True), train_dataloaders=dm.train_dataloader()
        )


def test_frozen_auxiliary_model_does_not_change(make_trainer: MakeTrainer) -> None:
    L.seed_everything(0)
    model = SemiSegCAW(aux_mode="frozen")
    before = {k: v.clone() for k, v in model.net.aux_model.state_dict().items()}
    make_trainer().fit(model, datamodule=datamodule())
    for key, value in model.net.aux_model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_mean_teacher_averages_the_backbone_after_every_step(
    tmp_path: Path, make_trainer: MakeTrainer
) -> None:
    """teacher = backbone after the first step, then decay * teacher + (1 - decay) * backbone
    after each step; it is saved and loaded with the model."""
    L.seed_everything(0)
    terms = ["bce", "dice", "ce", "pseudo"]
    model = SemiSegCAW(aux_mode="frozen", loss_terms=terms, pseudo_teacher="ema", ema_decay=0.5)
    after_steps = []

    class Record(L.Callback):  # callbacks' hooks run before the module's (the update)
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            after_steps.append(
                {k: v.clone() for k, v in pl_module.net.backbone.state_dict().items()}
            )

    trainer = make_trainer(callbacks=[Record()], limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule())
    assert len(after_steps) == 3
    expected = dict(after_steps[0])
    for state in after_steps[1:]:
        for key, value in state.items():
            if value.is_floating_point():
                expected[key] = 0.5 * expected[key] + 0.5 * value
    teacher = model.teacher.module.state_dict()
    for key, value in expected.items():
        assert torch.allclose(teacher[key], value, atol=1e-6), key
    assert int(model.teacher.n_averaged) == 3

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    again = SemiSegCAW.load_from_checkpoint(path, weights_only=True)
    for key, value in again.teacher.state_dict().items():
        assert torch.equal(value, model.teacher.state_dict()[key]), key


def test_the_mean_teacher_predicts_in_eval_mode_from_the_whole_map() -> None:
    L.seed_everything(0)
    model = SemiSegCAW(
        aux_mode="frozen", loss_terms=["bce", "pseudo"], pseudo_teacher="ema", aux_dropout=0.9
    ).train()
    image, aux_map = torch.randn(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    targets = model.pseudo_targets(image, aux_map)
    assert not model.teacher.training
    backbone = model.net.backbone.eval()  # the teacher starts as a copy of it
    with torch.no_grad():
        expected = torch.sigmoid(backbone(torch.cat([image, aux_map], 1)).mask_logits)
    assert torch.allclose(targets, expected, atol=1e-6)
    # Without a teacher the targets are the auxiliary map itself, outside the graph.
    aux_targets = SemiSegCAW(loss_terms=["bce", "pseudo"]).pseudo_targets(image, aux_map)
    assert torch.equal(aux_targets, aux_map) and not aux_targets.requires_grad


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


def test_decoder_mode_fine_tunes_the_auxiliary_decoder_and_keeps_its_encoder(
    make_trainer: MakeTrainer,
) -> None:
    L.seed_everything(0)
    model = SemiSegCAW(aux_mode="decoder", lr=1e-2)
    aux = model.net.aux_model
    encoder = {k: v.clone() for k, v in aux.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in aux.decoder.state_dict().items()}
    (aux_group,) = [g for g in model.parameter_groups() if g.get("lr") == pytest.approx(1e-3)]
    trainable = {
        id(p) for m in (aux.decoder, aux.segmentation_head, aux.classifier) for p in m.parameters()
    }
    assert {id(p) for p in aux_group["params"]} == trainable
    assert "aux" in model.terms  # the decoder still learns from the masks and labels
    guarded = {id(b) for b in model.train()._step_buffers()}
    assert guarded and not guarded & {id(b) for b in aux.encoder.buffers()}
    make_trainer().fit(model, datamodule=datamodule())
    for key, value in aux.encoder.state_dict().items():
        assert torch.equal(value, encoder[key]), key  # weights and BatchNorm statistics
    assert any(not torch.equal(v, decoder[k]) for k, v in aux.decoder.state_dict().items())
    with pytest.raises(ValueError, match="cache_aux_maps needs a fixed"):
        SemiSegCAW(aux_mode="decoder", cache_aux_maps=True)


def test_a_run_bounded_by_max_steps_anneals_the_lr_over_its_steps(
    make_trainer: MakeTrainer,
) -> None:
    import math

    lrs: list[float] = []  # at the start of each step

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = SemiSegCAW(aux_source="none", classifier=False, lr=1e-2, min_lr=1e-4)
    # max_epochs=-1: the old per-epoch schedule of length 1 hit min_lr after one epoch.
    trainer = make_trainer(
        max_epochs=None,
        max_steps=4,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[RecordLR()],
    )
    trainer.fit(model, datamodule=datamodule())
    ratio = 1e-4 / 1e-2  # min_lr / lr
    cosine = [ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx([1e-2 * c for c in cosine])
    assert trainer.lr_scheduler_configs[0].interval == "step"
    # Without a trainer (a module built to inspect) the lr stays constant.
    config = SemiSegCAW(aux_source="none", lr=1e-2).configure_optimizers()
    assert config["lr_scheduler"]["scheduler"].lr_lambdas[0](100) == 1.0
    # A run with no length (max_time only: Lightning sets max_epochs -1) keeps lr, says why.
    model = SemiSegCAW(aux_source="none", classifier=False, lr=1e-2)
    model.trainer = make_trainer(max_epochs=-1, max_time={"seconds": 1})
    with pytest.warns(UserWarning, match="no max_epochs or max_steps"):
        config = model.configure_optimizers()
    assert config["lr_scheduler"]["scheduler"].lr_lambdas[0](100) == 1.0
    # max_epochs 0 trains nothing (the CLI warns about that): no schedule warning on top.
    model.trainer = make_trainer(max_epochs=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.configure_optimizers()


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
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    written = [int(r["step"]) for r in rows if r.get("wgm/bce")]
    assert written == [1, 3] and all(r["train/bce"] for r in rows if r.get("wgm/bce"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_terms=["bce", "nope"]), "loss_terms"),
        (dict(loss_terms=[]), "non-empty subset"),
        (dict(aux_mode="frozen", loss_terms=["bce", "aux"]), "fine-tuned ClassElevateSeg only"),
        (dict(aux_lr_scale=0.0), "aux_lr_scale must be a finite number > 0, got 0.0"),
        (dict(classifier_hidden=0), "classifier_hidden must be >= 1, got 0"),
        (dict(stage1_presence_topk=0.0), r"stage1_presence_topk must lie in \(0, 1\], got 0.0"),
        (dict(classifier=False, loss_terms=["bce", "ce"]), "needs classifier"),
        (dict(aux_source="none", loss_terms=["bce", "pseudo"]), "auxiliary model"),
        (dict(weighting="wgm", loss_weights={"bce": 2.0}), "static only"),
        (dict(pseudo_threshold=0.3), "pseudo_threshold"),
        (dict(stage1_loss_weights={"camm": 0.0}), "stage1_loss_weights"),
        (dict(stage1_loss_weights={"cam": -1.0}), "stage1_loss_weights"),
        (dict(stage1_loss_weights={"cam": float("nan")}), "stage1_loss_weights takes finite"),
        (dict(aux_mode="freeze"), "aux_mode must be finetune, decoder or frozen, got 'freeze'"),
        (dict(ftv_gamma=0.0), r"ftv_gamma a finite number > 0, got 0.7, 0.3 and 0.0"),
        (dict(ftv_alpha=-1.0), "ftv_alpha and ftv_beta must be finite numbers >= 0"),
        (dict(ftv_beta=float("nan")), "ftv_alpha and ftv_beta must be finite numbers >= 0"),
        (dict(lr=float("nan")), r"lr a finite number > 0, got lr=nan"),
        (dict(lr=float("inf")), r"lr a finite number > 0, got lr=inf"),
        (dict(weight_decay=float("nan")), r"weight_decay must be a finite number >= 0, got nan"),
        (dict(aux_lr_scale=float("nan")), r"aux_lr_scale must be a finite number > 0, got nan"),
        (dict(pseudo_teacher="ema"), "teaches the 'pseudo' loss term: add it"),
        (dict(pseudo_teacher="student", loss_terms=["bce", "pseudo"]), "pseudo_teacher"),
        (dict(pseudo_teacher="ema", loss_terms=["bce", "pseudo"], ema_decay=1.0), "ema_decay"),
        (dict(ema_decay=float("nan")), r"ema_decay must lie in \(0, 1\), got nan"),
        (
            dict(pseudo_teacher="ema", loss_terms=["bce", "pseudo"], aux_output_skip=True),
            "cannot take aux_output_skip",
        ),
        (dict(layercam_layer="fused"), "layercam_layer chooses the LayerCAM maps"),
        (dict(weight_decay=-0.1), r"weight_decay must be a finite number >= 0, got -0.1"),
        (dict(max_bad_steps=-1), r"max_bad_steps must be >= 0 \(0: stop at the first\), got -1"),
        (dict(aux_source="layercam", layercam_layer="stem"), "layercam_layer must be one of"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SemiSegCAW(**kwargs)


def test_layercam_layer_reaches_the_network() -> None:
    from semiseg_caw.models.cam import layercam

    L.seed_everything(0)
    model = SemiSegCAW(aux_source="layercam", layercam_layer="fused").eval()
    assert model.net.layercam_layer == "fused"
    image = torch.randn(2, 1, 32, 32)
    aux_map, _ = model.net.auxiliary(image)
    torch.testing.assert_close(aux_map, layercam(model.net.aux_model, image, layer="fused"))
    assert SemiSegCAW(aux_source="layercam").net.layercam_layer == "deepest"


def test_the_validation_image_panel_shows_what_the_metrics_score() -> None:
    from lightning.pytorch.plugins.precision import Precision

    from semiseg_caw.lit.callbacks import panel_samples

    L.seed_everything(0)
    model = SemiSegCAW(aux_mode="frozen", flip_tta=True, keep_largest_lesion=True).eval()
    dm = datamodule()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        scored = torch.sigmoid(model.evaluate(batch)[0]) >= 0.5
        aux = model.net.auxiliary(batch["image"])[0] >= 0.5
    samples = panel_samples(model, batch, Precision(), limit=3)
    assert len(samples) == 3
    for i, sample in enumerate(samples):
        assert torch.equal(torch.from_numpy(sample["pred"]).bool(), scored[i, 0])
        assert torch.equal(torch.from_numpy(sample["aux"]).bool(), aux[i, 0])
    # Whatever evaluate returns is what the panel shows (not the raw forward pass).
    logits = torch.full((len(batch["image"]), 1, 32, 32), -5.0)
    logits[:, :, :8, :8] = 5.0
    model.evaluate = lambda batch, postprocess=True: (logits, None)
    (sample,) = panel_samples(model, batch, Precision(), limit=1)
    assert sample["pred"].sum() == 64 and sample["pred"][:8, :8].all()


@pytest.mark.parametrize("normal_class", [2, -1])
def test_stage1_normal_class_must_be_a_class_index(normal_class: int) -> None:
    with pytest.raises(ValueError, match=r"normal_class must be a class index in \[0, 2\)"):
        ClassElevateSeg(encoder="test_resnet", normal_class=normal_class)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_stage1_loss_weights_must_be_finite_and_not_negative(weight: float) -> None:
    with pytest.raises(ValueError, match=r"loss weights must be finite and >= 0"):
        ClassElevateSeg(encoder="test_resnet", loss_weights={"cam": weight})


@pytest.mark.parametrize("topk", [0.0, 1.5, float("nan")])
def test_stage1_presence_topk_is_refused_outside_0_to_1_when_made(topk: float) -> None:
    with pytest.raises(ValueError, match=r"presence_topk must lie in \(0, 1\]"):
        ClassElevateSeg(encoder="test_resnet", presence_topk=topk)
    ClassElevateSeg(encoder="test_resnet", presence_topk=1.0)  # every pixel: allowed


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


def test_stage1_cam_term_leaves_normal_class_only_images_out() -> None:
    # A normal image's mask is known to be empty: only the presence term supervises it.
    L.seed_everything(0)
    model = ClassElevateSeg(
        encoder="test_resnet", normal_class=0, loss_weights={"ce": 0, "bce": 0, "dice": 0}
    ).eval()
    batch = {
        "image": torch.randn(2, 1, 32, 32),
        "mask": torch.zeros(2, 1, 32, 32),
        "has_mask": torch.zeros(2, dtype=torch.bool),
        "has_label": torch.ones(2, dtype=torch.bool),
    }
    normal = model.loss_terms({**batch, "label": torch.tensor([0, 0])})
    assert normal["cam"] == 0 and normal["presence"] > 0
    # In a mixed batch the term is that of the lesion image alone.
    mixed = model.loss_terms({**batch, "label": torch.tensor([0, 1])})["cam"]
    lesion = model.loss_terms({k: v[1:] for k, v in batch.items()} | {"label": torch.tensor([1])})
    assert mixed > 0
    torch.testing.assert_close(mixed, lesion["cam"])


def test_fitting_without_stage1_weights_warns(make_trainer: MakeTrainer) -> None:
    for kwargs, message in [({}, r"starts untrained\. "), ({"aux_mode": "frozen"}, r"noise")]:
        with pytest.warns(UserWarning, match=r"SemiSegCAW has no stage-1 weights.*" + message) as w:
            fit_semiseg(make_trainer, **kwargs)
        (where,) = {x.filename for x in w if "no stage-1 weights" in str(x.message)}
        # Named by on_fit_start's line, not by Lightning's that called the hook.
        assert where.endswith("semiseg_caw/lit/semiseg.py"), where


def eval_mode_warnings(make_trainer: MakeTrainer, model: SemiSegCAW) -> list[str]:
    """Lightning's start-of-training warnings about modules in eval mode, fitting ``model``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        make_trainer().fit(model, datamodule=datamodule())
        assert warnings.filters == filters  # the filter set for the check is gone again
    return [str(w.message) for w in caught if "in eval mode at the start" in str(w.message)]


def test_only_modules_meant_to_stay_in_eval_mode_go_unwarned(make_trainer: MakeTrainer) -> None:
    # A frozen auxiliary model, a fixed encoder: in eval mode by design, nothing to warn about.
    for aux_mode in ("frozen", "decoder"):
        assert eval_mode_warnings(make_trainer, SemiSegCAW(aux_mode=aux_mode)) == [], aux_mode
    # A module the user left in eval mode is still warned about, and counted with the rest.
    model = SemiSegCAW(aux_mode="frozen")
    model.net.classifier.eval()
    fixed = len(list(model.net.aux_model.modules()))
    (message,) = eval_mode_warnings(make_trainer, model)
    assert message.startswith(f"Found {fixed + len(list(model.net.classifier.modules()))} module")


def test_a_checkpoint_loaded_with_the_other_task_class_names_the_right_one(
    tmp_path: Path, make_trainer: MakeTrainer
) -> None:
    t = make_trainer()
    t.fit(ClassElevateSeg(), datamodule=datamodule())
    t.save_checkpoint(tmp_path / "stage1.ckpt")
    with pytest.raises(CheckpointError, match=r"written by ClassElevateSeg, not SemiSegCAW"):
        SemiSegCAW.load_from_checkpoint(tmp_path / "stage1.ckpt", weights_only=True)


def batches(**changes) -> list[dict]:
    """Two good training batches of 4 (as the data module gives them), with ``changes``."""
    dm = datamodule()
    dm.setup("fit")
    good = list(dm.train_dataloader())[:2]
    return [{**b, **{k: (v(b) if callable(v) else v) for k, v in changes.items()}} for b in good]


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        (lambda: [tuple(b.values()) for b in batches()], r"a batch must be a dict with keys"),
        (
            lambda: [{k: v for k, v in b.items() if k != "has_mask"} for b in batches()],
            r"the batch lacks has_mask",
        ),
        (lambda: batches(mask=lambda b: b["mask"] * 255), r"values up to 255 .*divide by 255"),
        (lambda: batches(mask=lambda b: b["mask"] * float("nan")), r"batch\['mask'\] holds NaN"),
        (
            lambda: batches(mask=lambda b: b["mask"][:, 0]),
            r"batch\['mask'\] must be \(4, 1, 32, 32\)",
        ),
        (lambda: batches(image=lambda b: b["image"].repeat(1, 3, 1, 1)), r"must be \(B, 1, H, W\)"),
    ],
    ids=["tuple", "missing key", "0-255 mask", "NaN mask", "mask without channel", "3 channels"],
)
def test_a_batch_the_modules_cannot_use_is_named_at_the_first_step(
    loader, message, make_trainer: MakeTrainer
) -> None:
    model = SemiSegCAW(aux_source="none")
    with pytest.raises(ValueError, match=message):  # a user's loader, yielding these batches
        make_trainer().fit(model, train_dataloaders=DataLoader(loader(), batch_size=None))


def test_raw_device_augment_batches_need_the_data_module(make_trainer: MakeTrainer) -> None:
    dm = SemiSegDataModule(
        image_size=32, batch_size=4, synthetic_samples=40, augment_on_device=True
    )
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"uint8: .*augment_on_device=True.*datamodule="):
        make_trainer().fit(SemiSegCAW(aux_source="none"), train_dataloaders=dm.train_dataloader())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"include_normal": True}, r"the data module has 3 classes \(benign, malignant, normal\)"),
        ({"in_channels": 3}, r"gives 3-channel images, the model takes in_channels=1"),
    ],
)
def test_a_data_module_that_does_not_fit_the_model_is_named(
    data, message, make_trainer: MakeTrainer
) -> None:
    dm = SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, **data)
    with pytest.raises(ValueError, match=message):
        make_trainer().fit(SemiSegCAW(aux_source="none"), datamodule=dm)


def test_the_sanity_check_computes_no_metrics(make_trainer: MakeTrainer) -> None:
    """Lightning drops what the sanity check logs; its batches, often of one class, must not
    warn that AUROC is undefined."""
    from lightning.pytorch.trainer.states import RunningStage

    model = SemiSegCAW(aux_source="none")
    model.trainer = make_trainer()
    model.trainer.state.stage = RunningStage.SANITY_CHECKING
    model.cls_metrics["val"].update(torch.randn(3, 2), torch.zeros(3, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.on_validation_epoch_end()
    assert len(model.cls_metrics["val"].labels) == 0  # reset for the first real epoch


def test_a_model_without_a_classifier_logs_no_classification_metrics(
    make_trainer: MakeTrainer,
) -> None:
    """The baselines: nothing to compute, and torchmetrics warned of a compute before any
    update every epoch."""
    model = SemiSegCAW(aux_source="none", classifier=False)
    trainer = make_trainer()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*was called before the ``update`` method")
        trainer.fit(model, datamodule=datamodule())
    logged = set(trainer.callback_metrics)
    assert "val/dice" in logged and not [k for k in logged if k.startswith("val/cls_")]


def test_the_model_summary_counts_the_flops_of_an_image_of_the_trained_size(
    make_trainer: MakeTrainer,
) -> None:
    """Without an example input Lightning's summary printed 'Total FLOPs: 0'. The example
    passes through the data module's batch hooks too, which must leave it alone (they
    augment dict batches on the device), and not through the precision's conversion: it is
    made in the batches' dtype ('bf16-true' failed on a float32 example). The batches
    themselves, uint8 until the device augments them, are converted after that, where
    under 'bf16-true' the first step failed on float32 images."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    model = SemiSegCAW(aux_source="none")
    dm = SemiSegDataModule(
        image_size=32, batch_size=4, synthetic_samples=40, augment_on_device=True
    )
    trainer = make_trainer(
        enable_model_summary=True, max_steps=1, limit_val_batches=0, precision="bf16-true"
    )
    trainer.fit(model, datamodule=dm)
    assert tuple(model.example_input_array.shape) == (1, 1, 32, 32)
    assert model.example_input_array.dtype == torch.bfloat16
    assert ModelSummary(model).total_flops > 0
