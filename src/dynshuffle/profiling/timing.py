"""One way to time things: callables run in turn, medians reported, the device synchronised around
every measurement. The layer and model benchmarks, the ONNX benchmark and any latency figure use it.

Absolute times on a shared or throttled machine drift; interleaving the callables of one comparison
(every repeat runs each of them once, in turn) makes a slow phase hit them all alike, so their ratio
stays meaningful. `training.evaluate.measure_latency(model, shape, device, warmup, runs)` is
`1e3 * median_time(lambda: model(x), device, warmup, runs)` with `x` on `device`, in eval mode.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["device_of", "synchronize", "time_interleaved", "time_pair", "median_time"]


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _calls_per_sample(fns: Mapping[str, Callable[[], object]], device, min_time: float) -> int:
    """Calls per measurement so that one measurement of the fastest callable lasts about `min_time`."""
    if min_time <= 0:
        return 1
    fastest = float("inf")
    for fn in fns.values():
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        fastest = min(fastest, time.perf_counter() - start)
    return max(1, int(min_time / max(fastest, 1e-6)))


def time_interleaved(fns: Mapping[str, Callable[[], object]], device: torch.device | str | None = None, *,
                     warmup: int = 1, repeats: int = 15, min_time: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each callable in `fns`, timed in turn.

    `warmup` rounds run every callable untimed; then each of `repeats` rounds measures every callable
    once, in turn. `min_time` > 0 repeats each callable inside one measurement (the same count for
    all) so that a measurement of the fastest lasts about `min_time` (timer resolution).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    inner = _calls_per_sample(fns, device, min_time)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            synchronize(device)
            samples[key].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_pair(candidate: Callable[[], object], baseline: Callable[[], object], device: torch.device | str | None,
              repeats: int = 15, min_time: float = 0.02) -> tuple[float, float]:
    """Median seconds per call of `candidate` and `baseline`, timed alternately after a warm-up."""
    t = time_interleaved({"candidate": candidate, "baseline": baseline}, device, warmup=2, repeats=repeats,
                         min_time=min_time)
    return t["candidate"], t["baseline"]


def median_time(fn: Callable[[], object], device: torch.device | str | None = None, warmup: int = 10,
                runs: int = 50) -> float:
    """Median seconds of one call of `fn` over `runs` single-call measurements after `warmup` calls."""
    return time_interleaved({"fn": fn}, device, warmup=warmup, repeats=runs)["fn"]
