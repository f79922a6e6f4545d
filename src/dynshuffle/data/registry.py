"""The dataset registry: one `DatasetSpec` per name and the loader that builds its two splits."""
from __future__ import annotations

import os
from collections.abc import Callable

from torch.utils.data import Dataset

from .cifar import load_cifar
from .digits import load_digits_splits
from .fashion_mnist import load_fashion_mnist
from .folders import load_imagenet, load_tiny_imagenet
from .spec import DatasetSpec

__all__ = ["list_datasets", "get_dataset_spec", "build_datasets"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Loader = Callable[[DatasetSpec, str | os.PathLike | None, bool], tuple[Dataset, Dataset]]

_REGISTRY: dict[str, tuple[DatasetSpec, Loader]] = {
    # Digits mean/std: those of the training split (tests/data/test_digits.py checks them).
    "digits": (
        DatasetSpec("digits", 10, 32, "cifar", (0.3054,) * 3, (0.3237,) * 3),
        lambda spec, root, download: load_digits_splits(),
    ),
    # Fashion-MNIST mean/std: those of the 60 000 training images (tests/data/test_fashion_mnist.py checks them).
    "fashion-mnist": (
        DatasetSpec("fashion-mnist", 10, 28, "cifar", (0.2860,) * 3, (0.3530,) * 3),
        lambda spec, root, download: load_fashion_mnist(root, download),
    ),
    "cifar10": (
        DatasetSpec("cifar10", 10, 32, "cifar", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        lambda spec, root, download: load_cifar("cifar10", root, download),
    ),
    "cifar100": (
        DatasetSpec("cifar100", 100, 32, "cifar", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        lambda spec, root, download: load_cifar("cifar100", root, download),
    ),
    # Tiny ImageNet is drawn from ImageNet, so it uses ImageNet's statistics.
    "tiny-imagenet": (
        DatasetSpec("tiny-imagenet", 200, 64, "tiny", IMAGENET_MEAN, IMAGENET_STD),
        lambda spec, root, download: load_tiny_imagenet(root, spec.image_size),
    ),
    "imagenet": (
        DatasetSpec("imagenet", 1000, 224, "imagenet", IMAGENET_MEAN, IMAGENET_STD),
        lambda spec, root, download: load_imagenet(root, spec.image_size),
    ),
}


def list_datasets() -> list[str]:
    """Registered dataset names, the offline default ("digits") first."""
    return list(_REGISTRY)


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)}")
    return key


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset (case and '-'/'_' insensitive); ValueError for an unknown name."""
    return _REGISTRY[_canonical(name)][0]


def build_datasets(
    name: str, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[Dataset, Dataset]:
    """(train, validation) datasets of `name`; items are (uint8 tensor (3, S, S), int label).

    `root` is unused for "digits" (bundled with scikit-learn), defaults to Debian's install location for
    "fashion-mnist", and is required for the others. `download=True` fetches missing CIFAR archives and
    Fashion-MNIST files; the folder datasets cannot be
    downloaded automatically and ignore it. Problems with the data raise `DataError`.
    """
    spec, loader = _REGISTRY[_canonical(name)]
    return loader(spec, root, download)
