"""Torch datasets over the in-memory cache, and the sampler that mixes sample kinds.

No decoding happens in training, validation and test: every image was decoded and resized
once into an :class:`~semiseg_caw.data.cache.ImageCache`. Prediction decodes a folder's files
as the loader asks for them (:mod:`~semiseg_caw.data.predict_folder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler, get_worker_info

from semiseg_caw.data.cache import ImageCache
from semiseg_caw.data.samples import Sample
from semiseg_caw.data.transforms import normalize, normalize_batch


class SegmentationDataset(Dataset):
    """Samples as dicts: ``image`` (C, H, W) float, ``mask`` (1, H, W) float {0, 1} (zeros
    where absent), ``label`` long (-1 where absent), ``has_mask``, ``has_label`` (bool), ``id``;
    plus ``aux_map`` (1, H, W) float in [0, 1] once :meth:`set_aux_maps` gave cached maps.

    Args:
        samples: The samples of one split.
        cache: Their decoded, resized images and masks.
        transform: An albumentations pipeline applied to ``image`` (H, W, 1) and ``mask`` (and
            ``aux_map`` (H, W) when maps are set, see ``build_train_transform``), or None.
        in_channels: Channels of the returned image (1, or 3 by replication).
        raw: Give ``image`` and ``mask`` as the cache stores them, uint8 (pixels 0-255, mask
            {0, 1}), for the device to convert: a quarter of the bytes to copy and no float
            work in the loader. :func:`~semiseg_caw.data.device_augment.augment_batch`
            takes such batches. Needs ``transform=None``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        cache: ImageCache,
        transform: Callable | None = None,
        in_channels: int = 1,
        raw: bool = False,
    ) -> None:
        missing = [s.id for s in samples if s.id not in cache]
        if missing:
            raise KeyError(f"{len(missing)} sample(s) not in the cache, e.g. {missing[0]!r}")
        if raw and transform is not None:
            raise ValueError("raw samples cannot have a loader transform (augment on the device)")
        self.samples = list(samples)
        self.cache = cache
        self.transform = transform
        self.in_channels = in_channels
        self.raw = raw
        self._rows = np.array([cache.index[s.id] for s in self.samples], dtype=np.int64)
        self._labels = np.array([-1 if s.label is None else s.label for s in self.samples])
        self._has_mask = np.array([bool(s.has_mask) for s in self.samples], dtype=bool)
        self._has_label = np.array([bool(s.has_label) for s in self.samples], dtype=bool)
        self.aux_maps: np.ndarray | None = None

    def set_aux_maps(self, maps: np.ndarray | None) -> None:
        """Serve a precomputed auxiliary map with every sample, or stop (None).

        Args:
            maps: float32 (N, H, W) in [0, 1], one map per image of the cache, in the
                cache's order (``cache.images[i]`` has map ``maps[i]``).
        """
        if maps is not None:
            expected = (len(self.cache), *self.cache.images.shape[1:])
            if maps.shape != expected or maps.dtype != np.float32:
                raise ValueError(
                    f"aux maps must be float32 of shape {expected} (one per cached image), "
                    f"got {maps.dtype} {maps.shape}"
                )
        self.aux_maps = maps

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if self.transform is None:
            return {key: value[0] for key, value in self.__getitems__([index]).items()}
        sample = self.samples[index]
        row = self._rows[index]
        targets = {"image": self.cache.images[row][..., None], "mask": self.cache.masks[row]}
        if self.aux_maps is not None:
            targets["aux_map"] = self.aux_maps[row]  # (H, W) float32, follows the geometry
        out = self.transform(**targets)
        mask = np.asarray(out["mask"], dtype=np.float32)[None] * np.float32(sample.has_mask)
        item = {
            "image": normalize(out["image"], self.in_channels),
            "mask": torch.from_numpy(mask),  # (1, H, W), zeros where there is no mask
            "label": torch.tensor(self._labels[index], dtype=torch.long),
            "has_mask": torch.tensor(self._has_mask[index]),
            "has_label": torch.tensor(self._has_label[index]),
            "id": sample.id,
        }
        if "aux_map" in out:
            aux = np.ascontiguousarray(out["aux_map"], dtype=np.float32)[None]
            item["aux_map"] = torch.from_numpy(aux)
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict | list[dict]:
        """A batch's samples, as the DataLoader asks for them (``collate`` finishes the job).

        With no per-sample transform (evaluation, or augmentation on the device) the whole
        batch is one fancy index and one normalisation, already batched: the per-sample
        Python work was most of the loader's time, which a fast GPU then waits for.
        """
        if self.transform is not None:
            return [self[i] for i in indices]
        idx = np.asarray(indices, dtype=np.int64)
        rows = self._rows[idx]
        images = self.cache.images[rows]  # (B, H, W) uint8
        masks = self.cache.masks[rows][:, None] * self._has_mask[idx, None, None, None]
        if self.raw:
            image = torch.from_numpy(np.repeat(images[:, None], self.in_channels, axis=1))
            mask = torch.from_numpy(masks)  # uint8
        else:
            image = normalize_batch(images, self.in_channels)
            mask = torch.from_numpy(masks.astype(np.float32))
        batch = {
            "image": image,
            "mask": mask,
            "label": torch.from_numpy(self._labels[idx].astype(np.int64)),
            "has_mask": torch.from_numpy(self._has_mask[idx]),
            "has_label": torch.from_numpy(self._has_label[idx]),
            "id": [self.samples[i].id for i in idx],
        }
        if self.aux_maps is not None:
            batch["aux_map"] = torch.from_numpy(self.aux_maps[rows][:, None])
        return batch

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation pipeline (each DataLoader worker gets its own seed)."""
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)


def collate(items: Sequence[dict] | dict) -> dict:
    """Batch a list of sample dicts: tensors stacked along a new first axis, the rest listed.
    A dict is a batch already (see ``SegmentationDataset.__getitems__``) and passes through.

    Stacks in numpy, like :func:`~semiseg_caw.data.transforms.normalize`, to keep torch's
    intra-op threads out of data loading.
    """
    if isinstance(items, dict):
        return items
    batch = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.from_numpy(np.stack([v.numpy() for v in values]))
        else:
            batch[key] = values
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's augmentation its own random stream.

    Albumentations keeps its own generator, which forked workers would otherwise all copy,
    repeating the same augmentations across workers and epochs. PyTorch's per-worker seed
    differs by worker and by epoch and follows the loader's generator.
    """
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(info.seed % 2**32)


class MixedBatchSampler(BatchSampler):
    """Batches with a fixed share of class-only samples, the rest from the other samples.

    Each epoch, the indices that ``sampler`` yields form two pools, class-only and other;
    each pool is shuffled and cycled (reshuffled when used up), so the smaller pool repeats
    within an epoch. An epoch has ``len(sampler) // batch_size`` batches (at least one).

    On one device ``sampler`` yields every index. Under DDP, Lightning re-creates this
    batch sampler with its ``DistributedSampler`` in place of ``sampler`` (it records the
    arguments of every ``BatchSampler`` made in a ``*_dataloader`` hook), so each process
    draws its batches from its own share of the data, a new share every epoch.

    Args:
        sampler: The dataset indices to draw from (e.g. a ``RandomSampler`` over it).
        is_class_only: One flag per dataset index.
        batch_size: Samples per batch.
        fraction: Share of class-only samples in a batch; rounded, and at least one when
            the fraction is positive and such samples exist.
        seed: Seed of the shuffling; the epoch number is mixed in.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        is_class_only: Sequence[bool],
        batch_size: int,
        fraction: float,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last=True)
        self.flags = np.asarray(is_class_only, dtype=bool)
        self.fraction = fraction
        self.seed = seed
        self.epoch = 0

    def class_only_count(self, n_class_only: int, n_others: int) -> int:
        """Class-only samples per batch, given the sizes of the two pools."""
        if not n_class_only:
            return 0
        if not n_others:
            return self.batch_size
        n = round(self.fraction * self.batch_size)
        return min(max(1, n) if self.fraction > 0 else n, self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffling of epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        # Sorted: the batches depend on which indices this process got, not their order.
        indices = np.sort(np.fromiter(iter(self.sampler), dtype=np.int64))
        class_only = self.flags[indices]
        pools = [indices[class_only], indices[~class_only]]
        per_batch = self.class_only_count(len(pools[0]), len(pools[1]))
        cycles = [_cycle(pool, rng) for pool in pools]
        for _ in range(len(self)):
            batch = [next(cycles[0]) for _ in range(per_batch)]
            batch += [next(cycles[1]) for _ in range(self.batch_size - per_batch)]
            yield [int(i) for i in rng.permutation(batch)]


def _cycle(indices: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    if not len(indices):
        return
    while True:
        yield from rng.permutation(indices)
