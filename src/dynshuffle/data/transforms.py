"""Image augmentations, written without torchvision.

Two kinds, matched to how the data is stored:

* Per-sample transforms (PIL image in, PIL image or uint8 tensor out) for folder datasets, whose
  images differ in size and are decoded one at a time in DataLoader workers. Each takes an optional
  CPU `torch.Generator`; without one it draws from torch's global RNG, which the DataLoader seeds
  differently in every worker (a generator stored in the transform would be copied into every
  worker and give them all the same crops).
* `BatchTransform` for the in-memory 32x32 datasets: random crop with zero padding and horizontal
  flip on a whole uint8 batch with tensor ops (per-sample offsets, no Python loop over the batch),
  then conversion to normalised float32, on whatever device the batch lives.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn

from .spec import DatasetSpec


class SampleTransform(Protocol):
    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image | torch.Tensor: ...


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


class RandomResizedCrop:
    """Crop a random area fraction in `scale` with aspect ratio in `ratio`, resized to `size` x `size`.

    Same sampling as the usual ImageNet recipe: up to `attempts` draws (log-uniform aspect ratio),
    then a center crop with the ratio clamped into range if no draw fits inside the image.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        attempts: int = 10,
    ) -> None:
        self.size, self.scale, self.ratio, self.attempts = size, scale, ratio, attempts

    def crop_box(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(left, top, crop width, crop height) in the input image."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.attempts):
            target_area = area * _uniform(*self.scale, generator)
            aspect = math.exp(_uniform(log_lo, log_hi, generator))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return _randint(width - w + 1, generator), _randint(height - h + 1, generator), w, h
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        left, top, w, h = self.crop_box(img.width, img.height, generator)
        # One resampling pass with a source box: crop and resize without an intermediate image.
        return img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        if float(torch.rand((), generator=generator)) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s], applied in random order."""

    _ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4) -> None:
        self.strengths = (brightness, contrast, saturation)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        for i in torch.randperm(3, generator=generator).tolist():
            strength = self.strengths[i]
            if strength > 0:
                factor = _uniform(max(0.0, 1.0 - strength), 1.0 + strength, generator)
                img = self._ENHANCERS[i](img).enhance(factor)
        return img


class ResizeCenterCrop:
    """Evaluation view: scale the shorter side to `resize`, then take the central `size` x `size`."""

    def __init__(self, resize: int, size: int) -> None:
        if resize < size:
            raise ValueError(f"resize ({resize}) must be at least the crop size ({size})")
        self.resize, self.size = resize, size

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        width, height = img.size
        if min(width, height) != self.resize:
            scale = self.resize / min(width, height)
            width, height = max(self.resize, round(width * scale)), max(self.resize, round(height * scale))
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        left, top = round((width - self.size) / 2), round((height - self.size) / 2)
        return img.crop((left, top, left + self.size, top + self.size))


class ToUint8Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W); no scaling, normalisation happens on the batch."""

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class Compose:
    def __init__(self, transforms: Sequence[SampleTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image | torch.Tensor:
        for transform in self.transforms:
            img = transform(img, generator)
        return img


def train_transform(size: int, scale: tuple[float, float]) -> Compose:
    """Per-sample training augmentation for folder datasets, ending in a uint8 tensor."""
    return Compose(
        [RandomResizedCrop(size, scale), RandomHorizontalFlip(), ColorJitter(0.4, 0.4, 0.4), ToUint8Tensor()]
    )


def eval_transform(size: int, resize: int) -> Compose:
    """Deterministic evaluation view for folder datasets, ending in a uint8 tensor."""
    return Compose([ResizeCenterCrop(resize, size), ToUint8Tensor()])


def random_crop_flip(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random `padding`-pixel-shift crop (zero fill) and horizontal flip of each image of a batch.

    Every sample gets its own offsets and flip, yet the whole batch is one gather: the padded batch
    is indexed with per-sample row and column index grids, a flip being a reversed column grid. The
    random numbers come from `generator` (on its device) or from the global RNG of the batch's device.
    """
    b, _, h, w = images.shape
    device = images.device
    draw_device = generator.device if generator is not None else device
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=draw_device).to(device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=draw_device).to(device)
    flip = (torch.rand(b, generator=generator, device=draw_device) < 0.5).to(device)

    padded = F.pad(images, (padding, padding, padding, padding))
    row_offsets = torch.arange(h, device=device)
    col_offsets = torch.arange(w, device=device)
    rows = top[:, None] + row_offsets  # (B, H)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - col_offsets, col_offsets)  # (B, W)
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indices split by the channel slice put the broadcast (B, H, W) dims first.
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class BatchTransform(nn.Module):
    """uint8 batch (B, 3, S, S) on any device -> normalised float32 batch, augmented when training.

    With `train=True` on the in-memory 32x32 datasets (stem "cifar") it applies `random_crop_flip`
    first; folder datasets were already augmented per sample while decoding, so for them (and with
    `train=False`) it only converts and normalises with the spec's mean and std.
    """

    def __init__(self, spec: DatasetSpec, train: bool = True, padding: int = 4) -> None:
        super().__init__()
        self.crop_flip = train and spec.stem == "cifar"
        self.padding = padding
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply and one subtract.
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", mean / std, persistent=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"BatchTransform expects a uint8 batch of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if self.crop_flip:
            images = random_crop_flip(images, self.padding, generator)
        scale, shift = self.scale.to(images.device), self.shift.to(images.device)
        return images.float().mul_(scale).sub_(shift)

    def extra_repr(self) -> str:
        return f"crop_flip={self.crop_flip}, padding={self.padding}"
