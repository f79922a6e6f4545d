"""dynshuffle.layers.generator: the generator's width, pooling, activations and its single-sample batches."""
import pytest
import torch
from torch.nn import functional as F

from dynshuffle.layers.generator import MIN_HIDDEN, ShuffleGenerator, default_hidden, pooled_stats, spatial_mean


def test_default_hidden_is_a_twentieth_of_a_pointwise_conv_with_a_floor():
    assert default_hidden(48, 4, 12) == default_hidden(464, 8, 29) == MIN_HIDDEN == 16  # the floor
    assert default_hidden(1024, 32, 32) == 1024 * 1024 // (20 * (1024 + 2048)) == 17
    assert default_hidden(2048, 4, 4) == 2048 * 2048 // (20 * (2048 + 32)) == 100


def test_spatial_mean_gradient_matches_autograd_mean():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(spatial_mean, (x,))
    torch.testing.assert_close(spatial_mean(x), x.mean((2, 3)))


def test_pooled_stats_means_or_means_and_standard_deviations():
    x = torch.randn(3, 4, 5, 6)
    torch.testing.assert_close(pooled_stats(x, "mean"), x.mean((2, 3)))
    torch.testing.assert_close(pooled_stats(x, "mean_std"), torch.cat([x.mean((2, 3)), x.std((2, 3), unbiased=False)], 1))


@pytest.mark.parametrize("activation,fn", [("relu", F.relu), ("gelu", F.gelu), ("leaky_relu", F.leaky_relu),
                                           ("none", lambda z: z)])
def test_generator_forward_is_pool_linear_norm_activation_heads(activation, fn):
    torch.manual_seed(0)
    gen = ShuffleGenerator(8, 5, 2, 3, heads=2, diagonal_logit=lambda n: 1.0, stats="mean_std", head_init=0.5,
                           activation=activation).eval()
    with torch.no_grad():
        gen.norm.running_mean.normal_()
        gen.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 8, 3, 3)
    h = fn(gen.norm(gen.reduce(pooled_stats(x, "mean_std"))))
    flat = gen(x)
    assert flat.shape == (4, 2 * (2 * 2 + 3 * 3))  # A's two heads of 2 x 2, then B's two of 3 x 3
    torch.testing.assert_close(flat, gen.head(h))
    assert gen.reduce.in_features == 16  # means and standard deviations


def test_a_single_sample_in_training_is_normalised_with_the_running_statistics():
    torch.manual_seed(0)
    gen = ShuffleGenerator(8, 5, 2, 2, heads=1, diagonal_logit=lambda n: 0.0, head_init=0.5).train()
    x = torch.randn(1, 8, 3, 3)
    before = gen.norm.running_mean.clone()
    flat = gen(x)
    expected = gen.head(F.relu(F.batch_norm(gen.reduce(x.mean((2, 3))), gen.norm.running_mean, gen.norm.running_var,
                                              gen.norm.weight, gen.norm.bias, training=False)))
    torch.testing.assert_close(flat, expected)
    assert torch.equal(gen.norm.running_mean, before)


@pytest.mark.parametrize("n1,n2,heads,width", [(2, 3, 1, 3), (2, 3, 2, 3), (8, 12, 1, 12), (6, 6, 1, 6)])
def test_fused_generator_writes_both_factors_in_rows_as_wide_as_the_larger_factor(n1, n2, heads, width):
    """The fused head writes A's and B's scores (BatchNorm folded, divided by the temperature) as the rows of
    one score matrix per head, each factor's columns from 0, -1e9 beyond them: the rows are max(n1, n2) wide,
    so the smaller factor's rows are padded and the larger one's are not."""
    torch.manual_seed(0)
    gen = ShuffleGenerator(8, 5, n1, n2, heads=heads, diagonal_logit=lambda n: 1.0, head_init=0.5).eval()
    with torch.no_grad():
        gen.norm.running_mean.normal_()
        gen.norm.running_var.uniform_(0.5, 2.0)
    fused = gen.fused(temperature=2.0)
    x = torch.randn(4, 8, 3, 3)
    scores = fused(x).view(4, heads, n1 + n2, width)
    assert fused.width == width and f"width={width}" in repr(fused)
    flat = gen(x) / 2.0
    torch.testing.assert_close(scores[:, :, :n1, :n1], flat[:, :heads * n1 * n1].view(4, heads, n1, n1))
    torch.testing.assert_close(scores[:, :, n1:, :n2], flat[:, heads * n1 * n1:].view(4, heads, n2, n2))
    off_block = torch.ones(n1 + n2, width, dtype=torch.bool)
    off_block[:n1, :n1] = off_block[n1:, :n2] = False
    assert torch.all(scores[:, :, off_block] == -1e9)


@pytest.mark.parametrize("kwargs,match", [({"stats": "max"}, "stats must be one of"),
                                          ({"activation": "tanh"}, "activation must be one of"),
                                          ({"head_init": -0.1}, "head_init must be >= 0")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShuffleGenerator(8, 4, 2, 2, 1, lambda n: 0.0, **kwargs)
