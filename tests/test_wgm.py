"""The loss weightings (WGM) behind one interface."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg_caw.models.wgm import (
    DWAWeighting,
    IMTLWeighting,
    LossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
    build_weighting,
    imtl_gradient_weights,
)

NAMES = ("bce", "dice", "ce")


def losses(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in values.items()}


def fit(weighting: LossWeighting, values: dict[str, torch.Tensor], steps: int, lr: float) -> None:
    """Optimise the weighting's parameters on constant losses."""
    opt = torch.optim.Adam(weighting.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        weighting(values).backward()
        opt.step()


@pytest.mark.parametrize("name", ["static", "uncertainty", "imtl", "dwa"])  # wgm: uncertainty
def test_interface_and_positive_weights(name):
    weighting = build_weighting(name, NAMES)
    assert isinstance(weighting, LossWeighting)
    objective = weighting(losses(bce=0.7, dice=0.4, ce=1.2))
    assert objective.ndim == 0 and torch.isfinite(objective)
    weights = weighting.weights()
    assert list(weights) == list(NAMES)
    assert all(isinstance(w, float) and w > 0 for w in weights.values())


def test_static_is_weighted_sum():
    weighting = StaticWeighting(NAMES, {"bce": 2.0, "ce": 0.5})
    terms = losses(bce=0.7, dice=0.4, ce=1.2)
    assert weighting(terms).item() == pytest.approx(2.0 * 0.7 + 1.0 * 0.4 + 0.5 * 1.2)
    assert weighting.weights() == {"bce": 2.0, "dice": 1.0, "ce": 0.5}
    assert not list(weighting.parameters())


def test_gradient_reaches_every_term_with_its_weight():
    weighting = UncertaintyWeighting(NAMES, init=0.5)
    terms = {k: torch.tensor(1.0, requires_grad=True) for k in NAMES}
    weighting(terms).backward()
    for name in NAMES:
        assert terms[name].grad.item() == pytest.approx(math.exp(-0.5))
    assert weighting.log_scales.grad is not None


def test_uncertainty_converges_to_inverse_loss():
    weighting = UncertaintyWeighting(["a", "b", "c"])
    target = {"a": 0.25, "b": 1.0, "c": 3.0}
    fit(weighting, losses(**target), steps=400, lr=0.05)
    for name, w in weighting.weights().items():
        assert w == pytest.approx(1.0 / target[name], rel=0.02)


def test_imtl_scales_every_loss_to_one():
    weighting = IMTLWeighting(["a", "b"])
    target = {"a": 0.25, "b": 3.0}
    fit(weighting, losses(**target), steps=400, lr=0.05)
    for name, w in weighting.weights().items():
        assert w * target[name] == pytest.approx(1.0, rel=0.02)


def test_weights_cannot_collapse_and_recover_from_the_bound():
    weighting = UncertaintyWeighting(["a"], clamp=(-4.0, 4.0))
    fit(weighting, losses(a=1e4), steps=300, lr=0.1)  # optimum s = log(1e4) > 4
    assert weighting.weights()["a"] >= math.exp(-4.0) * (1 - 1e-6)
    assert weighting.weights()["a"] == pytest.approx(math.exp(-4.0))
    assert weighting.log_scales.item() > 4.0  # the optimiser overshot the bound
    # once the loss is small again the weight must come back (optimum s = 0)
    fit(weighting, losses(a=1.0), steps=400, lr=0.1)
    assert weighting.weights()["a"] == pytest.approx(1.0, rel=0.05)


def test_dwa_favours_the_slower_term():
    weighting = DWAWeighting(["fast", "slow"], temperature=2.0)
    weighting.train()
    epochs = [losses(fast=1.0, slow=1.0), losses(fast=0.5, slow=0.9)]
    for i, terms in enumerate(epochs):
        for _ in range(3):
            weighting(terms)
        assert weighting.weights() == {"fast": 1.0, "slow": 1.0}, f"epoch {i}"
        weighting.epoch_end()
    weights = weighting.weights()
    assert weights["slow"] > weights["fast"]
    assert sum(weights.values()) == pytest.approx(2.0)
    expected_slow = 2 * torch.softmax(torch.tensor([0.5, 0.9]) / 2.0, 0)[1].item()
    assert weights["slow"] == pytest.approx(expected_slow, rel=1e-5)
    # the objective uses the new weights; eval-mode calls leave the history alone
    weighting.eval()
    terms = losses(fast=1.0, slow=1.0)
    assert weighting(terms).item() == pytest.approx(2.0)
    before = weighting.state_dict()["_epoch_count"].item()
    weighting(terms)
    assert weighting.state_dict()["_epoch_count"].item() == before


def test_dwa_state_survives_a_checkpoint():
    weighting = DWAWeighting(["a", "b"])
    for terms in (losses(a=1.0, b=1.0), losses(a=0.2, b=0.8)):
        weighting(terms)
        weighting.epoch_end()
    restored = DWAWeighting(["a", "b"])
    restored.load_state_dict(weighting.state_dict())
    assert restored.weights() == weighting.weights()


def test_missing_or_extra_terms_raise_key_error():
    weighting = UncertaintyWeighting(NAMES)
    with pytest.raises(KeyError, match="missing \\['ce'\\]"):
        weighting(losses(bce=1.0, dice=1.0))
    with pytest.raises(KeyError, match="unexpected \\['ftv'\\]"):
        weighting(losses(bce=1.0, dice=1.0, ce=1.0, ftv=1.0))


def test_build_weighting_errors():
    with pytest.raises(ValueError, match="choose one of"):
        build_weighting("gradnorm", NAMES)
    assert isinstance(build_weighting("WGM", NAMES), UncertaintyWeighting)
    assert isinstance(build_weighting("static", NAMES, weights={"ce": 0.1}), StaticWeighting)
    with pytest.raises(ValueError, match="unknown terms"):
        build_weighting("static", NAMES, weights={"ftv": 0.1})
    with pytest.raises(ValueError, match="clamp"):
        build_weighting("uncertainty", NAMES, clamp=(4.0, -4.0))
    with pytest.raises(ValueError, match="temperature"):
        build_weighting("dwa", NAMES, temperature=0.0)
    with pytest.raises(ValueError, match="unique"):
        build_weighting("imtl", ["a", "a"])
    with pytest.raises(ValueError, match=">= 0"):
        StaticWeighting(["a"], {"a": -1.0})


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_imtl_gradient_weights_equalise_projections(num_tasks):
    torch.manual_seed(0)
    grads = [torch.randn(4, 5) * scale for scale in (0.1, 3.0, 1.0)[:num_tasks]]
    alpha = imtl_gradient_weights(grads)
    assert alpha.shape == (num_tasks,)
    assert alpha.sum().item() == pytest.approx(1.0)
    combined = sum(a * g for a, g in zip(alpha, grads, strict=True)).flatten()
    projections = [combined @ (g.flatten() / g.norm()) for g in grads]
    for p in projections[1:]:
        assert p.item() == pytest.approx(projections[0].item(), rel=1e-4)


def test_imtl_gradient_weights_toy_example():
    # orthogonal gradients of lengths 1 and 2: g = a*g1 + (1-a)*g2 with a = 2(1-a)
    alpha = imtl_gradient_weights([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])])
    assert alpha.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert imtl_gradient_weights([torch.ones(3)]).tolist() == [1.0]
