"""`ShuffleSchedule`: the dynamic-shuffle part of a training recipe, as one object for any training loop.

    schedule = dynshuffle.ShuffleSchedule(model, total_steps=len(loader) * epochs)
    for step, (x, y) in enumerate(batches):
        schedule.step(step)                       # modes, temperature and noise of this step
        loss = criterion(model(x), y) + schedule.loss()
        ...

Every quantity is a pure function of the step, so resuming needs only the step (`state_dict` holds it and,
for the record, the recipe; `load_state_dict` restores the step under the recipe in use).

The recipe (docs/method.md §7 has the measurements behind each default):

- the first `penalty_free_fraction` of the steps (default 0) run in "soft" mode with no penalty: the
  generator moves freely between permutations (the orthogonality penalty makes every permutation a local
  minimum, so applying it from the start pins each layer to the fixed shuffle it starts on). One layer
  needs this phase to learn routing (the routing benchmark uses 0.5); in the classifiers measured it did
  not help, and the default keeps the penalty from the first step, as the recipes do;
- then the penalty weight ramps linearly from 0 to `lambda_` until the straight-through phase: the soft
  matrices settle on permutations;
- the last `ste_fraction` of the steps run in "ste" mode: exact permutations forward, soft gradients
  backward, so that the rest of the network (BatchNorm statistics included) adapts to what inference does;
  the penalty stays at `lambda_`.
- The temperature (when `temperature` is set) goes geometrically to `final_temperature` over the soft phase;
  Gumbel noise of scale `noise` decays linearly to 0 at the end of the soft phase.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import shuffle_modules, total_diversity_reward, total_orthogonality_penalty

__all__ = ["ShuffleRecipe", "ShuffleSchedule", "TRAIN_MODES", "recipe_problems"]

TRAIN_MODES = ("soft", "ste")  # the mode before the straight-through phase


def recipe_problems(lambda_=1.0, penalty_free_fraction=0.0, ste_fraction=0.25, temperature=None,
                    final_temperature=None, noise=0.0, train_mode="soft") -> dict[str, str]:
    """{setting: the rule it breaks} for the settings of a `ShuffleRecipe` ({} when they are valid): the one
    home of these rules, which the training config reports under its own key names."""
    rules = {
        "lambda_": (lambda_ >= 0, "must be >= 0"),
        "penalty_free_fraction": (0.0 <= penalty_free_fraction <= 1.0, "must be in [0, 1]"),
        "ste_fraction": (0.0 <= ste_fraction <= 1.0, "must be in [0, 1]"),
        "temperature": (temperature is None or temperature > 0, "must be > 0"),
        "final_temperature": (final_temperature is None or final_temperature > 0, "must be > 0"),
        "noise": (noise >= 0, "must be >= 0"),
        "train_mode": (train_mode in TRAIN_MODES, f"must be one of {', '.join(TRAIN_MODES)}"),
    }
    problems = {name: rule for name, (ok, rule) in rules.items() if not ok}
    if not problems and penalty_free_fraction + ste_fraction > 1.0 + 1e-9:
        problems["penalty_free_fraction"] = "plus ste_fraction must be <= 1"
    return problems


@dataclass(frozen=True)
class ShuffleRecipe:
    """The schedule's settings; see the module docstring."""

    lambda_: float = 1.0
    penalty_free_fraction: float = 0.0
    ste_fraction: float = 0.25
    temperature: float | None = None
    final_temperature: float | None = None
    noise: float = 0.0
    train_mode: str = "soft"

    def __post_init__(self):
        problems = recipe_problems(**dataclasses.asdict(self))
        if problems:
            raise ValueError("ShuffleSchedule: " + "; ".join(f"{name}={getattr(self, name)!r} {rule}"
                                                            for name, rule in problems.items()))


class ShuffleSchedule:
    """Sets every shuffle module's mode, temperature and noise per step, and weighs its penalties into the loss.

    Args:
        model: the module whose shuffle modules it drives (those inside a StaticDynamicShuffle included).
        total_steps: the number of optimizer steps of the whole run.
        **recipe: the fields of `ShuffleRecipe` (`lambda_`, `penalty_free_fraction`, `ste_fraction`,
            `temperature`, `final_temperature`, `noise`, `train_mode`).
    """

    def __init__(self, model: nn.Module, total_steps: int, **recipe):
        unknown = set(recipe) - {f.name for f in dataclasses.fields(ShuffleRecipe)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(ShuffleRecipe))
            raise ValueError(f"ShuffleSchedule: unknown setting(s) {', '.join(sorted(unknown))} (known: {known})")
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"ShuffleSchedule: total_steps must be a positive integer, got {total_steps!r}")
        self.model = model
        self.total_steps = total_steps
        self.recipe = ShuffleRecipe(**recipe)
        self.current_step = 0

    # ---- the recipe as pure functions of the step ---------------------------------------------------------
    @property
    def ste_start(self) -> int:
        """First step of the straight-through phase (`total_steps` when there is none)."""
        return self.total_steps - math.ceil(self.recipe.ste_fraction * self.total_steps - 1e-9)

    @property
    def penalty_free_end(self) -> int:
        """First step with a penalty (0 when there is no penalty-free phase)."""
        return min(self.ste_start, round(self.recipe.penalty_free_fraction * self.total_steps))

    def mode_at(self, step: int) -> str:
        return "ste" if step >= self.ste_start else self.recipe.train_mode

    def lambda_at(self, step: int) -> float:
        r = self.recipe
        if step < self.penalty_free_end:
            return 0.0
        ramp = self.ste_start - self.penalty_free_end
        if ramp <= 0 or step >= self.ste_start:
            return r.lambda_
        return r.lambda_ * (step - self.penalty_free_end + 1) / ramp

    def temperature_at(self, step: int) -> float | None:
        """None: the schedule leaves the modules' own temperatures alone."""
        r = self.recipe
        if r.temperature is None:
            return None
        end = r.temperature if r.final_temperature is None else r.final_temperature
        t = min(1.0, step / max(1, self.ste_start))
        return r.temperature * (end / r.temperature) ** t

    def noise_at(self, step: int) -> float:
        return self.recipe.noise * max(0.0, 1.0 - step / max(1, self.ste_start))

    # ---- driving a model ------------------------------------------------------------------------------------
    def step(self, step: int) -> None:
        """Set mode, temperature and noise of every shuffle module for optimizer step `step` (0-based)."""
        self.current_step = int(step)
        mode, temperature, noise = self.mode_at(step), self.temperature_at(step), self.noise_at(step)
        for module in shuffle_modules(self.model):
            module.mode, module.noise = mode, noise
            if temperature is not None:
                module.temperature = temperature

    def loss(self) -> Tensor:
        """The shuffle modules' term of the training loss for the current step: `lambda(step)` × (the sum of
        the orthogonality penalties − the sum of the diversity rewards) of the model's last forward; 0 while
        lambda is 0."""
        lam = self.lambda_at(self.current_step)
        if lam == 0.0:
            param = next(self.model.parameters(), None)
            return torch.zeros((), device=param.device if param is not None else None)
        return lam * (total_orthogonality_penalty(self.model) - total_diversity_reward(self.model))

    def finish(self) -> None:
        """After training: every module back to "auto" (exact permutation in eval) at the final temperature,
        without noise."""
        end = self.temperature_at(self.total_steps)
        for module in shuffle_modules(self.model):
            module.mode, module.noise = "auto", 0.0
            if end is not None:
                module.temperature = end

    # ---- resume ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.current_step, "total_steps": self.total_steps,
                "recipe": dataclasses.asdict(self.recipe)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the step. A different recipe or length is allowed (a resumed run may extend training or
        change the recipe): the schedule continues as a function of the step under the settings in use."""
        self.step(int(state["step"]))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.recipe).items())
        return f"ShuffleSchedule(total_steps={self.total_steps}, {fields})"
