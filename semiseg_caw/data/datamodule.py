"""The LightningDataModule: one data set, its split, its label budget and the loaders."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, RandomSampler

from semiseg_caw.data.budgets import apply_budget
from semiseg_caw.data.datasets import (
    MixedBatchSampler,
    SegmentationDataset,
    collate,
    seed_worker,
)
from semiseg_caw.data.device_augment import augment_batch, from_raw
from semiseg_caw.data.options import check_options
from semiseg_caw.data.predict_folder import (
    PredictFolderDataset,
    collate_predictions,
    predict_image_paths,
)
from semiseg_caw.data.readers import LoadedDataset, load_dataset
from semiseg_caw.data.samples import Sample, class_names_for
from semiseg_caw.data.split_use import check_split_usable, choose_split, split_summary
from semiseg_caw.data.splits import SPLITS, read_split_file
from semiseg_caw.data.transforms import build_train_transform
from semiseg_caw.warn import warn


class SemiSegDataModule(L.LightningDataModule):
    """Images with masks and/or class labels, split, budgeted and served in mixed batches.

    Every image is decoded once in ``setup`` (in the main process), validated, resized to
    ``image_size`` and kept in memory; no loader decodes again. Train, val and test batches
    are dicts: ``image`` float (B, C, H, W) normalised, ``mask`` float (B, 1, H, W) in
    {0, 1} (zeros where absent), ``label`` long (B,) (-1 where absent), ``has_mask`` and
    ``has_label`` bool (B,), ``id`` list[str]. Predict batches: ``image``, ``id`` (file
    name), ``path``, ``orig_size`` long (B, 2) (height, width); predict images are decoded
    one by one as the loader asks for them, so memory does not grow with the folder, and a
    file that cannot be read gives a blank image, ``orig_size`` (0, 0) and a reason in
    ``error`` (a key present only in batches holding such a file).

    Args:
        dataset: Data set: generated ``synthetic`` images, ``busi``, ``ddti``, or a CSV
            ``manifest``.
        root: Data set folder, not for synthetic (busi: the folder holding or being
            Dataset_BUSI_with_GT; ddti: the folder with image/, mask/, labels.csv); manifest: the
            CSV file or a folder with manifest.csv.
        split_file: JSON split file (e.g. configs/splits/busi.json); None computes the same split in
            memory (stratified, grouped, 70/10/20, seeded by ``seed``).
        image_size: Side of the square images and masks the model sees (and metrics use).
        in_channels: Image channels: 1, or 3 (the grayscale channel replicated).
        batch_size: Training batch size (at least 2: BatchNorm needs 2 images per batch).
        class_only: Train images whose masks are withheld: a count (integer), or a fraction in (0,
            1) of those with mask and label (1.0 is refused as ambiguous); chosen seeded and
            class-stratified.
        budget_mode: semi: withheld images stay as class-only samples; reduced: they are dropped;
            full: every mask is used.
        class_only_per_batch: Share (0, 1) of class-only samples in every training batch (a sampler
            cycles the smaller pool); None: natural proportion, shuffled.
        include_normal: BUSI / synthetic: include lesion-free normal images as class 2 (empty
            masks).
        ddti_unlabelled: DDTI images without a class label: drop them, or use them as mask-only
            training samples (they never enter val or test).
        synthetic_samples: Number of synthetic images.
        num_workers: DataLoader worker processes (they share the in-memory cache).
        seed: Data seed (>= 0): the generated images (synthetic), the in-memory split and the
            class-only selection (keep it fixed across runs; shuffling and augmentation follow
            the global seed).
        predict_dir: Folder of images (png, jpg, bmp, tif) for ``predict``; files named like masks
            (``*_mask.png``) are skipped with a warning.
        skip_bad_files: Skip unreadable or inconsistent files with one warning instead of raising
            (training data; prediction always goes on and reports each bad file).
        augment: Augment training images (flips, rotation, scale/shift, brightness/contrast, speckle
            noise).
        augment_on_device: Augment each training batch on the device it trains on (batched torch
            ops, e.g. on the GPU) instead of per image in the loader (albumentations, CPU): for a
            fast GPU the loader then only indexes memory. Its training batches then carry uint8
            images and masks until ``on_after_batch_transfer`` (which a Trainer calls) converts
            them.
        eval_batch_size: Batch size of val, test and predict loaders; None: batch_size.
        classes: Class names of a manifest data set (labels there may be indices or these names).
    """

    def __init__(
        self,
        dataset: Literal["synthetic", "busi", "ddti", "manifest"] = "synthetic",
        root: str | None = None,
        split_file: str | None = None,
        image_size: int = 256,
        in_channels: int = 1,
        batch_size: int = 8,
        class_only: int | float = 0,
        budget_mode: Literal["semi", "reduced", "full"] = "semi",
        class_only_per_batch: float | None = None,
        include_normal: bool = False,
        ddti_unlabelled: Literal["drop", "mask_only"] = "drop",
        synthetic_samples: int = 200,
        num_workers: int = 0,
        seed: int = 42,
        predict_dir: str | None = None,
        skip_bad_files: bool = False,
        augment: bool = True,
        augment_on_device: bool = False,
        eval_batch_size: int | None = None,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.split_file = split_file
        self.image_size = image_size
        self.in_channels = in_channels
        self.batch_size = batch_size
        self.class_only = class_only
        self.budget_mode = budget_mode
        self.class_only_per_batch = class_only_per_batch
        self.include_normal = include_normal
        self.ddti_unlabelled = ddti_unlabelled
        self.synthetic_samples = synthetic_samples
        self.num_workers = num_workers
        self.seed = seed
        self.predict_dir = predict_dir
        self.skip_bad_files = skip_bad_files
        self.augment = augment
        self.augment_on_device = augment_on_device
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.classes = list(classes) if classes else None
        check_options(self)
        self.splits: dict[str, list[Sample]] | None = None
        self.data: LoadedDataset | None = None
        self._datasets: dict[str, SegmentationDataset] = {}
        self._predict: PredictFolderDataset | None = None

    @property
    def class_names(self) -> list[str]:
        """Names of the class indices, known from the options alone."""
        if self.dataset == "manifest":
            return list(self.classes or [])
        return class_names_for(self.dataset, self.include_normal)

    @property
    def num_classes(self) -> int:
        """Number of classes (the classifier's outputs)."""
        return len(self.class_names)

    def class_counts(self, split: str = "train") -> list[int]:
        """Labelled samples of each class in a split (after the label budget)."""
        if self.splits is None:
            self.setup("fit")
        counts = [0] * self.num_classes
        for sample in self.splits[split]:
            if sample.has_label:
                counts[sample.label] += 1
        return counts

    def setup(self, stage: str | None = None) -> None:
        """Load, validate and cache the data once; build the split and the budget."""
        if stage == "predict":
            self._setup_predict()
            return
        if self.splits is None:
            self._setup_splits(stage)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``augment_on_device``: augment training batches where they now are (and
        convert their uint8 pixels, also when a training batch is not augmented, e.g. with
        ``overfit_batches`` validating on it)."""
        if not isinstance(batch, dict):  # e.g. the model summary's example input
            return batch
        trainer = self.trainer
        if self.augment and self.augment_on_device and trainer is not None and trainer.training:
            batch = augment_batch(batch)
        else:
            batch = from_raw(batch)
        # Lightning converts a batch's floating tensors to the precision's dtype (e.g.
        # 'bf16-true') before this hook, when these pixels were still uint8: convert them now.
        return batch if trainer is None else trainer.precision_plugin.convert_input(batch)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches mixing fully labelled and class-only samples."""
        dataset = self._checked_split("train")
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # follows seed_everything
        dataset.reseed(seed)
        is_class_only = [s.has_label and not s.has_mask for s in dataset.samples]
        if self.class_only_per_batch is not None and any(is_class_only):
            # A random sampler inside: Lightning then gives each DDP process a shuffled
            # DistributedSampler in its place (see MixedBatchSampler).
            order = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
            sampler = MixedBatchSampler(
                order, is_class_only, self.batch_size, self.class_only_per_batch, seed=seed
            )
            return DataLoader(dataset, batch_sampler=sampler, **self._loader_options())
        if self.class_only_per_batch:
            warn(
                "class_only_per_batch is set but the training split has no class-only "
                "samples; using plain shuffling",
                UserWarning,
            )
        # Under DDP each process reads its own share of the split (Lightning's
        # DistributedSampler): drop its last, smaller batch only when it has a full one.
        processes = getattr(self.trainer, "world_size", 1) or 1
        share = math.ceil(len(dataset) / processes)
        if share < 2:
            raise ValueError(
                f"the training split has {len(dataset)} image(s) for {processes} processes: "
                "each needs at least 2 (BatchNorm); use fewer devices or more data"
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=share > self.batch_size,  # no batch of one for BatchNorm, none empty
            generator=torch.Generator().manual_seed(seed),
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches: no augmentation."""
        return self._eval_loader(self._checked_split("val"))

    def test_dataloader(self) -> DataLoader:
        """Test batches: no augmentation."""
        return self._eval_loader(self._checked_split("test"))

    def predict_dataloader(self) -> DataLoader:
        """Batches of the images in ``predict_dir``."""
        if self._predict is None:
            self._setup_predict()
        processes = self.trainer.world_size if self.trainer is not None else 1
        if processes > len(self._predict):  # Lightning's sampler would stop on an assertion
            raise ValueError(
                f"{len(self._predict)} image(s) in {self.predict_dir} cannot be shared by "
                f"{processes} processes: predict on {len(self._predict)} device(s) or fewer "
                "(--trainer.devices)"
            )
        options = {**self._loader_options(), "collate_fn": collate_predictions}
        return DataLoader(self._predict, batch_size=self.eval_batch_size, shuffle=False, **options)

    def set_aux_maps(self, maps) -> None:
        """Serve precomputed auxiliary maps as the ``aux_map`` key of train, val and test
        samples; training maps get the images' flips and warps (see ``build_train_transform``).

        Args:
            maps: float32 array (N, S, S) in [0, 1], one map per image of ``self.data.cache``
                in its order; None stops serving them. ``SemiSegCAW(cache_aux_maps=True)``
                computes and sets them at the start of ``fit``.
        """
        if self.splits is None:
            self.setup("fit")
        for dataset in self._datasets.values():
            dataset.set_aux_maps(maps)

    # ------------------------------------------------------------------------- internals

    def _setup_splits(self, stage: str | None = None) -> None:
        # The split file first: a wrong path should not wait for every image to be decoded.
        split_file = read_split_file(self.split_file) if self.split_file else None
        data = load_dataset(
            self.dataset,
            self.root,
            image_size=self.image_size,
            classes=self.classes,
            skip_bad_files=self.skip_bad_files,
            synthetic_samples=self.synthetic_samples,
            include_normal=self.include_normal,
            seed=self.seed,
        )
        split = choose_split(
            data.samples,
            split_file,
            self.split_file,
            skip_bad_files=self.skip_bad_files,
            seed=self.seed,
        )
        by_id = {s.id: s for s in data.samples}
        unlisted = len(by_id) - sum(len(ids) for ids in split.values())
        if unlisted:
            rank_zero_info(f"{unlisted} sample(s) are in no split and are not used")
        splits = {name: [by_id[i] for i in split[name] if self._keep(by_id[i])] for name in SPLITS}
        if splits["train"]:  # an external test set has no training split to withhold from
            splits["train"] = apply_budget(
                splits["train"], self.class_only, self.budget_mode, self.seed
            )
        # An empty split is refused by its loader (with the numbers), so that e.g. `test` on
        # an external data set whose manifest or split file lists only test images works;
        # warned about here when the stage uses it.
        used_by = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for name in used_by.get(stage or "", SPLITS):
            if not splits[name]:
                warn(f"the {name} split is empty", UserWarning)
        rank_zero_info(f"{self.dataset} data: {split_summary(splits, self.class_names)}")
        used = [s.id for name in SPLITS for s in splits[name]]
        if len(used) < len(data.cache):
            data.cache = data.cache.subset(used)  # free what no split uses
        self.data, self.splits = data, splits
        # On-device augmentation happens after the transfer (on_after_batch_transfer).
        on_cpu = self.augment and not self.augment_on_device
        train_transform = build_train_transform() if on_cpu else None
        self._datasets = {
            name: SegmentationDataset(
                splits[name],
                data.cache,
                train_transform if name == "train" else None,
                self.in_channels,
                # uint8 batches, converted where they are augmented (on_after_batch_transfer)
                raw=name == "train" and self.augment and self.augment_on_device,
            )
            for name in SPLITS
        }

    def _keep(self, sample: Sample) -> bool:
        if sample.label is not None and sample.label >= self.num_classes:
            return False  # BUSI normal images without include_normal
        if self.dataset == "ddti" and sample.label is None:
            return self.ddti_unlabelled == "mask_only"
        return True

    def _setup_predict(self) -> None:
        if self.predict_dir is None:
            raise ValueError("predicting needs predict_dir (a folder of images)")
        paths = predict_image_paths(self.predict_dir)
        self._predict = PredictFolderDataset(paths, self.image_size, self.in_channels)

    def _checked_split(self, name: str) -> SegmentationDataset:
        """A split's dataset; a ValueError with the numbers when it cannot be used."""
        dataset = self._dataset(name)
        check_split_usable(name, self.splits, self.class_names)
        return dataset

    def _dataset(self, name: str) -> SegmentationDataset:
        if self.splits is None:
            self.setup("fit")
        return self._datasets[name]

    def _loader_options(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "collate_fn": collate,
            "worker_init_fn": seed_worker,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def _eval_loader(self, dataset) -> DataLoader:
        # On several processes each image is scored once: Lightning's DistributedSampler
        # would repeat some to even out the shares, counting them twice in the metrics.
        # Shares that differ by one batch are safe here: no gradients are synced. Not with
        # --trainer.use_distributed_sampler false, which leaves the loaders as they are made.
        shares = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        connector = getattr(self.trainer, "_accelerator_connector", None)  # Lightning reads it
        if not getattr(connector, "use_distributed_sampler", True):
            shares = None
        sampler = None
        if shares and 1 < shares["num_replicas"] <= len(dataset):
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False, **shares)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            **self._loader_options(),
        )
