"""Real BUSI and DDTI (../shared/data): counts, duplicates, committed splits, loading.

Skipped when the data is absent. Each data set is decoded once per session (at 32 px to
keep memory small): about 2-3 s for BUSI and 1 s for DDTI on 2 CPU cores.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pytest
from data_fixtures import load_with_warnings

from semiseg_caw.data import (
    SemiSegDataModule,
    read_split_file,
    scan_busi,
    scan_ddti,
    stratified_group_split,
)
from semiseg_caw.data.splits import split_to_json

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[1]
SPLIT_FILES = {name: REPO / "configs" / "splits" / f"{name}.json" for name in ("busi", "ddti")}


@pytest.fixture(scope="module")
def loaded(shared_data):
    """Both data sets decoded once, with the warnings each raised."""
    return {
        name: load_with_warnings(name, shared_data / name, image_size=32)
        for name in ("busi", "ddti")
    }


def test_busi_files_per_class(shared_data):
    samples = scan_busi(shared_data / "busi")
    assert Counter(s.label for s in samples) == {0: 437, 1: 210, 2: 133}
    assert sum(len(s.masks) for s in samples) == 798
    assert sum(len(s.masks) > 1 for s in samples) == 17


def test_busi_duplicate_pair_excluded_and_every_image_loads(loaded):
    data, messages = loaded["busi"]
    assert data.excluded == ["benign/benign (433).png", "malignant/malignant (145).png"]
    assert any("benign (433).png" in m and "malignant (145).png" in m for m in messages)
    assert Counter(s.label for s in data.samples) == {0: 436, 1: 209, 2: 133}
    assert len(data.cache) == len(data.samples) == 778
    for s in data.samples:  # every lesion has a mask; normal masks are empty
        assert (data.cache.get(s.id)[1].any()) == (s.label != 2), s.id
    sizes = data.cache.orig_sizes
    assert sizes[:, 1].min() >= 190 and sizes[:, 1].max() <= 1048


def test_ddti_files_per_label(shared_data):
    samples = scan_ddti(shared_data / "ddti")
    assert Counter(s.label for s in samples) == {1: 363, 0: 58, None: 216}
    assert sum(s.group == s.id for s in samples) == 21  # images without a case


def test_ddti_exact_duplicates_removed_and_every_image_loads(loaded):
    data, messages = loaded["ddti"]
    # identical pixels, different files: kept once (a labelled copy when there is one)
    assert len(data.excluded) == 7 and "image/181.PNG" not in data.excluded
    assert any("image/294.PNG" in m for m in messages)
    assert Counter(s.label for s in data.samples) == {1: 363, 0: 58, None: 209}
    assert all(data.cache.get(s.id)[1].any() for s in data.samples)


@pytest.mark.parametrize("name", ["busi", "ddti"])
def test_committed_split_regenerates_identically(loaded, name):
    data, _ = loaded[name]
    split = stratified_group_split(data.samples)
    assert split_to_json(split, name) == SPLIT_FILES[name].read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["busi", "ddti"])
def test_committed_split_properties(loaded, name):
    data, _ = loaded[name]
    split = read_split_file(SPLIT_FILES[name])
    by_id = {s.id: s for s in data.samples}
    where = {i: part for part, ids in split.items() for i in ids}
    assert len(where) == sum(len(ids) for ids in split.values())  # disjoint
    assert set(where) <= set(by_id)
    groups: dict[str, set[str]] = {}
    for i, part in where.items():
        groups.setdefault(by_id[i].group, set()).add(part)
    assert all(len(parts) == 1 for parts in groups.values())  # grouped
    assert all(by_id[i].label is not None for i in split["val"] + split["test"])
    total = Counter(s.label for s in data.samples if s.label is not None)
    for part, fraction in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        counts = Counter(by_id[i].label for i in split[part])
        for label, n in total.items():
            assert abs(counts[label] - fraction * n) <= max(2, 0.02 * n), (part, label)


def test_ddti_datamodule_with_committed_split_and_budget(shared_data):
    dm = SemiSegDataModule(
        "ddti",
        str(shared_data / "ddti"),
        split_file=str(SPLIT_FILES["ddti"]),
        image_size=32,
        class_only=48,
        ddti_unlabelled="mask_only",
        class_only_per_batch=0.25,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    kinds = Counter(s.kind for s in dm.splits["train"])
    assert kinds == {"full": 294 - 48, "class_only": 48, "mask_only": 209}
    assert (len(dm.splits["val"]), len(dm.splits["test"])) == (42, 85)
    batch = next(iter(dm.train_dataloader()))
    assert (batch["has_label"] & ~batch["has_mask"]).sum() == 2
