"""CIFAR-10 and CIFAR-100 from the official python-pickle archives.

The data is read straight from `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` (one streaming
pass, no extraction) or from their extracted folders, and held in memory as uint8 tensors.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..utils import arg
from .download import download_url
from .errors import DataError
from .memory import InMemoryImageDataset

_ROW_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarArchive:
    """Where a CIFAR variant lives (URL, archive and member names) and how its pickles are keyed."""

    url: str
    md5: str
    filename: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int


# Module-level so tests and mirrors can point `url`/`md5` elsewhere (dataclasses.replace).
ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        filename="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
    ),
    "cifar100": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        filename="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
    ),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only.

    A pickle can run arbitrary code when loaded; these files come from the internet, so anything
    beyond what the CIFAR batches contain is refused instead of executed.
    """

    _ALLOWED = {
        (module, name)
        for module in (
            "numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"
        )
        for name in ("ndarray", "dtype", "_reconstruct", "_frombuffer", "scalar")
    } | {("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2 (harmless)

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(blob: bytes, where: str, required: tuple[bytes, ...]) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # pickle raises many types on garbage (EOFError, IndexError, ...)
        raise DataError(f"{where}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    missing = [key.decode() for key in required if key not in obj]
    if missing:
        raise DataError(f"{where}: pickle lacks the key(s) {missing}; found {sorted(map(repr, obj))}")
    return obj


def _locate(spec: CifarArchive, root: Path) -> Path | None:
    """The extracted folder or the archive under `root`, whichever is found first.

    `root` may be the archive itself, the extracted folder, or a folder holding either; the
    extracted folder wins because reading it needs no decompression.
    """
    for candidate in (root / spec.folder, root, root / spec.filename):
        if candidate.is_dir() and (candidate / spec.meta).is_file():
            return candidate
        if candidate.is_file():
            return candidate
    return None


def _read_members(source: Path, spec: CifarArchive) -> dict[str, bytes]:
    """Raw bytes of the meta, train and test pickles, from an archive or an extracted folder."""
    names = (spec.meta, *spec.train, *spec.test)
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataError(f"{source}: not an extracted {spec.filename}, missing {missing}")
        return {n: (source / n).read_bytes() for n in names}

    wanted = {f"{spec.folder}/{n}": n for n in names}
    found: dict[str, bytes] = {}
    try:
        # Stream mode reads the gzip once; random access would decompress it again per member.
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{source}: corrupt or truncated archive ({type(err).__name__}: {err})") from err
    missing = [member for member, n in wanted.items() if n not in found]
    if missing:
        raise DataError(f"{source}: archive lacks the member(s) {missing}; is it {spec.filename}?")
    return found


def _where(source: Path, spec: CifarArchive, name: str) -> str:
    """How error messages name one pickle: `archive:member` or the extracted file's path."""
    return f"{source}:{spec.folder}/{name}" if source.is_file() else str(source / name)


def _parse_split(
    blobs: dict[str, bytes], names: tuple[str, ...], spec: CifarArchive, source: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        where = _where(source, spec, name)
        batch = _unpickle(blobs[name], where, (b"data", spec.label_key))
        data = np.asarray(batch[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW_BYTES:
            raise DataError(f"{where}: 'data' must be uint8 of shape (N, {_ROW_BYTES}), got {data.dtype} {data.shape}")
        target = np.asarray(batch[spec.label_key])
        if target.shape != (data.shape[0],) or not np.issubdtype(target.dtype, np.integer):
            raise DataError(
                f"{where}: {spec.label_key.decode()!r} must be {data.shape[0]} integers, "
                f"got {target.dtype} {target.shape}"
            )
        if target.size and (target.min() < 0 or target.max() >= spec.num_classes):
            raise DataError(
                f"{where}: labels must lie in [0, {spec.num_classes}), found {target.min()}..{target.max()}"
            )
        images.append(data.reshape(-1, 3, 32, 32))  # rows are CHW: 1024 red, 1024 green, 1024 blue
        labels.append(target.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _class_names(blobs: dict[str, bytes], spec: CifarArchive, source: Path) -> list[str]:
    where = _where(source, spec, spec.meta)
    meta = _unpickle(blobs[spec.meta], where, (spec.names_key,))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec.names_key]]
    if len(names) != spec.num_classes:
        raise DataError(f"{where}: expected {spec.num_classes} class names, found {len(names)}")
    return names


def load_cifar(
    name: str, root: str | os.PathLike | None, download: bool = False
) -> tuple[InMemoryImageDataset, InMemoryImageDataset]:
    """Train (50 000) and test (10 000) splits of `name` ("cifar10" or "cifar100").

    With `download=True` the official archive is fetched into `root` and checked against its md5,
    unless the extracted folder or an intact archive is already there.
    """
    spec = ARCHIVES[name]
    if root is None:
        raise DataError(f"{name} needs a data folder: pass {arg('root=PATH', '--data PATH')}, the folder holding "
                        f"{spec.filename} (to fetch it there, add {arg('download=True', '--download')})")
    root = Path(root).expanduser()
    source = _locate(spec, root)
    if download and (source is None or source.is_file()):
        # download_url keeps an archive whose md5 is right (no network) and replaces a damaged one.
        archive = root if root.is_file() or root.name == spec.filename else root / spec.filename
        source = download_url(spec.url, archive, spec.md5)
    elif source is None:
        raise DataError(f"{root}: no {spec.filename} or {spec.folder}/ found (to fetch it, pass "
                        f"{arg('download=True', '--download')})")

    blobs = _read_members(source, spec)
    classes = _class_names(blobs, spec, source)
    train = InMemoryImageDataset(*_parse_split(blobs, spec.train, spec, source), classes)
    test = InMemoryImageDataset(*_parse_split(blobs, spec.test, spec, source), classes)
    return train, test
