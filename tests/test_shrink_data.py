"""benchmarks/shrink_data.py: a copy at the training size that loads to the very same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_busi, write_ddti
from scripts import load_script

from semiseg_caw.data.readers import load_dataset

shrink_data = load_script("shrink_data")


@pytest.mark.parametrize("dataset, write", [("busi", write_busi), ("ddti", write_ddti)])
def test_copy_loads_to_the_same_samples_and_pixels(tmp_path: Path, dataset: str, write) -> None:
    original = write(tmp_path / "original")
    copy = tmp_path / "copy"
    shrink_data.main([dataset, str(original), str(copy), "--size", "16"])
    kwargs = dict(image_size=16, include_normal=True) if dataset == "busi" else dict(image_size=16)
    a = load_dataset(dataset, original, **kwargs)
    b = load_dataset(dataset, copy, **kwargs)
    assert [(s.id, s.label, s.has_mask) for s in a.samples] == [
        (s.id, s.label, s.has_mask) for s in b.samples
    ]
    assert list(a.cache.ids) == list(b.cache.ids)
    assert np.array_equal(a.cache.images, b.cache.images)
    assert np.array_equal(a.cache.masks, b.cache.masks)
    assert a.cache.masks.any()  # the union of BUSI's two mask files is in there
    files = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())


def test_copy_refuses_to_go_inside_the_original(tmp_path: Path) -> None:
    original = write_ddti(tmp_path / "original")
    with pytest.raises(SystemExit, match="inside the original"):
        shrink_data.main(["ddti", str(original), str(original / "small")])
