"""The branch-free exact permutation: binarization, the fused inference form, torch.compile and the
temperature used consistently (issue: a branch-free exact permutation)."""
import copy

import pytest
import torch
from torch import nn

from dynshuffle import DynamicShuffle, LearnedShuffle, StaticDynamicShuffle, create_model, fuse_for_inference
from dynshuffle import functional as DF

from conftest import randomize_parameters


def _is_permutation(perm):
    return bool((perm.sort(-1).values == torch.arange(perm.shape[-1])).all())


@pytest.mark.parametrize("rounds", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 6, 29])
def test_binarize_is_a_permutation_and_the_argmax_when_distinct(rounds, k):
    scores = torch.randn(300, k, k) * 4
    perm = DF.binarize(scores, rounds)
    assert _is_permutation(perm)
    argmax = scores.argmax(-1)
    distinct = torch.tensor([argmax[i].unique().numel() == k for i in range(len(argmax))])
    assert torch.equal(perm[distinct], argmax[distinct])


def test_binarize_handles_ties_nan_and_inf():
    scores = torch.zeros(4, 5, 5)
    scores[1, 0, 0] = float("nan")
    scores[2] = float("inf")
    scores[3, :, 2] = 7.0  # every row wants column 2
    perm = DF.binarize(scores)
    assert _is_permutation(perm)
    assert perm[0].tolist() == [0, 1, 2, 3, 4]  # equal rows: ties go to the lower row, in order
    assert (perm[3] == 2).sum() == 1


def test_binarize_pair_of_diverged_scores_gives_permutations_in_range():
    # A diverged generator (NaN or infinite logits) once made binarize_pair return indices outside 0..n-1
    # (a NaN key of A's rows sorted among B's), and the gather of the straight-through step failed.
    scores_a, scores_b = torch.randn(5, 3, 3), torch.randn(5, 4, 4)
    scores_a[0] = float("nan")
    scores_a[1, 2] = float("inf")
    scores_b[2, 1] = float("-inf")
    scores_b[3] = float("nan")
    perm_a, perm_b = DF.binarize_pair(scores_a, scores_b)
    assert _is_permutation(perm_a) and _is_permutation(perm_b)
    finite = torch.tensor([False, False, False, False, True])
    assert torch.equal(perm_a[finite], DF.binarize(scores_a[finite])) and \
        torch.equal(perm_b[finite], DF.binarize(scores_b[finite]))


def test_collisions_sorted_by_column_then_confidence():
    scores = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0]]])
    # Rows 0 and 1 both want column 1; row 1 is more confident. rounds=0: the k-th row in the order
    # (column, descending confidence) = (row 1, row 0, row 2) gets column k.
    assert DF.binarize(scores).tolist() == [[1, 0, 2]]
    # rounds=1: row 1 keeps column 1, row 2 keeps column 2, row 0 takes the free column 0.
    assert DF.binarize(scores, rounds=1).tolist() == [[0, 1, 2]]


def test_binarize_pair_equals_two_calls():
    a, b = torch.randn(50, 2, 2) * 3, torch.randn(50, 29, 29) * 3
    pa, pb = DF.binarize_pair(a, b)
    assert torch.equal(pa, DF.binarize(a)) and torch.equal(pb, DF.binarize(b))


def test_hard_path_ranks_the_scaled_logits():
    """Regression: the repair used to score the raw logits while the soft matrices use logits / T; with
    T != 1 and colliding argmaxes the two disagree on which row keeps a contested column."""
    module = randomize_parameters(DynamicShuffle(12, 2, temperature=4.0), scale=1.0, seed=3).eval()
    x = torch.randn(64, 12, 2, 2)
    la, lb = module.logits(x)
    expected = DF.compose_permutation(*(m[:, 0] for m in DF.binarize_pair(la / 4.0, lb / 4.0)), 2)
    assert torch.equal(module.permutation(x), expected)
    raw = DF.compose_permutation(*(m[:, 0] for m in DF.binarize_pair(la, lb)), 2)
    assert not torch.equal(raw, expected)  # the test can tell the two apart


@pytest.mark.parametrize("channels,groups,share", [(48, 2, True), (116, 2, True), (24, 3, False), (29, 1, True)])
def test_fused_module_gives_the_same_permutations_and_output(channels, groups, share):
    torch.manual_seed(channels)
    module = DynamicShuffle(channels, groups, share=share, head_init=0.5, temperature=1.5)
    module.train()
    for _ in range(3):  # non-trivial BatchNorm running statistics
        module(torch.randn(16, channels, 3, 3))
    module.eval()
    x = torch.randn(32, channels, 3, 3)
    fused = fuse_for_inference(copy.deepcopy(module))
    assert torch.equal(fused.permutation(x), module.permutation(x))
    assert torch.equal(fused(x), module(x))
    assert len(list(fused.parameters())) == 4  # reduce (+ folded BN) and one head, weight and bias each


def test_fused_model_matches_and_refuses_to_train():
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic").eval()
    for m in model.modules():
        if isinstance(m, DynamicShuffle):
            randomize_parameters(m.generator.head_a, 0.5), randomize_parameters(m.generator.head_b, 0.5)
    x = torch.randn(4, 3, 32, 32)
    fused = fuse_for_inference(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()(x)


def test_fused_learned_shuffle_is_a_constant_index():
    module = randomize_parameters(LearnedShuffle(24, 2), seed=2).eval()
    x = torch.randn(3, 24, 2, 2)
    expected = module(x)
    fuse_for_inference(module)
    assert torch.equal(module(x), expected) and module.fused_permutation.shape == (1, 24)


@pytest.mark.parametrize("mode", ["hard", "soft", "ste"])
def test_module_compiles_with_fullgraph(mode):
    """No data-dependent branch: dynamo captures one graph in eval, soft and straight-through training."""
    torch.manual_seed(0)
    eager = DynamicShuffle(24, 2, head_init=0.5)
    compiled_module = copy.deepcopy(eager)
    for m in (eager, compiled_module):
        m.train(mode != "hard")
        m.mode = "auto" if mode == "hard" else mode
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 24, 5, 5)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye, yc = eager(xe), compiled(xc)
    torch.testing.assert_close(yc, ye)
    if mode != "hard":
        ye.square().sum().backward()
        yc.square().sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad)
        for pe, pc in zip(eager.parameters(), compiled_module.parameters()):
            torch.testing.assert_close(pc.grad, pe.grad)


def test_sds_and_fused_model_compile_with_fullgraph():
    model = nn.Sequential(nn.Conv2d(3, 24, 1), DynamicShuffle(24, 2, head_init=0.5),
                          StaticDynamicShuffle(24, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="aot_eager")(x), model(x))
        fused = fuse_for_inference(copy.deepcopy(model))
        torch.testing.assert_close(torch.compile(fused, fullgraph=True, backend="aot_eager")(x), model(x))
