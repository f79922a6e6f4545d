"""The routing task: can a shuffle layer learn a *per-input* permutation?

C channels, each with its own mean (a shuffled `linspace(-2, 2, C)`) plus Gaussian noise, on 4x4 pixels.
Every sample is scrambled by the inverse of one of K target permutations drawn from the layer's own family
(`compose_permutation` of K random factor pairs (A, B)), chosen at random per sample. The layer must undo
the scramble, i.e. apply that sample's target permutation; the loss is the MSE to the clean tensor. The
scramble shows in the pooled channel means, so a working generator can decode it.

A fixed or learned (input-independent) shuffle can be right on at most one of the K targets: its exact
recovery is capped at about 1/K. `benchmarks/bench_routing.py` runs the task at the sizes of docs/method.md §7.1.

    from dynshuffle.profiling.routing import run_routing
    result = run_routing(DynamicShuffle(48, 2), permutations=8, seed=0)
    result.exact, result.channel_accuracy, result.distinct
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dynshuffle.layers import functional as DF
from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.schedule import ShuffleSchedule

__all__ = ["RoutingTask", "RoutingResult", "evaluate_routing", "run_routing", "ROUTING_SCHEDULE"]

# The schedule a single layer needs to learn routing: half of the steps without the penalty, which would
# otherwise pin every layer to the fixed shuffle it starts on (docs/method.md §7.1). The other settings are
# `ShuffleSchedule`'s defaults; `run_routing(schedule=...)` overrides any of them.
ROUTING_SCHEDULE = {"penalty_free_fraction": 0.5}


@dataclass
class RoutingTask:
    """K target permutations `(K, C)` and the channel means `(C,)` of one routing problem."""

    targets: Tensor
    means: Tensor
    noise_std: float = 0.3
    size: int = 4

    @classmethod
    def draw(cls, channels: int, groups: int, factors: tuple[int, int], permutations: int,
             generator: torch.Generator, noise_std: float = 0.3, size: int = 4) -> "RoutingTask":
        n1, n2 = factors
        perm_a = torch.stack([torch.randperm(n1, generator=generator) for _ in range(permutations)])
        perm_b = torch.stack([torch.randperm(n2, generator=generator) for _ in range(permutations)])
        targets = DF.compose_permutation(perm_a, perm_b, groups)
        means = torch.linspace(-2.0, 2.0, channels)[torch.randperm(channels, generator=generator)]
        return cls(targets, means, noise_std, size)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """`(scrambled input, clean target, target index k)`; applying `targets[k]` to the input gives the clean
        tensor: `scrambled[:, targets[k]] == clean`."""
        c = self.means.numel()
        clean = self.means.view(1, c, 1, 1) + self.noise_std * torch.randn(
            batch_size, c, self.size, self.size, generator=generator)
        k = torch.randint(self.targets.shape[0], (batch_size,), generator=generator)
        inverse = DF.invert_permutation(self.targets[k])
        return DF.permute_channels(clean, inverse), clean, k


@dataclass
class RoutingResult:
    exact: float               # fraction of samples whose whole permutation is the target
    channel_accuracy: float    # fraction of output channels that read the right input channel
    distinct: int              # distinct permutations over the evaluation samples
    permutations: int          # K
    final_loss: float
    seconds: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _factors_of(module: nn.Module, channels: int, groups: int) -> tuple[int, int]:
    inner = getattr(module, "dynamic", module)
    if hasattr(inner, "n1"):
        return inner.n1, inner.n2
    return DF.factorize(channels // groups)


@torch.no_grad()
def evaluate_routing(module: nn.Module, task: RoutingTask, samples: int = 1024, seed: int = 12345) -> dict:
    """Exact recovery, channel accuracy and distinct permutations of `module` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    x, clean, k = task.batch(samples, gen)
    was_training = module.training
    module.eval()
    if isinstance(module, ChannelShuffle):
        perm = DF.channel_shuffle_index(x.shape[1], module.groups).expand(samples, -1)
    else:
        perm = module.permutation(x)
    module.train(was_training)
    right = perm == task.targets[k]
    return {"exact": right.all(1).float().mean().item(), "channel_accuracy": right.float().mean().item(),
            "distinct": int(torch.unique(perm, dim=0).shape[0])}


def run_routing(module: nn.Module, *, permutations: int = 8, steps: int = 3000, batch_size: int = 64,
                lr: float = 3e-3, noise_std: float = 0.3, seed: int = 0, eval_samples: int = 1024,
                schedule: dict | None = None) -> RoutingResult:
    """Train `module` on a routing task drawn from its own permutation family and evaluate it.

    The loop is plain Adam on `module.parameters()` plus `ShuffleSchedule(module, steps, **ROUTING_SCHEDULE,
    **schedule)`: whatever the layer needs to learn must live in its defaults and in that schedule.
    A module without parameters (`ChannelShuffle`) is only evaluated.
    """
    channels, groups = getattr(module, "channels", None), getattr(module, "groups", None)
    if channels is None or groups is None:
        raise ValueError("run_routing needs a module with `channels` and `groups` (or a ChannelShuffle with "
                         "`channels` set as an attribute)")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    task = RoutingTask.draw(channels, groups, _factors_of(module, channels, groups), permutations, gen, noise_std)
    start, loss_value = time.perf_counter(), float("nan")
    params = [p for p in module.parameters() if p.requires_grad]
    if params:
        optimizer = torch.optim.Adam(params, lr=lr)
        sched = ShuffleSchedule(module, steps, **{**ROUTING_SCHEDULE, **(schedule or {})})
        module.train()
        for step in range(steps):
            sched.step(step)
            x, clean, _ = task.batch(batch_size, gen)
            loss = F.mse_loss(module(x), clean) + sched.loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss_value = loss.item()
        sched.finish()
    metrics = evaluate_routing(module, task, eval_samples)
    return RoutingResult(permutations=permutations, final_loss=loss_value,
                         seconds=time.perf_counter() - start, **metrics)
