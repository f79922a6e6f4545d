"""dynshuffle.data.folders: Tiny ImageNet and ImageNet folder datasets."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dynshuffle.data.errors import DataError
from dynshuffle.data.registry import build_datasets, get_dataset_spec
from dynshuffle.data.transforms import BatchTransform


def _save(path: Path, size=(40, 30), color=(200, 30, 60), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) if color is None \
        else Image.new("RGB", size, color)
    img.convert(mode).save(path, fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


@pytest.fixture
def tiny_root(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # unsorted on purpose: labels follow sorted order
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        _save(root / "train" / wnid / "images" / f"{wnid}_0.JPEG", size=(64, 64), color=None)
        _save(root / "train" / wnid / "images" / f"{wnid}_1.JPEG", size=(70, 50), mode="L")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    lines = []
    for i, wnid in enumerate(["n03", "n01", "n02", "n01"]):
        _save(root / "val" / "images" / f"val_{i}.JPEG", size=(64, 64), color=None)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_official_layout(tiny_root):
    train, val = build_datasets("tiny-imagenet", root=tiny_root.parent)  # the folder holding tiny-imagenet-200/
    assert train.classes == val.classes == ["n01", "n02", "n03"]
    assert len(train) == 6 and len(val) == 4
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert val.labels.tolist() == [2, 0, 1, 0]
    for dataset in (train, val):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.dtype == torch.uint8 and image.shape == (3, 64, 64) and isinstance(label, int)
    # 64x64 validation images are used as they are.
    expected = torch.from_numpy(np.array(Image.open(tiny_root / "val" / "images" / "val_0.JPEG").convert("RGB")))
    assert torch.equal(val[0][0], expected.permute(2, 0, 1))

    (tiny_root / "wnids.txt").unlink()
    train_no_wnids, _ = build_datasets("tiny-imagenet", root=tiny_root)
    assert train_no_wnids.classes == train.classes and torch.equal(train_no_wnids.labels, train.labels)


def test_tiny_imagenet_bad_annotations(tiny_root):
    annotations = tiny_root / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:1: class 'n99'"):
        build_datasets("tiny-imagenet", root=tiny_root)
    annotations.write_text("missing.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="missing.JPEG not found"):
        build_datasets("tiny-imagenet", root=tiny_root)


@pytest.fixture
def imagenet_root(tmp_path):
    root = tmp_path / "imagenet"
    _save(root / "train" / "cat" / "a.JPEG", size=(300, 200), color=None)
    _save(root / "train" / "cat" / "b.png", size=(200, 260), mode="L")  # grayscale
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    _save(root / "train" / "dog" / "c.JPG", size=(240, 240), mode="CMYK")
    _save(root / "train" / "dog" / "d.jpeg", size=(256, 300), color=None)
    _save(root / "val" / "cat" / "e.JPEG", size=(320, 256), color=(10, 200, 30))
    _save(root / "val" / "dog" / "f.PNG", size=(256, 256), color=(250, 250, 0))
    return root


def test_imagenet_class_folders(imagenet_root):
    train, val = build_datasets("imagenet", root=imagenet_root)
    assert train.classes == val.classes == ["cat", "dog"]
    assert [p.name for p, _ in train.samples] == ["a.JPEG", "b.png", "c.JPG", "d.jpeg"]
    assert train.labels.tolist() == [0, 0, 1, 1] and val.labels.tolist() == [0, 1]
    for i in range(len(train)):
        image, _ = train[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 224, 224)
    image, label = val[0]
    assert image.shape == (3, 224, 224) and label == 0
    # Evaluation is a deterministic resize + center crop: a flat colour stays that colour.
    assert (image.float().mean(dim=(1, 2)) - torch.tensor([10.0, 200.0, 30.0])).abs().max() < 3
    assert torch.equal(val[1][0], val[1][0]) and val[1][1] == 1  # same view on every call


def test_imagenet_empty_class_missing_folder_and_garbage_file(imagenet_root):
    empty = imagenet_root / "train" / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}: empty class folder"):
        build_datasets("imagenet", root=imagenet_root)
    empty.rmdir()

    garbage = imagenet_root / "train" / "dog" / "e_garbage.JPEG"
    garbage.write_bytes(b"\xff\xd8\xff not really a jpeg")
    train, _ = build_datasets("imagenet", root=imagenet_root)
    with pytest.raises(DataError, match=f"{garbage}: cannot decode"):
        train[[p for p, _ in train.samples].index(garbage)]

    truncated = imagenet_root / "train" / "dog" / "d.jpeg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(DataError, match="d.jpeg: cannot decode"):
        train[[p for p, _ in train.samples].index(truncated)]

    with pytest.raises(DataError, match=str(imagenet_root / "nowhere")):
        build_datasets("imagenet", root=imagenet_root / "nowhere")
    with pytest.raises(DataError, match=r"imagenet needs a data folder: pass root=PATH"):
        build_datasets("imagenet")


def test_dataloader_with_workers_over_folder_dataset(tiny_root):
    train, val = build_datasets("tiny-imagenet", root=tiny_root)
    spec = get_dataset_spec("tiny-imagenet")
    loader = DataLoader(train, batch_size=4, shuffle=False, num_workers=2)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    assert all(b[0].dtype == torch.uint8 for b in batches)
    assert torch.cat([b[1] for b in batches]).tolist() == train.labels.tolist()
    normalised = BatchTransform(spec, train=True)(batches[0][0])
    assert normalised.dtype == torch.float32 and normalised.shape == (4, 3, 64, 64)
