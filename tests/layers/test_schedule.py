"""dynshuffle.layers.schedule: ShuffleSchedule, the dynamic-shuffle recipe as a pure function of the step."""
import pytest
import torch
from torch import nn

from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.schedule import ShuffleRecipe, ShuffleSchedule, recipe_problems
from dynshuffle.layers.sds import StaticDynamicShuffle


def _model():
    return nn.Sequential(DynamicShuffle(12, 2), StaticDynamicShuffle(12, 2), LearnedShuffle(12, 3))


def _shuffles(model):
    return [model[0], model[1].dynamic, model[2]]


def test_phases_penalty_free_ramp_then_straight_through():
    sched = ShuffleSchedule(_model(), 100, lambda_=2.0, penalty_free_fraction=0.5, ste_fraction=0.25)
    assert sched.penalty_free_end == 50 and sched.ste_start == 75
    assert [sched.mode_at(s) for s in (0, 74, 75, 99)] == ["soft", "soft", "ste", "ste"]
    assert sched.lambda_at(0) == sched.lambda_at(49) == 0.0
    # a linear ramp over the 25 steps 50..74
    assert [sched.lambda_at(s) for s in (50, 60, 74)] == [pytest.approx(2.0 * 1 / 25), pytest.approx(2.0 * 11 / 25),
                                                          pytest.approx(2.0)]
    assert sched.lambda_at(99) == 2.0


def test_defaults_are_the_recipes_penalty_from_the_first_step():
    """The default has no penalty-free phase (the recipes' setting, docs/method.md §7.3): the ramp starts at
    step 0 and straight-through takes the last 25 %."""
    assert ShuffleRecipe() == ShuffleRecipe(lambda_=1.0, penalty_free_fraction=0.0, ste_fraction=0.25)
    sched = ShuffleSchedule(_model(), 8)
    assert sched.penalty_free_end == 0 and sched.ste_start == 6
    assert [sched.lambda_at(s) for s in range(8)] == [pytest.approx(v) for v in (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1, 1, 1)]
    assert [sched.mode_at(s) for s in range(8)] == ["soft"] * 6 + ["ste"] * 2


def test_step_sets_every_module_and_finish_returns_to_auto():
    model = _model()
    sched = ShuffleSchedule(model, 10, ste_fraction=0.5, temperature=2.0, final_temperature=0.5, noise=1.0)
    sched.step(0)
    assert all(m.mode == "soft" and m.temperature == 2.0 and m.noise == 1.0 for m in _shuffles(model))
    sched.step(5)
    assert all(m.mode == "ste" and m.temperature == pytest.approx(0.5) and m.noise == 0.0 for m in _shuffles(model))
    sched.step(2)  # a pure function of the step: going back gives the earlier values
    assert all(m.mode == "soft" and 0.5 < m.temperature < 2.0 and 0 < m.noise < 1 for m in _shuffles(model))
    sched.finish()
    assert all(m.mode == "auto" and m.noise == 0.0 for m in _shuffles(model))


def test_temperature_left_alone_by_default():
    model = nn.Sequential(DynamicShuffle(12, 2, temperature=3.0))
    ShuffleSchedule(model, 10).step(3)
    assert model[0].temperature == 3.0


def test_loss_is_lambda_times_penalties_minus_diversity_rewards():
    torch.manual_seed(0)
    model = nn.Sequential(DynamicShuffle(12, 2, head_init=0.5, diversity=0.5), StaticDynamicShuffle(12, 2),
                          LearnedShuffle(12, 3)).train()
    sched = ShuffleSchedule(model, 10, lambda_=0.5, penalty_free_fraction=0.2, ste_fraction=0.0)
    x = torch.randn(4, 12, 3, 3)
    sched.step(0)
    model(x)
    assert sched.loss().item() == 0.0  # penalty-free: no pull toward the nearest permutation
    sched.step(9)
    model(x)
    shuffles = _shuffles(model)
    assert shuffles[0].diversity_reward is not None
    expected = 0.5 * (sum(m.orthogonality_penalty for m in shuffles) - shuffles[0].diversity_reward)
    torch.testing.assert_close(sched.loss(), expected)
    sched.loss().backward()
    assert model[0].generator.head.bias.grad.abs().sum() > 0


def test_state_dict_round_trip_restores_the_step():
    model = _model()
    sched = ShuffleSchedule(model, 20, ste_fraction=0.5)
    sched.step(15)
    state = sched.state_dict()
    fresh = ShuffleSchedule(_model(), 20, ste_fraction=0.5)
    fresh.load_state_dict(state)
    assert fresh.current_step == 15 and all(m.mode == "ste" for m in _shuffles(fresh.model))


@pytest.mark.parametrize("kwargs,match", [
    ({"lamda": 1.0}, r"unknown setting\(s\) lamda"),
    ({"explore_fraction": 0.5}, r"unknown setting\(s\) explore_fraction"),
    ({"ste_fraction": 1.5}, r"ste_fraction=1.5 must be in \[0, 1\]"),
    ({"penalty_free_fraction": 0.8, "ste_fraction": 0.4}, r"penalty_free_fraction=0.8 plus ste_fraction must be <= 1"),
    ({"train_mode": "frozen"}, r"train_mode='frozen' must be one of soft, ste"),
    ({"noise": -1.0, "temperature": 0.0}, r"temperature=0.0 must be > 0; noise=-1.0 must be >= 0"),
])
def test_bad_settings_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShuffleSchedule(_model(), 10, **kwargs)


def test_total_steps_must_be_positive():
    with pytest.raises(ValueError, match="total_steps"):
        ShuffleSchedule(_model(), 0)


def test_recipe_problems_name_each_setting_and_its_rule():
    assert recipe_problems() == {}
    assert recipe_problems(lambda_=-1.0, final_temperature=0.0) == {"lambda_": "must be >= 0",
                                                                     "final_temperature": "must be > 0"}
