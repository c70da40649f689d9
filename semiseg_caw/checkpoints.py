"""Loading stage-1 weights safely, with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, foreign or of another shape."""


def read_checkpoint(path: str | Path) -> dict:
    """Read a Lightning checkpoint without executing code from it (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated / foreign files
        raise CheckpointError(
            f"checkpoint {path} could not be read (truncated, corrupt or not a torch file): {err}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def load_submodule(module: nn.Module, path: str | Path, prefix: str) -> dict:
    """Load the weights stored under ``prefix`` in a Lightning checkpoint into ``module``.

    Returns the checkpoint's hyper-parameters. Raises ``CheckpointError`` when the
    checkpoint holds no such weights or their names or shapes don't fit.
    """
    ckpt = read_checkpoint(path)
    state = {
        key[len(prefix) :]: value
        for key, value in ckpt["state_dict"].items()
        if key.startswith(prefix)
    }
    if not state:
        raise CheckpointError(
            f"checkpoint {path} holds no weights under '{prefix}': is it a ClassElevateSeg "
            "(stage-1) checkpoint?"
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            "(another encoder?)"
        )
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise CheckpointError(
            f"checkpoint {path} has other shapes than the configured model (other input "
            f"channels or classes?): {'; '.join(wrong[:3])}"
        )
    module.load_state_dict(state)
    return dict(ckpt.get("hyper_parameters", {}))
