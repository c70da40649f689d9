"""Lightning's start-of-training warning about modules in eval mode, for the parts meant
to stay so (a frozen auxiliary model, a fixed encoder: their BatchNorm statistics fixed).

Lightning warns that modules found in eval mode "may lead to unexpected behavior"; for
those parts it is the intended behaviour, and a user cannot act on the warning. It is
ignored only when the fixed parts are exactly the modules in eval mode (Lightning counts
them in its message): any other module in eval mode still gets it.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn


def ignore_eval_mode_warning(model: nn.Module, fixed: list[nn.Module]) -> Any:
    """Ignore the warning about ``fixed``'s modules, when they alone are in eval mode;
    returns the filter entry to hand to ``restore_eval_mode_warning`` (None: none set)."""
    fixed_ids = {id(m) for part in fixed for m in part.modules()}
    in_eval = {id(m) for m in model.modules() if not m.training}
    if not fixed_ids or in_eval != fixed_ids:
        return None
    message = f"Found {len(fixed_ids)} module(s) in eval mode at the start of training."
    warnings.filterwarnings("ignore", message=re.escape(message), category=PossibleUserWarning)
    return warnings.filters[0]


def restore_eval_mode_warning(entry: Any) -> None:
    """Take out the filter ``ignore_eval_mode_warning`` set (once the check is past)."""
    if entry is not None and entry in warnings.filters:
        warnings.filters.remove(entry)
