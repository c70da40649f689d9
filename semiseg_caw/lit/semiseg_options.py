"""Which of SemiSegCAW's options go together: checked before any network is built, so a
config that cannot work fails with its reason instead of somewhere inside a step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from semiseg_caw.lit.class_elevate import STAGE1_TERMS

CORE_TERMS = ("bce", "dice", "ftv", "ce", "pseudo", "aux")


def default_terms(hp: Mapping[str, Any]) -> list[str]:
    """The loss terms of METHOD.md for these options: the three mask terms, the class
    term with a classifier, and the auxiliary model's own terms while it is fine-tuned."""
    terms = ["bce", "dice", "ftv"]
    if hp["classifier"]:
        terms.append("ce")
    if hp["aux_source"] == "classelevate" and hp["aux_mode"] != "frozen":
        terms.append("aux")
    return terms


def checked_terms(hp: Mapping[str, Any]) -> list[str]:
    """The loss terms to train with (``loss_terms``, or the defaults), after checking that
    they and every other option fit together; a ValueError names what does not."""
    terms = list(hp["loss_terms"]) if hp["loss_terms"] is not None else default_terms(hp)
    _check_terms(hp, terms)
    _check_auxiliary(hp)
    _check_numbers(hp)
    _check_teacher(hp, terms)
    return terms


def _check_terms(hp: Mapping[str, Any], terms: list[str]) -> None:
    unknown = set(terms) - set(CORE_TERMS)
    if unknown or not terms:
        raise ValueError(f"loss_terms must be a non-empty subset of {CORE_TERMS}, got {terms}")
    if "ce" in terms and not hp["classifier"]:
        raise ValueError("loss term 'ce' needs classifier: true")
    if ("pseudo" in terms or "aux" in terms) and hp["aux_source"] == "none":
        raise ValueError("loss terms 'pseudo' and 'aux' need an auxiliary model")
    if "aux" in terms and (hp["aux_mode"] == "frozen" or hp["aux_source"] != "classelevate"):
        raise ValueError("loss term 'aux' supervises a fine-tuned ClassElevateSeg only")
    if hp["loss_weights"] and hp["weighting"] != "static":
        raise ValueError("loss_weights apply to weighting: static only")


def _check_auxiliary(hp: Mapping[str, Any]) -> None:
    source, mode = hp["aux_source"], hp["aux_mode"]
    if mode not in ("finetune", "decoder", "frozen"):
        raise ValueError(f"aux_mode must be finetune, decoder or frozen, got {mode!r}")
    if hp["layercam_layer"] != "deepest" and source != "layercam":
        raise ValueError("layercam_layer chooses the LayerCAM maps: it needs aux_source 'layercam'")
    if hp["cache_aux_maps"] and (
        source == "none" or (source == "classelevate" and mode != "frozen")
    ):
        raise ValueError(
            "cache_aux_maps needs a fixed auxiliary model: aux_mode 'frozen' or "
            "aux_source 'layercam' (a fine-tuned model's maps change every step)"
        )
    stage1_weights = hp["stage1_loss_weights"] or {}
    if set(stage1_weights) - set(STAGE1_TERMS) or any(
        not 0 <= w < float("inf") for w in stage1_weights.values()
    ):
        raise ValueError(
            f"stage1_loss_weights takes finite weights >= 0 of {STAGE1_TERMS}, got {stage1_weights}"
        )
    topk = hp["stage1_presence_topk"]
    if not 0 < topk <= 1:
        raise ValueError(f"stage1_presence_topk must lie in (0, 1], got {topk}")
    epochs = hp["stage1_epochs"]
    if epochs is not None and epochs < 1:  # None: trainer.max_epochs
        raise ValueError(f"stage1_epochs must be >= 1 (or null), got {epochs}")


def _check_numbers(hp: Mapping[str, Any]) -> None:
    alpha, beta, gamma = hp["ftv_alpha"], hp["ftv_beta"], hp["ftv_gamma"]
    inf = float("inf")  # the comparisons are written so that NaN fails them too
    if not (0 <= alpha < inf and 0 <= beta < inf and 0 < gamma < inf):
        raise ValueError(
            "ftv_alpha and ftv_beta must be finite numbers >= 0 and ftv_gamma a finite number "
            f"> 0, got {alpha}, {beta} and {gamma}"
        )
    if not 0.5 < hp["pseudo_threshold"] < 1:
        raise ValueError(f"pseudo_threshold must lie in (0.5, 1), got {hp['pseudo_threshold']}")
    if hp["classifier_hidden"] < 1:
        raise ValueError(f"classifier_hidden must be >= 1, got {hp['classifier_hidden']}")
    if not 0 < hp["aux_lr_scale"] < inf:
        raise ValueError(f"aux_lr_scale must be a finite number > 0, got {hp['aux_lr_scale']}")


def _check_teacher(hp: Mapping[str, Any], terms: list[str]) -> None:
    teacher = hp["pseudo_teacher"]
    if teacher not in ("aux", "ema"):
        raise ValueError(f"pseudo_teacher must be aux or ema, got {teacher!r}")
    if not 0 < hp["ema_decay"] < 1:  # checked whatever the teacher, as the other numbers are
        raise ValueError(f"ema_decay must lie in (0, 1), got {hp['ema_decay']}")
    if teacher != "ema":
        return
    if "pseudo" not in terms:
        raise ValueError("pseudo_teacher 'ema' teaches the 'pseudo' loss term: add it")
    if hp["aux_output_skip"]:
        raise ValueError(
            "pseudo_teacher 'ema' averages the backbone: it cannot take aux_output_skip"
        )
