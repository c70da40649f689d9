"""Command-line overrides that shrink a `semiseg-caw fit` to seconds on a CPU, shared by the
tests that run the command in-process; the small model and data of in-process fits; a
checkpoint read back."""

from __future__ import annotations

from pathlib import Path

import torch

from semiseg_caw import SemiSegCAW, SemiSegDataModule

SMALL_AUX = "--model.init_args.aux_encoder=resnet10t"  # a shallower timm encoder

# Synthetic data in place of any config's data set: 40 images of 32 x 32, 6 class-only.
TINY_DATA = [
    "--data.dataset=synthetic",
    "--data.root=null",
    "--data.split_file=null",
    "--data.image_size=32",
    "--data.batch_size=4",
    "--data.synthetic_samples=40",
    "--data.class_only=6",
]


def quick_trainer(epochs: int = 1) -> list[str]:
    """Two training batches and one validation batch an epoch, on the CPU, printing nothing
    but what a test reads."""
    return [
        f"--trainer.max_epochs={epochs}",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.accelerator=cpu",
    ]


def fit_args(root: Path, *extra: str, epochs: int = 2) -> list[str]:
    """A stage-2 run of seconds: 2 batches of 4 images of 32 x 32 per epoch."""
    return [
        "fit",
        "--seed_everything=3",
        "--model=semiseg_caw.SemiSegCAW",
        SMALL_AUX,
        *TINY_DATA,
        *quick_trainer(epochs),
        "--trainer.deterministic=true",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        *extra,
    ]


def eval_args(command: str, root: Path, *extra: str) -> list[str]:
    """``command`` (validate, test or predict) with ``fit_args``' model and data options."""
    options = [a for a in fit_args(root)[1:] if not a.startswith(("--trainer.max", "--seed"))]
    return [command, *options, "--trainer.limit_test_batches=1", *extra]


def small_model(**kwargs) -> SemiSegCAW:
    """SemiSegCAW without an auxiliary map (no ClassElevateSeg to build): seconds to fit."""
    return SemiSegCAW(aux_source="none", loss_terms=["bce", "dice", "ce"], **kwargs)


def small_data() -> SemiSegDataModule:
    """40 synthetic images of 32 x 32, not augmented."""
    return SemiSegDataModule(image_size=32, batch_size=4, synthetic_samples=40, augment=False)


def read(path: Path) -> dict:
    """A checkpoint file as the dict Lightning wrote."""
    return torch.load(path, map_location="cpu", weights_only=True)
