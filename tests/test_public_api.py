"""Use from other projects: the public API, and a user's own LightningModule built from it."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

import semiseg_caw
from semiseg_caw import (
    BCELoss,
    FocalTverskyLoss,
    MALUNet,
    SemiSegDataModule,
    UncertaintyWeighting,
    build_weighting,
)


@pytest.mark.parametrize("name", semiseg_caw.__all__)
def test_every_public_name_imports(name: str) -> None:
    value = getattr(semiseg_caw, name)
    # Loaded from the module _PUBLIC names (a package's own, or one below it).
    assert value.__module__.startswith(semiseg_caw._PUBLIC[name]), value.__module__


@pytest.mark.parametrize("package", ["semiseg_caw.models", "semiseg_caw.data", "semiseg_caw.lit"])
def test_no_submodule_shadows_a_public_name(package: str) -> None:
    # Importing a submodule sets it as an attribute of its package: one named like a
    # function in __all__ (models/layercam.py once) would replace that function.
    import importlib
    import pkgutil
    import types

    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")
    for name in module.__all__:
        assert not isinstance(getattr(module, name), types.ModuleType), f"{package}.{name}"


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = semiseg_caw.NoSuchThing


def test_import_is_cheap() -> None:
    code = "import sys, semiseg_caw\nassert not {'torch', 'lightning'} & set(sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_backbones_import_without_timm() -> None:
    # timm takes seconds to import; only ClassElevateNet (and UNeXt's stochastic depth) use it.
    code = (
        "import sys\nfrom semiseg_caw import MALUNet, UNeXt\nUNeXt(); MALUNet()\n"
        "assert 'timm' not in sys.modules\n"
        "from semiseg_caw.models import ClassElevateNet\nassert 'timm' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("module", ["models", "losses"])
def test_networks_and_losses_import_no_lightning(module: str) -> None:
    """What another project reuses needs torch (and timm) only; checked on the source."""
    package = Path(semiseg_caw.__file__).parent
    files = sorted((package / module).glob("*.py")) or [package / f"{module}.py"]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("lightning", "pytorch_lightning"), file
                assert not name.startswith(("semiseg_caw.lit", "semiseg_caw.cli")), file


class UserTask(L.LightningModule):
    """What another project might write: the package's network, loss and WGM, its own loop."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MALUNet(in_channels=1, num_classes=1)
        self.bce = BCELoss()
        self.ftv = FocalTverskyLoss(alpha=0.7, beta=0.3, gamma=0.75)
        self.weighting = build_weighting("uncertainty", ["bce", "ftv"])
        self.losses: list[float] = []
        self.weights: list[dict[str, float]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"]).mask_logits  # (B, 1, H, W)
        mask, has_mask = batch["mask"], batch["has_mask"]  # class-only samples: no mask
        terms = {"bce": self.bce(logits, mask, has_mask), "ftv": self.ftv(logits, mask, has_mask)}
        loss = self.weighting(terms)
        self.losses.append(float(sum(terms.values()).detach()))
        self.weights.append(self.weighting.weights())
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def test_user_lightning_module_trains_on_the_data_module(tmp_path) -> None:
    L.seed_everything(0)
    data = SemiSegDataModule(
        dataset="synthetic",
        image_size=32,
        batch_size=8,
        synthetic_samples=40,
        class_only=6,
        augment=False,
    )
    task = UserTask()
    assert isinstance(task.weighting, UncertaintyWeighting)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=8,
        overfit_batches=1,  # the same batch every step: the loss must come down
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=data)
    assert trainer.global_step == 8
    assert all(math.isfinite(v) for v in task.losses)
    assert task.losses[-1] < task.losses[0]
    assert all(w > 0 and math.isfinite(w) for step in task.weights for w in step.values())
    assert task.weights[-1] != task.weights[0]  # the WGM weights are trained too
