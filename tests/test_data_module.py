"""SemiSegDataModule: options, batches, budgets, sampler, augmentation, cache, predict."""

from __future__ import annotations

import csv
import json
import re
import warnings
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch
from data_fixtures import (
    BUSI_DIR,
    blob_mask,
    noise_image,
    save,
    write_busi,
    write_ddti,
    write_manifest,
)
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

import semiseg_caw.data.io as data_io
from semiseg_caw.data import (
    DataValidationError,
    SegmentationDataset,
    SemiSegDataModule,
    build_train_transform,
    make_split_file,
    make_synthetic,
)
from semiseg_caw.data.datasets import MixedBatchSampler, collate, seed_worker
from semiseg_caw.data.device_augment import from_raw
from semiseg_caw.data.transforms import MEAN, STD

KEYS = {"image", "mask", "label", "has_mask", "has_label", "id"}


def synthetic_dm(**kwargs) -> SemiSegDataModule:
    options = {"image_size": 32, "batch_size": 8, "synthetic_samples": 120}
    options.update(kwargs)
    dm = SemiSegDataModule(**options)
    dm.setup("fit")
    return dm


def check_batch(batch: dict, batch_size: int, channels: int, size: int) -> None:
    assert set(batch) == KEYS
    assert batch["image"].shape == (batch_size, channels, size, size)
    assert batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (batch_size, 1, size, size)
    assert batch["mask"].dtype == torch.float32
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["label"].dtype == torch.long and batch["label"].shape == (batch_size,)
    assert batch["has_mask"].dtype == torch.bool and batch["has_label"].dtype == torch.bool
    assert isinstance(batch["id"], list) and len(batch["id"]) == batch_size
    assert torch.equal(batch["has_label"], batch["label"] >= 0)
    no_mask = ~batch["has_mask"]
    assert batch["mask"][no_mask].sum() == 0


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({}, ["benign", "malignant"]),
        ({"include_normal": True}, ["benign", "malignant", "normal"]),
        ({"dataset": "busi", "root": "nowhere"}, ["benign", "malignant"]),
        (
            {"dataset": "busi", "root": "x", "include_normal": True},
            ["benign", "malignant", "normal"],
        ),
        ({"dataset": "ddti", "root": "x"}, ["low_risk", "suspicious"]),
        (
            {"dataset": "manifest", "root": "x", "classes": ["a", "b", "c", "d"]},
            ["a", "b", "c", "d"],
        ),
    ],
)
def test_class_names_known_without_reading_data(options, names):
    dm = SemiSegDataModule(in_channels=3, **options)
    assert dm.class_names == names and dm.num_classes == len(names)
    assert dm.in_channels == 3 and dm.splits is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dataset": "busi"}, "needs root"),
        ({"dataset": "manifest", "root": "m.csv"}, "needs classes"),
        ({"in_channels": 2}, "in_channels"),
        ({"class_only": -1}, "class_only"),
        ({"class_only": 2.5}, "class_only"),
        ({"class_only_per_batch": 1.5}, "class_only_per_batch"),
        ({"class_only_per_batch": 0}, "class_only_per_batch"),
        ({"class_only_per_batch": 1.0}, r"class_only_per_batch must be in \(0, 1\)"),
        ({"budget_mode": "half"}, "budget_mode"),
        ({"batch_size": 0}, "batch_size must be >= 2"),
        ({"eval_batch_size": 0}, "eval_batch_size must be >= 1, got 0"),
        ({"synthetic_samples": 0}, "synthetic_samples must be >= 1, got 0"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
        (
            {"dataset": "manifest", "root": "m.csv", "classes": ["benign"]},
            r"classes must name at least 2 different classes, got \['benign'\]",
        ),
        ({"dataset": "manifest", "root": "m.csv", "classes": ["a", "a"]}, "2 different"),
        ({"batch_size": 1}, "BatchNorm needs at least 2 images"),
        ({"image_size": 4}, "image_size"),
        ({"root": "my_busi"}, "root is set but dataset is 'synthetic'; set data.dataset"),
        ({"classes": ["a", "b"]}, "classes is set but dataset is 'synthetic'"),
        (
            {"dataset": "busi", "root": "x", "classes": ["cyst", "solid"]},
            r"classes is set but dataset is 'busi', whose classes are fixed \(benign, malignant\)",
        ),
        ({"class_only": 1.0}, "class_only=1.0 is ambiguous"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_options_fail_in_init(options, match):
    with pytest.raises(ValueError, match=match):
        SemiSegDataModule(**options)


def test_init_signature_is_a_config_schema():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SemiSegDataModule, "data")
    cfg = parser.parse_args(["--data.dataset=busi", "--data.class_only=100", "--data.root=r"])
    assert cfg.data.class_only == 100 and cfg.data.budget_mode == "semi"
    help_text = parser.format_help()
    assert "Training batch size" in help_text and "mask_only" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.budget_mode=half"])


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("in_channels", [1, 3])
def test_train_val_test_batches(in_channels):
    dm = synthetic_dm(in_channels=in_channels, class_only=0.3)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        check_batch(batch, 8, in_channels, 32)
    if in_channels == 3:
        assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])
    train = dm.splits["train"]
    assert sum(s.kind == "class_only" for s in train) == round(0.3 * len(train))
    assert all(s.kind == "full" for s in dm.splits["val"] + dm.splits["test"])


def test_class_only_per_batch_sets_the_mix():
    dm = synthetic_dm(class_only=0.3, class_only_per_batch=0.25)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(dm.splits["train"]) // 8
    for batch in batches:
        class_only = batch["has_label"] & ~batch["has_mask"]
        assert class_only.sum() == 2 and batch["has_mask"].sum() == 6
    assert [b["id"] for b in batches] != [b["id"] for b in loader]  # reshuffled per epoch


def test_mixed_batches_keep_to_each_process_share():
    """Under DDP each process's DistributedSampler stands in for the sampler: the two
    processes' batches come from disjoint shares, each batch with its class-only quota."""
    flags = [i % 4 == 0 for i in range(40)]  # 10 class-only among 40
    seen = []
    for rank in (0, 1):
        shard = DistributedSampler(range(40), num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler = MixedBatchSampler(shard, flags, batch_size=4, fraction=0.25, seed=7)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 5  # 20 indices per process
        assert all(sum(flags[i] for i in b) == 1 for b in batches)
        used = {i for b in batches for i in b}
        assert used <= set(shard)
        seen.append(used)
    assert not seen[0] & seen[1]


def test_natural_proportion_when_no_sampler_fraction():
    dm = synthetic_dm(class_only=0.5)
    loader = dm.train_dataloader()
    assert not isinstance(loader.batch_sampler, MixedBatchSampler)
    # Shuffled, not a fixed share: batches hold different numbers of class-only images.
    assert len({int((~b["has_mask"]).sum()) for b in loader}) > 1


@pytest.mark.parametrize(
    ("mode", "train_len", "class_only"), [("semi", 84, 40), ("reduced", 44, 0), ("full", 84, 0)]
)
def test_budget_modes(mode, train_len, class_only):
    dm = synthetic_dm(class_only=40, budget_mode=mode)
    train = dm.splits["train"]
    assert len(train) == train_len and sum(s.kind == "class_only" for s in train) == class_only


def test_budget_too_large_fails_at_setup_with_numbers():
    with pytest.raises(ValueError, match="asks for 85 .* only 84"):
        synthetic_dm(class_only=85)


def test_eval_loaders_are_not_augmented():
    dm = synthetic_dm()
    first, second = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert torch.equal(first["image"], second["image"])
    image, mask = dm.data.cache.get(first["id"][0])
    expected = (torch.from_numpy(image).float() / 255 - MEAN) / STD
    assert torch.allclose(first["image"][0, 0], expected)
    assert torch.equal(first["mask"][0, 0], torch.from_numpy(mask).float())


def test_a_batch_is_fetched_whole_as_its_samples_are_stored():
    dm = synthetic_dm(class_only=0.3, augment=False)
    dataset, cache = dm._datasets["train"], dm.data.cache
    indices = list(range(len(dataset)))[::3][:8]
    batch = dataset.__getitems__(indices)  # what the DataLoader asks for: one call per batch
    check_batch(batch, 8, 1, 32)
    for j, i in enumerate(indices):
        sample = dataset.samples[i]
        image, mask = cache.get(sample.id)
        assert batch["id"][j] == sample.id
        expected = (torch.from_numpy(image) / 255 - MEAN) / STD
        assert torch.allclose(batch["image"][j, 0], expected, atol=1e-6)
        assert torch.equal(batch["mask"][j, 0], torch.from_numpy(mask).float() * sample.has_mask)
        assert batch["label"][j] == (-1 if sample.label is None else sample.label)
    assert not batch["has_mask"].all() and batch["has_mask"].any()  # both kinds were checked
    loaded = next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate)))
    assert torch.equal(loaded["image"], dataset.__getitems__(list(range(8)))["image"])

    # raw: the stored uint8 pixels and masks, for the device to convert (same batch after it)
    raw = SegmentationDataset(dataset.samples, cache, in_channels=3, raw=True)
    raw_batch = raw.__getitems__(indices)
    assert raw_batch["image"].dtype == torch.uint8 and raw_batch["image"].shape[1] == 3
    converted = from_raw(raw_batch)
    assert torch.allclose(converted["image"][:, :1], batch["image"], atol=1e-6)
    assert torch.equal(converted["mask"], batch["mask"])
    assert from_raw(batch) is batch  # already float: untouched
    with pytest.raises(ValueError, match="raw"):
        SegmentationDataset(dataset.samples, cache, build_train_transform(), raw=True)


# ----------------------------------------------------------------------------- augmentation


def _threshold_image(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image whose mask is exactly ``image > 127``: bright blobs on a dark background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    for _ in range(3):
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(5, 12))]
        mask |= (y - cy) ** 2 + ((x - cx) * 0.6) ** 2 < r**2
    image = np.where(mask, 200, 50).astype(np.uint8)
    return image, mask.astype(np.uint8)


def test_augmentation_keeps_image_and_mask_aligned():
    transform = build_train_transform(affine_p=1.0, rotate_limit=45, seed=0)
    agreement = []
    for i in range(30):
        image, mask = _threshold_image(i)
        out = transform(image=image[..., None], mask=mask)
        aug, aug_mask = out["image"][..., 0].astype(float), out["mask"]
        assert set(np.unique(aug_mask)) <= {0, 1}  # nearest: still binary
        threshold = (aug[aug_mask == 1].mean() + aug[aug_mask == 0].mean()) / 2
        agreement.append(((aug > threshold) == (aug_mask == 1)).mean())
    assert np.mean(agreement) > 0.97 and min(agreement) > 0.93


def test_rotation_angle_is_fresh_for_every_sample():
    pipeline = build_train_transform(affine_p=1.0, seed=0)
    recorder = A.Compose(pipeline.transforms, save_applied_params=True, seed=0)
    image, mask = _threshold_image(0)
    angles = []
    for _ in range(6):
        applied = dict(recorder(image=image[..., None], mask=mask)["applied_transforms"])
        angles.append(applied["Affine"]["rotate"])
    assert len(set(angles)) == 6 and max(np.abs(angles)) <= 30


def test_each_worker_and_epoch_draws_its_own_augmentation():
    samples, cache = make_synthetic(1, 32, seed=0)
    dataset = SegmentationDataset(samples * 4, cache, build_train_transform(affine_p=1.0, seed=0))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker)
    epochs = [[b["image"] for b in loader] for _ in range(2)]
    images = epochs[0] + epochs[1]
    for i in range(len(images)):
        for j in range(i):
            assert not torch.equal(images[i], images[j]), (i, j)


# ----------------------------------------------------------------------------- real layouts


def test_busi_layout_cache_is_built_once(tmp_path, monkeypatch):
    write_busi(tmp_path, {"benign": 14, "malignant": 10, "normal": 6})
    calls = []
    original = data_io._open
    monkeypatch.setattr(data_io, "_open", lambda path: calls.append(path) or original(path))
    dm = SemiSegDataModule("busi", str(tmp_path), image_size=32, batch_size=4)
    dm.setup("fit")
    assert len(calls) == len(set(calls)) == 30 + 30 + 1  # images, masks, the second mask
    assert {s.label for name in dm.splits for s in dm.splits[name]} == {0, 1}  # no normal
    dm.setup("test")  # a second setup reuses the cache
    pristine = dm.data.cache.images.copy(), dm.data.cache.masks.copy()
    for _ in range(2):
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for batch in loader:
                check_batch(batch, len(batch["id"]), 1, 32)
    assert len(calls) == 61
    assert np.array_equal(dm.data.cache.images, pristine[0])  # augmentation never writes back
    assert np.array_equal(dm.data.cache.masks, pristine[1])
    with_normal = SemiSegDataModule("busi", str(tmp_path), include_normal=True, image_size=32)
    with_normal.setup("fit")
    assert 2 in {s.label for s in with_normal.splits["train"]}


def test_split_file_is_used_and_checked(tmp_path):
    root = write_busi(tmp_path / "busi", {"benign": 14, "malignant": 10, "normal": 6})
    split_path = tmp_path / "split.json"
    make_split_file("busi", root, split_path)
    from_file = SemiSegDataModule("busi", str(root), split_file=str(split_path), image_size=32)
    from_file.setup("fit")
    in_memory = SemiSegDataModule("busi", str(root), image_size=32)
    in_memory.setup("fit")
    assert from_file.splits == in_memory.splits
    text = split_path.read_text().replace('"test": [', '"test": [\n    "benign/ghost.png",')
    split_path.write_text(text)
    with pytest.raises(ValueError, match="1 id\\(s\\) not found in the data: 'benign/ghost.png'"):
        SemiSegDataModule("busi", str(root), split_file=str(split_path), image_size=32).setup()


def test_ddti_unlabelled_drop_or_mask_only(tmp_path):
    root = write_ddti(tmp_path, n=40)
    drop = SemiSegDataModule("ddti", str(root), image_size=32, batch_size=4)
    drop.setup("fit")
    assert all(s.has_label for name in drop.splits for s in drop.splits[name])
    keep = SemiSegDataModule(
        "ddti", str(root), image_size=32, batch_size=4, ddti_unlabelled="mask_only"
    )
    keep.setup("fit")
    mask_only = [s for s in keep.splits["train"] if s.kind == "mask_only"]
    assert len(mask_only) == 3  # case 1 (two images) and the image without a case
    assert all(s.has_label for name in ("val", "test") for s in keep.splits[name])
    batch = next(iter(keep.train_dataloader()))
    check_batch(batch, 4, 1, 32)


def test_manifest_datamodule(tmp_path):
    path = write_manifest(tmp_path)
    dm = SemiSegDataModule(
        "manifest", str(path), classes=["benign", "malignant"], image_size=32, batch_size=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 labelled groups: the val split may be empty
        dm.setup("fit")
    assert dm.num_classes == 2
    kinds = {s.id: s.kind for name in dm.splits for s in dm.splits[name]}
    # Image 1 has no mask, images 6 and 7 no label: they train on what they have.
    assert kinds["imgs/1.png"] == "class_only"
    assert kinds["imgs/6.png"] == kinds["imgs/7.png"] == "mask_only"


def test_a_manifest_split_column_assigns_the_splits(tmp_path):
    path = write_manifest(tmp_path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    splits = ["train", "train", "val", "test", "test", "train", "", "TEST "]
    for row, split in zip(rows, splits, strict=True):
        row["split"] = split
    write_manifest(tmp_path, rows)
    options = {"classes": ["benign", "malignant"], "image_size": 32, "batch_size": 2}
    dm = SemiSegDataModule("manifest", str(path), **options)
    dm.setup("test")
    ids = {name: sorted(s.id for s in dm.splits[name]) for name in dm.splits}
    assert ids == {
        "train": ["imgs/0.png", "imgs/1.png", "imgs/5.png"],
        "val": ["imgs/2.png"],
        "test": ["imgs/3.png", "imgs/4.png", "imgs/7.png"],  # an empty split: in none
    }
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [], "val": [], "test": ["imgs/3.png"]}))
    both = SemiSegDataModule("manifest", str(path), split_file=str(split_file), **options)
    with pytest.raises(ValueError, match="split column.* and data.split_file .* give one"):
        both.setup("test")
    rows[0]["split"] = "testing"
    write_manifest(tmp_path, rows)
    with pytest.raises(DataValidationError, match=r"manifest.csv:2.*split must be train, val"):
        SemiSegDataModule("manifest", str(path), **options).setup("test")


def test_an_external_test_set_needs_no_training_split(tmp_path):
    path = write_manifest(tmp_path)
    with open(path, newline="") as handle:
        rows = [{**row, "split": "test"} for row in csv.DictReader(handle) if row["mask"]]
    write_manifest(tmp_path, rows)
    dm = SemiSegDataModule(
        "manifest", str(path), classes=["benign", "malignant"], image_size=32, class_only=100
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about the train and val splits it lacks
        dm.setup("test")
    assert len(dm.splits["test"]) == 7 and not dm.splits["train"]
    assert len(next(iter(dm.test_dataloader()))["image"]) == 7


def test_val_and_test_splits_need_masked_images(tmp_path):
    rows = []
    for i in range(16):  # class-only rows, except 4 with a mask
        rows.append(
            {
                "image": f"imgs/{i}.png",
                "mask": f"masks/{i}.png" if i < 4 else "",
                "label": str(i % 2),
                "group": "",
            }
        )
        save(tmp_path / "imgs" / f"{i}.png", noise_image(400 + i))
        save(tmp_path / "masks" / f"{i}.png", blob_mask(400 + i))
    path = write_manifest(tmp_path, rows)
    ids = [r["image"] for r in rows]
    split = tmp_path / "split.json"  # val: 1 masked image of 4; test: none of 8
    split.write_text(
        json.dumps({"train": ids[:2] + ids[6:10], "val": ids[2:4] + ids[4:6], "test": ids[10:]})
    )
    dm = SemiSegDataModule(
        "manifest",
        str(path),
        split_file=str(split),
        image_size=32,
        batch_size=2,
        classes=["benign", "malignant"],
    )
    dm.setup("fit")
    assert len(dm.val_dataloader().dataset) == 4
    with pytest.raises(ValueError, match="the test split has no image with a mask") as excinfo:
        dm.test_dataloader()
    assert "train 2 of 6, val 2 of 4, test 0 of 6" in str(excinfo.value)
    assert "segmentation metrics" in str(excinfo.value)


def test_no_training_batch_of_one_image():
    # The train loader already drops a last partial batch (BatchNorm needs 2 images).
    dm = synthetic_dm(batch_size=3, synthetic_samples=40)
    n = len(dm.splits["train"])
    assert n % 3 == 1  # 28 train images: the last batch would hold one
    sizes = [len(batch["id"]) for batch in dm.train_dataloader()]
    assert sizes == [3] * (n // 3)


@pytest.mark.parametrize("processes", [4, 14])
def test_each_ddp_process_gets_a_training_batch(processes):
    # 28 training images, batch 8: one process drops 4; four processes hold 7 each, fewer
    # than a batch, which drop_last would have turned into an epoch without a step.
    dm = synthetic_dm(batch_size=8, synthetic_samples=40)
    dm.trainer = type("FakeTrainer", (), {"world_size": processes, "training": True})()
    loader = dm.train_dataloader()
    sampler = DistributedSampler(loader.dataset, num_replicas=processes, rank=0, shuffle=True)
    spread = DataLoader(
        loader.dataset,
        batch_size=8,
        sampler=sampler,
        drop_last=loader.drop_last,
        collate_fn=collate,
    )
    sizes = [len(batch["id"]) for batch in spread]
    assert sizes == [len(dm.splits["train"]) // processes]
    dm.trainer.world_size = 28  # one image each: a batch of one for BatchNorm
    with pytest.raises(ValueError, match="28 image.* for 28 processes: each needs at least 2"):
        dm.train_dataloader()


def test_a_missing_split_file_is_named_before_any_image_is_decoded(tmp_path, monkeypatch):
    import semiseg_caw.data.datamodule as datamodule

    def decode(*args, **kwargs):
        raise AssertionError("images decoded before the split file was checked")

    monkeypatch.setattr(datamodule, "load_dataset", decode)
    monkeypatch.chdir(tmp_path)
    dm = SemiSegDataModule(dataset="busi", root=str(tmp_path), split_file="configs/busi.json")
    with pytest.raises(
        FileNotFoundError, match=r"configs/busi.json \(a relative path is read from"
    ):
        dm.setup("fit")


@pytest.mark.parametrize(
    "dataset, what",
    [("busi", "BUSI root folder"), ("ddti", "DDTI root folder"), ("manifest", "manifest file")],
)
def test_a_missing_relative_root_says_where_it_was_looked_for(tmp_path, monkeypatch, dataset, what):
    """A config's paths are read from where the command runs, not from the config's folder:
    the error says from where."""
    monkeypatch.chdir(tmp_path)
    classes = ["a", "b"] if dataset == "manifest" else None
    dm = SemiSegDataModule(dataset=dataset, root="data/nowhere", classes=classes)
    message = f"{what} not found: data/nowhere (a relative path is read from {tmp_path})"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        dm.setup("fit")
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"not found: {tmp_path}/data/nowhere") + "$"
    ):
        absolute = str(tmp_path / "data/nowhere")
        SemiSegDataModule(dataset=dataset, root=absolute, classes=classes).setup("fit")


def test_setup_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SemiSegDataModule("busi", str(tmp_path / "nowhere")).setup("fit")
    root = write_busi(tmp_path / "b", {"benign": 10, "malignant": 10})
    (root / BUSI_DIR / "benign" / "benign (1).png").write_bytes(b"broken")
    with pytest.raises(DataValidationError, match=r"benign \(1\).png: cannot decode"):
        SemiSegDataModule("busi", str(root), image_size=32).setup("fit")
    dm = SemiSegDataModule("busi", str(root), image_size=32, skip_bad_files=True)
    with pytest.warns(RuntimeWarning, match=r"skipping 1 bad file"):
        dm.setup("fit")
    assert sum(len(v) for v in dm.splits.values()) == 19


def test_a_predict_dir_whose_images_lie_in_its_subfolders_names_them(tmp_path):
    ddti = write_ddti(tmp_path / "ddti")  # image/, mask/ and labels.csv
    (ddti / "notes").mkdir()
    with pytest.raises(DataValidationError) as refused:
        SemiSegDataModule(predict_dir=str(ddti), image_size=32).setup("predict")
    assert refused.value.problems[0].problem == (
        "no images found (subfolders are not predicted, and image, mask hold(s) images: "
        "give one as --data.predict_dir)"
    )
    with pytest.raises(DataValidationError) as refused:
        SemiSegDataModule(predict_dir=str(ddti / "notes"), image_size=32).setup("predict")
    assert refused.value.problems[0].problem == "no images found"


@pytest.mark.parametrize("use_distributed_sampler", [True, False])
def test_eval_loaders_are_shared_unless_the_trainer_says_not_to(use_distributed_sampler):
    from types import SimpleNamespace

    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    dm = SemiSegDataModule(image_size=32, synthetic_samples=40, eval_batch_size=4)
    dm.trainer = SimpleNamespace(
        distributed_sampler_kwargs={"num_replicas": 2, "rank": 1},
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=use_distributed_sampler),
    )
    dm.setup("fit")
    loader = dm.val_dataloader()
    shared = isinstance(loader.sampler, UnrepeatedDistributedSampler)
    assert shared == use_distributed_sampler
    images = sum(len(batch["image"]) for batch in loader)
    assert images == (len(loader.dataset) // 2 if shared else len(loader.dataset))


def test_dicom_files_in_a_predict_dir_are_named_as_such(tmp_path):
    from semiseg_caw.data.predict_folder import predict_image_paths

    Image.fromarray(noise_image(0, (40, 40))).save(tmp_path / "a.png")
    (tmp_path / "b.dcm").write_bytes(bytes(128) + b"DICM")
    warned = r"1 file\(s\) .* not predicted, .*; DICOM files are not read: export .* PNG: b.dcm$"
    with pytest.warns(UserWarning, match=warned):
        assert predict_image_paths(tmp_path) == [tmp_path / "a.png"]


def test_predict_loader(tmp_path):
    for i, ext in enumerate(["png", "jpg", "bmp"]):
        Image.fromarray(noise_image(i, (50 + i, 40))).save(tmp_path / f"img{i}.{ext}")
    (tmp_path / "more").mkdir()  # not searched: named, so nobody thinks it was predicted
    dm = SemiSegDataModule(
        predict_dir=str(tmp_path), image_size=32, eval_batch_size=3, in_channels=3
    )
    with pytest.warns(UserWarning, match=r"1 subfolder\(s\) of .* are not predicted .*: more"):
        dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert set(batch) == {"image", "id", "path", "orig_size"}
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["id"] == ["img0.png", "img1.jpg", "img2.bmp"]
    assert batch["orig_size"].dtype == torch.long
    assert batch["orig_size"].tolist() == [[40, 50], [40, 51], [40, 52]]
    assert batch["path"][2].endswith("img2.bmp")
    with pytest.raises(ValueError, match="predict_dir"):
        SemiSegDataModule().setup("predict")
    # More processes than images: each must have one (Lightning's sampler asserts it).
    dm.trainer = SimpleNamespace(world_size=3)
    assert len(dm.predict_dataloader()) == 1
    dm.trainer = SimpleNamespace(world_size=4)
    with pytest.raises(ValueError, match=r"3 image\(s\) in .* cannot be shared by 4 processes"):
        dm.predict_dataloader()


def test_predict_skips_mask_files(tmp_path):
    save(tmp_path / "benign (1).png", noise_image(1))
    save(tmp_path / "benign (1)_mask.png", blob_mask(1))  # BUSI ground truth next to its scan
    save(tmp_path / "benign (1)_mask_1.png", blob_mask(2))
    dm = SemiSegDataModule(predict_dir=str(tmp_path), image_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("predict")
    assert len(caught) == 1  # one warning, not also the one about non-image files
    assert "skipping 2 file(s)" in str(caught[0].message) and "benign (1)_mask" in str(
        caught[0].message
    )
    assert [p.name for p in dm._predict.paths] == ["benign (1).png"]
    (tmp_path / "benign (1).png").unlink()
    with pytest.warns(UserWarning), pytest.raises(DataValidationError, match="2 mask file"):
        SemiSegDataModule(predict_dir=str(tmp_path), image_size=32).setup("predict")


def test_lightning_trainer_consumes_the_loaders(make_trainer):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Conv2d(1, 1, 1)
            self.seen: list[list[str]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["id"])
            return self.layer(batch["image"]).mean()

        def validation_step(self, batch, batch_idx):
            check_batch(batch, len(batch["id"]), 1, 32)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SemiSegDataModule(
        image_size=32, batch_size=8, synthetic_samples=60, class_only=0.5, class_only_per_batch=0.5
    )
    probe = Probe()
    trainer = make_trainer(max_epochs=2, limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(probe, datamodule=dm)
    assert len(probe.seen) == 6 and probe.seen[:3] != probe.seen[3:]


def test_a_label_budget_that_withholds_every_mask_is_refused():
    dm = SemiSegDataModule(image_size=32, synthetic_samples=40, class_only=28)  # all 28
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"the train split has no image with a mask .*class_only"):
        dm.train_dataloader()
