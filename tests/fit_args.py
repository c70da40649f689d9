"""Command-line overrides that shrink a `semiseg-caw fit` to seconds on a CPU, shared by the
tests that run the command in-process."""

from __future__ import annotations

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
