"""Folder datasets decoded per item with Pillow: Tiny ImageNet and ImageNet (class-folder trees).

Only file paths are held in memory; each item is decoded, converted to RGB (grayscale, CMYK and
palette images included) and augmented in the DataLoader worker that asks for it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError
from .transforms import SampleTransform, eval_transform, train_transform

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

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

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found")
    return path


def _resolve_root(root: str | os.PathLike | None, name: str, layout: str) -> Path:
    if root is None:
        raise DataError(f"{name} needs root=: a folder holding {layout} (it cannot be downloaded automatically)")
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
