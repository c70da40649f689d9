"""Shared test setup: offline, quiet, deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# Tests use tiny tensors: on a small shared machine extra threads cost more than they give.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from lightning import Trainer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real BUSI / DDTI folder beside the checkout; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, by far so on a busy machine. Also fails a
    test that leaves autograd switched off (``torch.set_grad_enabled(False)`` in code it
    ran): every test after it on the same worker would fail, far from the cause."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    leaked = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "the test left autograd switched off for the tests after it"


@pytest.fixture
def make_trainer(tmp_path: Path) -> Iterator[Callable[..., Trainer]]:
    """A factory of tiny, quiet CPU trainers: one epoch of 3 training and 2 validation batches,
    deterministic, no logger, checkpoints, progress bar or model summary, in ``tmp_path``.
    Keyword arguments override these options.

    ``deterministic=True`` makes Lightning switch on ``torch.use_deterministic_algorithms``
    for the whole process; the setting is put back afterwards so later tests don't inherit it.
    """
    import lightning as L
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()

    def make(**kwargs) -> Trainer:
        options = dict(
            max_epochs=1,
            limit_train_batches=3,
            limit_val_batches=2,
            num_sanity_val_steps=0,
            accelerator="cpu",
            deterministic=True,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        options.update(kwargs)
        return L.Trainer(**options)

    yield make
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) ClassElevateSeg checkpoint that fits ``fit_args.fit_args``' model."""
    import torch

    from semiseg_caw import ClassElevateSeg

    path = tmp_path_factory.mktemp("stage1") / "stage1.ckpt"
    torch.manual_seed(0)
    module = ClassElevateSeg(num_classes=2, encoder="resnet10t")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path
