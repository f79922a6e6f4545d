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
