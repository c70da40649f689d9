"""Non-finite losses never reach the weights: such steps are skipped, counted (the count
is checkpointed) and warned of, on the device guard and on the host one, and too many
stop training with a clear message."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from fit_args import read, small_data, small_model
from lightning.pytorch.callbacks import Callback

from semiseg_caw import SemiSegCAW


class Snapshots(Callback):
    """The module's whole state (parameters and buffers) before and after each batch."""

    def __init__(self) -> None:
        self.before: list[dict] = []
        self.after: list[dict] = []

    @staticmethod
    def _copy(module) -> dict:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(self._copy(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(self._copy(pl_module))


def poison(model: SemiSegCAW, bad: dict[int, str]) -> None:
    """Make the loss of the given calls non-finite: ``nan``/``inf`` in a loss term, or
    ``image``: NaN pixels, which also reach the BatchNorm statistics."""
    calls = iter(range(10**6))
    terms = model.loss_terms

    def loss_terms(batch):
        kind = bad.get(next(calls))
        if kind == "image":
            batch = {**batch, "image": batch["image"].clone()}
            batch["image"][0, :, :4, :4] = float("nan")
        out = terms(batch)
        if kind in ("nan", "inf"):
            out["bce"] = out["bce"] * float(kind)
        return out

    model.loss_terms = loss_terms


# Two guards: on the device with fused AdamW (the default: no host sync per step; the count
# is read on logging steps and at the end of an epoch), on the host with gradient clipping
# (which needs the foreach optimiser; every loss is checked as it comes).
GUARDS = {"device": {}, "host": {"gradient_clip_val": 1.0}}


@pytest.mark.parametrize("guard", GUARDS)
def test_non_finite_steps_are_skipped_counted_and_checkpointed(guard, tmp_path, make_trainer):
    L.seed_everything(0)
    model = small_model()
    poison(model, {1: "nan", 2: "image", 3: "inf"})
    snapshots = Snapshots()
    trainer = make_trainer(
        limit_train_batches=5, limit_val_batches=0, callbacks=[snapshots], **GUARDS[guard]
    )
    with pytest.warns(RuntimeWarning, match="non-finite training loss") as caught:
        trainer.fit(model, datamodule=small_data())
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert "(3/20 allowed)" in messages[-1]
    if guard == "device":  # read once, at the end of the epoch
        assert messages == [
            "3 non-finite training loss(es) by global step 5; those steps were skipped "
            "(3/20 allowed)"
        ]
    else:
        assert len(messages) == 3
    assert model.bad_steps == 3
    for step, (before, after) in enumerate(zip(snapshots.before, snapshots.after, strict=True)):
        unchanged = all(torch.equal(before[k], after[k]) for k in before if "num_batches" not in k)
        assert unchanged == (step in (1, 2, 3)), step  # good steps do train
        assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    # The count is part of the checkpoint, so a resumed run goes on counting.
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert read(tmp_path / "m.ckpt")["bad_steps"] == 3
    restored = small_model()
    restored.on_load_checkpoint(read(tmp_path / "m.ckpt"))
    assert restored.bad_steps == 3


def test_guarded_buffers_follow_train_and_eval_and_leave_a_frozen_aux_model_out():
    model = SemiSegCAW(aux_mode="frozen").train()
    aux = {id(b) for b in model.net.aux_model.buffers()}
    guarded = model._step_buffers()
    assert guarded and not aux & {id(b) for b in guarded}
    assert model.eval()._step_buffers() == []  # nothing trains in eval mode
    assert len(model.train()._step_buffers()) == len(guarded)
    model.to(torch.float64)  # .to() replaces buffer tensors: the new ones are guarded
    after = [b for b in model._step_buffers() if b.is_floating_point()]
    assert after and len(model._step_buffers()) == len(guarded)
    assert all(b.dtype == torch.float64 for b in after)


@pytest.mark.parametrize(("guard", "count"), [("device", 4), ("host", 3)])
def test_too_many_non_finite_steps_stop_training_with_a_clear_message(guard, count, make_trainer):
    L.seed_everything(0)
    model = small_model(max_bad_steps=2)
    poison(model, dict.fromkeys(range(10), "nan"))
    stop = rf"\({count}/2 allowed\)\. Stopping: lower the learning"
    trainer = make_trainer(
        limit_train_batches=5, limit_val_batches=0, log_every_n_steps=4, **GUARDS[guard]
    )
    with pytest.raises(FloatingPointError, match=stop), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the host guard warns before it stops
        trainer.fit(model, datamodule=small_data())
    assert model.bad_steps == count  # the device count is read on the 4th step, a logging one
