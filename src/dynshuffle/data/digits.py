"""scikit-learn's handwritten digits as a 32x32 RGB dataset: the offline default of the project.

The 1797 8x8 images ship inside scikit-learn, so experiments run without any download. They are
brought to the CIFAR format (3x32x32 uint8) so the same models and batch augmentation apply.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .memory import InMemoryImageDataset

IMAGE_SIZE = 32
VAL_FRACTION = 0.2
SPLIT_SEED = 0
CLASSES = [str(d) for d in range(10)]


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode and split once per process; loading scikit-learn and resizing costs more than copying."""
    from sklearn.datasets import load_digits  # scikit-learn takes a second to import: only for the digits
    from sklearn.model_selection import train_test_split  # (the same)

    digits = load_digits()
    pixels = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    pixels = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = pixels.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))

    # A stratified split keeps the ten classes equally represented in the small validation set.
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=VAL_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def load_digits_splits() -> tuple[InMemoryImageDataset, InMemoryImageDataset]:
    """The deterministic 80/20 stratified train/val split, as 3x32x32 uint8 images."""
    train_x, train_y, val_x, val_y = _digits_tensors()
    # Clones (a few MB) so a caller editing its tensors in place cannot corrupt the process cache.
    return (
        InMemoryImageDataset(train_x.clone(), train_y.clone(), CLASSES),
        InMemoryImageDataset(val_x.clone(), val_y.clone(), CLASSES),
    )
