"""Tests of dynshuffle.data on small files written in the real on-disk formats."""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dynshuffle.data import BatchTransform, DataError, DatasetSpec, build_datasets, get_dataset_spec, list_datasets
from dynshuffle.data import cifar
from dynshuffle.data.download import download_url, file_md5
from dynshuffle.data.transforms import ColorJitter, RandomResizedCrop, ResizeCenterCrop, random_crop_flip

# --------------------------------------------------------------------------------------------- CIFAR


def _cifar_payload(name: str, rng: np.random.Generator, protocol: int) -> tuple[dict[str, bytes], dict]:
    """Pickled members (name -> bytes) of a tiny CIFAR archive and the arrays they hold."""
    spec = cifar.ARCHIVES[name]
    members, expected = {}, {"train": ([], []), "test": ([], [])}
    for split, names, rows in (("train", spec.train, 4), ("test", spec.test, 3)):
        for member in names:
            data = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
            labels = rng.integers(0, spec.num_classes, size=rows).tolist()
            batch = {b"batch_label": member.encode(), spec.label_key: labels, b"data": data,
                     b"filenames": [f"img{i}.png".encode() for i in range(rows)]}
            if name == "cifar100":
                batch[b"coarse_labels"] = [label // 5 for label in labels]
            blob = pickle.dumps(batch, protocol=protocol)
            # The official files were written by numpy 1 and name numpy.core, not numpy._core.
            members[member] = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            expected[split][0].append(data)
            expected[split][1].extend(labels)
    classes = [f"class_{i}" for i in range(spec.num_classes)]
    members[spec.meta] = pickle.dumps({spec.names_key: [c.encode() for c in classes]}, protocol=protocol)
    expected = {
        split: (np.concatenate(images).reshape(-1, 3, 32, 32), np.array(labels))
        for split, (images, labels) in expected.items()
    }
    expected["classes"] = classes
    return members, expected


def _write_tar(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _write_folder(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for member, blob in members.items():
        (folder / member).write_bytes(blob)
    return folder


@pytest.fixture
def cifar10_files(tmp_path):
    spec = cifar.ARCHIVES["cifar10"]
    members, expected = _cifar_payload("cifar10", np.random.default_rng(0), protocol=2)
    archive = _write_tar(tmp_path / "archive" / spec.filename, spec.folder, members)
    extracted = _write_folder(tmp_path / "extracted" / spec.folder, members)
    return archive, extracted, members, expected


def _check_split(dataset, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    assert len(dataset) == len(labels)
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (len(labels), 3, 32, 32)
    assert dataset.labels.dtype == torch.int64
    assert torch.equal(dataset.images, torch.from_numpy(images))
    assert dataset.labels.tolist() == labels.tolist()
    assert dataset.classes == classes
    image, label = dataset[1]
    assert image.shape == (3, 32, 32) and isinstance(label, int) and label == labels[1]


@pytest.mark.parametrize("where", ["archive", "archive-parent", "extracted", "extracted-parent"])
def test_cifar10_reads_archive_and_extracted_folder(cifar10_files, where):
    archive, extracted, _, expected = cifar10_files
    root = {"archive": archive, "archive-parent": archive.parent,
            "extracted": extracted, "extracted-parent": extracted.parent}[where]
    train, test = build_datasets("cifar10", root=root)
    _check_split(train, *expected["train"], expected["classes"])
    _check_split(test, *expected["test"], expected["classes"])
    # Rows are CHW: the first 1024 bytes are the red plane.
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(expected["train"][0][0, 0].flatten()))


def test_cifar100_fine_labels_from_archive(tmp_path):
    spec = cifar.ARCHIVES["cifar100"]
    members, expected = _cifar_payload("cifar100", np.random.default_rng(1), protocol=5)
    _write_tar(tmp_path / spec.filename, spec.folder, members)
    train, test = build_datasets("cifar100", root=tmp_path)
    _check_split(train, *expected["train"], expected["classes"])
    _check_split(test, *expected["test"], expected["classes"])
    assert len(train.classes) == 100 == get_dataset_spec("cifar100").num_classes


def test_download_file_url_verifies_md5_and_skips_when_present(tmp_path, monkeypatch, cifar10_files):
    archive = cifar10_files[0]
    good = dataclasses.replace(cifar.ARCHIVES["cifar10"], url=archive.as_uri(), md5=file_md5(archive))
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10", good)
    root = tmp_path / "data"
    train, _ = build_datasets("cifar10", root=root, download=True)
    assert len(train) == 20
    assert file_md5(root / good.filename) == good.md5
    assert os.listdir(root) == [good.filename]  # no temporary file left beside it

    def no_network(*args, **kwargs):
        raise AssertionError("an intact archive must not be downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    train_again, _ = build_datasets("cifar10", root=root, download=True)
    assert torch.equal(train_again.images, train.images)


def test_download_wrong_md5_raises_and_leaves_nothing(tmp_path, cifar10_files):
    archive = cifar10_files[0]
    dest = tmp_path / "data" / archive.name
    with pytest.raises(DataError, match="checksum mismatch"):
        download_url(archive.as_uri(), dest, md5="0" * 32)
    assert os.listdir(dest.parent) == []


def test_download_unreachable_url_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download_url((tmp_path / "nowhere.tar.gz").as_uri(), tmp_path / "x.tar.gz", md5="0" * 32)


def test_without_download_missing_archive_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        build_datasets("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="needs root"):
        build_datasets("cifar10")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_archive_is_a_data_error_naming_it(cifar10_files, damage):
    archive = cifar10_files[0]
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"not a tarball" * 100)
    with pytest.raises(DataError, match=archive.name):
        build_datasets("cifar10", root=archive)


def _damaged_member(members: dict[str, bytes], name: str, **changes) -> dict[str, bytes]:
    batch = pickle.loads(members[name], encoding="bytes")
    for key, value in changes.items():
        if value is None:
            del batch[key.encode()]
        else:
            batch[key.encode()] = value
    return {**members, name: pickle.dumps(batch)}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data": None}, r"lacks the key\(s\) \['data'\]"),
        ({"data": np.zeros((4, 100), np.uint8)}, r"shape \(N, 3072\)"),
        ({"data": np.zeros((4, 3072), np.float32)}, "must be uint8"),
        ({"labels": [0, 1, 2]}, "must be 4 integers"),
        ({"labels": [0, 1, 2, 10]}, r"labels must lie in \[0, 10\)"),
    ],
)
def test_bad_pickle_contents_name_the_member(tmp_path, cifar10_files, changes, message):
    spec = cifar.ARCHIVES["cifar10"]
    members = _damaged_member(cifar10_files[2], "data_batch_3", **changes)
    archive = _write_tar(tmp_path / "bad" / spec.filename, spec.folder, members)
    with pytest.raises(DataError, match=f"{spec.filename}:{spec.folder}/data_batch_3.*{message}"):
        build_datasets("cifar10", root=archive)
    folder = _write_folder(tmp_path / "bad-extracted", members)
    with pytest.raises(DataError, match=f"data_batch_3.*{message}"):
        build_datasets("cifar10", root=folder)


def test_missing_member_and_unsafe_pickle_are_refused(tmp_path, cifar10_files):
    spec = cifar.ARCHIVES["cifar10"]
    members = dict(cifar10_files[2])
    del members["test_batch"]
    with pytest.raises(DataError, match="test_batch"):
        build_datasets("cifar10", root=_write_tar(tmp_path / "a" / spec.filename, spec.folder, members))

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    members = {**cifar10_files[2], "batches.meta": pickle.dumps(Payload())}
    with pytest.raises(DataError, match=r"batches.meta.*refusing to load the global \w+\.getcwd"):
        build_datasets("cifar10", root=_write_tar(tmp_path / "b" / spec.filename, spec.folder, members))


# ------------------------------------------------------------------------------------ folder datasets


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
    with pytest.raises(DataError, match="imagenet needs root"):
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


# -------------------------------------------------------------------------------------------- digits


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


# -------------------------------------------------------------------------------------- registry


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


# ---------------------------------------------------------------------------------- BatchTransform


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


# --------------------------------------------------------------------------- per-sample transforms


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
