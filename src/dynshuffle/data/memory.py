"""In-memory image datasets for small 32x32 data (digits, CIFAR): one uint8 tensor per split."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class InMemoryImageDataset(Dataset):
    """A whole split held as `images` (N, 3, H, W) uint8 and `labels` (N,) int64.

    Items are returned unaugmented: the random crop and flip for this kind of data run on whole
    batches in `BatchTransform`, which is much faster than per-sample work in DataLoader workers
    and can run on the GPU. A training loop may also index `images`/`labels` directly.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        size = "x".join(map(str, self.images.shape[2:]))
        return f"{type(self).__name__}({len(self)} images {size}, {len(self.classes)} classes)"
