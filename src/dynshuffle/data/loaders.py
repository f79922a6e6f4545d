"""Data loaders for uint8 image datasets: whole-batch fetching of in-memory datasets, and an exact
(unpadded) evaluation sharding over processes."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... in order: every example exactly once over all processes (no padding,
    unlike DistributedSampler), so all-reduced evaluation sums are exact."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class InMemoryBatches(Dataset):
    """A view of a dataset holding `.images` (N, 3, S, S) uint8 and `.labels` that the DataLoader fetches a
    whole batch at a time (`__getitems__`): one index op per batch instead of one Python call per image."""

    def __init__(self, base: Dataset):
        self.images = base.images
        self.labels = torch.as_tensor(base.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[idx], self.labels[idx]


def _keep_batch(batch):
    return batch


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, workers: int, device: torch.device,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader for uint8 image datasets; in-memory ones are fetched a batch at a time."""
    collate = None
    if hasattr(dataset, "images") and hasattr(dataset, "labels") and isinstance(dataset.images, torch.Tensor):
        dataset, collate = InMemoryBatches(dataset), _keep_batch
    kwargs = {"collate_fn": collate} if collate is not None else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0, **kwargs)
