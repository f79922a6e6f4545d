"""Datasets and augmentations for dynshuffle, without torchvision.

`build_datasets(name, root, download)` returns (train, val) datasets whose items are uint8 image
tensors (3, S, S) and int labels; `BatchTransform(spec, train)` turns uint8 batches into normalised
float32 (with random crop + flip for 32x32 training data), on CPU or GPU. See docs/data.md.
"""
from __future__ import annotations

from .errors import DataError
from .registry import build_datasets, get_dataset_spec, list_datasets
from .spec import DatasetSpec
from .transforms import BatchTransform

__all__ = ["BatchTransform", "DataError", "DatasetSpec", "build_datasets", "get_dataset_spec", "list_datasets"]
