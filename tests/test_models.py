"""ShuffleNetV1/V2 definitions, the registry and the static -> dynamic checkpoint upgrade."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import dynshuffle
from dynshuffle.layers import ChannelShuffle, DynamicShuffle, LearnedShuffle, StaticDynamicShuffle
from dynshuffle.models import (
    ShuffleNetV1,
    ShuffleNetV2,
    create_model,
    list_models,
    load_compatible_state_dict,
    model_from_config,
    register_model,
)
from dynshuffle.models.shufflenet_v1 import v1_stem_channels, v1_supported
from dynshuffle.profiling import count_macs, count_params



def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _warm_bn(model: nn.Module, size: int, steps: int = 2) -> None:
    """Move BatchNorm running statistics away from their init, so checkpoint tests are not trivial."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(2, 3, size, size))


# ------------------------------------------------------------------------------------------- structure

def test_torchvision_parameter_counts_exact():
    # torchvision's shufflenet_v2_x{0_5,1_0,1_5,2_0} (static shuffle, ImageNet stem, 1000 classes).
    expected = {0.5: 1_366_792, 1.0: 2_278_604, 1.5: 3_503_624, 2.0: 7_393_996}
    for width, count in expected.items():
        assert _params(ShuffleNetV2(width)) == count, width


def test_v2_stage_widths_and_head():
    m = ShuffleNetV2(2.0)
    assert [m.stage2[0].out_channels, m.stage3[0].out_channels, m.stage4[0].out_channels] == [244, 488, 976]
    assert m.conv5[0].out_channels == 2048 and m.num_features == 2048
    assert [len(m.stage2), len(m.stage3), len(m.stage4)] == [4, 8, 4]
    # torchvision: branch1 only exists (has layers) in stride-2 units.
    assert len(m.stage2[0].branch1) > 0 and len(m.stage2[1].branch1) == 0


# The official ShuffleNet-Series table (params rounded to 0.1 M): our V1 must round to the same value.
V1_OFFICIAL_PARAMS_M = {(3, 0.5): 0.7, (3, 1.0): 1.9, (3, 1.5): 3.4, (3, 2.0): 5.4,
                        (8, 0.5): 1.0, (8, 1.0): 2.4, (8, 1.5): 4.3, (8, 2.0): 6.5}


@pytest.mark.parametrize("groups,width", sorted(V1_OFFICIAL_PARAMS_M))
def test_v1_parameter_counts_match_official_table(groups, width):
    # Tolerance: the published numbers are rounded to 0.1 M, so |ours - table| <= 0.05 M.
    params = _params(ShuffleNetV1(groups, width))
    assert abs(params / 1e6 - V1_OFFICIAL_PARAMS_M[(groups, width)]) <= 0.05 + 1e-9


def test_v1_structure():
    m = ShuffleNetV1(3, 1.0)
    assert v1_stem_channels(3, 0.5) == 12 and v1_stem_channels(8, 0.5) == 16 and v1_stem_channels(3, 2.0) == 48
    first = m.stage2[0]
    assert first.compress[0].groups == 1, "stage 2's first pointwise conv is not grouped"
    assert m.stage2[1].compress[0].groups == 3 and first.expand[0].groups == 3
    assert first.compress[0].out_channels == 60  # bottleneck = 240 / 4
    assert first.expand[0].out_channels == 240 - 24  # concat with the avg-pooled 24-channel input
    assert isinstance(first.shortcut, nn.AvgPool2d) and m.stage2[1].shortcut is None
    assert isinstance(first.shuffle, ChannelShuffle) and first.shuffle.groups == 3
    assert m.fc.bias is None  # as the official code


def test_v1_supported_combinations_registered():
    names = set(list_models("shufflenet_v1_*"))
    for g in (1, 2, 3, 4, 8):
        for w in (0.25, 0.5, 1.0, 1.5, 2.0):
            tag = f"{w:g}".replace(".", "_") if "." in f"{w:g}" else f"{w:g}_0"
            assert (f"shufflenet_v1_g{g}_x{tag}" in names) == v1_supported(g, w)
    assert {"shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x0_25", "shufflenet_v1_g1_x1_5"} <= names
    assert not v1_supported(4, 0.5) and not v1_supported(2, 0.25)


@pytest.mark.parametrize("stem,size,spatial", [("cifar", 32, 4), ("tiny", 64, 4), ("imagenet", 224, 7)])
def test_shapes_every_stem(stem, size, spatial):
    x = torch.randn(2, 3, size, size)
    for model in (ShuffleNetV2(0.5, 7, stem=stem), ShuffleNetV1(3, 0.25, 7, stem=stem)):
        model.eval()
        with torch.no_grad():
            feats = model.forward_features(x)
            out = model(x)
        assert feats.shape == (2, model.num_features, spatial, spatial)
        assert out.shape == (2, 7)


def test_shape_dynamic_and_sds_variants():
    x = torch.randn(2, 3, 32, 32)
    for kw in ({"shuffle": "dynamic"}, {"shuffle": "learned"}, {"pointwise": "sds"}, {"shuffle": "none"},
               {"shuffle": "dynamic", "pointwise": "sds"}):
        m = ShuffleNetV2(0.5, 10, stem="cifar", **kw)
        assert m(x).shape == (2, 10)
        assert m.eval()(x).shape == (2, 10)


def test_shuffle_slots():
    none = ShuffleNetV2(0.5, stem="cifar", shuffle="none")
    assert all(isinstance(u.shuffle, nn.Identity) for s in (none.stage2, none.stage3, none.stage4) for u in s)
    dyn = ShuffleNetV2(0.5, stem="cifar", shuffle="dynamic", shuffle_groups=4)
    assert isinstance(dyn.stage3[1].shuffle, DynamicShuffle) and dyn.stage3[1].shuffle.groups == 4
    sds = ShuffleNetV2(0.5, stem="cifar", pointwise="sds")
    unit, down = sds.stage2[1], sds.stage2[0]
    assert isinstance(unit.branch2[0], StaticDynamicShuffle) and isinstance(unit.branch2[5], StaticDynamicShuffle)
    assert isinstance(unit.branch2[1], nn.BatchNorm2d) and isinstance(unit.branch2[7], nn.ReLU)
    assert isinstance(down.branch2[0], nn.Conv2d), "stride-2 units keep their convolutions"
    assert isinstance(unit.shuffle, ChannelShuffle)
    v1 = ShuffleNetV1(3, 0.25, stem="cifar", pointwise="sds")
    assert isinstance(v1.stage3[2].shuffle, StaticDynamicShuffle) and v1.stage3[2].shuffle.channels == 30
    learned = ShuffleNetV1(8, 0.25, stem="cifar", shuffle="learned")
    assert isinstance(learned.stage2[0].shuffle, LearnedShuffle) and learned.stage2[0].shuffle.groups == 8


def test_factors_and_hidden_rules():
    m = ShuffleNetV2(0.5, stem="cifar", shuffle="dynamic", factors={24: (2, 12)}, hidden=3)
    assert (m.stage2[1].shuffle.n1, m.stage2[1].shuffle.n2) == (2, 12)
    assert (m.stage3[1].shuffle.n1, m.stage3[1].shuffle.n2) == (6, 8)  # not in the mapping: balanced
    assert m.stage3[1].shuffle.hidden == 3
    m = ShuffleNetV2(0.5, stem="cifar", shuffle="dynamic", factors=2, hidden=lambda c, n1, n2: c // 8)
    assert m.stage4[0].shuffle.n1 == 2 and m.stage4[0].shuffle.hidden == 24
    assert ShuffleNetV2(1.0, stem="cifar", shuffle="dynamic").stage2[0].shuffle.hidden == 4  # model default
    with pytest.raises(ValueError, match="factors"):
        ShuffleNetV2(0.5, stem="cifar", shuffle="dynamic", factors=(4, 6))  # fits stage 2 only


# ------------------------------------------------------------------------------------------- training

def _assert_every_param_gets_a_gradient(model: nn.Module, size: int = 32) -> None:
    model.train()
    x = torch.randn(2, 3, size, size)
    y = torch.tensor([0, 1])
    loss = nn.functional.cross_entropy(model(x), y) + dynshuffle.orthogonality_loss(model)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, bad[:5]


@pytest.mark.parametrize("kwargs", [{"shuffle": "dynamic"}, {"shuffle": "learned"}, {"pointwise": "sds"},
                                    {"shuffle": "dynamic", "pointwise": "sds", "share": False}])
def test_v2_every_parameter_gets_a_gradient(kwargs):
    _assert_every_param_gets_a_gradient(ShuffleNetV2(0.5, 10, stem="cifar", **kwargs))


@pytest.mark.parametrize("kwargs", [{"shuffle": "dynamic"}, {"shuffle": "learned"}, {"pointwise": "sds"}])
def test_v1_every_parameter_gets_a_gradient(kwargs):
    _assert_every_param_gets_a_gradient(ShuffleNetV1(3, 0.25, 10, stem="cifar", **kwargs))


def test_orthogonality_loss_is_positive_for_dynamic_model():
    m = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic").train()
    m(torch.randn(2, 3, 32, 32))
    assert dynshuffle.orthogonality_loss(m).item() > 0


def test_eval_output_per_image_independent_of_the_batch():
    # In eval every image gets its own permutation and BatchNorm uses running statistics, so an image's
    # logits must not depend on which other images share its batch (nor on the batch size of 1, whose
    # gather takes a special case), and "auto" in eval must be the exact-permutation path.
    for m in (ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic", pointwise="sds"),
              ShuffleNetV1(8, 0.25, 10, stem="cifar", shuffle="dynamic")):
        _warm_bn(m, 32, 1)
        for module in dynshuffle.shuffle_modules(m):  # input-dependent permutations, not the fixed one
            for p in module.generator.parameters():
                torch.nn.init.normal_(p, 0.0, 0.5)
        m.eval()
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            together = m(x)
            alone = torch.cat([m(x[i:i + 1]) for i in range(3)])
            reordered = m(x.flip(0)).flip(0)
            with dynshuffle.shuffle_mode(m, "hard"):
                hard = m(x)
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together, reordered, rtol=1e-4, atol=1e-5)
        assert torch.equal(together, hard)


def test_init_leaves_shuffle_modules_alone():
    m = ShuffleNetV2(0.5, stem="cifar", shuffle="dynamic", pointwise="sds")
    for module in m.modules():
        if isinstance(module, DynamicShuffle):
            assert torch.count_nonzero(module.generator.head_a.weight) == 0
            assert torch.count_nonzero(module.generator.head_b.weight) == 0
            assert torch.allclose(module.generator.norm.bias, torch.zeros_like(module.generator.norm.bias))
    # the network's own layers follow the official init
    bn = m.stage2[0].branch2[1]
    assert torch.all(bn.weight == 1) and torch.allclose(bn.bias, torch.full_like(bn.bias, 1e-4))
    assert m.conv1[0].weight.std() < 0.02  # the stem: N(0, 0.01)


# ------------------------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("build,match", [
    (lambda: ShuffleNetV1(groups=5), "5"),
    (lambda: ShuffleNetV1(groups=4, width=0.5), r"0\.5.*groups 4.*34"),
    (lambda: ShuffleNetV1(groups=2, width=0.25), r"0\.25.*groups 2"),
    (lambda: ShuffleNetV1(groups=3, width=0.75), "0.75"),
    (lambda: ShuffleNetV2(width=0.75), "0.75"),
    (lambda: ShuffleNetV2(num_classes=0), "num_classes.*0"),
    (lambda: ShuffleNetV1(num_classes=-3), "-3"),
    (lambda: ShuffleNetV2(shuffle="random"), "'random'"),
    (lambda: ShuffleNetV2(pointwise="dense"), "'dense'"),
    (lambda: ShuffleNetV2(stem="mnist"), "'mnist'"),
    (lambda: ShuffleNetV1(stem="mnist"), "'mnist'"),
    (lambda: ShuffleNetV1(shuffle="learnt"), "'learnt'"),
    (lambda: ShuffleNetV1(pointwise="sds", shuffle="dynamic"), "sds.*'dynamic'"),
    (lambda: ShuffleNetV2(shuffle="dynamic", shuffle_groups=3), "shuffle_groups=3"),
    (lambda: ShuffleNetV2(shuffle="dynamic", shuffle_groups=0), "shuffle_groups"),
    (lambda: ShuffleNetV2(shuffle="dynamic", temperature=0.0), "temperature"),
    (lambda: ShuffleNetV2(shuffle="dynamic", hidden=0), "hidden"),
])
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_reset_classifier():
    m = ShuffleNetV2(0.5, 10, stem="cifar")
    m.reset_classifier(3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert m.config["num_classes"] == 3 and m.fc.bias is not None
    v1 = ShuffleNetV1(3, 0.25, stem="cifar")
    v1.reset_classifier(5)
    assert v1.fc.out_features == 5 and v1.fc.bias is None
    with pytest.raises(ValueError, match="num_classes"):
        m.reset_classifier(0)


# ------------------------------------------------------------------------------------------- registry

def test_registry_names_and_patterns():
    names = list_models()
    assert {"shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"} <= set(names)
    assert names == sorted(names)
    assert list_models("shufflenet_v2_*") == ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
                                               "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
    assert all(n.startswith("shufflenet_v1_g3_") for n in list_models("shufflenet_v1_g3_*"))
    assert list_models("nothing*") == []


def test_every_registered_model_is_a_visible_definition():
    # One `def <name>` per registered model (as timm does): searching the source for a name finds it,
    # and the function is the module attribute of that name, not a factory made in a loop.
    import inspect

    from dynshuffle.models import shufflenet_v1, shufflenet_v2

    names = list_models("shufflenet_*")
    assert len(names) == 23
    for name in names:
        module = shufflenet_v1 if name.startswith("shufflenet_v1") else shufflenet_v2
        fn = getattr(module, name)
        assert fn.__name__ == name and fn.__module__ == module.__name__
        assert f"def {name}(" in inspect.getsource(module)
        assert name in module.__all__
        built = create_model(name, num_classes=10, stem="cifar")
        assert built.config["name"] == name
    with pytest.raises(ValueError, match="groups 3"):
        create_model("shufflenet_v1_g3_x1_0", groups=8)
    assert create_model("shufflenet_v1_g8_x0_5", groups=8, width=0.5).groups == 8


def test_top_level_exports():
    assert dynshuffle.create_model is create_model
    assert dynshuffle.list_models is list_models
    assert dynshuffle.register_model is register_model
    assert callable(dynshuffle.profile)


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match="shufflenet_v2_x1_0") as err:
        create_model("shufflenet_v2_x1_O")
    assert "unknown model" in str(err.value)
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")


def test_create_model_records_config_and_rebuilds():
    m = create_model("shufflenet_v1_g3_x0_5", shuffle="dynamic", stem="cifar", num_classes=10, hidden=6)
    assert m.config["name"] == "shufflenet_v1_g3_x0_5"
    assert m.config["groups"] == 3 and m.config["width"] == 0.5 and m.config["hidden"] == 6
    rebuilt = model_from_config(json.loads(json.dumps(m.config)))  # as a checkpoint's metadata stores it
    assert type(rebuilt) is ShuffleNetV1 and rebuilt.config == m.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="width"):
        create_model("shufflenet_v2_x1_0", width=0.5)
    assert create_model("shufflenet_v2_x0_5", width=0.5).width == 0.5


def test_register_model_decorator():
    @register_model(name="_test_tiny_net")
    def _factory(num_classes: int = 4):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))

    m = create_model("_test_tiny_net", num_classes=2)
    assert m.config == {"name": "_test_tiny_net", "num_classes": 2}
    assert "_test_tiny_net" in list_models("_test_*")
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda: None, name="_test_tiny_net")


# ------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("target", ["dynamic", "learned"])
@pytest.mark.parametrize("arch", ["v2", "v1"])
def test_static_checkpoint_upgrades_to_identical_model(arch, target):
    def build(shuffle):
        if arch == "v2":
            return ShuffleNetV2(0.5, 10, stem="cifar", shuffle=shuffle)
        return ShuffleNetV1(3, 0.25, 10, stem="cifar", shuffle=shuffle)

    torch.manual_seed(0)
    static = build("static")
    _warm_bn(static, 32)
    upgraded = load_compatible_state_dict(build(target), static.state_dict())
    static.eval()
    upgraded.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(static(x), upgraded(x))


def test_load_compatible_state_dict_errors():
    static = ShuffleNetV2(0.5, 10, stem="cifar")
    dynamic = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic")
    with pytest.raises(ValueError, match=r"unexpected keys: .*shuffle\.generator"):
        load_compatible_state_dict(ShuffleNetV2(0.5, 10, stem="cifar"), dynamic.state_dict())
    state = static.state_dict()
    del state["stage3.1.branch2.4.running_var"]
    with pytest.raises(ValueError, match=r"missing keys.*stage3\.1\.branch2\.4\.running_var"):
        load_compatible_state_dict(dynamic, state)
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \(10, 1024\) vs model \(7, 1024\)"):
        load_compatible_state_dict(ShuffleNetV2(0.5, 7, stem="cifar", shuffle="dynamic"), static.state_dict())
    # a DataParallel/DDP prefix is accepted
    prefixed = {"module." + k: v for k, v in static.state_dict().items()}
    load_compatible_state_dict(ShuffleNetV2(0.5, 10, stem="cifar", shuffle="learned"), prefixed)


# ------------------------------------------------------------------------------------------- budget

@pytest.mark.parametrize("width", [0.5, 1.0, 1.5, 2.0])
def test_dynamic_budget_every_v2_width(width):
    """docs/design.md §6: <= 10 % parameters and <= 2 % multiply-adds over the fixed shuffle."""
    static = ShuffleNetV2(width)
    dynamic = ShuffleNetV2(width, shuffle="dynamic")
    assert count_params(dynamic) <= 1.10 * count_params(static)
    assert count_macs(dynamic, 224) <= 1.02 * count_macs(static, 224)
    # the small-classifier, small-input case is the hard one for both budgets
    static = ShuffleNetV2(width, 10, stem="cifar")
    dynamic = ShuffleNetV2(width, 10, stem="cifar", shuffle="dynamic")
    assert count_params(dynamic) <= 1.10 * count_params(static)
    assert count_macs(dynamic, 32) <= 1.02 * count_macs(static, 32)
    assert not math.isclose(count_params(dynamic), count_params(static))
