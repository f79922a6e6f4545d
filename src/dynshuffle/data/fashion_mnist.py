"""Fashion-MNIST from the four official IDX files (gzipped or not).

Zalando's Fashion-MNIST: 70 000 grayscale 28x28 images of 10 clothing classes, 60 000 for training and
10 000 for testing, in the IDX format of MNIST. Debian's `dataset-fashion-mnist` package installs the
gzipped files in `DEBIAN_ROOT`, which is the default root when it exists. The images are held in memory
as uint8 tensors of shape (N, 3, 28, 28): the gray channel is repeated (a stride-0 view, no copy) so the
RGB models and the batch augmentation apply unchanged.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..utils import arg
from .download import download_url
from .errors import DataError
from .memory import InMemoryImageDataset

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SIZE = 28

# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


@dataclass(frozen=True)
class IdxFile:
    """One official file: its name (the `.gz` is optional on disk), the md5 of the gzipped file, its count."""

    name: str
    md5: str
    count: int


# Module-level so tests and mirrors can point the URL elsewhere.
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 60000),
    "train_labels": IdxFile("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe", 60000),
    "test_images": IdxFile("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79", 10000),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310", 10000),
}


def read_idx(path: str | os.PathLike, magic: int, dims: tuple[int | None, ...]) -> np.ndarray:
    """An IDX file of unsigned bytes as a numpy array, checked against `magic` and `dims` (None: any size).

    The file may be gzipped (detected from its first two bytes). Anything wrong (a bad magic number, other
    dimensions, fewer or more bytes than the header announces, a corrupt gzip stream) raises `DataError`
    naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    ndim = len(dims)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    (found_magic,) = struct.unpack(">i", raw[:4])
    if found_magic != magic:
        raise DataError(f"{path}: IDX magic number {found_magic:#010x}, expected {magic:#010x} "
                        f"(unsigned bytes, {ndim} dimension(s)); is it the right file?")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    for axis, (size, want) in enumerate(zip(shape, dims)):
        if want is not None and size != want:
            raise DataError(f"{path}: dimension {axis} is {size}, expected {want} (shape {shape})")
    expected = int(np.prod(shape)) + header
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(raw)} bytes, the header {shape} announces {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, file: IdxFile) -> Path | None:
    for name in (file.name + ".gz", file.name):
        if (root / name).is_file():
            return root / name
    return None


def _split(root: Path, images: IdxFile, labels: IdxFile) -> tuple[torch.Tensor, torch.Tensor]:
    image_path, label_path = _find(root, images), _find(root, labels)
    pixels = read_idx(image_path, IMAGES_MAGIC, (images.count, IMAGE_SIZE, IMAGE_SIZE))
    target = read_idx(label_path, LABELS_MAGIC, (labels.count,))
    if target.size and target.max() >= len(CLASSES):
        raise DataError(f"{label_path}: labels must lie in [0, {len(CLASSES)}), found a {target.max()}")
    gray = torch.from_numpy(pixels.copy()).unsqueeze(1)
    return gray.expand(-1, 3, -1, -1), torch.from_numpy(target.astype(np.int64))


def default_root() -> Path | None:
    """Debian's install location when it holds the files, else None."""
    return DEBIAN_ROOT if DEBIAN_ROOT.is_dir() and _find(DEBIAN_ROOT, FILES["train_images"]) else None


def load_fashion_mnist(
    root: str | os.PathLike | None = None, download: bool = False
) -> tuple[InMemoryImageDataset, InMemoryImageDataset]:
    """Train (60 000) and test (10 000) splits as (3, 28, 28) uint8 images.

    `root` defaults to `DEBIAN_ROOT` (`apt-get install dataset-fashion-mnist`) when it exists. With
    `download=True` the missing files are fetched into `root` and checked against their md5.
    """
    if root is None:
        root = default_root()
    if root is None:
        raise DataError(f"fashion-mnist: no data at {DEBIAN_ROOT}; install it with `apt-get install "
                        f"dataset-fashion-mnist`, or pass {arg('root=PATH', '--data PATH')} and "
                        f"{arg('download=True', '--download')}")
    root = Path(root).expanduser()
    missing = [f for f in FILES.values() if _find(root, f) is None]
    if missing and download:
        root.mkdir(parents=True, exist_ok=True)
        for file in missing:
            download_url(BASE_URL + file.name + ".gz", root / (file.name + ".gz"), file.md5)
    elif missing:
        names = ", ".join(f.name + "[.gz]" for f in missing)
        raise DataError(f"{root}: missing {names} (to fetch them, pass {arg('download=True', '--download')})")
    train = InMemoryImageDataset(*_split(root, FILES["train_images"], FILES["train_labels"]), CLASSES)
    test = InMemoryImageDataset(*_split(root, FILES["test_images"], FILES["test_labels"]), CLASSES)
    return train, test
