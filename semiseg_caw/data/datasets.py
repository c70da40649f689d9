"""Torch datasets over the in-memory cache, and the sampler that mixes sample kinds.

No decoding happens here: every image was decoded and resized once into an
:class:`~semiseg_caw.data.io.ImageCache`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler, get_worker_info

from semiseg_caw.data.io import ImageCache
from semiseg_caw.data.samples import Sample
from semiseg_caw.data.transforms import normalize


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
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        cache: ImageCache,
        transform: Callable | None = None,
        in_channels: int = 1,
    ) -> None:
        missing = [s.id for s in samples if s.id not in cache]
        if missing:
            raise KeyError(f"{len(missing)} sample(s) not in the cache, e.g. {missing[0]!r}")
        self.samples = list(samples)
        self.cache = cache
        self.transform = transform
        self.in_channels = in_channels
        self._rows = np.array([cache.index[s.id] for s in self.samples], dtype=np.int64)
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
        sample = self.samples[index]
        row = self._rows[index]
        image = self.cache.images[row][..., None]  # (H, W, 1) uint8
        mask = self.cache.masks[row]  # (H, W) uint8 {0, 1}
        aux = None if self.aux_maps is None else self.aux_maps[row]  # (H, W) float32
        if self.transform is not None:
            if aux is None:
                out = self.transform(image=image, mask=mask)
            else:
                out = self.transform(image=image, mask=mask, aux_map=aux)
                aux = out["aux_map"]
            image, mask = out["image"], out["mask"]
        if sample.has_mask:
            mask = np.asarray(mask, dtype=np.float32)[None]  # (1, H, W)
        else:
            mask = np.zeros((1, *mask.shape[:2]), dtype=np.float32)
        item = {
            "image": normalize(image, self.in_channels),
            "mask": torch.from_numpy(mask),
            "label": torch.tensor(-1 if sample.label is None else sample.label, dtype=torch.long),
            "has_mask": torch.tensor(bool(sample.has_mask)),
            "has_label": torch.tensor(sample.has_label),
            "id": sample.id,
        }
        if aux is not None:
            item["aux_map"] = torch.from_numpy(np.ascontiguousarray(aux, dtype=np.float32)[None])
        return item

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation pipeline (each DataLoader worker gets its own seed)."""
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)


def collate(items: Sequence[dict]) -> dict:
    """Batch a list of sample dicts: tensors stacked along a new first axis, the rest listed.

    Stacks in numpy, like :func:`~semiseg_caw.data.transforms.normalize`, to keep torch's
    intra-op threads out of data loading.
    """
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
