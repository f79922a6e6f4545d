"""dynshuffle.data.transforms: batch and sample transforms."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from dynshuffle.data.registry import get_dataset_spec
from dynshuffle.data.transforms import BatchTransform, ColorJitter, RandomResizedCrop, ResizeCenterCrop, random_crop_flip


def _random_batch(n: int = 32, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)


def test_batch_transform_eval_only_normalises():
    spec = get_dataset_spec("cifar10")
    x = _random_batch()
    out = BatchTransform(spec, train=False)(x)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std)
    with pytest.raises(ValueError, match="uint8"):
        BatchTransform(spec, train=False)(x.float())
    # Folder datasets were augmented per sample: training mode only normalises them too.
    tiny = get_dataset_spec("tiny-imagenet")
    x64 = _random_batch(4, 64)
    torch.testing.assert_close(BatchTransform(tiny, train=True)(x64), BatchTransform(tiny, train=False)(x64))


def _find_crop(padded: torch.Tensor, target: torch.Tensor, size: int) -> tuple[int, int, bool]:
    """The (top, left, flipped) crop of one padded image equal to `target`, by brute force."""
    for top in range(padded.shape[1] - size + 1):
        for left in range(padded.shape[2] - size + 1):
            crop = padded[:, top:top + size, left:left + size]
            for flipped in (False, True):
                if torch.equal(crop.flip(-1) if flipped else crop, target):
                    return top, left, flipped
    raise AssertionError("output is not a padded crop of its input")


def test_batch_transform_train_crops_and_flips_each_sample():
    spec = get_dataset_spec("cifar10")
    x = _random_batch()
    transform = BatchTransform(spec, train=True)
    out = transform(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, transform(x, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(out, transform(x, generator=torch.Generator().manual_seed(1)))

    crops = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(BatchTransform(spec, train=False)(crops), out)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    found = [_find_crop(padded[i], crops[i], 32) for i in range(len(x))]
    assert any(flipped for *_, flipped in found) and not all(flipped for *_, flipped in found)
    assert any((top, left) != (4, 4) for top, left, _ in found)
    assert len({(top, left) for top, left, _ in found}) > 5  # offsets differ per sample
    # Shifted pixels bring in the zero padding.
    top, left, flipped = found[0]
    manual = padded[0, :, top:top + 32, left:left + 32]
    assert torch.equal(crops[0], manual.flip(-1) if flipped else manual)


def test_batch_transform_is_vectorised():
    """On the meta device no element can be read, so any per-sample Python logic would fail."""
    transform = BatchTransform(get_dataset_spec("digits"), train=True)
    out = transform(torch.empty(4096, 3, 32, 32, dtype=torch.uint8, device="meta"))
    assert out.shape == (4096, 3, 32, 32) and out.device.type == "meta" and out.dtype == torch.float32


def test_random_resized_crop_is_reproducible_and_in_bounds():
    crop = RandomResizedCrop(24, scale=(0.08, 1.0))
    boxes = [crop.crop_box(100, 60, torch.Generator().manual_seed(s)) for s in range(20)]
    assert boxes == [crop.crop_box(100, 60, torch.Generator().manual_seed(s)) for s in range(20)]
    for left, top, w, h in boxes:
        assert 0 <= left and left + w <= 100 and 0 <= top and top + h <= 60
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
    # No draw fits a 100x10 strip at 90 % area: fall back to a centred crop with the ratio clamped.
    assert RandomResizedCrop(24, scale=(0.9, 1.0)).crop_box(100, 10) == (43, 0, 13, 10)
    img = Image.new("RGB", (100, 60), (1, 2, 3))
    assert crop(img, torch.Generator().manual_seed(0)).size == (24, 24)


def test_resize_center_crop_and_color_jitter():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    out = ResizeCenterCrop(256, 224)(img)
    assert out.size == (224, 224)
    assert torch.equal(torch.from_numpy(np.array(out)), torch.from_numpy(np.array(ResizeCenterCrop(256, 224)(img))))
    jitter = ColorJitter(0.4, 0.4, 0.4)
    a = np.array(jitter(img, torch.Generator().manual_seed(3)))
    assert np.array_equal(a, np.array(jitter(img, torch.Generator().manual_seed(3))))
    assert not np.array_equal(a, np.array(img))
