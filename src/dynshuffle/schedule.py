"""`ShuffleSchedule`: the dynamic-shuffle part of a training recipe, as one object for any training loop.

    schedule = dynshuffle.ShuffleSchedule(model, total_steps=len(loader) * epochs)
    for step, (x, y) in enumerate(batches):
        schedule.step(step)                       # modes, temperature and noise of this step
        loss = criterion(model(x), y) + schedule.penalty()
        ...

Every quantity is a pure function of the step, so resuming needs only the step (`state_dict` holds it and,
for the record, the recipe; `load_state_dict` restores the step under the recipe in use).

The recipe (docs/method.md §7 has the measurements behind each default):

- `explore_fraction` of the steps run in "soft" mode, with no penalty: the generator moves freely between
  permutations (the orthogonality penalty makes every permutation a local minimum, so applying it from the
  start pins each layer to the fixed shuffle it starts on);
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

from .layers import orthogonality_loss, shuffle_modules


@dataclass(frozen=True)
class ShuffleRecipe:
    """The schedule's settings; see the module docstring."""

    lambda_: float = 1.0
    explore_fraction: float = 0.5
    ste_fraction: float = 0.25
    temperature: float | None = None
    final_temperature: float | None = None
    noise: float = 0.0
    train_mode: str = "soft"

    def __post_init__(self):
        checks = {
            "lambda_": self.lambda_ >= 0,
            "explore_fraction": 0.0 <= self.explore_fraction <= 1.0,
            "ste_fraction": 0.0 <= self.ste_fraction <= 1.0,
            "temperature": self.temperature is None or self.temperature > 0,
            "final_temperature": self.final_temperature is None or self.final_temperature > 0,
            "noise": self.noise >= 0,
            "train_mode": self.train_mode in ("soft", "ste"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ShuffleSchedule: invalid {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)} "
                             f"(fractions in [0, 1], lambda_ and noise >= 0, temperatures > 0, "
                             f"train_mode 'soft' or 'ste')")
        if self.explore_fraction + self.ste_fraction > 1.0 + 1e-9:
            raise ValueError(f"ShuffleSchedule: explore_fraction ({self.explore_fraction}) + ste_fraction "
                             f"({self.ste_fraction}) exceed 1")


class ShuffleSchedule:
    """Sets every shuffle module's mode, temperature and noise per step, and weighs the penalty.

    Args:
        model: the module whose `DynamicShuffle` / `LearnedShuffle` / `StaticDynamicShuffle` layers it drives.
        total_steps: the number of optimizer steps of the whole run.
        **recipe: the fields of `ShuffleRecipe` (`lambda_`, `explore_fraction`, `ste_fraction`,
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
    def explore_end(self) -> int:
        return min(self.ste_start, round(self.recipe.explore_fraction * self.total_steps))

    def mode_at(self, step: int) -> str:
        return "ste" if step >= self.ste_start else self.recipe.train_mode

    def lambda_at(self, step: int) -> float:
        r = self.recipe
        if step < self.explore_end:
            return 0.0
        ramp = self.ste_start - self.explore_end
        if ramp <= 0 or step >= self.ste_start:
            return r.lambda_
        return r.lambda_ * (step - self.explore_end + 1) / ramp

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

    def penalty(self) -> Tensor:
        """`lambda(step)` × the orthogonality penalties of the model's last forward (0 when lambda is 0)."""
        lam = self.lambda_at(self.current_step)
        if lam == 0.0:
            param = next(self.model.parameters(), None)
            return torch.zeros((), device=param.device if param is not None else None)
        return lam * orthogonality_loss(self.model)

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
