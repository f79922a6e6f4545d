"""Evaluation: top-1/top-5 with the exact permutation (and with the soft matrices), latency, checkpoints."""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dynshuffle.checkpoints import build_model_from_checkpoint
from dynshuffle.data.loaders import ShardSampler, make_loader
from dynshuffle.data.registry import build_datasets, get_dataset_spec
from dynshuffle.data.transforms import BatchTransform
from dynshuffle.inspection.stats import permutation_stats
from dynshuffle.layers.base import has_shuffle_modules, shuffle_modules
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.modes import deploy_mode, shuffle_mode
from dynshuffle.profiling.counting import count_macs, count_params
from dynshuffle.profiling.timing import median_time, time_interleaved
from dynshuffle.utils import arg

from . import distributed as D


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on CUDA with `dtype` (bf16/fp16); a no-op context elsewhere or with dtype None."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def progress_enabled(setting: bool | None, ctx: D.DistContext | None = None) -> bool:
    if ctx is not None and not ctx.is_main:
        return False
    return sys.stderr.isatty() if setting is None else bool(setting)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, transform, device: torch.device, *,
             amp_dtype: torch.dtype | None = None, ctx: D.DistContext | None = None,
             progress: bool = False, desc: str = "eval", max_batches: int | None = None) -> dict:
    """Loss, top-1 and top-5 of `model` (in eval mode, whatever shuffle mode it is set to) over `loader`
    (its first `max_batches` batches when given).

    Under DDP each process evaluates its shard; the sums are all-reduced, so every rank returns the totals.
    """
    ctx = ctx or D.DistContext(device=device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for i, (images, labels) in enumerate(bar):
        if max_batches is not None and i >= max_batches:
            break
        images = transform(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        sums[0] += F.cross_entropy(logits, labels, reduction="sum")
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += labels.numel()
        if progress and i % 10 == 0:
            n = max(1.0, float(sums[3]))
            bar.set_postfix(loss=f"{float(sums[0]) / n:.3f}", acc=f"{float(sums[1]) / n:.3f}",
                            img_s=f"{n / (time.perf_counter() - start):.0f}")
    bar.close()
    D.all_reduce_sum(sums, ctx)
    model.train(was_training)
    n = max(1.0, float(sums[3]))
    return {"loss": float(sums[0]) / n, "top1": float(sums[1]) / n, "top5": float(sums[2]) / n,
            "count": int(sums[3]), "seconds": time.perf_counter() - start}


def evaluate_modes(model: nn.Module, loader: DataLoader, transform, device: torch.device, *,
                   soft: bool = True, **kwargs) -> dict:
    """{"hard": metrics, "soft": metrics or None}: the exact permutation (what a deployed model computes)
    and, for models with learned/dynamic shuffles, the soft matrices (the train/inference gap check).
    Fixed-shuffle models are evaluated once ("hard") and get "soft": None. Every module's mode is restored."""
    if not has_shuffle_modules(model):
        return {"hard": evaluate(model, loader, transform, device, **kwargs), "soft": None}
    with shuffle_mode(model, "frozen"):
        result = {"hard": evaluate(model, loader, transform, device, desc="eval hard", **kwargs), "soft": None}
    if soft:
        with shuffle_mode(model, "soft"):
            result["soft"] = evaluate(model, loader, transform, device, desc="eval soft", **kwargs)
    return result


DATA_DEPENDENT_FRACTION = 0.05  # a layer is data-dependent when >= 5 % of samples leave its most common permutation


def first_images(loader: DataLoader, transform, device: torch.device, count: int) -> torch.Tensor:
    """The first `count` (or fewer) images of `loader`, transformed as for evaluation."""
    chunks, seen = [], 0
    for images, _ in loader:
        chunks.append(transform(images.to(device)))
        seen += chunks[-1].shape[0]
        if seen >= count:
            break
    return torch.cat(chunks)[:count]


def dynamic_dependence(model: nn.Module, images: torch.Tensor, threshold: float = DATA_DEPENDENT_FRACTION) -> dict | None:
    """How data-dependent the dynamic shuffles of `model` are on `images` (exact permutations, eval mode).

    Returns None for a model without dynamic shuffles, else {"dynamic_layers": number of dynamic layers where at
    least `threshold` of the samples are off the layer's most common permutation, "distinct_median": median over
    the dynamic layers of the number of distinct permutations, "layers": number of dynamic layers}.
    """
    if not any(isinstance(m, DynamicShuffle) for m in shuffle_modules(model)):
        return None
    stats = permutation_stats(model, images, keep_permutations=True)  # read-only, in any train/eval mode
    dependent, distinct = 0, []
    for s in stats.values():
        if s["kind"] != "dynamic":
            continue
        _, counts = torch.unique(s["permutations"], dim=0, return_counts=True)
        dependent += int(1.0 - float(counts.max()) / s["samples"] >= threshold)
        distinct.append(int(counts.numel()))
    return {"dynamic_layers": dependent, "distinct_median": float(statistics.median(distinct)),
            "layers": len(distinct)}


@torch.inference_mode()
def measure_latency(model: nn.Module, input_size: tuple[int, ...], device: str | torch.device = "cpu",
                    warmup: int = 10, runs: int = 50) -> float:
    """Median wall time (ms) of one forward of the deployed model (`deploy_mode`: eval, exact permutations) on a
    batch of `input_size` (e.g. (1, 3, 32, 32)); the model is left as it was."""
    device = torch.device(device)
    x = torch.randn(*input_size, device=device)
    with deploy_mode(model):
        return 1000.0 * median_time(lambda: model(x), device, warmup, runs)


@torch.inference_mode()
def measure_latencies(models: Mapping[str, nn.Module], input_size: tuple[int, ...], baseline: str, *,
                      device: str | torch.device = "cpu", threads: int | None = 1, repeats: int = 30,
                      min_time: float = 0.02) -> dict[str, dict]:
    """Latency of each deployed model (`deploy_mode`) and its ratio to `models[baseline]`, all timed in turn
    (`profiling.timing.time_interleaved`) on one random batch of `input_size`, with `threads` torch threads
    (None: the current setting): a slow phase of a shared machine slows every model alike, so the ratios
    stay comparable. Returns {name: {"ms": median ms of one forward, "ratio": ms / the baseline's ms}};
    the models are left as they were, and so is the thread setting."""
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of the models ({', '.join(models)})")
    device = torch.device(device)
    x = torch.randn(*input_size, device=device)
    saved_threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(deploy_mode(model))
        if threads is not None:
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, saved_threads)
        seconds = time_interleaved({name: (lambda m=model: m(x)) for name, model in models.items()}, device,
                                   warmup=2, repeats=repeats, min_time=min_time)
    base = seconds[baseline]
    return {name: {"ms": 1000.0 * t, "ratio": t / base} for name, t in seconds.items()}


def profile_row(model: nn.Module, image_size: int) -> dict:
    """{"params", "macs"} of `model` for one (3, image_size, image_size) image (see profiling.counting)."""
    shape = (3, image_size, image_size)
    return {"params": int(count_params(model)), "macs": int(count_macs(model, shape))}


def evaluate_checkpoint(path: str | Path, *, data: str | None = None, data_root: str | None = None,
                        split: str = "val", batch_size: int = 256, device: str = "auto", workers: int = 0,
                        progress: bool | None = None) -> dict:
    """Rebuild the model of a checkpoint and evaluate it on a split of its dataset (or of `data`).

    Returns {"checkpoint", "dataset", "split", "epoch", "hard": {...}, "soft": {...} or None, "params", "macs"}.
    """
    if split not in ("val", "train"):
        raise ValueError(f"{arg('split', '--split')} must be 'val' or 'train', got {split!r}")
    dev = D.resolve_device(device)
    model, meta = build_model_from_checkpoint(path, dev)
    train_cfg = meta.get("config") or {}
    data_cfg = train_cfg.get("data", {})
    name = data or data_cfg.get("name")
    if not name:
        raise ValueError(f"{path}: the checkpoint does not name its dataset; pass {arg('data=NAME', '--dataset NAME')}")
    root = data_root if data_root is not None else data_cfg.get("root")
    spec = get_dataset_spec(name)
    train_set, val_set = build_datasets(name, root=root)
    dataset = val_set if split == "val" else train_set
    loader = make_loader(dataset, batch_size, ShardSampler(len(dataset)), workers, dev)
    transform = BatchTransform(spec, train=False).to(dev)
    result = evaluate_modes(model, loader, transform, dev, progress=progress_enabled(progress))
    return {"checkpoint": str(path), "dataset": spec.name, "split": split, "epoch": meta.get("epoch"),
            **result, **profile_row(model, spec.image_size)}
