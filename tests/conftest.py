"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread per test module: the suite's tensors are tiny, and on a machine shared with other
    jobs OpenMP threads waiting for a preempted peer slow every small op down by up to 100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
