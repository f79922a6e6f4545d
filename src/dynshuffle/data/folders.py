"""Folder datasets decoded per item with Pillow: Tiny ImageNet and ImageNet (class-folder trees).

Only file paths are held in memory; each item is decoded, converted to RGB (grayscale, CMYK and
palette images included) and augmented in the DataLoader worker that asks for it.

A file that does not decode raises `DataError` naming it, unless `skip_corrupt_images` was called (config
key `data.skip_corrupt`): then the item is the next readable image of the list (its own label), and the
replaced item is counted in a shared-memory tensor with one slot per DataLoader worker, which the main
process sums (`corrupt_skipped`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from ..utils import arg
from .errors import DataError
from .transforms import SampleTransform, eval_transform, train_transform

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MAX_CORRUPT_RUN = 16  # consecutive unreadable files before skip_corrupt gives up: a broken folder, not a bad file

IMAGENET_LAYOUT = "train/<class>/*.JPEG and val/<class>/*.JPEG"
TINY_LAYOUT = "train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt and wnids.txt"


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file as RGB; any failure becomes a DataError naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, struct.error, ... on bad files
        raise DataError(f"{path}: cannot decode the image ({type(err).__name__}: {err})") from err


class ImageFileDataset(Dataset):
    """Samples are (path, label) pairs; an item is (transformed uint8 tensor (3, S, S), label)."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform: SampleTransform) -> None:
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.corrupt_counts: torch.Tensor | None = None  # set by skip_corrupt_images
        self._reported: set[Path] = set()  # corrupt files this process has named on stderr

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.corrupt_counts is not None:
            return self._readable_from(index)
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label

    def skip_corrupt_images(self, workers: int) -> None:
        """From now on an image that does not decode is replaced by the next readable one and counted.

        `workers`: the DataLoader's worker count. Each worker (and the main process, slot 0) adds to its
        own slot of a shared-memory tensor, so counts from worker processes reach the main process
        without a lock. Call before the DataLoader starts its workers.
        """
        self.corrupt_counts = torch.zeros(workers + 1, dtype=torch.int64).share_memory_()

    @property
    def corrupt_skipped(self) -> int:
        """Items replaced because their image did not decode, over every process of this dataset."""
        return 0 if self.corrupt_counts is None else int(self.corrupt_counts.sum())

    def _readable_from(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(min(MAX_CORRUPT_RUN, len(self))):
            path, label = self.samples[(index + offset) % len(self)]
            try:
                image = load_rgb(path)
            except DataError as err:
                if offset == 0:
                    self._count_corrupt(path, err)
                continue
            return self.transform(image), label
        raise DataError(f"{self.samples[index][0]} and the next {MAX_CORRUPT_RUN - 1} images do not decode "
                        f"(data.skip_corrupt skips single bad files, not a broken folder)")

    def _count_corrupt(self, path: Path, err: DataError) -> None:
        worker = get_worker_info()
        slot = 0 if worker is None else (1 + worker.id) % len(self.corrupt_counts)  # wraps only if misconfigured
        self.corrupt_counts[slot] += 1
        if path not in self._reported:  # once per file and process, however often the sampler draws it
            self._reported.add(path)
            print(f"data.skip_corrupt: {err}; using the next image instead", file=sys.stderr, flush=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found")
    return path


def _resolve_root(root: str | os.PathLike | None, name: str, layout: str) -> Path:
    if root is None:
        raise DataError(f"{name} needs a data folder: pass {arg('root=PATH', '--data PATH')}, a folder holding "
                        f"{layout} (it cannot be downloaded automatically)")
    return _require_dir(Path(root).expanduser(), f"{name} folder (expected {layout})")


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted so sample order is the same on every machine."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_samples(folder: Path, label: int) -> list[tuple[Path, int]]:
    files = _list_images(folder)
    if not files:
        raise DataError(f"{folder}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files)")
    return [(path, label) for path in files]


def _subfolders(folder: Path) -> list[str]:
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not names:
        raise DataError(f"{folder}: no class folders inside")
    return names


def load_imagenet(
    root: str | os.PathLike | None, image_size: int = 224
) -> tuple[ImageFileDataset, ImageFileDataset]:
    """ImageNet-style `root/train/<class>/` and `root/val/<class>/` trees, classes in sorted order.

    Training items get random-resized crop (scale 0.08..1), flip and colour jitter; validation
    items the standard shorter-side resize (256 for 224) and center crop.
    """
    root = _resolve_root(root, "imagenet", IMAGENET_LAYOUT)
    train_dir = _require_dir(root / "train", "training folder")
    val_dir = _require_dir(root / "val", "validation folder")
    classes = _subfolders(train_dir)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(_subfolders(val_dir)) - set(classes))
    if unknown:
        raise DataError(f"{val_dir}: class folder(s) {unknown[:5]} have no counterpart in {train_dir}")

    train_samples = [s for name in classes for s in _class_samples(train_dir / name, index[name])]
    val_samples = [s for name in _subfolders(val_dir) for s in _class_samples(val_dir / name, index[name])]
    resize = round(image_size * 256 / 224)
    return (
        ImageFileDataset(train_samples, classes, train_transform(image_size, scale=(0.08, 1.0))),
        ImageFileDataset(val_samples, classes, eval_transform(image_size, resize)),
    )


def _tiny_classes(root: Path, train_dir: Path) -> list[str]:
    """Class ids, sorted whether they come from wnids.txt or the folder names, so labels agree either way."""
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        return _subfolders(train_dir)
    try:
        wnids = sorted({line.strip() for line in wnids_file.read_text(encoding="utf-8").splitlines() if line.strip()})
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{wnids_file}: cannot read the class list ({err})") from err
    if not wnids:
        raise DataError(f"{wnids_file}: the class list is empty")
    return wnids


def _tiny_val_samples(val_dir: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    annotations = val_dir / "val_annotations.txt"
    images_dir = _require_dir(val_dir / "images", "validation image folder")
    available = {p.name for p in _list_images(images_dir)}
    try:
        lines = annotations.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{annotations}: cannot read the validation labels ({err})") from err
    samples = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(
                f"{annotations}:{lineno}: expected 'filename<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h', got {line!r}"
            )
        filename, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(f"{annotations}:{lineno}: class {wnid!r} is not one of the training classes")
        if filename not in available:
            raise DataError(f"{annotations}:{lineno}: image {images_dir / filename} not found")
        samples.append((images_dir / filename, index[wnid]))
    if not samples:
        raise DataError(f"{annotations}: no validation images listed")
    return samples


def load_tiny_imagenet(
    root: str | os.PathLike | None, image_size: int = 64
) -> tuple[ImageFileDataset, ImageFileDataset]:
    """The official Tiny ImageNet layout (`root` may also be the folder holding `tiny-imagenet-200/`).

    Training items get random-resized crop (scale 0.35..1: the images are already small crops),
    flip and colour jitter; validation items are used as they are (resized only if not 64x64).
    """
    root = _resolve_root(root, "tiny-imagenet", TINY_LAYOUT)
    if not (root / "train").is_dir() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    train_dir = _require_dir(root / "train", "training folder")
    classes = _tiny_classes(root, train_dir)
    index = {name: i for i, name in enumerate(classes)}

    train_samples = []
    for name in classes:
        class_dir = _require_dir(train_dir / name, "class folder")
        images_dir = class_dir / "images"
        train_samples += _class_samples(images_dir if images_dir.is_dir() else class_dir, index[name])
    val_samples = _tiny_val_samples(_require_dir(root / "val", "validation folder"), index)
    return (
        ImageFileDataset(train_samples, classes, train_transform(image_size, scale=(0.35, 1.0))),
        ImageFileDataset(val_samples, classes, eval_transform(image_size, image_size)),
    )
