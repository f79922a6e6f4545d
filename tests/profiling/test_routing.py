"""dynshuffle.profiling.routing: a dynamic layer learns a per-input permutation; input-independent shuffles
cannot."""
import pytest
import torch

from dynshuffle.layers import functional as DF
from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.profiling.routing import ROUTING_SCHEDULE, RoutingTask, evaluate_routing, run_routing


def test_task_scramble_is_undone_by_its_target():
    gen = torch.Generator().manual_seed(0)
    task = RoutingTask.draw(24, 2, (3, 4), 4, gen)
    x, clean, k = task.batch(16, gen)
    assert torch.equal(DF.permute_channels(x, task.targets[k]), clean)
    assert len({tuple(t.tolist()) for t in task.targets}) == 4


def test_dynamic_layer_learns_per_input_permutations():
    """Regression guard for the layer defaults and the routing schedule (a small case of the benchmark)."""
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


def test_the_routing_schedule_is_half_penalty_free_and_evaluation_leaves_the_module_alone(randomize):
    assert ROUTING_SCHEDULE == {"penalty_free_fraction": 0.5}
    module = randomize(DynamicShuffle(24, 2), scale=1.0).train()
    gen = torch.Generator().manual_seed(0)
    task = RoutingTask.draw(24, 2, (module.n1, module.n2), 3, gen)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    metrics = evaluate_routing(module, task, samples=64)
    assert module.training and all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    x, _, k = task.batch(64, torch.Generator().manual_seed(12345))
    right = module.eval().permutation(x) == task.targets[k]
    assert metrics["exact"] == right.all(1).float().mean().item()
    assert metrics["channel_accuracy"] == right.float().mean().item()
