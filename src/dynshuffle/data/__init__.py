"""Datasets and augmentations for dynshuffle, without torchvision.

`registry.build_datasets(name, root, download)` returns (train, val) datasets whose items are uint8 image
tensors (3, S, S) and int labels; `transforms.BatchTransform(spec, train)` turns uint8 batches into
normalised float32 (with random crop + flip for 32x32 training data), on CPU or GPU. `spec.DatasetSpec`
describes a dataset, `errors.DataError` is what a missing or corrupt file raises. See docs/data.md.
"""
