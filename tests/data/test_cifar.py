"""dynshuffle.data.cifar: the official CIFAR-10/100 archives and folders, and every way they can be broken."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from dynshuffle.data import cifar
from dynshuffle.data.errors import DataError
from dynshuffle.data.registry import build_datasets, get_dataset_spec


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


def test_cifar100_fine_labels_from_archive(tmp_path, cifar_payload, write_tar):
    spec = cifar.ARCHIVES["cifar100"]
    members, expected = cifar_payload("cifar100", np.random.default_rng(1), protocol=5)
    write_tar(tmp_path / spec.filename, spec.folder, members)
    train, test = build_datasets("cifar100", root=tmp_path)
    _check_split(train, *expected["train"], expected["classes"])
    _check_split(test, *expected["test"], expected["classes"])
    assert len(train.classes) == 100 == get_dataset_spec("cifar100").num_classes


def test_without_download_missing_archive_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        build_datasets("cifar10", root=tmp_path)
    with pytest.raises(DataError, match=r"needs a data folder: pass root=PATH"):
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
def test_bad_pickle_contents_name_the_member(tmp_path, cifar10_files, changes, message, write_tar, write_folder):
    spec = cifar.ARCHIVES["cifar10"]
    members = _damaged_member(cifar10_files[2], "data_batch_3", **changes)
    archive = write_tar(tmp_path / "bad" / spec.filename, spec.folder, members)
    with pytest.raises(DataError, match=f"{spec.filename}:{spec.folder}/data_batch_3.*{message}"):
        build_datasets("cifar10", root=archive)
    folder = write_folder(tmp_path / "bad-extracted", members)
    with pytest.raises(DataError, match=f"data_batch_3.*{message}"):
        build_datasets("cifar10", root=folder)


def test_missing_member_and_unsafe_pickle_are_refused(tmp_path, cifar10_files, write_tar):
    spec = cifar.ARCHIVES["cifar10"]
    members = dict(cifar10_files[2])
    del members["test_batch"]
    with pytest.raises(DataError, match="test_batch"):
        build_datasets("cifar10", root=write_tar(tmp_path / "a" / spec.filename, spec.folder, members))

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    members = {**cifar10_files[2], "batches.meta": pickle.dumps(Payload())}
    with pytest.raises(DataError, match=r"batches.meta.*refusing to load the global \w+\.getcwd"):
        build_datasets("cifar10", root=write_tar(tmp_path / "b" / spec.filename, spec.folder, members))
