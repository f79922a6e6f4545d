"""`DatasetSpec`: what a model and the batch transform need to know about a dataset.

Its own module so that the transforms, the loaders and the registry can all import it without importing
each other (the registry imports the loaders, the loaders import the transforms).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetSpec"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and the batch transform need to know about a dataset.

    `stem` names the model stem suited to the resolution: "cifar" (32x32), "tiny" (64x64) or
    "imagenet" (224x224). `mean`/`std` are per-channel, in [0, 1] pixel units.
    """

    name: str
    num_classes: int
    image_size: int
    stem: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
