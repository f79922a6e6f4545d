"""dynshuffle.layers.base: what every shuffle module does (through DynamicShuffle and LearnedShuffle): start
as the fixed shuffle, the exact path equal to the matrix path, straight-through, the penalties, noise,
Sinkhorn, claim rounds, and the model-level sums."""
import copy

import math

import pytest
import torch
from torch import nn

from dynshuffle.layers import functional as DF
from dynshuffle.layers.base import (ShuffleModule, has_shuffle_modules, named_shuffle_modules, shuffle_modules,
                                    total_diversity_reward, total_orthogonality_penalty)
from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.sds import StaticDynamicShuffle


def _divisor_configs(channels):
    return [(channels, g) for g in range(1, channels + 1) if channels % g == 0]


def _penalty(a, b):
    return DF.orthogonality_penalty(a).mean() + DF.orthogonality_penalty(b).mean()


def test_the_shuffle_modules_are_the_learned_and_dynamic_shuffles():
    model = nn.Sequential(DynamicShuffle(12, 2), ChannelShuffle(2), LearnedShuffle(12, 3), StaticDynamicShuffle(12, 2))
    assert [name for name, _ in named_shuffle_modules(model)] == ["0", "2", "3.dynamic"]
    assert all(isinstance(m, ShuffleModule) for m in shuffle_modules(model))
    assert has_shuffle_modules(model) and not has_shuffle_modules(nn.Sequential(ChannelShuffle(2), nn.ReLU()))
    with pytest.raises(TypeError, match="abstract"):
        ShuffleModule(12, 2, None, 1.0, True, "auto")  # logits() and fused() are the subclasses'


@pytest.mark.parametrize("cls", [DynamicShuffle, LearnedShuffle])
@pytest.mark.parametrize("channels,groups", [(116, 2), (24, 3), (58, 2), (12, 4), (7, 1)])
def test_fresh_module_is_the_fixed_shuffle_in_eval(cls, channels, groups):
    module = cls(channels, groups).eval()
    x = torch.randn(3, channels, 4, 4) * 10
    assert torch.equal(module(x), ChannelShuffle(groups)(x))
    assert torch.equal(module.permutation(x), DF.channel_shuffle_index(channels, groups).expand(3, -1))


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("channels,groups", _divisor_configs(12) + [(58, 2), (29, 1), (22, 2)])
def test_exact_path_equals_matrix_path_with_binarized_matrices(channels, groups, share, randomize, exact_factors):
    module = randomize(DynamicShuffle(channels, groups, share=share), seed=channels + groups).eval()
    x = torch.randn(4, channels, 3, 5)
    expected = DF.kron_shuffle(x, *exact_factors(module, x), module.groups)
    assert torch.equal(module(x), expected)
    perms = module.permutation(x)
    assert torch.equal(module(x), torch.stack([x[i, perms[i]] for i in range(4)]))


def test_permutation_depends_on_the_input(randomize):
    module = randomize(DynamicShuffle(58, 2), scale=1.0, seed=7).eval()
    perms = module.permutation(torch.randn(16, 58, 3, 3))
    assert len({tuple(p.tolist()) for p in perms}) > 1


def test_prime_factor_and_channels_last(randomize, exact_factors):
    module = randomize(DynamicShuffle(13, 1, share=True)).eval()
    assert (module.n1, module.n2) == (1, 13)
    x = torch.randn(5, 13, 4, 4)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out, out_cl = module(x), module(x_cl)
    assert torch.equal(out, out_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out_cl, DF.kron_shuffle(x_cl, *exact_factors(module, x_cl), 1))


@pytest.mark.parametrize("share", [True, False])
def test_soft_path_channels_last_matches_contiguous(share):
    torch.manual_seed(0)
    m = DynamicShuffle(24, groups=2, hidden=8, share=share, mode="soft", head_init=0.2).train()
    x = torch.randn(3, 24, 5, 7)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    a, b = m.soft_factors(x)
    assert not torch.allclose(a[0], a[1])  # the soft matrices really depend on the input
    x1, x2 = x.clone().requires_grad_(True), x_cl.clone().requires_grad_(True)
    y1, y2 = m(x1), m(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    assert y2.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(y1)
    y1.backward(grad)
    y2.backward(grad)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("share", [True, False])
def test_ste_forward_is_exact_and_gradients_match_matrix_path(share, randomize, exact_factors):
    """STE: forward equals the exact output; gradients equal those of the matrix path evaluated at the
    one-hot matrices with the softmax as the backward (the straight-through estimator, written out)."""
    torch.manual_seed(0)
    module = randomize(DynamicShuffle(24, 2, share=share, mode="ste"), scale=0.5, seed=3).train()
    reference = DynamicShuffle(24, 2, share=share)
    reference.load_state_dict(module.state_dict())
    reference.train()
    x = torch.randn(4, 24, 3, 3, requires_grad=True)
    w = torch.randn(4, 24, 3, 3)

    y = module(x)
    (y * w).sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    a, b = reference.soft_factors(x_ref)
    a_exact, b_exact = exact_factors(reference, x_ref, torch.float32)
    y_ref = DF.kron_shuffle(x_ref, a_exact + a - a.detach(), b_exact + b - b.detach(), 2)
    (y_ref * w).sum().backward()

    torch.testing.assert_close(y, y_ref)  # a + (a - a) is the one-hot matrix up to rounding
    torch.testing.assert_close(x.grad, x_ref.grad)
    for (name, p), p_ref in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)
    torch.testing.assert_close(module.orthogonality_penalty, _penalty(a, b))


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ste_autograd_function_gradients_are_those_of_the_linearised_matrix_path(share, channels_last):
    from dynshuffle.layers.base import _StraightThroughShuffle

    torch.manual_seed(0)
    groups, n1, n2, batch = 2, 2, 3, 2
    lead = (batch,) if share else (batch, groups)
    pa = torch.stack([torch.randperm(n1) for _ in range(math.prod(lead))]).view(*lead, n1)
    pb = torch.stack([torch.randperm(n2) for _ in range(math.prod(lead))]).view(*lead, n2)
    order = torch.cat([DF.invert_permutation(pa), DF.invert_permutation(pb) + n1], -1)
    inverse = DF.inverse_composed_index(order, n1, n2, groups, batch)
    x = torch.randn(batch, 12, 2, 2, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    a = torch.randn(*lead, n1, n1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*lead, n2, n2, dtype=torch.float64, requires_grad=True)

    def ste(x, a, b):
        return _StraightThroughShuffle.apply(x, a, b, inverse, order, groups)

    def linearised(x, a, b):   # the function STE differentiates: matrix path at the one-hot point, linear in A, B
        a_oh, b_oh = DF.one_hot_permutation(pa, a.dtype), DF.one_hot_permutation(pb, b.dtype)
        return (DF.kron_shuffle(x, a_oh, b_oh, groups) + DF.kron_shuffle(x, a - a.detach(), b_oh, groups)
                + DF.kron_shuffle(x, a_oh, b - b.detach(), groups))

    torch.testing.assert_close(ste(x, a, b), DF.permute_channels(x, DF.compose_permutation(pa, pb, groups)))
    w = torch.randn(batch, 12, 2, 2, dtype=torch.float64)
    g1 = torch.autograd.grad((ste(x, a, b) * w).sum(), (x, a, b))
    g2 = torch.autograd.grad((linearised(x, a, b) * w).sum(), (x, a, b))
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("lead", [(3,), (1,), (3, 2)])
def test_softmax_factors_function_matches_autograd_on_the_plain_math(lead):
    from dynshuffle.layers.base import _SoftmaxFactors

    torch.manual_seed(1)
    n1, n2 = 2, 3
    scores = torch.randn(lead[0], math.prod(lead[1:]) * (n1 * n1 + n2 * n2), dtype=torch.float64, requires_grad=True)
    shape_a, shape_b = lead + (n1, n1), lead + (n2, n2)

    def reference(scores):
        split = math.prod(shape_a[1:])
        a = torch.softmax(scores[:, :split].reshape(shape_a), -1)
        b = torch.softmax(scores[:, split:].reshape(shape_b), -1)
        def penalty(m):
            return (m @ m.mT - torch.eye(m.shape[-1], dtype=m.dtype)).pow(2).sum((-2, -1)).mean()
        return a, b, penalty(a) + penalty(b)

    got, want = _SoftmaxFactors.apply(scores, shape_a, shape_b), reference(scores)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v)
    wa, wb = torch.randn(shape_a, dtype=torch.float64), torch.randn(shape_b, dtype=torch.float64)

    def loss(out):
        a, b, penalty = out
        return (a * wa).sum() + (b * wb).sum() + 0.7 * penalty

    torch.testing.assert_close(torch.autograd.grad(loss(_SoftmaxFactors.apply(scores, shape_a, shape_b)), scores)[0],
                               torch.autograd.grad(loss(reference(scores)), scores)[0])
    assert torch.autograd.gradcheck(lambda s: _SoftmaxFactors.apply(s, shape_a, shape_b), (scores,))


def test_soft_path_records_the_penalty_and_gives_every_parameter_a_gradient(randomize):
    module = randomize(DynamicShuffle(24, 2), scale=0.3).train()
    x = torch.randn(4, 24, 3, 3)
    y = module(x)
    a, b = module.soft_factors(x)
    torch.testing.assert_close(module.orthogonality_penalty, _penalty(a, b))
    torch.testing.assert_close(y, DF.kron_shuffle(x, a, b, 2))
    assert module.diversity_reward is None  # no diversity weight: no reward
    (y.pow(2).mean() + module.orthogonality_penalty).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("left", ["penalty", "reward"])
def test_an_eval_forward_clears_what_a_training_forward_left_for_the_loss(left):
    module = DynamicShuffle(12, 2, diversity=1.0).train()
    x = torch.randn(4, 12, 3, 3)
    module(x)
    assert module.orthogonality_penalty is not None and module.diversity_reward is not None
    if left == "reward":  # each of the two alone is cleared
        module.orthogonality_penalty = None
    module.eval()(x)
    assert module.inference_form() is not None  # the eval forward took the fused path
    assert module.orthogonality_penalty is None and module.diversity_reward is None


def test_frozen_mode_trains_nothing_and_records_no_penalty(randomize, exact_factors):
    module = randomize(DynamicShuffle(12, 2, mode="frozen"), scale=0.5).train()
    x = torch.randn(4, 12, 3, 3, requires_grad=True)
    module.orthogonality_penalty = torch.ones(())  # whatever an earlier forward left
    y = module(x)
    assert module.orthogonality_penalty is None and module.diversity_reward is None
    assert torch.equal(y, DF.kron_shuffle(x, *exact_factors(module, x), 2))
    y.sum().backward()
    assert all(p.grad is None for p in module.parameters())  # the gather gives the generator no gradient
    assert torch.equal(x.grad, torch.ones_like(x))  # but the input still gets its (permuted) gradient


def test_total_penalty_and_reward_sum_the_modules_last_forward():
    model = nn.Sequential(DynamicShuffle(12, 2, head_init=0.5, diversity=2.0), DynamicShuffle(12, 3),
                          StaticDynamicShuffle(12, 2, head_init=0.5, diversity=1.0)).train()
    model(torch.randn(4, 12, 2, 2))
    modules = list(shuffle_modules(model))
    torch.testing.assert_close(total_orthogonality_penalty(model),
                               sum(m.orthogonality_penalty for m in modules))
    torch.testing.assert_close(total_diversity_reward(model), modules[0].diversity_reward + modules[2].diversity_reward)
    assert modules[1].diversity_reward is None
    empty = nn.Linear(2, 2)
    assert total_orthogonality_penalty(empty).item() == 0.0 and total_diversity_reward(empty).item() == 0.0
    model.eval()
    model(torch.randn(4, 12, 2, 2))  # the exact path records nothing
    assert total_orthogonality_penalty(model).item() == 0.0


def test_soft_mode_in_eval_records_the_penalty():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), DynamicShuffle(12, 2, mode="soft"), LearnedShuffle(12, 3, mode="soft"))
    model.eval()
    x = torch.randn(2, 3, 4, 4)
    model(x)
    h = model[0](x)
    expected = _penalty(*model[1].soft_factors(h)) + _penalty(*model[2].soft_factors(model[1](h)))
    torch.testing.assert_close(total_orthogonality_penalty(model), expected)


def test_penalty_vanishes_for_converged_soft_matrices():
    module = LearnedShuffle(12, 2)
    with torch.no_grad():
        module.logits_a.copy_(torch.eye(2).mul(100.0)[[1, 0]].unsqueeze(0))
        module.logits_b.copy_(torch.eye(3).mul(100.0)[[2, 0, 1]].unsqueeze(0))
    module.train()
    module(torch.randn(2, 12, 2, 2))
    assert module.orthogonality_penalty.item() < 1e-12
    with torch.no_grad():
        module.logits_a.fill_(0.0)  # A uniform: ‖AAᵀ − I‖² = 2 (1 - 1/2)² + 2 (1/2)² = 1
    module(torch.randn(2, 12, 2, 2))
    assert module.orthogonality_penalty.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("cls", [DynamicShuffle, LearnedShuffle])
@pytest.mark.parametrize("temperature", [0.25, 0.5, 2.0, 7.0])
def test_initial_soft_matrices_do_not_depend_on_the_temperature(cls, temperature):
    x = torch.randn(4, 36, 3, 3)

    def build(t):
        torch.manual_seed(1)
        return cls(36, groups=3, temperature=t, initial_confidence=0.8).train()

    reference, scaled = build(1.0), build(temperature)
    a_ref, b_ref = reference.soft_factors(x)
    a, b = scaled.soft_factors(x)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(b, b_ref)
    # The diagonal holds 1/n + initial_confidence * (1 - 1/n), whatever the temperature.
    n1 = a.shape[-1]
    expected = torch.full_like(a.diagonal(dim1=-2, dim2=-1), 1 / n1 + 0.8 * (1 - 1 / n1))
    torch.testing.assert_close(torch.diagonal(a, dim1=-2, dim2=-1), expected)
    assert torch.equal(scaled.exact_index(x), reference.exact_index(x))


def test_temperature_divides_the_logits_once_they_move():
    x = torch.randn(2, 36, 3, 3)
    torch.manual_seed(2)
    module = DynamicShuffle(36, groups=3, head_init=0.3).train()
    a1, _ = module.soft_factors(x)
    logits_a, _ = module.logits(x)
    module.temperature = 4.0
    a4, _ = module.soft_factors(x)
    torch.testing.assert_close(a4, torch.softmax(logits_a[:, 0] / 4.0, -1))
    torch.testing.assert_close(a1, torch.softmax(logits_a[:, 0], -1))


def test_gumbel_noise_is_added_to_the_scaled_logits_in_training_only():
    torch.manual_seed(0)
    module = DynamicShuffle(12, 2, head_init=0.5, temperature=2.0, noise=0.7).train()
    x = torch.randn(3, 12, 2, 2)
    logits = module.flat_logits(x)
    torch.manual_seed(5)
    noisy_a, noisy_b = module.scaled_logits(x)
    torch.manual_seed(5)  # the same uniform draws, turned into Gumbel noise: -log(-log(u))
    u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
    expected_a, expected_b = module.split_scores(logits / 2.0 + 0.7 * -torch.log(-torch.log(u)))
    torch.testing.assert_close(noisy_a, expected_a)
    torch.testing.assert_close(noisy_b, expected_b)
    module.eval()
    clean_a, _ = module.scaled_logits(x)
    torch.testing.assert_close(clean_a, module.logits(x)[0] / 2.0)
    with pytest.raises(ValueError, match="noise must be a number >= 0"):
        module.noise = -1.0


def test_sinkhorn_relaxation_gives_doubly_stochastic_soft_matrices_and_the_same_permutation(randomize):
    torch.manual_seed(0)
    softmax = randomize(DynamicShuffle(24, 2, share=False), scale=0.5, seed=4)
    sinkhorn = DynamicShuffle(24, 2, share=False, relaxation="sinkhorn", sinkhorn_iters=20)
    sinkhorn.load_state_dict(softmax.state_dict())
    x = torch.randn(5, 24, 3, 3)
    for m in (softmax, sinkhorn):
        m.eval()
    a, b = sinkhorn.soft_factors(x)
    scores_a, _ = sinkhorn.scaled_logits(x)
    log_m = scores_a
    for _ in range(20):  # the reference: alternate column and row normalisation in log space
        log_m = log_m - log_m.logsumexp(-2, keepdim=True)
        log_m = log_m - log_m.logsumexp(-1, keepdim=True)
    torch.testing.assert_close(a, log_m.exp())
    torch.testing.assert_close(a.sum(-1), torch.ones(5, 2, a.shape[-1]))  # rows sum to 1 (the last step)
    torch.testing.assert_close(b.sum(-2), torch.ones(5, 2, b.shape[-1]), atol=1e-3, rtol=0)  # columns too
    assert not torch.allclose(a, softmax.soft_factors(x)[0])
    # The exact path ranks the scores, not the relaxed matrices: the same permutation either way.
    assert torch.equal(sinkhorn.permutation(x), softmax.permutation(x))
    assert "relaxation='sinkhorn', sinkhorn_iters=20" in repr(sinkhorn)


def test_binarize_rounds_option_claims_columns_before_sorting(randomize):
    plain = randomize(DynamicShuffle(58, 2), scale=3.0, seed=1).eval()
    rounds = DynamicShuffle(58, 2, binarize_rounds=2)
    rounds.load_state_dict(plain.state_dict())
    rounds.eval()
    x = torch.randn(16, 58, 2, 2, generator=torch.Generator().manual_seed(0))
    scores_a, scores_b = rounds.scaled_logits(x)
    expected = DF.compose_permutation(DF.binarize(scores_a, 2)[:, 0], DF.binarize(scores_b, 2)[:, 0], 2)
    assert torch.equal(rounds.permutation(x), expected)
    assert not torch.equal(rounds.permutation(x), plain.permutation(x))  # colliding argmaxes: they differ
    assert torch.equal(rounds(x), DF.permute_channels(x, expected))


def test_extra_repr_shows_configuration():
    text = repr(DynamicShuffle(116, 2, share=False, noise=0.5, diversity=0.3))
    for part in ("channels=116", "groups=2", "factors=(2, 29)", "share=False", "mode='auto'", "noise=0.5",
                 "hidden=16", "diversity=0.3"):
        assert part in text
    assert repr(LearnedShuffle(12, 3)) == ("LearnedShuffle(channels=12, groups=3, factors=(2, 2), share=True, "
                                           "mode='auto', temperature=1)")


@pytest.mark.parametrize("make,match", [
    (lambda: DynamicShuffle(10, 3), r"channels \(10\) must be divisible by groups \(3\)"),
    (lambda: DynamicShuffle(12, 2, factors=(2, 2)), r"factors \(2, 2\) multiply to 4.*= 6"),
    (lambda: StaticDynamicShuffle(12, 5), r"channels \(12\) must be divisible by groups \(5\)"),
    (lambda: LearnedShuffle(12, 2, factors=(4, 4)), r"multiply to 16"),
    (lambda: DynamicShuffle(12, 2, temperature=0), r"temperature must be > 0"),
    (lambda: DynamicShuffle(12, 2, mode="hard"), r"shuffle mode must be one of \('auto', 'soft', 'ste', 'frozen'\)"),
    (lambda: DynamicShuffle(12, 2, initial_confidence=1.0), r"initial_confidence must be in \(0, 1\)"),
    (lambda: LearnedShuffle(12, 2, relaxation="sparsemax"), r"relaxation must be one of"),
])
def test_bad_construction_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: DynamicShuffle(12, 2), lambda: LearnedShuffle(12, 2),
                                  lambda: StaticDynamicShuffle(12, 2)])
def test_bad_input_raises_value_error_naming_shapes(make):
    module = make()
    with pytest.raises(ValueError, match=r"4-D input.*\(2, 12, 3\)"):
        module(torch.randn(2, 12, 3))
    with pytest.raises(ValueError, match=r"built for 12 channels, but the input has 10"):
        module(torch.randn(2, 10, 3, 3))


def test_deepcopy_after_a_training_forward():
    model = nn.Sequential(DynamicShuffle(12, 2, diversity=1.0, head_init=0.5), StaticDynamicShuffle(12, 2)).train()
    model(torch.randn(2, 12, 3, 3)).sum().backward()
    clone = copy.deepcopy(model)
    assert model[0].orthogonality_penalty is not None and model[0].diversity_reward is not None
    assert clone[0].orthogonality_penalty is None and clone[0].diversity_reward is None
    clone.eval(), model.eval()
    x = torch.randn(2, 12, 3, 3)
    assert torch.equal(clone(x), model(x))


def test_autocast_bfloat16_cpu_follows_the_float32_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 1), DynamicShuffle(24, 2), StaticDynamicShuffle(24, 3))
    x = torch.randn(4, 3, 6, 6)
    for mode in ("auto", "ste"):
        for m in shuffle_modules(model):
            m.mode = mode
        model.train()
        reference = model(x).float().pow(2).mean() + total_orthogonality_penalty(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
            loss = y.float().pow(2).mean() + total_orthogonality_penalty(model)
        torch.testing.assert_close(loss, reference, rtol=0.05, atol=0.05)  # bfloat16 keeps 8 bits
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    model.eval()
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(model(x).float(), reference, rtol=0.05, atol=0.05)


def test_torch_compile_eval_matches_eager(randomize):
    model = nn.Sequential(nn.Conv2d(3, 24, 1), randomize(DynamicShuffle(24, 2), seed=5),
                          StaticDynamicShuffle(24, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("mode", ["frozen", "soft", "ste"])
def test_module_compiles_with_fullgraph(mode):
    """No data-dependent branch: dynamo captures one graph in eval, soft and straight-through training."""
    torch.manual_seed(0)
    eager = DynamicShuffle(24, 2, head_init=0.5)
    compiled_module = copy.deepcopy(eager)
    for m in (eager, compiled_module):
        m.train(mode != "frozen")
        m.mode = "auto" if mode == "frozen" else mode
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 24, 5, 5)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye, yc = eager(xe), compiled(xc)
    torch.testing.assert_close(yc, ye)
    if mode != "frozen":
        ye.square().sum().backward()
        yc.square().sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad)
        for pe, pc in zip(eager.parameters(), compiled_module.parameters()):
            torch.testing.assert_close(pc.grad, pe.grad)


def test_exact_permutation_follows_the_argmaxes_whatever_the_temperature(randomize):
    """The exact path ranks rows by argmax column, then row index: a positive temperature moves no argmax, so
    it changes no permutation, also where rows collide (an earlier version ranked collisions by a confidence
    that the temperature changed, and once scored raw logits where the soft matrices used logits / T)."""
    module = randomize(DynamicShuffle(12, 2, temperature=4.0), scale=1.0, seed=3).eval()
    x = torch.randn(64, 12, 2, 2)
    la, lb = module.logits(x)
    expected = DF.compose_permutation(*(m[:, 0] for m in DF.binarize_pair(la, lb)), 2)
    assert torch.equal(module.permutation(x), expected)
    module.temperature = 0.5
    assert torch.equal(module.permutation(x), expected)
    cols = lb[:, 0].argmax(-1)
    assert any(len(set(row.tolist())) < lb.shape[-1] for row in cols)  # the draw has collisions to rank


@pytest.mark.parametrize("kind", ["dynamic", "learned", "sds"])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("mode,training", [("auto", True), ("ste", True), ("frozen", True), ("auto", False),
                                           ("soft", False)])
def test_lean_path_gives_the_outputs_and_gradients_of_the_general_path(kind, share, mode, training, randomize,
                                                                        monkeypatch):
    """The launch-lean forward (`_SoftmaxFactors`, `factor_orders`, the scatter) computes what the general one
    (factors, `binarize_pair`, a gather) does: same output, penalty and gradients of input and parameters."""
    torch.manual_seed(3)
    if kind == "dynamic":
        module = randomize(DynamicShuffle(24, 2, share=share, mode=mode), scale=0.5)
    elif kind == "learned":
        module = LearnedShuffle(24, 2, share=share, mode=mode)
        with torch.no_grad():
            module.logits_a.normal_(0, 2.0), module.logits_b.normal_(0, 2.0)
    else:
        module = StaticDynamicShuffle(24, 2, share=share, mode=mode)
        randomize(module.dynamic, scale=0.5)
    module.train(training)
    general = copy.deepcopy(module)
    x = torch.randn(5, 24, 3, 3, requires_grad=True)
    w = torch.randn(5, 24, 3, 3)

    def run(m, lean: bool):
        monkeypatch.setattr(ShuffleModule, "_lean", lambda self: lean)
        x.grad = None
        y = m(x)
        shuffle = next(shuffle_modules(m))
        penalty = shuffle.orthogonality_penalty
        loss = (y * w).sum() + (0.3 * penalty if penalty is not None else 0.0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return y.detach(), penalty, x.grad.clone(), grads

    y1, p1, gx1, g1 = run(module, True)
    y2, p2, gx2, g2 = run(general, False)
    torch.testing.assert_close(y1, y2)
    assert (p1 is None) == (p2 is None)
    if p1 is not None:
        torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(gx1, gx2)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], msg=name)


@pytest.mark.parametrize("kind", ["dynamic", "learned"])
def test_eval_runs_the_cached_inference_form_until_a_parameter_buffer_or_temperature_changes(kind, randomize):
    torch.manual_seed(0)
    module = randomize(DynamicShuffle(24, 2) if kind == "dynamic" else LearnedShuffle(24, 2), scale=1.0).eval()
    x = torch.randn(6, 24, 2, 2)
    first = module(x)
    fused = module.inference_form()
    assert fused is not None and not isinstance(fused, ShuffleModule)
    assert fused not in list(module.modules())                       # not a registered submodule
    assert module(x).equal(first) and module.inference_form() is fused  # no rebuild
    torch.testing.assert_close(first, DF.permute_channels(x, module.permutation(x)))
    # The eval forward is the fused copy's, which is what `fuse_for_inference` returns.
    torch.testing.assert_close(first, module.fused().eval()(x))

    with torch.no_grad():  # what an optimizer step does: an in-place update
        next(module.parameters()).mul_(-3.0)
    assert module.inference_form() is not fused
    torch.testing.assert_close(module(x), module.fused().eval()(x))
    fused = module.inference_form()
    module.temperature = 3.0
    assert module.inference_form() is not fused
    if kind == "dynamic":  # a training forward moves the generator's BatchNorm statistics: a buffer
        fused = module.inference_form()
        module.train()(x)
        module.eval()
        assert module.inference_form() is not fused
    # Training, mode "soft" and copies run without it; a copy does not share the cached module.
    assert module.train().inference_form() is None
    module.eval().mode = "soft"
    assert module.inference_form() is None
    module.mode = "auto"
    module.inference_form()
    assert copy.deepcopy(module)._inference_cache is None
