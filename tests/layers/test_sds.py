"""dynshuffle.layers.sds: StaticDynamicShuffle (its definition, both mixing implementations, training) and the
shuffle layers of a model."""
import pytest
import torch
from torch import nn

from dynshuffle.layers import functional as DF
from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.sds import StaticDynamicShuffle, named_shuffle_layers


@pytest.mark.parametrize("impl", ["factored", "dense"])
def test_static_dynamic_shuffle_matches_its_definition(impl, randomize, exact_factors):
    torch.manual_seed(0)
    sds = StaticDynamicShuffle(24, 2, mixing_impl=impl, bias=True)
    with torch.no_grad():
        sds.bias.normal_()
    randomize(sds.dynamic, scale=0.5)
    x = torch.randn(3, 24, 4, 4, dtype=torch.float32)
    for training in (True, False):
        sds.train(training)
        dyn = sds.dynamic
        a, b = dyn.soft_factors(x) if training else exact_factors(dyn, x)
        u, v = sds.mixing_u.unsqueeze(0), sds.mixing_v.unsqueeze(0)
        expected = (DF.kron_shuffle(x, a, b, 2) + DF.kron_shuffle(x, u, v, 2)) + sds.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(sds(x), expected, rtol=1e-5, atol=1e-5)
        if training:
            torch.testing.assert_close(dyn.orthogonality_penalty,
                                       DF.orthogonality_penalty(a).mean() + DF.orthogonality_penalty(b).mean())
        else:
            assert dyn.orthogonality_penalty is None


def test_dense_mixing_equals_factored_and_trains():
    torch.manual_seed(0)
    a = StaticDynamicShuffle(48, 2, mixing_impl="factored")
    b = StaticDynamicShuffle(48, 2, mixing_impl="dense")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 48, 5, 5)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
    weight = b.mixing_weight()
    assert weight.shape == (48, 24, 1, 1)
    torch.testing.assert_close(weight[:24, :, 0, 0], torch.kron(b.mixing_u[0], b.mixing_v[0]))
    a.train()
    (a(x).pow(2).mean() + a.dynamic.orthogonality_penalty).backward()
    assert a.mixing_u.grad.abs().sum() > 0 and a.mixing_v.grad.abs().sum() > 0
    assert a.dynamic.generator.head.weight.grad.abs().sum() > 0


def test_options_and_repr():
    sds = StaticDynamicShuffle(24, 3, initial_confidence=0.5, mode="ste", relaxation="sinkhorn")
    assert (sds.mixing_impl, sds.dynamic.mode, sds.dynamic.relaxation) == ("factored", "ste", "sinkhorn")
    assert "mixing=(2x2) ⊗ (4x4) per group, mixing_impl='factored', bias=False" in repr(sds)
    with pytest.raises(ValueError, match="mixing_impl must be one of"):
        StaticDynamicShuffle(24, 2, mixing_impl="sparse")


def test_shuffle_layers_are_the_outermost_modules_a_shuffle_choice_adds():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), DynamicShuffle(12, 2), ChannelShuffle(3),
                          nn.Sequential(StaticDynamicShuffle(12, 2), LearnedShuffle(12, 2)))
    assert [name for name, _ in named_shuffle_layers(model)] == ["1", "3.0", "3.1"]  # not "3.0.dynamic"
    assert named_shuffle_layers(nn.Linear(2, 2)) == []
    alone = DynamicShuffle(12, 2)
    assert named_shuffle_layers(alone) == [("", alone)]


@pytest.mark.parametrize("share", [True, False])
def test_inference_adds_the_permuted_input_in_place_exactly(share, randomize):
    """Eval adds the input at its permuted rows of the mixing's output (`index_add_`): bit for bit the sum of
    the mixing and the permuted input, in every layout and with gradients flowing to the input."""
    torch.manual_seed(0)
    module = StaticDynamicShuffle(24, 2, share=share)
    randomize(module.dynamic, scale=1.0)
    module.eval()
    x = torch.randn(5, 24, 3, 3)
    expected = module._mixing(x) + DF.permute_channels(x, module.permutation(x))
    with torch.no_grad():
        assert torch.equal(module(x), expected)
        assert torch.equal(module(x.contiguous(memory_format=torch.channels_last)), expected)
    xg = x.clone().requires_grad_(True)
    y = module(xg)
    assert torch.equal(y, expected)
    y.sum().backward()
    assert xg.grad is not None and module.dynamic.orthogonality_penalty is None
