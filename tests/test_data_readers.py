"""load_dataset's other sources: synthetic data and a folder of images to predict."""

from __future__ import annotations

import time

import numpy as np
import pytest
from data_fixtures import noise_image
from PIL import Image

from semiseg_caw.data import DataValidationError, load_image_folder, make_synthetic


def test_synthetic_is_fast_deterministic_and_learnable():
    start = time.perf_counter()
    samples, cache = make_synthetic(120, 64, seed=3, include_normal=True)
    assert time.perf_counter() - start < 1.0
    _, again = make_synthetic(120, 64, seed=3, include_normal=True)
    _, other = make_synthetic(120, 64, seed=4, include_normal=True)
    assert np.array_equal(cache.images, again.images) and np.array_equal(cache.masks, again.masks)
    assert not np.array_equal(cache.images, other.images)
    assert cache.images.shape == (120, 64, 64) and cache.images.dtype == np.uint8
    assert {s.label for s in samples} == {0, 1, 2} and all(s.has_mask for s in samples)
    contrast = []
    for s in samples:
        image, mask = cache.get(s.id)
        assert set(np.unique(mask)) <= {0, 1}
        if s.label == 2:
            assert mask.sum() == 0
        else:
            assert mask.sum() > 0
            contrast.append(image[mask == 1].mean() / image[mask == 0].mean())
    # lesions are dark (hypoechoic) but not trivially so
    assert np.median(contrast) < 0.7 and max(contrast) > 0.3
    # shape follows the class: malignant lesions are less compact (perimeter^2 / area)
    compact = {0: [], 1: []}
    for s in samples:
        if s.label in compact:
            m = cache.get(s.id)[1].astype(bool)
            edge = (m ^ np.roll(m, 1, 0)).sum() + (m ^ np.roll(m, 1, 1)).sum()
            compact[s.label].append(edge**2 / m.sum())
    assert np.median(compact[1]) > np.median(compact[0])


def test_synthetic_sample_does_not_depend_on_count():
    _, few = make_synthetic(4, 32, seed=1)
    _, many = make_synthetic(10, 32, seed=1)
    assert np.array_equal(few.images, many.images[:4])


# ----------------------------------------------------------------------------- predict


def test_image_folder_any_format_keeps_original_size(tmp_path):
    for i, ext in enumerate(["png", "jpg", "bmp", "tif"]):
        Image.fromarray(noise_image(i, (30 + i, 20))).convert("RGB").save(tmp_path / f"{i}.{ext}")
    (tmp_path / "notes.txt").write_text("ignored")
    paths, cache = load_image_folder(tmp_path, 16)
    assert cache.ids == ["0.png", "1.jpg", "2.bmp", "3.tif"]
    assert paths[1].endswith("1.jpg")
    assert [tuple(s) for s in cache.orig_sizes] == [(20, 30), (20, 31), (20, 32), (20, 33)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="no images"):
        load_image_folder(tmp_path / "empty", 16)
