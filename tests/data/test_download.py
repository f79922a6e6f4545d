"""dynshuffle.data.download: checksums, files already present, unreachable servers."""
from __future__ import annotations

import dataclasses
import os
import urllib.request

import pytest
import torch

from dynshuffle.data import cifar
from dynshuffle.data.download import download_url, file_md5
from dynshuffle.data.errors import DataError
from dynshuffle.data.registry import build_datasets


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
