"""Speed levers: cached auxiliary maps of a frozen auxiliary model, and the optimiser."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import numpy as np
import pytest
import torch
from scripts import load_script

from semiseg_caw import ClassElevateSeg, SemiSegCAW, SemiSegDataModule
from semiseg_caw.data.datasets import SegmentationDataset
from semiseg_caw.data.synthetic import make_synthetic
from semiseg_caw.data.transforms import build_train_transform
from semiseg_caw.lit.stages import stage1_module

MakeTrainer = Callable[..., L.Trainer]  # the ``make_trainer`` fixture of conftest.py
# The GPU comparison's batches and steps, shared with benchmarks/graphs_vs_eager.py.
graphs_vs_eager = load_script("graphs_vs_eager")
graph_batch, first_steps = graphs_vs_eager.graph_batch, graphs_vs_eager.first_steps


def datamodule(**kwargs) -> SemiSegDataModule:
    options = dict(image_size=32, batch_size=4, synthetic_samples=40, class_only=6)
    options.update(kwargs)
    return SemiSegDataModule(**options)


def count_aux_calls(model: SemiSegCAW) -> dict[str, int]:
    """Count calls of the auxiliary network from here on."""
    calls = {"n": 0}
    original = model.net.aux_model.forward

    def forward(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    model.net.aux_model.forward = forward
    return calls


def test_cached_maps_train_without_running_the_aux_model(make_trainer: MakeTrainer) -> None:
    L.seed_everything(0)
    dm = datamodule()
    model = SemiSegCAW(
        aux_mode="frozen", cache_aux_maps=True, loss_terms=["bce", "dice", "ce", "pseudo"]
    )
    calls = count_aux_calls(model)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append((calls["n"], batch["aux_map"].shape))

    make_trainer(callbacks=[Spy()]).fit(model, datamodule=dm)
    assert model.aux_maps_cached
    maps = dm.data.cache  # one map per cached image, computed in batches of 32 once
    assert calls["n"] == -(-len(maps) // 32)
    assert len(seen) == 3 and all(n == calls["n"] for n, _ in seen)  # no call while training
    assert all(shape == (4, 1, 32, 32) for _, shape in seen)
    assert all(torch.isfinite(v).all() for v in model.trainer.callback_metrics.values())


def test_cached_and_live_maps_give_the_same_validation_metrics(make_trainer: MakeTrainer) -> None:
    L.seed_everything(0)
    dm = datamodule()
    model = SemiSegCAW(aux_mode="frozen", cache_aux_maps=True)
    t = make_trainer(limit_val_batches=None)
    t.fit(model, datamodule=dm)
    calls = count_aux_calls(model)
    cached = {k: float(v) for k, v in t.validate(model, datamodule=dm, verbose=False)[0].items()}
    assert calls["n"] == 0  # the maps came with the batches
    dm.set_aux_maps(None)
    live = {k: float(v) for k, v in t.validate(model, datamodule=dm, verbose=False)[0].items()}
    assert calls["n"] > 0
    assert set(cached) == set(live) and "val/dice" in cached
    for key, value in live.items():
        assert cached[key] == pytest.approx(value, abs=1e-5), key


def test_cached_maps_follow_the_geometric_augmentation() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    aux = rng.random((32, 32), dtype=np.float32)
    mask = (aux > 0.5).astype(np.uint8)

    flip = build_train_transform(hflip_p=1.0, affine_p=0.0, seed=0)
    out = flip(image=image[..., None], mask=mask, aux_map=aux)
    np.testing.assert_array_equal(out["aux_map"], aux[:, ::-1])
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])

    # Rotation, scale and shift: the map is warped like the image (linear interpolation) and
    # like the mask (which is the map thresholded, nearest), never changed in intensity.
    warp = build_train_transform(affine_p=1.0, rotate_limit=45, brightness_contrast=0.5, seed=1)
    plain = build_train_transform(
        affine_p=1.0, rotate_limit=45, brightness_contrast=0.0, noise=0.0, seed=1
    )
    smooth = np.repeat(np.linspace(0, 1, 32, dtype=np.float32)[None], 32, axis=0)
    as_image = np.rint(smooth * 255).astype(np.uint8)
    for _ in range(10):
        got = warp(image=as_image[..., None], mask=mask, aux_map=smooth)
        ref = plain(image=as_image[..., None], mask=mask)  # same draws: same geometry
        np.testing.assert_array_equal(got["mask"], ref["mask"])
        assert got["aux_map"].dtype == np.float32
        assert np.abs(got["aux_map"] - ref["image"][..., 0] / 255.0).max() < 1.5 / 255
    # Without an aux map the pipeline draws exactly as before.
    a = build_train_transform(seed=3)(image=image[..., None], mask=mask)
    b = build_train_transform(seed=3)(image=image[..., None], mask=mask, aux_map=aux)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])


def test_dataset_serves_the_map_of_each_sample_flipped_with_its_image() -> None:
    samples, cache = make_synthetic(6, 32, seed=0)
    maps = (cache.images / 255.0).astype(np.float32)  # a map equal to the image
    flip = build_train_transform(hflip_p=1.0, affine_p=0.0, brightness_contrast=0.0, noise=0.0)
    dataset = SegmentationDataset(samples, cache, flip)
    assert "aux_map" not in dataset[0]
    dataset.set_aux_maps(maps)
    for i in range(len(dataset)):
        item = dataset[i]
        image = item["image"][0] * 0.25 + 0.5  # back to [0, 1]
        row = cache.index[samples[i].id]
        torch.testing.assert_close(item["aux_map"][0], torch.from_numpy(maps[row][:, ::-1].copy()))
        torch.testing.assert_close(image, item["aux_map"][0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one per cached image"):
        dataset.set_aux_maps(maps[:-1])
    dataset.set_aux_maps(None)
    assert "aux_map" not in dataset[0]


def test_cache_needs_a_fixed_auxiliary_model() -> None:
    with pytest.raises(ValueError, match="fixed auxiliary model"):
        SemiSegCAW(aux_mode="finetune", cache_aux_maps=True)
    with pytest.raises(ValueError, match="fixed auxiliary model"):
        SemiSegCAW(aux_source="none", classifier=False, cache_aux_maps=True)
    SemiSegCAW(aux_source="layercam", cache_aux_maps=True)  # LayerCAM maps are fixed too


def test_cached_maps_equal_live_maps() -> None:
    model = SemiSegCAW(aux_mode="frozen").eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    maps = model.compute_aux_maps(images, batch_size=2)
    x = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.25
    with torch.no_grad():
        live, _ = model.net.auxiliary(x)
    torch.testing.assert_close(torch.from_numpy(maps), live[:, 0], atol=1e-6, rtol=0)


def test_adamw_is_fused_unless_gradients_are_clipped(make_trainer: MakeTrainer) -> None:
    model = SemiSegCAW(aux_source="none", classifier=False)
    t = make_trainer(max_steps=1, limit_val_batches=0)
    t.fit(model, datamodule=datamodule())
    assert all(g["fused"] for g in t.optimizers[0].param_groups)
    model = SemiSegCAW(aux_source="none", classifier=False)
    t = make_trainer(max_steps=1, limit_val_batches=0, gradient_clip_val=1.0)
    t.fit(model, datamodule=datamodule())
    groups = t.optimizers[0].param_groups
    assert all(g["foreach"] and not g["fused"] for g in groups)


def test_cuda_graphs_do_nothing_on_cpu(make_trainer: MakeTrainer) -> None:
    model = SemiSegCAW(aux_source="none", classifier=False, cuda_graphs=True)
    with pytest.warns(UserWarning, match="CUDA only"):
        make_trainer(max_steps=2, limit_val_batches=0).fit(model, datamodule=datamodule())
    assert model.cuda_graphed == []
    # Gradient accumulation would sum gradients that live in a graph's memory: eager.
    model = SemiSegCAW(aux_source="none", classifier=False, cuda_graphs=True)
    trainer = make_trainer(max_steps=1, limit_val_batches=0, accumulate_grad_batches=2)
    with pytest.warns(UserWarning, match="accumulate_grad_batches"):
        trainer.fit(model, datamodule=datamodule())
    assert model.cuda_graphed == []
    # The stage-1 run inside `fit` asks for them too.
    assert stage1_module(SemiSegCAW(cuda_graphs=True)).hparams.cuda_graphs


def fake_make_graphed_callables(calls: dict[str, int]):
    """Stand-in for ``torch.cuda.make_graphed_callables`` on a CPU: warm-up passes (which
    update BatchNorm statistics, as the real ones do), then a forward that counts replays."""

    def make(module, sample_args, num_warmup_iters=3, allow_unused_input=False):
        for _ in range(num_warmup_iters):
            module(*sample_args)
        eager = module.forward

        def replay(*args):
            calls["replays"] += 1
            return eager(*args)

        module.forward = replay
        return module

    return make


@pytest.mark.parametrize(
    ("task", "kwargs"),
    [
        (SemiSegCAW, dict(weighting="dwa")),
        (SemiSegCAW, dict(loss_terms=["bce", "pseudo"])),
        (SemiSegCAW, dict(loss_terms=["bce", "pseudo"], pseudo_teacher="ema")),
        (ClassElevateSeg, dict(loss_weights={"consistency": 0.5})),
    ],
)
def test_graphed_objective_plumbing(
    monkeypatch: pytest.MonkeyPatch, task: type, kwargs: dict
) -> None:
    """What a CUDA graph of the objective is given and when it is used, checked on a CPU
    with a stand-in for the capture: same loss and terms as eager, buffers untouched by the
    capture's warm-up, eager for other shapes and in eval mode."""
    from semiseg_caw.lit.base import OBJECTIVE_KEYS
    from semiseg_caw.lit.graphs import GraphedObjective

    calls = {"replays": 0}
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_make_graphed_callables(calls))
    torch.manual_seed(0)
    model = task(**kwargs).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = graph_batch()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    modules = model.graphed_modules()
    assert set(modules) == {"net", "weighting"} | (
        {"teacher"} if kwargs.get("pseudo_teacher") else set()
    )
    graphed = GraphedObjective(modules, model.eager_objective, batch, OBJECTIVE_KEYS)
    assert graphed.keys == ("image", "mask", "has_mask", "label", "has_label")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    torch.manual_seed(1)  # the same noise for the consistency term's second view
    eager_loss, eager_terms = model.objective(batch)
    model.__dict__["_graphed_objective"] = graphed
    torch.manual_seed(1)
    loss, terms = model.objective(batch)
    assert calls["replays"] == 1
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(terms, eager_terms)
    assert terms.shape == (len(model.weighting.names),) and not terms.requires_grad
    loss.backward()
    net = getattr(model.net, "backbone", model.net)
    assert all(p.grad is not None for p in net.parameters())
    # Another batch size, another dtype or eval mode: eager.
    model.objective(graph_batch(batch=8))
    model.objective(batch | {"has_label": batch["has_label"].long()})
    assert not graphed.fits(batch | {"aux_map": torch.rand(4, 1, 64, 64)})  # absent at capture
    model.eval()
    model.objective(batch)
    assert calls["replays"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("whole_objective", [True, False])
@pytest.mark.parametrize(
    ("task", "kwargs"),
    [
        (SemiSegCAW, dict(aux_source="none", classifier=False)),
        (SemiSegCAW, {}),
        (SemiSegCAW, dict(aux_mode="decoder")),  # part of the aux model without gradients
        # A mean teacher read inside the objective (its weights are graph inputs too).
        (SemiSegCAW, dict(loss_terms=["bce", "dice", "ce", "pseudo"], pseudo_teacher="ema")),
        (ClassElevateSeg, {}),
    ],
)
def test_cuda_graphs_train_like_eager(task: type, kwargs: dict, whole_objective: bool) -> None:
    """The first two losses (before and after one optimiser step) with graphed networks or
    a graphed objective are those of eager ones.

    Two steps, convolutions in full fp32: AdamW's first steps amplify rounding, and the
    default SemiSeg-CAW (fine-tuned aux model, classifier) on these tiny batches is
    chaotic. On an H200 two eager runs of it differed by up to 0.7% at the third step and
    ~1% at the fourth; with TF32, the graph's other convolution algorithms differed by
    ~1e-3 at the second. In fp32 the first two agreed to within 2e-4 in every run."""
    network = "network" if task is ClassElevateSeg else "backbone"
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        _, eager, _ = first_steps(task, kwargs, "eager")
        graphed, losses, _ = first_steps(task, kwargs, "objective" if whole_objective else network)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert graphed[:1] == (["objective"] if whole_objective else [network])
    assert losses == pytest.approx(eager, rel=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_train_like_eager_in_bf16() -> None:
    """Under bf16 autocast (as a bf16-mixed trainer captures and steps), the graphed
    objective's first two losses are eager's to within bf16 rounding."""
    with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
        _, eager, _ = first_steps(SemiSegCAW, {}, "eager")
        graphed, losses, _ = first_steps(SemiSegCAW, {}, "objective")
    assert graphed == ["objective"]
    assert losses == pytest.approx(eager, rel=2e-2)


def test_first_steps_on_a_cpu_are_reproducible_and_ungraphed() -> None:
    # The GPU test's helper, run where CI runs: the same losses twice, nothing graphed.
    with pytest.warns(UserWarning, match="cuda_graphs applies on CUDA only"):
        graphed, losses, terms = first_steps(SemiSegCAW, {}, "objective", 3, "cpu")
    assert graphed == [] and len(losses) == len(terms) == 3
    assert first_steps(SemiSegCAW, {}, "eager", 3, "cpu")[1:] == (losses, terms)


def stand_in_class() -> type:
    """SemiSeg-CAW whose objective is graphed on a CPU (with ``make_graphed_callables``
    stood in by ``fake_make_graphed_callables``). Made inside a function: a subclass made
    at import would show up in the CLI's list of tasks in other tests."""
    from semiseg_caw.lit.base import OBJECTIVE_KEYS
    from semiseg_caw.lit.graphs import GraphedObjective

    class StandIn(SemiSegCAW):
        def capture_cuda_graphs(self, batch, whole_objective=True):
            modules = {"net": self.net, "weighting": self.weighting}
            self.__dict__["_graphed_objective"] = GraphedObjective(
                modules, self.eager_objective, batch, OBJECTIVE_KEYS
            )
            return ["objective"]

    return StandIn


def test_a_graphed_objective_trains_through_lightning(
    monkeypatch: pytest.MonkeyPatch, make_trainer: MakeTrainer
) -> None:
    """The graphed path inside a real fit, with the capture stood in on a CPU: full-size
    batches replay, the smaller last batch of an epoch runs eager, validation runs eager,
    and the weights end where an eager fit puts them."""
    calls = {"replays": 0}
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_make_graphed_callables(calls))
    StandIn = stand_in_class()
    weights = {}
    for task in (SemiSegCAW, StandIn):
        L.seed_everything(0)
        model = task(cuda_graphs=task is StandIn)
        for module in model.modules():  # the stand-in's warm-up must not shift random numbers
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        dm = datamodule(batch_size=8)
        trainer = make_trainer(max_epochs=2, limit_train_batches=None)
        trainer.fit(model, datamodule=dm)
        weights[task] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_train = len(dm.train_dataloader().dataset)
    assert n_train % 8, "needs a smaller last batch"
    assert model.cuda_graphed == ["objective"]
    assert calls["replays"] == 2 * (n_train // 8)  # full batches only, both epochs
    for key, value in weights[SemiSegCAW].items():
        torch.testing.assert_close(weights[StandIn][key], value, msg=key)


def test_graphs_are_captured_under_the_trainers_precision(
    monkeypatch: pytest.MonkeyPatch, make_trainer: MakeTrainer
) -> None:
    """A bf16-mixed run records its graph under autocast (as its eager steps run): a graph
    recorded outside would replay float32 kernels for the whole run."""
    make = fake_make_graphed_callables({"replays": 0})
    seen = []

    def recording_make(module, sample_args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return make(module, sample_args, **kwargs)

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", recording_make)
    model = stand_in_class()(cuda_graphs=True)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, precision="bf16-mixed")
    trainer.fit(model, datamodule=datamodule(batch_size=8))
    assert model.cuda_graphed == ["objective"]
    assert seen == [(True, torch.bfloat16)]
