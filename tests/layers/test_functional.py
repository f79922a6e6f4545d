"""dynshuffle.layers.functional: Kronecker apply, binarization (branch-free), composition, penalty."""
import itertools


import pytest
import torch
from hypothesis import given, settings, strategies as st

from dynshuffle.layers import functional as DF


@pytest.mark.parametrize("n,expected", [(1, (1, 1)), (2, (1, 2)), (12, (3, 4)), (16, (4, 4)), (29, (1, 29)),
                                        (58, (2, 29)), (232, (8, 29)), (96, (8, 12))])
def test_factorize_is_most_balanced(n, expected):
    assert DF.factorize(n) == expected


def test_check_factors_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"channels \(10\) must be divisible by groups \(3\)"):
        DF.check_factors(10, 3, None)
    with pytest.raises(ValueError, match=r"factors \(2, 4\) multiply to 8.*12 / 2 = 6"):
        DF.check_factors(12, 2, (2, 4))


def test_channel_shuffle_index_matches_reshape_transpose():
    x = torch.randn(2, 12, 3, 3)
    idx = DF.channel_shuffle_index(12, 3)
    assert torch.equal(x[:, idx], DF.channel_shuffle(x, 3))
    assert idx.tolist()[:4] == [0, 4, 8, 1]


def _dense_reference(x, a, b, groups):
    """Build the full C x C matrix with torch.kron and the shuffle as a permutation matrix."""
    n, c = x.shape[:2]
    out = []
    for s in range(n):
        blocks = []
        for g in range(groups):
            ag = a[s] if a.dim() == 3 else a[s, g]
            bg = b[s] if b.dim() == 3 else b[s, g]
            blocks.append(torch.kron(ag, bg))
        mix = torch.block_diag(*blocks)
        shuffle = torch.eye(c, dtype=x.dtype)[DF.channel_shuffle_index(c, groups)]
        out.append(torch.einsum("oc,chw->ohw", shuffle @ mix, x[s]))
    return torch.stack(out)


@pytest.mark.parametrize("groups,n1,n2,share", [(1, 2, 3, True), (2, 2, 3, True), (3, 1, 5, False), (2, 3, 2, False)])
def test_kron_apply_matches_dense_torch_kron(groups, n1, n2, share):
    torch.manual_seed(0)
    c = groups * n1 * n2
    x = torch.randn(3, c, 4, 5, dtype=torch.float64)
    shape_a = (3, n1, n1) if share else (3, groups, n1, n1)
    shape_b = (3, n2, n2) if share else (3, groups, n2, n2)
    a = torch.softmax(torch.randn(shape_a, dtype=torch.float64), -1)
    b = torch.softmax(torch.randn(shape_b, dtype=torch.float64), -1)
    torch.testing.assert_close(DF.kron_shuffle(x, a, b, groups), _dense_reference(x, a, b, groups))


def test_kron_apply_broadcasts_batch_one_matrices():
    x = torch.randn(4, 12, 2, 2, dtype=torch.float64)
    a = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    b = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    expected = _dense_reference(x, a.expand(4, -1, -1, -1), b.expand(4, -1, -1, -1), 2)
    torch.testing.assert_close(DF.kron_shuffle(x, a, b, 2), expected)


@pytest.mark.parametrize("share", [True, False])
def test_kron_apply_gradcheck(share):
    torch.manual_seed(1)
    groups, n1, n2 = 2, 2, 3
    x = torch.randn(2, groups * n1 * n2, 2, 3, dtype=torch.float64, requires_grad=True)
    shape = (2,) if share else (2, groups)
    a = torch.randn(*shape, n1, n1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*shape, n2, n2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: DF.kron_shuffle(x, a, b, groups), (x, a, b))


def _permutations(perm) -> bool:
    return bool(DF.is_permutation(perm).all())


def test_is_permutation_checks_every_row():
    assert DF.is_permutation(torch.tensor([[2, 0, 1], [0, 0, 1], [1, 2, 2]])).tolist() == [True, False, False]


def test_binarize_uses_row_argmax_when_distinct():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.7]])
    assert DF.binarize(scores).tolist() == [1, 0, 2]


def test_binarize_resolves_collisions_and_ties():
    ties = torch.zeros(5, 4, 4)               # every entry tied: rows in index order
    same_rows = torch.tensor([[3.0, 1.0, 0.0]]).expand(3, 3)   # every row's argmax is column 0
    assert torch.equal(DF.binarize(ties), torch.arange(4).expand(5, 4))
    assert DF.binarize(same_rows).tolist() == [0, 1, 2]  # equally confident: the k-th row takes column k
    weird = torch.tensor([[float("nan"), 1.0], [float("inf"), float("-inf")]])
    assert _permutations(DF.binarize(weird))


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 9), batch=st.integers(1, 4), seed=st.integers(0, 2**16), rounding=st.sampled_from([None, 0, 1]))
def test_binarize_always_returns_a_permutation(k, batch, seed, rounding):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, k, k, generator=g)
    if rounding is not None:   # coarse values make ties and colliding argmaxes common
        scores = scores.round(decimals=rounding)
    perm = DF.binarize(scores)
    assert perm.shape == (batch, k) and _permutations(perm)


def _sequential_greedy(scores):
    """Reference: one assignment per step, the largest remaining log-probability (row-major ties)."""
    m, k, _ = scores.shape
    work = torch.log_softmax(scores.float(), -1)
    perm = torch.zeros(m, k, dtype=torch.long)
    for b in range(m):
        w = work[b].clone()
        for _ in range(k):
            best = int(w.argmax())
            r, c = divmod(best, k)
            perm[b, r] = c
            w[r, :] = float("-inf")
            w[:, c] = float("-inf")
    return perm


@pytest.mark.parametrize("k", [2, 3, 5, 8, 13])
@pytest.mark.parametrize("decimals", [None, 0, 1])
def test_greedy_assignment_equals_sequential_greedy(k, decimals):
    torch.manual_seed(k)
    scores = torch.randn(40, k, k)
    if decimals is not None:
        scores = scores.round(decimals=decimals)
    assert torch.equal(DF.greedy_assignment(scores), _sequential_greedy(scores))


def test_binarize_orders_collisions_by_row():
    # Rows 0 and 2 both want column 1: in the order (column, row) row 0 comes first and keeps it, although
    # row 2 is the more confident; row 2 takes the next column (2), and row 1's column 0 is untouched.
    scores = torch.tensor([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    assert DF.binarize(scores).tolist() == [1, 0, 2]
    assert DF.binarize(torch.tensor([[0.0, 3.0], [0.0, 3.0]])).tolist() == [0, 1]


@pytest.mark.parametrize("k", [64, 300])
def test_binarize_large_matrices(k):
    g = torch.Generator().manual_seed(k)
    perms = torch.stack([torch.randperm(k, generator=g) for _ in range(3)])
    scores = DF.one_hot_permutation(perms) * 4.0 + torch.rand(3, k, k, generator=g) * 1e-3
    assert torch.equal(DF.binarize(scores), perms)
    collide = scores.clone()
    collide[:, :, 0] += 10.0                  # every row's argmax is column 0: rows take the columns in order
    assert torch.equal(DF.binarize(collide), torch.arange(k).expand(3, k))
    # B's rows of a pair rank after A's: every key is distinct (integers, exact at any size).
    same = DF.ranked_columns(torch.full((2, k), k // 2 - 1), k, k // 2)
    assert torch.equal(same, torch.arange(k).expand(2, k))


def test_batch_variance_measures_disagreement_across_the_batch():
    perms = torch.stack([torch.roll(torch.arange(4), shift) for shift in range(4)])
    spread = DF.one_hot_permutation(perms)               # each row's choice spread evenly over the columns
    same = DF.one_hot_permutation(perms[:1].expand(4, 4))
    uniform = torch.full((4, 4, 4), 0.25)
    assert DF.batch_variance(same).item() == 0.0
    assert DF.batch_variance(uniform).item() == 0.0      # unsure rows do not count as diversity
    assert DF.batch_variance(spread).item() == pytest.approx(1 - 1 / 4)


def test_binarize_is_exact_on_permutation_matrices():
    perms = torch.stack([torch.randperm(7) for _ in range(10)])
    assert torch.equal(DF.binarize(DF.one_hot_permutation(perms)), perms)


@pytest.mark.parametrize("share", [True, False])
def test_compose_permutation_matches_one_hot_kron(share):
    groups, n1, n2 = 3, 2, 4
    c = groups * n1 * n2
    shape = (2,) if share else (2, groups)
    pa = torch.stack([torch.randperm(n1) for _ in range(int(torch.tensor(shape).prod()))]).view(*shape, n1)
    pb = torch.stack([torch.randperm(n2) for _ in range(int(torch.tensor(shape).prod()))]).view(*shape, n2)
    x = torch.randn(2, c, 3, 3)
    index = DF.compose_permutation(pa, pb, groups)
    assert _permutations(index)
    expected = DF.kron_shuffle(x, DF.one_hot_permutation(pa), DF.one_hot_permutation(pb), groups)
    assert torch.equal(DF.permute_channels(x, index), expected)


def test_permute_channels_channels_last_and_inverse():
    x = torch.randn(3, 10, 4, 5)
    index = torch.stack([torch.randperm(10) for _ in range(3)])
    ref = torch.stack([x[i, index[i]] for i in range(3)])
    out_cl = DF.permute_channels(x.contiguous(memory_format=torch.channels_last), index)
    assert torch.equal(DF.permute_channels(x, index), ref)
    assert torch.equal(out_cl, ref) and out_cl.is_contiguous(memory_format=torch.channels_last)
    inv = DF.invert_permutation(index)
    assert torch.equal(DF.permute_channels(ref, inv), x)


def test_penalty_zero_on_permutations():
    for perm in itertools.permutations(range(4)):
        assert DF.orthogonality_penalty(DF.one_hot_permutation(torch.tensor(perm))).item() == 0.0


@settings(max_examples=80, deadline=None)
@given(k=st.integers(2, 8), seed=st.integers(0, 2**16), scale=st.floats(0.1, 20.0))
def test_penalty_positive_on_soft_matrices(k, seed, scale):
    g = torch.Generator().manual_seed(seed)
    m = torch.softmax(torch.randn(k, k, generator=g, dtype=torch.float64) * scale, -1)
    penalty = DF.orthogonality_penalty(m).item()
    assert penalty >= 0.0
    # Zero exactly on permutations; a saturated softmax is one to float precision, so the test asks for
    # a clearly positive penalty away from the permutations and a vanishing one at them.
    collides = m.argmax(-1).unique().numel() < k
    if collides or bool((m.max(-1).values < 0.99).any()):
        assert penalty > 1e-5
    else:
        assert penalty < k * k * 4e-4  # every entry of MMᵀ − I within 0.02 of 0


@settings(max_examples=40, deadline=None)
@given(k=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_penalty_positive_on_one_hot_rows_that_collide(k, seed):
    """Row-stochastic with one-hot rows but a repeated column is not a permutation: penalty > 0."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.randint(0, k, (k,), generator=g)
    cols[1] = cols[0]
    assert DF.orthogonality_penalty(DF.one_hot_permutation(cols)).item() > 0


@pytest.mark.parametrize("share_ab", [True, False])
def test_kron_apply_sum_equals_two_kron_applies(share_ab):
    torch.manual_seed(3)
    groups, n1, n2 = 3, 2, 4
    x = torch.randn(2, groups * n1 * n2, 3, 3, dtype=torch.float64)
    a = torch.randn(*((2,) if share_ab else (2, groups)), n1, n1, dtype=torch.float64)
    b = torch.randn(*((2,) if share_ab else (2, groups)), n2, n2, dtype=torch.float64)
    u = torch.randn(1, groups, n1, n1, dtype=torch.float64)
    v = torch.randn(1, groups, n2, n2, dtype=torch.float64)
    expected = DF.kron_shuffle(x, a, b, groups) + DF.kron_shuffle(x, u, v, groups)
    torch.testing.assert_close(DF.kron_apply_sum(x, a, b, u, v, groups), expected)


# ---- the branch-free binarization (also what the straight-through forward and the export use) ------------

@pytest.mark.parametrize("rounds", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 6, 29])
def test_binarize_is_a_permutation_and_the_argmax_when_distinct(rounds, k):
    scores = torch.randn(300, k, k, generator=torch.Generator().manual_seed(k)) * 4
    perm = DF.binarize(scores, rounds)
    assert _permutations(perm)
    argmax = scores.argmax(-1)
    distinct = DF.is_permutation(argmax)
    assert torch.equal(perm[distinct], argmax[distinct])


def test_binarize_handles_ties_nan_and_inf():
    scores = torch.zeros(4, 5, 5)
    scores[1, 0, 0] = float("nan")
    scores[2] = float("inf")
    scores[3, :, 2] = 7.0  # every row wants column 2
    perm = DF.binarize(scores)
    assert _permutations(perm)
    assert perm[0].tolist() == [0, 1, 2, 3, 4]  # equal rows: ties go to the lower row, in order
    assert perm[3].tolist() == [0, 1, 2, 3, 4]  # one column wanted by all, equally: rows in index order


def test_binarize_pair_of_diverged_scores_gives_permutations_in_range():
    # A diverged generator (NaN or infinite logits) once made binarize_pair return indices outside 0..n-1
    # (a NaN key of A's rows sorted among B's), and the gather of the straight-through step failed.
    scores_a, scores_b = torch.randn(5, 3, 3), torch.randn(5, 4, 4)
    scores_a[0] = float("nan")
    scores_a[1, 2] = float("inf")
    scores_b[2, 1] = float("-inf")
    scores_b[3] = float("nan")
    perm_a, perm_b = DF.binarize_pair(scores_a, scores_b)
    assert _permutations(perm_a) and _permutations(perm_b)
    finite = torch.tensor([False, False, False, False, True])
    assert torch.equal(perm_a[finite], DF.binarize(scores_a[finite])) and \
        torch.equal(perm_b[finite], DF.binarize(scores_b[finite]))


def test_collisions_sorted_by_column_then_row_and_claim_rounds_by_confidence():
    scores = torch.tensor([[[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])
    # Rows 0 and 1 both want column 0; row 1 is more confident. rounds=0: the k-th row in the order
    # (column, row) = (row 0, row 1, row 2) gets column k.
    assert DF.binarize(scores).tolist() == [[0, 1, 2]]
    # rounds=1: row 1 keeps column 0, row 2 keeps column 2, row 0 takes the free column 1.
    assert DF.binarize(scores, rounds=1).tolist() == [[1, 0, 2]]


def test_binarize_pair_equals_two_calls():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 2, 2, generator=g) * 3, torch.randn(50, 29, 29, generator=g) * 3
    pa, pb = DF.binarize_pair(a, b)
    assert torch.equal(pa, DF.binarize(a)) and torch.equal(pb, DF.binarize(b))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_traced_binarization_has_no_fast_path():
    """A trace must not freeze a branch on the data: inputs with colliding argmaxes still get a permutation."""
    g = torch.Generator().manual_seed(0)
    example = torch.eye(6).expand(4, 6, 6).clone()  # argmaxes distinct: a fast path would be taken
    traced = torch.jit.trace(DF.binarize, example, check_trace=False)
    scores = torch.randn(64, 6, 6, generator=g)
    scores[:, :, 0] += 3.0  # most rows prefer column 0: collisions everywhere
    assert not DF.is_permutation(scores.argmax(-1)).all()
    out = traced(scores)
    assert DF.is_permutation(out).all()
    assert torch.equal(out, DF.binarize(scores))
