"""Fashion-MNIST: the IDX reader on small files written in the official format, corrupt ones, the
download path with a fake server, the Debian default root, and the real files when installed."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dynshuffle.data.errors import DataError
from dynshuffle.data.registry import build_datasets, get_dataset_spec
from dynshuffle.data import fashion_mnist as fm

COUNTS = {"train_images": 12, "train_labels": 12, "test_images": 5, "test_labels": 5}


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _payload(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 12, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 5, dtype=np.uint8),
    }


def _write(root: Path, payload: dict[str, np.ndarray], gz: bool = True, **raw_overrides: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for key, array in payload.items():
        blob = raw_overrides.get(key, _idx_bytes(array))
        name = fm.FILES[key].name
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (root / name).write_bytes(blob)
    return root


@pytest.fixture
def small_counts(monkeypatch):
    """The reader checks the official counts; the test files are smaller."""
    files = {k: dataclasses.replace(f, count=COUNTS[k]) for k, f in fm.FILES.items()}
    monkeypatch.setattr(fm, "FILES", files)
    return files


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_reads_official_idx_files(tmp_path, small_counts, gz):
    payload = _payload()
    root = _write(tmp_path / "fm", payload, gz=gz)
    train, test = build_datasets("fashion-mnist", root=root)
    assert len(train) == 12 and len(test) == 5
    assert train.images.shape == (12, 3, 28, 28) and train.images.dtype == torch.uint8
    for split, key in ((train, "train"), (test, "test")):
        expected = torch.from_numpy(payload[f"{key}_images"])
        for channel in range(3):  # the gray channel, repeated
            assert torch.equal(split.images[:, channel], expected)
        assert split.labels.tolist() == payload[f"{key}_labels"].tolist()
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    image, label = train[3]
    assert torch.equal(image[0], torch.from_numpy(payload["train_images"][3])) and label == int(payload["train_labels"][3])


def _corrupt_cases():
    p = _payload()
    good = _idx_bytes(p["train_images"])
    return {
        "magic": ("train_images", _idx_bytes(p["train_images"], magic=0x0801), "magic number 0x00000801"),
        "dimension": ("train_images", _idx_bytes(np.zeros((12, 27, 28), np.uint8)), "dimension 1 is 27, expected 28"),
        "count": ("train_labels", _idx_bytes(np.zeros(11, np.uint8)), "dimension 0 is 11, expected 12"),
        "truncated": ("train_images", good[:-100], "truncated"),
        "trailing": ("train_images", good + b"\0", "trailing bytes"),
        "header": ("test_labels", b"\0\0\x08", "truncated IDX header"),
        "label range": ("test_labels", _idx_bytes(np.array([0, 1, 10, 2, 3], np.uint8)), r"labels must lie in \[0, 10\)"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_files_raise_data_error_naming_the_file(tmp_path, small_counts, case):
    key, blob, message = _corrupt_cases()[case]
    root = _write(tmp_path / "fm", _payload(), **{key: blob})
    with pytest.raises(DataError, match=message) as err:
        build_datasets("fashion-mnist", root=root)
    assert fm.FILES[key].name in str(err.value)


def test_corrupt_gzip_stream_is_a_data_error(tmp_path, small_counts):
    root = _write(tmp_path / "fm", _payload())
    target = root / (fm.FILES["test_images"].name + ".gz")
    target.write_bytes(target.read_bytes()[:40])  # a gzip stream cut short
    with pytest.raises(DataError, match="cannot read") as err:
        build_datasets("fashion-mnist", root=root)
    assert target.name in str(err.value)


def test_missing_files_are_named_with_the_remedy(tmp_path, small_counts):
    root = _write(tmp_path / "fm", _payload())
    (root / (fm.FILES["test_labels"].name + ".gz")).unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\].*download=True"):
        build_datasets("fashion-mnist", root=root)


def test_download_fetches_missing_files_then_works_offline(tmp_path, small_counts, monkeypatch):
    payload = _payload(seed=3)
    server = _write(tmp_path / "server", payload)
    files = {k: dataclasses.replace(f, md5=hashlib.md5((server / (f.name + ".gz")).read_bytes()).hexdigest())
             for k, f in fm.FILES.items()}
    monkeypatch.setattr(fm, "FILES", files)
    monkeypatch.setattr(fm, "BASE_URL", server.as_uri() + "/")
    root = tmp_path / "data" / "fm"
    train, test = build_datasets("fashion-mnist", root=root, download=True)
    assert sorted(p.name for p in root.iterdir()) == sorted(f.name + ".gz" for f in files.values())
    assert train.labels.tolist() == payload["train_labels"].tolist()

    def no_network(*args, **kwargs):
        raise AssertionError("files already present must not be downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    again, _ = build_datasets("fashion-mnist", root=root, download=True)
    assert torch.equal(again.images, train.images)


def test_download_with_wrong_md5_leaves_nothing(tmp_path, small_counts, monkeypatch):
    server = _write(tmp_path / "server", _payload())
    monkeypatch.setattr(fm, "BASE_URL", server.as_uri() + "/")  # the official md5s do not match these files
    root = tmp_path / "fm"
    with pytest.raises(DataError, match="checksum mismatch"):
        build_datasets("fashion-mnist", root=root, download=True)
    assert list(root.iterdir()) == []


def test_default_root_is_the_debian_location(tmp_path, small_counts, monkeypatch):
    payload = _payload(seed=5)
    debian = _write(tmp_path / "usr-share", payload)
    monkeypatch.setattr(fm, "DEBIAN_ROOT", debian)
    train, _ = build_datasets("fashion-mnist")
    assert train.labels.tolist() == payload["train_labels"].tolist()
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_datasets("fashion-mnist")


def test_spec():
    spec = get_dataset_spec("Fashion_MNIST")
    assert (spec.name, spec.num_classes, spec.image_size, spec.stem) == ("fashion-mnist", 10, 28, "cifar")
    assert spec.mean == (0.2860,) * 3 and spec.std == (0.3530,) * 3


@pytest.mark.skipif(fm.default_root() is None,
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_files_counts_balance_and_statistics():
    train, test = build_datasets("fashion-mnist")
    assert train.images.shape == (60000, 3, 28, 28) and test.images.shape == (10000, 3, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    gray = train.images[:, 0].float() / 255
    spec = get_dataset_spec("fashion-mnist")
    assert gray.mean().item() == pytest.approx(spec.mean[0], abs=5e-5)
    assert gray.std().item() == pytest.approx(spec.std[0], abs=5e-5)
