"""dynshuffle.training.optim: weight-decay exemptions and the per-iteration learning-rate schedules."""
import pytest

from dynshuffle.models.registry import create_model
from dynshuffle.training.optim import LR_SCHEDULES, LRSchedule, parameter_groups


def test_weight_decay_exemptions():
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="learned")
    model.add_module("gen", create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic"))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = parameter_groups(model, 5e-4, exempt_norm_bias=True)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert any(n.endswith("generator.head.bias") for n in exempt)  # generator logit biases
    assert any(n.endswith("shuffle.logits_a") for n in exempt)  # learned shuffle logits
    assert all(not n.endswith("bias") for n in decayed)
    assert all(p.ndim > 1 for p in decay["params"])
    assert any(n.endswith("generator.head.weight") for n in decayed)
    (everything,) = parameter_groups(model, 5e-4, exempt_norm_bias=False)
    assert len(everything["params"]) == len(names)


def test_lr_schedules():
    cos = LRSchedule("cosine", total_steps=100, warmup_steps=10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    lin = LRSchedule("linear", total_steps=100, min_factor=0.1)
    assert lin(0) == 1.0 and lin(50) == pytest.approx(0.55) and lin(100) == pytest.approx(0.1)
    step = LRSchedule("step", total_steps=100, milestones=[50, 75], gamma=0.1)
    assert (step(49), step(50), step(80)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))
    assert LRSchedule("constant", 10, warmup_steps=2)(1) == 1.0


def test_the_schedule_names_are_one_list():
    assert LR_SCHEDULES == ("cosine", "linear", "step", "constant")
    assert [LRSchedule(name, 10)(0) for name in LR_SCHEDULES] == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown schedule 'poly' \\(known: cosine, linear, step, constant\\)"):
        LRSchedule("poly", 10)
