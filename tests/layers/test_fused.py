"""dynshuffle.layers.fused: the inference form of every shuffle module is its own module type, and computes
the permutations of the unfused module for every generator option."""

import pytest
import torch
from torch import nn

from dynshuffle.layers import functional as DF
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.fused import FusedDynamicShuffle, FusedLearnedShuffle, fuse_for_inference
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.sds import StaticDynamicShuffle
from dynshuffle.models.registry import create_model


def _trained_generator(module, channels):
    """Non-trivial BatchNorm running statistics, as training leaves them."""
    module.train()
    for _ in range(3):
        module(torch.randn(16, channels, 3, 3))
    return module.eval()


OPTIONS = [
    {}, {"share": False}, {"temperature": 1.5}, {"head_init": 0.0},
    {"stats": "mean_std"}, {"activation": "gelu"}, {"activation": "leaky_relu"}, {"activation": "none"},
    {"relaxation": "sinkhorn"}, {"noise": 1.0}, {"hidden": 3}, {"diversity": 1.0},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("channels,groups", [(48, 2), (116, 2), (24, 3), (29, 1)])
def test_fused_equals_unfused_for_every_generator_option(options, channels, groups):
    torch.manual_seed(channels)
    module = _trained_generator(DynamicShuffle(channels, groups, **{"head_init": 0.5, **options}), channels)
    x = torch.randn(32, channels, 3, 3)
    fused = fuse_for_inference(module)
    assert type(fused) is FusedDynamicShuffle and not fused.training
    assert torch.equal(fused.permutation(x), module.permutation(x))
    assert torch.equal(fused(x), module(x))
    assert len(list(fused.parameters())) == 4  # reduce (+ folded BN) and one head, weight and bias each


def test_fused_model_matches_and_refuses_to_train(randomize):
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic", pointwise="sds").eval()
    for m in model.modules():
        if isinstance(m, DynamicShuffle):
            randomize(m.generator.head, 0.5)
    x = torch.randn(4, 3, 32, 32)
    fused = fuse_for_inference(model)
    assert fused.stage2[0].shuffle.__class__ is FusedDynamicShuffle
    assert fused.stage2[1].branch2[0].dynamic.__class__ is FusedDynamicShuffle  # inside an SDS too
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()(x)


def test_fused_learned_shuffle_is_a_constant_index(randomize):
    module = randomize(LearnedShuffle(24, 2, noise=1.0), seed=2).train()  # no noise in the fused index
    x = torch.randn(3, 24, 2, 2)
    expected = module.eval()(x)
    fused = fuse_for_inference(module.train())
    assert type(fused) is FusedLearnedShuffle and fused.index.shape == (1, 24)
    assert torch.equal(fused(x), expected) and "index" not in fused.state_dict()
    assert torch.equal(fused.permutation(x), module.eval().permutation(x))


def test_a_shared_module_stays_shared_and_claim_rounds_have_no_fused_form():
    shared = DynamicShuffle(12, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    fused = fuse_for_inference(model)
    assert fused[0] is fused[2] and type(fused[0]) is FusedDynamicShuffle
    with pytest.raises(ValueError, match="binarize_rounds=0"):
        fuse_for_inference(nn.Sequential(DynamicShuffle(12, 2, binarize_rounds=1)))


def test_sds_and_fused_model_compile_with_fullgraph():
    model = nn.Sequential(nn.Conv2d(3, 24, 1), DynamicShuffle(24, 2, head_init=0.5),
                          StaticDynamicShuffle(24, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="aot_eager")(x), model(x))
        fused = fuse_for_inference(model)
        torch.testing.assert_close(torch.compile(fused, fullgraph=True, backend="aot_eager")(x), model(x))


def test_inference_under_bfloat16_autocast_applies_the_permutation_it_reports(randomize):
    """Autocast computes the generator's scores in bfloat16 (an earlier sort key of float confidences mixed
    the factors' rows there, and the scatter applied something other than `permutation(x)`)."""
    torch.manual_seed(0)
    module = randomize(DynamicShuffle(48, 2), scale=2.0).eval()
    x = torch.randn(8, 48, 3, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, perm = module(x), module.permutation(x)
    assert all(sorted(row.tolist()) == list(range(48)) for row in perm)
    assert torch.equal(y, DF.permute_channels(x, perm))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("options", [{}, {"share": False}], ids=["shared", "per-group"])
def test_a_non_finite_score_in_one_row_of_b_still_gives_permutations(bad, options):
    """A NaN or infinite score in one of B's rows makes that row's softmax all NaN, whose argmax is column 0.
    Counted across both factors (as the fused generator once wrote B's scores, from column n1) that row joined
    A's, and eval failed in the scatter with an out-of-range index; counted within B it stays B's."""
    torch.manual_seed(0)
    module = DynamicShuffle(48, 2, **options).eval()
    gen = module.generator
    with torch.no_grad():
        gen.head.bias[gen.heads * gen.n1 * gen.n1 + 1] = bad  # one score of the first row of B
    x = torch.randn(4, 48, 3, 3)
    for m in (module, fuse_for_inference(module)):
        perm = m.permutation(x)
        assert all(sorted(row.tolist()) == list(range(48)) for row in perm)
        assert torch.equal(m(x), DF.permute_channels(x, perm))
