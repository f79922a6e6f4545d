"""dynshuffle.profiling.timing: callables timed in turn, medians, the device of a model."""
import time

import pytest
import torch
from torch import nn

from dynshuffle.profiling.timing import device_of, median_time, time_interleaved, time_pair


def test_device_of():
    assert device_of(nn.ReLU()) == torch.device("cpu")
    assert device_of(nn.Linear(2, 2)) == torch.device("cpu")


def test_time_interleaved_counts_and_orders():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.002)

    t = time_interleaved({"fast": fast, "slow": slow}, warmup=2, repeats=3)
    assert calls == {"fast": 5, "slow": 5}
    assert t["slow"] > t["fast"] >= 0
    # min_time sets the calls per measurement from the fastest callable (here about a microsecond): a small one
    # keeps them at a few, so that the slow callable's sleeps add up to milliseconds, not seconds
    slow_s, fast_s = time_pair(slow, fast, torch.device("cpu"), repeats=3, min_time=2e-5)
    assert slow_s >= 0.0015 and slow_s > fast_s
    assert median_time(slow, warmup=0, runs=2) >= 0.0015
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"fast": fast}, repeats=0)
