"""dynshuffle.training.optim: weight-decay exemptions and the per-iteration learning-rate schedules."""
import pytest
import torch

from dynshuffle.models.registry import create_model
from dynshuffle.training.config import Config, apply_overrides, validate
from dynshuffle.training.optim import LR_SCHEDULES, LRSchedule, parameter_groups, set_lr


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


def test_generator_weight_decay_is_a_group_of_its_own():
    """`generator_weight_decay` moves exactly the generators' decayed weights (their linear layers' weights;
    their biases and BatchNorm stay exempt) into a third group with that decay; the network keeps its own."""
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic")
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay, generator = parameter_groups(model, 5e-4, generator_weight_decay=0.0)
    assert (decay["weight_decay"], no_decay["weight_decay"], generator["weight_decay"]) == (5e-4, 0.0, 0.0)
    in_generator = {names[id(p)] for p in generator["params"]}
    assert in_generator == {n for n, p in model.named_parameters() if ".generator." in n and p.ndim > 1}
    assert len(in_generator) == 2 * 16  # the input projection and the head of each of the 16 generators
    assert not any(".generator." in names[id(p)] for p in decay["params"])
    assert any(n.endswith("generator.head.bias") for n in map(names.get, map(id, no_decay["params"])))
    assert len(decay["params"]) + len(no_decay["params"]) + len(generator["params"]) == len(names)
    static = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar")
    assert len(parameter_groups(static, 5e-4, generator_weight_decay=0.0)) == 2  # no generator: no empty group


def test_generator_lr_scale_moves_the_generators_weights_at_its_multiple_of_the_lr():
    """`generator_lr_scale` puts the generators' weights in their own group, decayed as the network, and
    `set_lr` gives that group its multiple of the learning rate; the other groups get the learning rate."""
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic")
    groups = parameter_groups(model, 5e-4, generator_lr_scale=10.0)
    assert len(groups) == 3 and groups[2]["weight_decay"] == 5e-4 and groups[2]["lr_scale"] == 10.0
    assert len(groups[2]["params"]) == 2 * 16
    optimizer = torch.optim.SGD(groups, lr=0.1)
    set_lr(optimizer, 0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 0.02, pytest.approx(0.2)]
    weight = groups[2]["params"][0]
    before = weight.detach().clone()
    weight.grad = torch.ones_like(weight)
    for p in groups[0]["params"] + groups[1]["params"] + groups[2]["params"][1:]:
        p.grad = None
    optimizer.step()
    # One plain SGD step: the weight moves by lr x scale x (gradient + decay x weight).
    torch.testing.assert_close(weight.detach(), before - 0.2 * (1 + 5e-4 * before))
    with pytest.raises(ValueError, match="optim.generator_lr_scale.*must be > 0"):
        validate(apply_overrides(Config(), ["optim.generator_lr_scale=0"]))


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
