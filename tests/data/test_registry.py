"""dynshuffle.data.registry: dataset specs and names."""
from __future__ import annotations


import pytest

from dynshuffle.data.registry import build_datasets, get_dataset_spec, list_datasets
from dynshuffle.data.spec import DatasetSpec


def test_registry_specs_and_unknown_name():
    assert list_datasets() == ["digits", "fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "imagenet"]
    expected = {"digits": (10, 32, "cifar"), "fashion-mnist": (10, 28, "cifar"), "cifar10": (10, 32, "cifar"), "cifar100": (100, 32, "cifar"),
                "tiny-imagenet": (200, 64, "tiny"), "imagenet": (1000, 224, "imagenet")}
    for name, (classes, size, stem) in expected.items():
        spec = get_dataset_spec(name)
        assert isinstance(spec, DatasetSpec) and spec.name == name
        assert (spec.num_classes, spec.image_size, spec.stem) == (classes, size, stem)
        assert len(spec.mean) == len(spec.std) == 3 and all(0 < v < 1 for v in spec.mean + spec.std)
    assert get_dataset_spec("Tiny_ImageNet").name == "tiny-imagenet"
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits.*imagenet"):
        get_dataset_spec("mnist")
    with pytest.raises(ValueError, match="known datasets"):
        build_datasets("mnist")
