"""Fixtures of the data tests: CIFAR archives and folders written in the official format."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dynshuffle.data import cifar


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


@pytest.fixture(scope="session")
def cifar_payload():
    """`cifar_payload(name, rng, protocol) -> (members, expected)`: the files of an official CIFAR archive."""
    return _cifar_payload


@pytest.fixture(scope="session")
def write_tar():
    """`write_tar(path, folder, members) -> path`: members as a .tar.gz archive under `folder/`."""
    return _write_tar


@pytest.fixture(scope="session")
def write_folder():
    """`write_folder(folder, members) -> folder`: members as files of an extracted archive."""
    return _write_folder
