"""The dataset registry: one `DatasetSpec` per name and the loader that builds its two splits."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

from .cifar import load_cifar
from .digits import load_digits_splits
from .fashion_mnist import default_root as fashion_mnist_default_root
from .fashion_mnist import load_fashion_mnist
from .folders import load_imagenet, load_tiny_imagenet
from .spec import DatasetSpec

__all__ = ["list_datasets", "get_dataset_spec", "build_datasets", "dataset_info", "dataset_table"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Loader = Callable[[DatasetSpec, str | os.PathLike | None, bool], tuple[Dataset, Dataset]]


@dataclass(frozen=True)
class _Entry:
    spec: DatasetSpec
    load: Loader
    found_at: Callable[[], str | None]  # where the data is found without a root folder (None: it needs one)
    downloadable: bool  # download=True (--download) fetches it


def _nowhere() -> None:
    return None


def _debian_fashion_mnist() -> str | None:
    root = fashion_mnist_default_root()
    return f"{root} (Debian package dataset-fashion-mnist)" if root is not None else None


_REGISTRY: dict[str, _Entry] = {
    # Digits mean/std: those of the training split (tests/data/test_digits.py checks them).
    "digits": _Entry(
        DatasetSpec("digits", 10, 32, "cifar", (0.3054,) * 3, (0.3237,) * 3),
        lambda spec, root, download: load_digits_splits(), lambda: "bundled with scikit-learn", False,
    ),
    # Fashion-MNIST mean/std: those of the 60 000 training images (tests/data/test_fashion_mnist.py checks them).
    "fashion-mnist": _Entry(
        DatasetSpec("fashion-mnist", 10, 28, "cifar", (0.2860,) * 3, (0.3530,) * 3),
        lambda spec, root, download: load_fashion_mnist(root, download), _debian_fashion_mnist, True,
    ),
    "cifar10": _Entry(
        DatasetSpec("cifar10", 10, 32, "cifar", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        lambda spec, root, download: load_cifar("cifar10", root, download), _nowhere, True,
    ),
    "cifar100": _Entry(
        DatasetSpec("cifar100", 100, 32, "cifar", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        lambda spec, root, download: load_cifar("cifar100", root, download), _nowhere, True,
    ),
    # Tiny ImageNet is drawn from ImageNet, so it uses ImageNet's statistics.
    "tiny-imagenet": _Entry(
        DatasetSpec("tiny-imagenet", 200, 64, "tiny", IMAGENET_MEAN, IMAGENET_STD),
        lambda spec, root, download: load_tiny_imagenet(root, spec.image_size), _nowhere, False,
    ),
    "imagenet": _Entry(
        DatasetSpec("imagenet", 1000, 224, "imagenet", IMAGENET_MEAN, IMAGENET_STD),
        lambda spec, root, download: load_imagenet(root, spec.image_size), _nowhere, False,
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
    return _REGISTRY[_canonical(name)].spec


def build_datasets(
    name: str, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[Dataset, Dataset]:
    """(train, validation) datasets of `name`; items are (uint8 tensor (3, S, S), int label).

    `root` is unused for "digits" (bundled with scikit-learn), defaults to Debian's install location for
    "fashion-mnist", and is required for the others. `download=True` fetches missing CIFAR archives and
    Fashion-MNIST files; the folder datasets cannot be
    downloaded automatically and ignore it. Problems with the data raise `DataError`.
    """
    entry = _REGISTRY[_canonical(name)]
    return entry.load(entry.spec, root, download)


def dataset_info(name: str) -> dict:
    """{"name", "classes", "image_size", "found": where the data is found without a root folder ("bundled with
    scikit-learn", Debian's folder) or None when it needs one (`root=`, `--data PATH`), "downloadable": whether
    download=True (`--download`) fetches it}."""
    key = _canonical(name)
    entry = _REGISTRY[key]
    return {"name": key, "classes": entry.spec.num_classes, "image_size": entry.spec.image_size,
            "found": entry.found_at(), "downloadable": entry.downloadable}


def dataset_table() -> list[dict]:
    """`dataset_info` of every registered dataset, in registry order."""
    return [dataset_info(name) for name in _REGISTRY]
