"""What the benchmark protocol is (../shared/docs/PROTOCOL.md): the paper's figures, the rows (the
baselines, SemiSeg-CAW, its ablations, our controls and variants) for each data set and
label budget, and the training budgets. ``run.py`` runs them; ``report.py`` tabulates them.
"""

from __future__ import annotations

import fnmatch
from typing import Any, NamedTuple

# The paper's pooled test figures (their splits, 256 px, 300 epochs). UNeXt rows: the
# paper's backbone table ("UNeXt" read as the full-data baseline; DDTI SemiSeg-CAW at 48).
PAPER = {
    "busi": {
        "malunet-full": (0.672, 0.506),
        "malunet-reduced": (0.662, 0.494),
        "malunet-semiseg-caw": (0.684, 0.520),
        "unext-full": (0.710, 0.595),
        "unext-semiseg-caw": (0.813, 0.704),
    },
    "ddti": {
        "malunet-full": (0.628, 0.457),
        "malunet-reduced-48": (0.614, 0.443),
        "malunet-semiseg-caw-48": (0.656, 0.488),
        "malunet-semiseg-caw-96": (0.640, 0.470),
        "malunet-semiseg-caw-144": (0.633, 0.463),
        "unext-full": (0.678, 0.519),
        "unext-semiseg-caw-48": (0.710, 0.552),
    },
}
CLASS_ONLY = {"busi": [100], "ddti": [48, 96, 144]}
ABLATIONS = ["no-classelevate", "static-weights", "imtl", "no-classelevate-no-wgm", "layercam"]
# Controls beyond the paper: what the class-only images add (SemiSeg-CAW without them),
# and the most they could add (SemiSeg-CAW given their masks too).
CONTROLS = ["no-class-only", "all-masks"]
# Controls for compute: rows trained for the budget's ``long_epochs`` instead of its
# ``epochs``, each named after the row it lengthens. Under a short budget SemiSeg-CAW spends
# far more CPU time than a baseline (a ResNet-18 U-Net in both stages): the long baselines
# ask whether they catch up when they get as much; the long frozen-aux-cached variant (a
# stage 2 about as cheap as the bare backbone, on the shared stage 1) whether the
# auxiliary map still helps a core model trained that long; and "-long-both" the same on
# its own stage 1 trained for ``long_stage1_epochs`` (a better map, at more compute).
FROZEN_CACHED = "configs/ablations/frozen-aux-cached.yaml"
LONG = {
    "full-long": ["configs/baselines/full.yaml"],
    "reduced-long": ["configs/baselines/reduced.yaml"],
    "frozen-aux-cached-long": [FROZEN_CACHED],
    "frozen-aux-cached-long-both": [FROZEN_CACHED],
    # Stage 2 without the auxiliary map (classification head and WGM kept): what the map
    # itself adds to a core model trained this long.
    "no-classelevate-long": ["configs/ablations/no-classelevate.yaml"],
    # -long-both with half the training maps dropped (variant aux-dropout): whether a core
    # model that must also segment without the map leans on it less; and with a quarter
    # three quarters and nine tenths dropped, to choose the rate on validation.
    "aux-dropout-long-both": [FROZEN_CACHED, "configs/ablations/aux-dropout.yaml"],
    "aux-dropout-0.25-long-both": [FROZEN_CACHED, "--model.init_args.aux_dropout=0.25"],
    "aux-dropout-0.75-long-both": [FROZEN_CACHED, "--model.init_args.aux_dropout=0.75"],
    "aux-dropout-0.9-long-both": [FROZEN_CACHED, "--model.init_args.aux_dropout=0.9"],
    # Three quarters dropped, plus pseudo-labels: BCE towards the map's confident pixels of
    # the class-only images, so that the core model also learns to segment those images
    # without their map (where it is given the map, copying it already meets the target).
    "pseudo-aux-dropout-0.75-long-both": [
        FROZEN_CACHED,
        "--model.init_args.aux_dropout=0.75",
        "--model.init_args.loss_terms=[bce,dice,ftv,ce,pseudo]",
    ],
    # The same with a mean teacher instead of the map: the targets are the confident pixels
    # of an exponential moving average of the core backbone (given the whole map), a teacher
    # that improves as the core model does, where the map stays at stage 1's quality.
    "mean-teacher-aux-dropout-0.75-long-both": [
        FROZEN_CACHED,
        "--model.init_args.aux_dropout=0.75",
        "--model.init_args.loss_terms=[bce,dice,ftv,ce,pseudo]",
        "--model.init_args.pseudo_teacher=ema",
    ],
    # -long-both on its own long stage 1 trained without the lesion-present term (which
    # over-segments small BUSI lesions, benchmarks/stage1_variants.py): whether the better
    # stage 1 carries over to the core model, over every seed.
    "stage1-no-presence-long-both": [FROZEN_CACHED, "configs/ablations/stage1-no-presence.yaml"],
    # The term kept, on the top 0.5% of the pixels instead of 2% (less area than the small
    # BUSI lesions cover): whether it keeps the gain without that term's over-segmentation.
    "stage1-presence-topk-0.005-long-both": [
        FROZEN_CACHED,
        "configs/ablations/stage1-presence-topk-0.005.yaml",
    ],
    # That stage 1 (reused from the MALUNet row above) under the aux-dropout-0.75 core model:
    # whether its better map helps a core model that learns to segment without it.
    "stage1-presence-topk-0.005-aux-dropout-0.75-long-both": [
        FROZEN_CACHED,
        "configs/ablations/stage1-presence-topk-0.005.yaml",
        "--model.init_args.aux_dropout=0.75",
    ],
}
# Rows on a stage 1 of ``long_stage1_epochs``: all share malunet-frozen-aux-cached-long-both's
# but the stage1-* ones, which change stage 1 and so train their own (or, in
# LONG_STAGE1_FROM, take another stage1-* row's).
LONG_STAGE1 = {
    "frozen-aux-cached-long-both",
    "aux-dropout-long-both",
    "aux-dropout-0.25-long-both",
    "aux-dropout-0.75-long-both",
    "aux-dropout-0.9-long-both",
    "pseudo-aux-dropout-0.75-long-both",
    "mean-teacher-aux-dropout-0.75-long-both",
    "stage1-no-presence-long-both",
    "stage1-presence-topk-0.005-long-both",
    "stage1-presence-topk-0.005-aux-dropout-0.75-long-both",
}
# Long rows on the stage 1 of a stage1-* row (same seed) instead of the shared one: the
# MALUNet row of that method trains it.
LONG_STAGE1_FROM = {
    "stage1-presence-topk-0.005-aux-dropout-0.75-long-both": "stage1-presence-topk-0.005-long-both",
}
BASELINES = ("full", "reduced", "full-long", "reduced-long")  # rows without a stage 1
# Our variants of the method: pseudo-labels on class-only images; a frozen auxiliary model
# whose maps are cached (the fast stage 2, see benchmarks/speed.py); stage 1 without its
# CAM target, without its lesion-present term, without both class-to-pixel terms, or with
# a consistency term on class-only images; the auxiliary map also added to the output
# logits; half the training maps dropped; the auxiliary model fine-tuned at the full
# learning rate or at 0.3 of it, or only its decoder and heads fine-tuned (the cheaper
# step, see benchmarks/speed.py); Focal Tversky weighing false negatives and positives
# alike; cross-entropy balanced by class frequency (both stages, so its stage 1 is its
# own; or stage 2 only, on SemiSeg-CAW's stage 1).
VARIANTS = [
    "pseudo-labels",
    "frozen-aux-cached",
    "stage1-no-cam",
    "stage1-no-presence",
    "stage1-ce-only",
    "stage1-consistency",
    "aux-output-skip",
    "aux-dropout",
    "aux-full-lr",
    "aux-lr-0.3",
    "aux-decoder",
    "ftv-balanced",
    "balanced-classes",
    "balanced-classes-stage2",
]
# Rows whose stage 1 is the same as malunet-semiseg-caw's (same data, seed and settings):
# they reuse its stage-1 checkpoint when that run has finished, and so differ from it in
# stage 2 only (LayerCAM reads the same ClassElevateSeg's classifier). The stage1-* variants
# train their own.
SHARES_STAGE1 = {
    "semiseg-caw",
    "static-weights",
    "imtl",
    "layercam",
    "pseudo-labels",
    "frozen-aux-cached",
    "frozen-aux-cached-long",
    "aux-output-skip",
    "aux-dropout",
    "aux-full-lr",
    "aux-lr-0.3",
    "aux-decoder",
    "ftv-balanced",
    "balanced-classes-stage2",
}


def shares_long_stage1(method: str) -> bool:
    """Whether a long-stage-1 row reuses malunet-frozen-aux-cached-long-both's stage 1 (the
    stage1-* rows change stage 1, so they train their own)."""
    return method in LONG_STAGE1 and not method.startswith("stage1-")


def stage1_source(row: dict, dataset: str) -> str | None:
    """The row whose stage-1 checkpoint ``row`` reuses (same seed): malunet-semiseg-caw's for
    the SHARES_STAGE1 methods; the MALUNet row named in LONG_STAGE1_FROM; for the other
    long-stage-1 rows, malunet-frozen-aux-cached-long-both's (the same stage 1 of
    ``long_stage1_epochs``). None: it trains its own."""
    if row["method"] in SHARES_STAGE1:
        source = f"malunet-semiseg-caw{suffix(dataset, row['class_only'])}"
    elif row["method"] in LONG_STAGE1_FROM:
        source = f"malunet-{LONG_STAGE1_FROM[row['method']]}"
    elif shares_long_stage1(row["method"]):
        source = "malunet-frozen-aux-cached-long-both"
    else:
        return None
    return None if source == row["name"] else source


# Budgets: trainer/data settings, default rows and seeds.
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "image_size": 64,
        "epochs": 1,
        "stage1_epochs": 1,
        "long_epochs": 2,
        "long_stage1_epochs": 2,
        "seeds": [0],
        "rows": ["malunet-full", "malunet-reduced*", "malunet-semiseg-caw*"],
        "trainer": ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"],
        "first_budget_only": True,
        "note": "smoke test: 64 px, 1 epoch of 3 batches per stage; proves loaders and metrics "
        "on the real files, the numbers mean nothing",
    },
    "cpu": {
        "image_size": 96,
        "epochs": 8,
        "stage1_epochs": 6,
        # 16x: a baseline's fit then takes about as long as SemiSeg-CAW's two stages on one
        # core here on BUSI (MALUNet about 3.5 s an epoch at 96 px; SemiSeg-CAW about 490 s
        # in all), twice as long on DDTI.
        "long_epochs": 128,
        "long_stage1_epochs": 32,
        "seeds": [0],
        "rows": ["malunet-full", "malunet-reduced*", "malunet-semiseg-caw*"],
        "trainer": [],
        "first_budget_only": True,
        "note": "CPU budget: 96 px, 8 epochs (stage 1 of SemiSeg-CAW: 6) instead of 256 px and 300. "
        "Good for comparing rows against each other, not for headline numbers",
    },
    "gpu": {
        "image_size": 256,
        "epochs": 20,
        "stage1_epochs": 20,
        "seeds": [0, 1, 2],
        "rows": ["malunet-full", "malunet-reduced*", "malunet-semiseg-caw*"],
        "trainer": [],
        "first_budget_only": True,
        "note": "GPU budget: 256 px as in the protocol, but 20 epochs per stage instead of 300, "
        "sized so that the nine runs (three rows, three seeds) share one GPU within one "
        "10-minute device call beside the GPU tests and the speed table "
        "(benchmarks/device_run.sh all); not the paper's schedule",
    },
    "full": {
        "image_size": 256,
        "epochs": 300,
        "stage1_epochs": None,
        "seeds": [0, 1, 2],
        "rows": ["*"],
        "trainer": [],
        "first_budget_only": False,
        "note": "the protocol as written: 256 px, 300 epochs, 3 seeds, every row (for a GPU)",
    },
}

SEG_KEYS = [
    "dice",
    "iou",
    "recall",
    "precision",
    "specificity",
    "accuracy",
    "dice_per_image",
    "iou_per_image",
]
CLS_KEYS = ["accuracy", "balanced_accuracy", "auroc"]


# ----------------------------------------------------------------------------- rows


def suffix(dataset: str, class_only: int) -> str:
    """The row-name suffix of a label budget: "" where the data set has one, else "-48"."""
    return "" if len(CLASS_ONLY[dataset]) == 1 else f"-{class_only}"


def all_rows(dataset: str) -> list[dict[str, Any]]:
    """Every row of the protocol for a data set: name, config deltas, class-only count."""
    rows = []
    budgets = CLASS_ONLY[dataset]
    for backbone in ("malunet", "unext"):
        bb = [] if backbone == "malunet" else ["configs/backbones/unext.yaml"]
        rows.append(
            {
                "name": f"{backbone}-full",
                "configs": bb + ["configs/baselines/full.yaml"],
                "class_only": budgets[0],
                "method": "full",
            }
        )
        for k in budgets:
            sfx = suffix(dataset, k)
            rows.append(
                {
                    "name": f"{backbone}-reduced{sfx}",
                    "configs": bb + ["configs/baselines/reduced.yaml"],
                    "class_only": k,
                    "method": "reduced",
                }
            )
        for k in budgets:
            sfx = suffix(dataset, k)
            rows.append(
                {
                    "name": f"{backbone}-semiseg-caw{sfx}",
                    "configs": bb,
                    "class_only": k,
                    "method": "semiseg-caw",
                }
            )
        for ab in ABLATIONS + CONTROLS + VARIANTS:
            rows.append(
                {
                    "name": f"{backbone}-{ab}",
                    "configs": bb + [f"configs/ablations/{ab}.yaml"],
                    "class_only": budgets[0],
                    "method": ab,
                }
            )
        first = suffix(dataset, budgets[0])
        for method, configs in LONG.items():
            name = f"reduced{first}-long" if method == "reduced-long" else method
            rows.append(
                {
                    "name": f"{backbone}-{name}",
                    "configs": bb + configs,
                    "class_only": budgets[0],
                    "method": method,
                    "long": True,
                    "long_stage1": method in LONG_STAGE1,
                }
            )
    for row in rows:
        row["backbone"] = row["name"].split("-")[0]
    # Not trained on its own: the stage-1 ClassElevateSeg of each malunet-semiseg-caw run,
    # tested alone (the auxiliary U-Net's own masks, without the core model).
    for k in budgets:
        sfx = suffix(dataset, k)
        rows.append(
            {
                "name": f"classelevate-alone{sfx}",
                "configs": ["configs/stage1.yaml"],
                "class_only": k,
                "method": "classelevate-alone",
                "backbone": "classelevate",
                "derived": True,
            }
        )
    return rows


def select_rows(
    dataset: str, patterns: list[str], first_budget_only: bool, long_epochs: int | None = None
) -> list[dict]:
    """The rows that ``patterns`` name. A long row only where a pattern says "long" (so
    "malunet-reduced*" means the protocol's rows), and only with the budget's ``long_epochs``."""
    rows = all_rows(dataset)
    if first_budget_only:  # default row lists of small budgets: the first label budget only
        first = CLASS_ONLY[dataset][0]
        rows = [r for r in rows if r["class_only"] == first]
    rows = [r for r in rows if not r.get("derived")]  # written by the runs they come from

    def matches(row: dict, pattern: str) -> bool:
        return fnmatch.fnmatch(row["name"], pattern) and ("long" in pattern or not row.get("long"))

    # Every pattern must name a row: a typo among several patterns would otherwise
    # drop its rows from a long run without a word.
    for pattern in patterns:
        if not any(matches(r, pattern) for r in rows):
            names = ", ".join(r["name"] for r in rows)
            hint = (
                " (a -long row needs 'long' in the pattern)"
                if any(fnmatch.fnmatch(r["name"], pattern) for r in rows)
                else ""
            )
            raise SystemExit(f"no row matches {pattern!r}{hint}; rows: {names}")
    chosen = [r for r in rows if any(matches(r, p) for p in patterns)]
    if not long_epochs and any(r.get("long") for r in chosen):
        long = [b for b, v in BUDGETS.items() if v.get("long_epochs")]
        raise SystemExit(
            f"the -long rows need a budget with long_epochs ({', '.join(long)}) or --long-epochs"
        )
    return chosen


class TestTimeSetting(NamedTuple):
    """A test-time setting that ``tta.py`` evaluates on the benchmark's trained runs."""

    flags: tuple[str, ...]  # the model's boolean hyper-parameters it switches on
    part: str  # file name part: results/<dataset>-<budget>-<part>.{json,md}
    label: str  # in its own table's title
    title: str  # in the README's lines about it


TEST_TIME_SETTINGS = {
    "flip": TestTimeSetting(("flip_tta",), "tta", "flip TTA", "Flip TTA"),
    "largest": TestTimeSetting(
        ("keep_largest_lesion",), "largest", "largest lesion", "Keeping the largest lesion"
    ),
    "flip+largest": TestTimeSetting(
        ("flip_tta", "keep_largest_lesion"),
        "tta-largest",
        "both",
        "Flip TTA, then the largest lesion",
    ),
}
