"""Layer behaviours the main layer tests do not pin down: memory format on the soft path, and the
temperature's effect at initialisation."""
from __future__ import annotations

import pytest
import torch

from dynshuffle.layers import DynamicShuffle, LearnedShuffle


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


@pytest.mark.parametrize("cls", [DynamicShuffle, LearnedShuffle])
@pytest.mark.parametrize("temperature", [0.25, 0.5, 2.0, 7.0])
def test_initial_soft_matrices_do_not_depend_on_the_temperature(cls, temperature):
    x = torch.randn(4, 36, 3, 3)

    def build(t):
        torch.manual_seed(1)
        return cls(36, groups=3, temperature=t, confidence=0.8).train()

    reference, scaled = build(1.0), build(temperature)
    a_ref, b_ref = reference.soft_factors(x)
    a, b = scaled.soft_factors(x)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(b, b_ref)
    # The diagonal holds 1/n + confidence * (1 - 1/n), whatever the temperature.
    n1 = a.shape[-1]
    expected = torch.full_like(a.diagonal(dim1=-2, dim2=-1), 1 / n1 + 0.8 * (1 - 1 / n1))
    torch.testing.assert_close(torch.diagonal(a, dim1=-2, dim2=-1), expected)
    assert torch.equal(scaled.hard_index(x), reference.hard_index(x))


def test_temperature_changes_the_soft_matrices_once_the_logits_move():
    # The counterpart of the test above: after the generator moves, the temperature does sharpen/flatten.
    x = torch.randn(2, 36, 3, 3)
    mods = []
    for t in (1.0, 4.0):
        torch.manual_seed(2)
        mods.append(DynamicShuffle(36, groups=3, temperature=t, head_init=0.3).train())
    a1, _ = mods[0].soft_factors(x)
    a4, _ = mods[1].soft_factors(x)
    assert not torch.allclose(a1, a4)


def test_diversity_rewards_batches_whose_permutations_differ():
    torch.manual_seed(0)
    plain = DynamicShuffle(24, groups=2, hidden=8, head_init=1.0, mode="soft").train()
    diverse = DynamicShuffle(24, groups=2, hidden=8, head_init=1.0, mode="soft", diversity=2.0).train()
    diverse.load_state_dict(plain.state_dict())
    x = torch.randn(16, 24, 4, 4)
    plain(x)
    diverse(x)
    a, b = plain.soft_matrices(x)
    import dynshuffle.functional as DF

    variance = DF.batch_variance(a) + DF.batch_variance(b)
    assert variance > 0
    torch.testing.assert_close(diverse.regularization, plain.regularization - 2.0 * variance)
    diverse.regularization.backward()            # differentiable
    assert diverse.generator.head_b.weight.grad.abs().sum() > 0


def test_diversity_is_validated_and_passes_through_the_config():
    from dynshuffle.training.config import Config, apply_overrides
    from dynshuffle.training.loop import layer_options

    with pytest.raises(ValueError, match="diversity"):
        DynamicShuffle(24, 2, diversity=-1.0)
    cfg = Config()
    apply_overrides(cfg, ["model.diversity=0.5"])
    assert layer_options(cfg)["diversity"] == 0.5
