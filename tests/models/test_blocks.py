"""dynshuffle.models.blocks: what both ShuffleNets share: stems, the shuffle slot (ShuffleOptions), the
initialisation, the argument checks and the classifier."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dynshuffle.layers.base import shuffle_modules, total_orthogonality_penalty
from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.modes import shuffle_mode
from dynshuffle.layers.sds import StaticDynamicShuffle
from dynshuffle.models.blocks import SHUFFLENET_INITIAL_CONFIDENCE
from dynshuffle.models.shufflenet_v1 import ShuffleNetV1
from dynshuffle.models.shufflenet_v2 import ShuffleNetV2


@pytest.mark.parametrize("stem,size,spatial", [("cifar", 32, 4), ("tiny", 64, 4), ("imagenet", 224, 7)])
def test_shapes_every_stem(stem, size, spatial):  # the feature map each stem leads to
    x = torch.randn(2, 3, size, size)
    for model in (ShuffleNetV2(0.5, 7, stem=stem), ShuffleNetV1(3, 0.25, 7, stem=stem)):
        model.eval()
        with torch.no_grad():
            feats = model.forward_features(x)
            out = model(x)
        assert feats.shape == (2, model.num_features, spatial, spatial)
        assert out.shape == (2, 7)


@pytest.mark.parametrize("kwargs", [{"shuffle": "dynamic"}, {"shuffle": "learned"}, {"shuffle": "none"},
                                    {"pointwise": "sds"}, {"shuffle": "dynamic", "pointwise": "sds"}])
def test_every_variant_is_the_fixed_shuffle_model_with_its_slots_swapped(kwargs, warm_bn):
    """With the fixed model's weights, a fresh learned/dynamic slot computes the fixed shuffle (in eval), an
    empty slot the identity; an SDS slot is its own layer in the fixed model's place."""
    torch.manual_seed(0)
    variant = ShuffleNetV2(0.5, 10, stem="cifar", **kwargs)
    warm_bn(variant, 32)
    reference = ShuffleNetV2(0.5, 10, stem="cifar")
    shared = {k: v for k, v in variant.state_dict().items() if k in reference.state_dict()
              and v.shape == reference.state_dict()[k].shape}
    reference.load_state_dict(shared, strict=False)
    for name, module in variant.named_modules():  # the reference takes the variant's slots
        if isinstance(module, (StaticDynamicShuffle, nn.Identity)) and "." in name:
            parent, _, child = name.rpartition(".")
            setattr(reference.get_submodule(parent), child, module)
    x = torch.randn(2, 3, 32, 32)
    variant.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(variant(x), reference(x), rtol=0, atol=0)


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


def _assert_every_param_gets_a_gradient(model: nn.Module, size: int = 32) -> None:
    model.train()
    x = torch.randn(2, 3, size, size)
    y = torch.tensor([0, 1])
    loss = nn.functional.cross_entropy(model(x), y) + total_orthogonality_penalty(model)
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


def test_a_fresh_dynamic_model_starts_with_the_penalty_of_its_initial_confidence(initial_penalty):
    m = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic").train()
    m(torch.randn(2, 3, 32, 32))
    c = SHUFFLENET_INITIAL_CONFIDENCE
    expected = sum(initial_penalty(s.n1, c) + initial_penalty(s.n2, c) for s in shuffle_modules(m))
    assert total_orthogonality_penalty(m).item() == pytest.approx(expected, rel=1e-5)
    assert [(s.n1, s.n2) for s in shuffle_modules(m)] == [(4, 6)] * 4 + [(6, 8)] * 8 + [(8, 12)] * 4


def test_eval_output_per_image_independent_of_the_batch(warm_bn):
    # In eval every image gets its own permutation and BatchNorm uses running statistics, so an image's
    # logits must not depend on which other images share its batch (nor on the batch size of 1, whose
    # gather takes a special case), and "auto" in eval must be the exact-permutation path.
    for m in (ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic", pointwise="sds"),
              ShuffleNetV1(8, 0.25, 10, stem="cifar", shuffle="dynamic")):
        warm_bn(m, 32, 1)
        for module in shuffle_modules(m):  # input-dependent permutations, not the fixed one
            for p in module.generator.parameters():
                torch.nn.init.normal_(p, 0.0, 0.5)
        m.eval()
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            together = m(x)
            alone = torch.cat([m(x[i:i + 1]) for i in range(3)])
            reordered = m(x.flip(0)).flip(0)
            with shuffle_mode(m, "frozen"):
                hard = m(x)
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together, reordered, rtol=1e-4, atol=1e-5)
        assert torch.equal(together, hard)


def test_init_leaves_shuffle_modules_alone():
    m = ShuffleNetV2(0.5, stem="cifar", shuffle="dynamic", pointwise="sds")
    for module in m.modules():
        if isinstance(module, DynamicShuffle):
            assert torch.count_nonzero(module.generator.head.weight) == 0
            assert torch.allclose(module.generator.norm.bias, torch.zeros_like(module.generator.norm.bias))
    # the network's own layers follow the official init
    bn = m.stage2[0].branch2[1]
    assert torch.all(bn.weight == 1) and torch.allclose(bn.bias, torch.full_like(bn.bias, 1e-4))
    assert m.conv1[0].weight.std() < 0.02  # the stem: N(0, 0.01)


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
