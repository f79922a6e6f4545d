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


def randomize_parameters(module, scale=3.0, seed=0):
    """Random weights for every parameter of `module` (a generator: permutations that differ per input and
    whose argmaxes collide often). Imported by test modules: `from conftest import randomize_parameters`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module
