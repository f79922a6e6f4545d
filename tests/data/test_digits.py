"""dynshuffle.data.digits: the bundled digits, split and normalisation constants."""
from __future__ import annotations


import torch

from dynshuffle.data.registry import build_datasets, get_dataset_spec


def test_digits_split_is_stratified_and_deterministic():
    train, val = build_datasets("digits")
    assert (len(train), len(val)) == (1437, 360)
    assert len(train) + len(val) == 1797
    assert train.classes == [str(d) for d in range(10)] and get_dataset_spec("digits").num_classes == 10
    assert train.images.dtype == torch.uint8 and train.images.shape == (1437, 3, 32, 32)
    image, label = val[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert torch.equal(image[0], image[2])  # grey replicated to RGB
    assert int(train.images.max()) > 200 and int(train.images.min()) == 0
    counts = torch.bincount(val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    train2, val2 = build_datasets("digits")
    assert torch.equal(train2.images, train.images) and torch.equal(val2.labels, val.labels)
    train2.images.zero_()  # callers own their copy; the process cache is unaffected
    assert torch.equal(build_datasets("digits")[0].images, train.images)


def test_digits_mean_std_constants_match_the_training_split():
    spec = get_dataset_spec("digits")
    pixels = build_datasets("digits")[0].images.float() / 255
    assert torch.allclose(pixels.mean(dim=(0, 2, 3)), torch.tensor(spec.mean), atol=1e-3)
    assert torch.allclose(pixels.std(dim=(0, 2, 3)), torch.tensor(spec.std), atol=1e-3)
