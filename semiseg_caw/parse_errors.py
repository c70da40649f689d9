"""Command-line and config mistakes as a short message that names the problem and, for a
misspelt option, the option probably meant.

jsonargparse prints its whole usage first (about 200 lines for ``fit``), and wraps a
model option's error in the list of the union's subtypes; this keeps the part that says
what was wrong.
"""

from __future__ import annotations

import difflib
import inspect
import re
import textwrap
from collections.abc import Iterable

UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)", re.S)
NOT_ACCEPTED = re.compile(r"does not accept option '([^']+)'")
# A model option's error, inside the union error: "Problem with given class_path 'X':" and
# below it, indented deeper, what the class said.
CLASS_PROBLEM = re.compile(r"^([ \t]*)- Problem with given class_path '([^']+)':$", re.M)
UNKNOWN_MODEL = re.compile(r'^Parser key "model":.*^  Given value: (\w+)$', re.M | re.S)
OPTION_REFUSED = re.compile(r"Option '([^']+)' is not accepted")
# A model option given before any class: jsonargparse tries it on the abstract base.
EARLY_MODEL_OPTION = re.compile(r"SegmentationTask is abstract.*NestedArg\(key='([^']+)'", re.S)


def explain(message: str, options: Iterable[str]) -> str:
    """``message`` from the parser, shortened, with a suggestion where a name was misspelt.
    ``options``: the option names the parser knows (``data.image_size``, ...)."""
    options = sorted(set(options))
    problem = CLASS_PROBLEM.search(message)
    if problem:
        class_path, said = problem.group(2), _indented_below(message, problem)
        refused = OPTION_REFUSED.search(said)
        hint = refused and _closest(refused.group(1), init_arguments(class_path))
        return f"model {class_path}: {said}" + (f" (did you mean '{hint}'?)" if hint else "")
    early = EARLY_MODEL_OPTION.search(message)
    if early:
        return (
            f"--model.init_args.{early.group(1)} came before the model's class: give --model "
            "(or the --config that names it) first, then the model's options"
        )
    model = UNKNOWN_MODEL.search(message)
    if model:
        return (
            f"--model {model.group(1)}: not a model; SemiSegCAW, ClassElevateSeg or the import "
            "path of another SegmentationTask"
        )
    unknown = NOT_ACCEPTED.search(message)
    names = [unknown.group(1)] if unknown else []
    given = UNRECOGNIZED.search(message)
    if given:
        names = [a.split("=", 1)[0].lstrip("-") for a in given.group(1).split() if a[:2] == "--"]
    hints = [f"'{n}': did you mean '{h}'?" for n in names if (h := _closest(n, options))]
    return "; ".join([message, *hints])


def _indented_below(message: str, header: re.Match) -> str:
    """The lines after ``header`` indented deeper than it, dedented."""
    below = []
    for line in message[header.end() :].splitlines()[1:]:
        if len(line) - len(line.lstrip()) <= len(header.group(1)) + 2:
            break
        below.append(line)
    return textwrap.dedent("\n".join(below)).strip()


def init_arguments(class_path: str) -> list[str]:
    """The keyword arguments ``class_path``'s class takes; none when it cannot be imported."""
    from semiseg_caw.checkpoints import import_class  # (torch, lightning: only when needed)

    cls = import_class(class_path)
    if cls is None:
        return []
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]


def _closest(name: str, candidates: list[str]) -> str | None:
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return found[0] if found else None
