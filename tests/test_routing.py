"""The routing task: a dynamic layer learns a per-input permutation; input-independent shuffles cannot."""
import pytest
import torch

from dynshuffle import ChannelShuffle, DynamicShuffle, LearnedShuffle
from dynshuffle import functional as DF
from dynshuffle.routing import RoutingTask, run_routing


def test_task_scramble_is_undone_by_its_target():
    gen = torch.Generator().manual_seed(0)
    task = RoutingTask.draw(24, 2, (3, 4), 4, gen)
    x, clean, k = task.batch(16, gen)
    assert torch.equal(DF.permute_channels(x, task.targets[k]), clean)
    assert len({tuple(t.tolist()) for t in task.targets}) == 4


def test_dynamic_layer_learns_per_input_permutations():
    """Regression guard for the layer defaults and ShuffleSchedule's (a small case of the benchmark)."""
    torch.manual_seed(0)
    result = run_routing(DynamicShuffle(24, 2), permutations=4, steps=800, seed=0)
    assert result.exact >= 0.95 and result.distinct >= 4


@pytest.mark.parametrize("make", [lambda: LearnedShuffle(24, 2), lambda: ChannelShuffle(2)])
def test_input_independent_shuffles_are_capped(make):
    torch.manual_seed(0)
    module = make()
    module.channels = 24  # ChannelShuffle does not know its width
    result = run_routing(module, permutations=4, steps=300, seed=0)
    assert result.distinct == 1 and result.exact <= 0.25 + 0.05
