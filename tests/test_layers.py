"""DynamicShuffle, LearnedShuffle, StaticDynamicShuffle and ChannelShuffle behaviour."""
import pytest
import torch
from torch import nn

import dynshuffle
from dynshuffle import ChannelShuffle, DynamicShuffle, LearnedShuffle, StaticDynamicShuffle
from dynshuffle import functional as DF

from conftest import randomize_parameters


def _divisor_configs(channels):
    return [(channels, g) for g in range(1, channels + 1) if channels % g == 0]


@pytest.mark.parametrize("cls", [DynamicShuffle, LearnedShuffle])
@pytest.mark.parametrize("channels,groups", [(116, 2), (24, 3), (58, 2), (12, 4), (7, 1)])
def test_fresh_module_is_the_fixed_shuffle_in_eval(cls, channels, groups):
    module = cls(channels, groups).eval()
    x = torch.randn(3, channels, 4, 4) * 10
    assert torch.equal(module(x), ChannelShuffle(groups)(x))
    assert torch.equal(module.permutation(x), DF.channel_shuffle_index(channels, groups).expand(3, -1))


def _hard_vs_matrix(module, x):
    """Hard output vs the matrix path fed with the binarized one-hot matrices."""
    la, lb = module.logits(x)
    pa = module._squeeze_groups(DF.binarize(la))
    pb = module._squeeze_groups(DF.binarize(lb))
    expected = DF.kron_shuffle(x, DF.one_hot_permutation(pa, x.dtype), DF.one_hot_permutation(pb, x.dtype),
                             module.groups)
    return module(x), expected.expand_as(x)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("channels,groups", _divisor_configs(12) + [(58, 2), (29, 1), (22, 2)])
def test_hard_path_equals_matrix_path_with_binarized_matrices(channels, groups, share):
    module = randomize_parameters(DynamicShuffle(channels, groups, share=share), seed=channels + groups).eval()
    x = torch.randn(4, channels, 3, 5)
    hard, expected = _hard_vs_matrix(module, x)
    assert torch.equal(hard, expected)
    perms = module.permutation(x)
    assert torch.equal(hard, torch.stack([x[i, perms[i]] for i in range(4)]))


def test_permutation_depends_on_the_input():
    module = randomize_parameters(DynamicShuffle(58, 2), scale=1.0, seed=7).eval()
    perms = module.permutation(torch.randn(16, 58, 3, 3))
    assert len({tuple(p.tolist()) for p in perms}) > 1


def test_prime_factor_and_channels_last():
    module = randomize_parameters(DynamicShuffle(13, 1, share=True)).eval()
    assert (module.n1, module.n2) == (1, 13)
    x = torch.randn(5, 13, 4, 4)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out, out_cl = module(x), module(x_cl)
    assert torch.equal(out, out_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    hard, expected = _hard_vs_matrix(module, x_cl)
    assert torch.equal(hard, expected)


@pytest.mark.parametrize("share", [True, False])
def test_ste_forward_is_hard_and_gradients_match_matrix_path(share):
    """STE: forward equals the hard output; gradients equal those of the matrix path evaluated at the
    one-hot matrices with the softmax as the backward (the straight-through estimator, written out)."""
    torch.manual_seed(0)
    module = randomize_parameters(DynamicShuffle(24, 2, share=share, mode="ste"), scale=0.5, seed=3).train()
    reference = DynamicShuffle(24, 2, share=share)
    reference.load_state_dict(module.state_dict())
    reference.train()
    x = torch.randn(4, 24, 3, 3, requires_grad=True)
    w = torch.randn(4, 24, 3, 3)

    y = module(x)
    (y * w).sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    la, lb = reference.logits(x_ref)
    a, b = reference.soft_from_scores(la, lb)
    pa = reference._squeeze_groups(DF.binarize(la))
    pb = reference._squeeze_groups(DF.binarize(lb))
    a_st = DF.one_hot_permutation(pa) + a - a.detach()
    b_st = DF.one_hot_permutation(pb) + b - b.detach()
    y_ref = DF.kron_shuffle(x_ref, a_st, b_st, 2)
    (y_ref * w).sum().backward()

    torch.testing.assert_close(y, y_ref)  # a + (a - a) is the one-hot matrix up to rounding
    torch.testing.assert_close(x.grad, x_ref.grad)
    for (name, p), p_ref in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)
    assert module.generator.reduce.weight.grad.abs().sum() > 0


def test_ste_autograd_function_gradcheck():
    torch.manual_seed(0)
    groups, n1, n2 = 2, 2, 3
    pa = torch.stack([torch.randperm(n1) for _ in range(2)])
    pb = torch.stack([torch.randperm(n2) for _ in range(2)])
    index = DF.compose_permutation(pa, pb, groups)
    x = torch.randn(2, 12, 2, 2, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, n1, n1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, n2, n2, dtype=torch.float64, requires_grad=True)
    from dynshuffle.layers import _StraightThroughShuffle

    def ste(x, a, b):
        return _StraightThroughShuffle.apply(x, a, b, index, pa, pb, groups)

    def linearised(x, a, b):   # the function STE differentiates: matrix path at the one-hot point, linear in A, B
        a_oh, b_oh = DF.one_hot_permutation(pa, a.dtype), DF.one_hot_permutation(pb, b.dtype)
        return (DF.kron_shuffle(x, a_oh, b_oh, groups) + DF.kron_shuffle(x, a - a.detach(), b_oh, groups)
                + DF.kron_shuffle(x, a_oh, b - b.detach(), groups))

    w = torch.randn(2, 12, 2, 2, dtype=torch.float64)
    g1 = torch.autograd.grad((ste(x, a, b) * w).sum(), (x, a, b))
    g2 = torch.autograd.grad((linearised(x, a, b) * w).sum(), (x, a, b))
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v)


def test_training_soft_path_gives_every_parameter_a_gradient_and_penalty():
    module = randomize_parameters(DynamicShuffle(24, 2), scale=0.3).train()
    x = torch.randn(4, 24, 3, 3)
    y = module(x)
    loss = y.pow(2).mean() + module.regularization
    loss.backward()
    assert module.regularization.requires_grad and module.regularization.item() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_soft_mode_in_eval_and_hard_mode_switch():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), DynamicShuffle(12, 2), nn.Conv2d(12, 12, 1), LearnedShuffle(12, 3))
    dynshuffle.set_shuffle_mode(model, "soft")
    model.eval()
    x = torch.randn(2, 3, 4, 4)
    model(x)
    assert dynshuffle.orthogonality_loss(model).item() > 0
    dynshuffle.set_shuffle_mode(model, "hard")
    model(x)
    assert dynshuffle.orthogonality_loss(model).item() == 0.0
    assert all(m.mode == "hard" for m in dynshuffle.shuffle_modules(model))
    with pytest.raises(ValueError, match="shuffle mode must be one of"):
        dynshuffle.set_shuffle_mode(model, "fast")


def test_orthogonality_loss_sums_module_penalties():
    model = nn.Sequential(DynamicShuffle(12, 2), DynamicShuffle(12, 3)).train()
    model(torch.randn(2, 12, 2, 2))
    expected = model[0].regularization + model[1].regularization
    torch.testing.assert_close(dynshuffle.orthogonality_loss(model), expected)
    assert dynshuffle.orthogonality_loss(nn.Linear(2, 2)).item() == 0.0


def test_penalty_vanishes_for_converged_soft_matrices():
    module = LearnedShuffle(12, 2)
    with torch.no_grad():
        module.logits_a.copy_(torch.eye(2).mul(100.0)[[1, 0]].unsqueeze(0))
        module.logits_b.copy_(torch.eye(3).mul(100.0)[[2, 0, 1]].unsqueeze(0))
    module.train()
    module(torch.randn(2, 12, 2, 2))
    assert module.regularization.item() < 1e-12
    with torch.no_grad():
        module.logits_a.fill_(0.0)
    module(torch.randn(2, 12, 2, 2))
    assert module.regularization.item() > 0.5


def test_learned_shuffle_is_one_permutation_for_all_inputs():
    module = randomize_parameters(LearnedShuffle(24, 2)).eval()
    perms = module.permutation(torch.randn(5, 24, 2, 2))
    assert (perms == perms[:1]).all()


def test_extra_repr_shows_configuration():
    text = repr(DynamicShuffle(116, 2, share=False))
    for part in ("channels=116", "groups=2", "factors=(2, 29)", "share=False", "mode='auto'"):
        assert part in text
    assert "groups=3" in repr(ChannelShuffle(3))


@pytest.mark.parametrize("make,match", [
    (lambda: DynamicShuffle(10, 3), r"channels \(10\) must be divisible by groups \(3\)"),
    (lambda: DynamicShuffle(12, 2, factors=(2, 2)), r"factors \(2, 2\) multiply to 4.*= 6"),
    (lambda: StaticDynamicShuffle(12, 5), r"channels \(12\) must be divisible by groups \(5\)"),
    (lambda: LearnedShuffle(12, 2, factors=(4, 4)), r"multiply to 16"),
    (lambda: DynamicShuffle(12, 2, temperature=0), r"temperature must be > 0"),
    (lambda: DynamicShuffle(12, 2, mode="exact"), r"shuffle mode must be one of"),
])
def test_bad_construction_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("module", [DynamicShuffle(12, 2), LearnedShuffle(12, 2), StaticDynamicShuffle(12, 2)])
def test_bad_input_raises_value_error_naming_shapes(module):
    with pytest.raises(ValueError, match=r"4-D input.*\(2, 12, 3\)"):
        module(torch.randn(2, 12, 3))
    with pytest.raises(ValueError, match=r"built for 12 channels, but the input has 10"):
        module(torch.randn(2, 10, 3, 3))
    with pytest.raises(ValueError, match=r"not divisible by groups \(5\)"):
        ChannelShuffle(5)(torch.randn(1, 12, 2, 2))


@pytest.mark.parametrize("impl", ["factored", "dense"])
def test_static_dynamic_shuffle_matches_its_definition(impl):
    torch.manual_seed(0)
    sds = StaticDynamicShuffle(24, 2, static_impl=impl, bias=True)
    with torch.no_grad():
        sds.bias.normal_()
    randomize_parameters(sds.dynamic, scale=0.5)
    x = torch.randn(3, 24, 4, 4, dtype=torch.float32)
    for training in (True, False):
        sds.train(training)
        dyn = sds.dynamic
        la, lb = dyn.logits(x)
        if training:
            a, b = dyn.soft_from_scores(la, lb)
        else:
            a = DF.one_hot_permutation(dyn._squeeze_groups(DF.binarize(la)))
            b = DF.one_hot_permutation(dyn._squeeze_groups(DF.binarize(lb)))
        u = sds.static_u.unsqueeze(0)
        v = sds.static_v.unsqueeze(0)
        expected = (DF.kron_shuffle(x, a, b, 2) + DF.kron_shuffle(x, u, v, 2)) + sds.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(sds(x), expected, rtol=1e-5, atol=1e-5)


def test_static_dynamic_shuffle_dense_equals_factored_and_trains():
    torch.manual_seed(0)
    a = StaticDynamicShuffle(48, 2, static_impl="factored")
    b = StaticDynamicShuffle(48, 2, static_impl="dense")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 48, 5, 5)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
    a.train()
    (a(x).pow(2).mean() + a.regularization).backward()
    assert a.static_u.grad.abs().sum() > 0 and a.static_v.grad.abs().sum() > 0
    assert a.dynamic.generator.head_b.weight.grad.abs().sum() > 0


def test_autocast_bfloat16_cpu():
    model = nn.Sequential(nn.Conv2d(3, 24, 1), DynamicShuffle(24, 2), StaticDynamicShuffle(24, 3))
    x = torch.randn(4, 3, 6, 6)
    for mode in ("auto", "ste"):
        dynshuffle.set_shuffle_mode(model, mode)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
            loss = y.float().pow(2).mean() + dynshuffle.orthogonality_loss(model)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert model(x).shape == (4, 24, 6, 6)


def test_torch_compile_eval_matches_eager():
    model = nn.Sequential(nn.Conv2d(3, 24, 1), randomize_parameters(DynamicShuffle(24, 2), seed=5),
                          StaticDynamicShuffle(24, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_spatial_mean_gradient_matches_autograd_mean():
    from dynshuffle.layers import spatial_mean
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(spatial_mean, (x,))
    torch.testing.assert_close(spatial_mean(x), x.mean((2, 3)))


def test_deepcopy_after_a_training_forward():
    import copy
    model = nn.Sequential(DynamicShuffle(12, 2), StaticDynamicShuffle(12, 2)).train()
    model(torch.randn(2, 12, 3, 3)).sum().backward()
    clone = copy.deepcopy(model)
    assert clone[0].regularization is None and model[0].regularization is not None
    clone.eval(), model.eval()
    x = torch.randn(2, 12, 3, 3)
    assert torch.equal(clone(x), model(x))
