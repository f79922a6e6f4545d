"""The math of dynamic shuffle as plain functions on tensors.

Conventions (see docs/method.md):
- `C` channels are split into `G` groups of `n = C // G`; inside a group, channel `k` is viewed as the
  pair `(k // n2, k % n2)` of a `(n1, n2)` grid, so the group's mixing matrix is the Kronecker product
  `A ⊗ B` and applies as `Z -> A Z Bᵀ` without ever building the `n x n` matrix.
- After the within-group mixing comes ShuffleNet's fixed cross-group shuffle with `G` groups:
  output channel `o = m * G + g` reads position `m` of group `g`.
- A permutation is stored as an index vector `p` with `out[c] = in[p[c]]`; for a matrix `M` whose row `i`
  is one-hot at column `p[i]`, `M z == z[p]`.
- Matrices are batched: `(N, n, n)` when one pair is shared by every group, `(N, G, n, n)` otherwise;
  a leading batch size of 1 broadcasts over the input's batch.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "factorize",
    "check_factors",
    "channel_shuffle_index",
    "channel_shuffle",
    "kron_shuffle",
    "kron_apply_sum",
    "binarize",
    "one_hot_permutation",
    "compose_permutation",
    "binarize_pair",
    "compose_ranks",
    "ranked_columns",
    "factor_orders",
    "block_orders",
    "inverse_composed_index",
    "as_float32",
    "permute_channels",
    "invert_permutation",
    "orthogonality_penalty",
    "batch_variance",
]


def factorize(n: int) -> tuple[int, int]:
    """The most balanced factorisation `n = n1 * n2` with `n1 <= n2`; a prime gives `(1, n)`."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"can only factorise a positive integer, got {n!r}")
    n1 = math.isqrt(n)
    while n % n1:
        n1 -= 1
    return n1, n // n1


def check_factors(channels: int, groups: int, factors: tuple[int, int] | None) -> tuple[int, int]:
    """Validate `(channels, groups, factors)` and return the factors `(n1, n2)` of `n = channels // groups`."""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    n = channels // groups
    if factors is None:
        return factorize(n)
    try:
        n1, n2 = (int(f) for f in factors)
    except (TypeError, ValueError):
        raise ValueError(f"factors must be a pair of positive integers, got {factors!r}") from None
    if n1 < 1 or n2 < 1 or n1 * n2 != n:
        raise ValueError(
            f"factors ({n1}, {n2}) multiply to {n1 * n2}, but channels / groups = {channels} / {groups} = {n}")
    return n1, n2


def channel_shuffle_index(channels: int, groups: int, device=None) -> Tensor:
    """Index vector of ShuffleNet's shuffle: output `m * G + g` reads input `g * n + m`."""
    n = channels // groups
    return torch.arange(channels, device=device).view(groups, n).t().reshape(-1)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's fixed channel shuffle of an `(N, C, H, W)` tensor (a transpose of the group axis)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _as_group_matrices(m: Tensor, groups: int) -> Tensor:
    """`(B, k, k)` (shared) -> `(B, 1, k, k)`; `(B, G, k, k)` is returned as is."""
    if m.dim() == 3:
        return m.unsqueeze(1)
    if m.dim() == 4 and m.shape[1] in (1, groups):
        return m
    raise ValueError(f"expected matrices of shape (N, k, k) or (N, {groups}, k, k), got {tuple(m.shape)}")


def kron_shuffle(x: Tensor, a: Tensor, b: Tensor, groups: int) -> Tensor:
    """Two steps: apply `blockdiag_g(A_g ⊗ B_g)` to the channels of `x`, then the cross-group shuffle.

    `x`: `(N, C, H, W)`; `a`: `(N|1, n1, n1)` or `(N|1, G, n1, n1)`; `b` likewise with `n2`.
    Costs `C * (n1 + n2)` multiply-adds per pixel instead of the `C * n` of the dense block matrix.
    The two steps are one function because with one pair shared by the groups the shuffle commutes with
    the mixing and is cheapest done first (see below); `channel_shuffle` is the shuffle on its own.
    """
    n, c, h, w = x.shape
    a4, b4 = _as_group_matrices(a, groups), _as_group_matrices(b, groups)
    n1, n2 = a4.shape[-1], b4.shape[-1]
    if n1 * n2 * groups != c:
        raise ValueError(f"factors ({n1}, {n2}) x groups {groups} do not match {c} channels")
    s = h * w
    a4, b4 = a4.to(x.dtype), b4.to(x.dtype)
    if a4.shape[1] == 1 and b4.shape[1] == 1:
        # Step 2 first: one pair shared by the groups commutes with the cross-group shuffle. Shuffling the
        # input once lets both products run on contiguous (n1, n2 * G * S) / (n2, G * S) blocks that land
        # directly in the output's order (the fastest formulation in benchmarks/bench_kron_variants.py).
        # Views (flatten / view), not indexing: a selected factor costs a select_backward in training.
        a3, b3 = a4.flatten(0, 1), b4.flatten(0, 1)
        xs = x.reshape(n, groups, c // groups, s).transpose(1, 2).reshape(n, n1, n2 * groups * s)
        t = torch.matmul(a3, xs)                                                # A over the n1 axis
        y = torch.matmul(b3.view(-1, 1, n2, n2), t.view(n, n1, n2, groups * s))  # B over the n2 axis
        return y.reshape(n, c, h, w)
    z = x.reshape(n, groups, n1, n2 * s)
    t = torch.matmul(a4, z).view(n, groups, n1, n2, s)                  # step 1: A over n1, per group
    y = torch.matmul(b4.unsqueeze(2), t)                                # B over n2: (N, G, n1, n2, S)
    return y.permute(0, 2, 3, 1, 4).reshape(n, c, h, w)                 # step 2: the cross-group shuffle


def kron_apply_sum(x: Tensor, a: Tensor, b: Tensor, u: Tensor, v: Tensor, groups: int) -> Tensor:
    """`S_G · blockdiag_g[(A_g ⊗ B_g) + (U_g ⊗ V_g)] x` in two matrix products instead of four and an add.

    `A Z Bᵀ + U Z Vᵀ = [A U] · [Z Bᵀ ; Z Vᵀ]`: one product with the stacked `[B; V]` and one with the
    interleaved `[A U]`, so the intermediate is written and read once. Shapes as in `kron_shuffle`.
    """
    n, c, h, w = x.shape
    a4, b4 = _as_group_matrices(a, groups), _as_group_matrices(b, groups)
    u4, v4 = _as_group_matrices(u, groups), _as_group_matrices(v, groups)
    n1, n2 = a4.shape[-1], b4.shape[-1]
    if n1 * n2 * groups != c or u4.shape[-1] != n1 or v4.shape[-1] != n2:
        raise ValueError(f"factors ({n1}, {n2}) x groups {groups} do not match {c} channels")
    batch = max(a4.shape[0], b4.shape[0], u4.shape[0], v4.shape[0])
    full = (batch, groups)
    a4, u4 = a4.to(x.dtype).expand(*full, n1, n1), u4.to(x.dtype).expand(*full, n1, n1)
    b4, v4 = b4.to(x.dtype).expand(*full, n2, n2), v4.to(x.dtype).expand(*full, n2, n2)
    s = h * w
    z = x.reshape(n, groups, n1, n2, s)
    bv = torch.cat([b4, v4], dim=-2)                                    # (N, G, 2 n2, n2)
    t = torch.matmul(bv.unsqueeze(2), z)                                # (N, G, n1, 2 n2, S) = (.., n1, 2, n2, S)
    au = torch.stack([a4, u4], dim=-1).reshape(*full, n1, 2 * n1)      # column 2k + t: (A, U)[t][:, k]
    y = torch.matmul(au, t.reshape(n, groups, 2 * n1, n2 * s))          # (N, G, n1, n2 * S)
    return y.view(n, groups, n1 * n2, s).transpose(1, 2).reshape(n, c, h, w)


def binarize(scores: Tensor, rounds: int = 0) -> Tensor:
    """Turn batched score matrices `(..., n, n)` into exact permutations `(..., n)`, with no branch on data.

    Row `i` gets column `perm[i]`. With `rounds=0` (the default): sort the rows by (argmax column, then
    row index) and give the k-th row of that order the k-th column. That is one argmax and two argsorts.
    With `rounds > 0`, first run that many "claim" rounds (every free row claims its best free column, the
    most confident claimer keeps it; confidence is a row's largest softmax probability, so rows are
    compared on one scale), then give the rows still free the free columns in the same sorted way: closer
    to greedy assignment under collisions, at about 15 more ops per round. The result

    - is always a valid permutation (ties, equal rows, NaN and infinite scores included);
    - equals the row argmax whenever the row argmaxes are distinct (the trained regime);
    - runs the same fixed sequence of tensor ops for every input: no host synchronisation, so it compiles
      with `torch.compile(fullgraph=True)`, captures in CUDA graphs and exports to a small ONNX graph.

    `greedy_assignment` is the sequential greedy reference; docs/method.md §4 gives how often the two differ.
    """
    if scores.dim() < 2 or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(f"binarize expects square matrices (..., n, n), got {tuple(scores.shape)}")
    batch_shape, k = scores.shape[:-2], scores.shape[-1]
    if k == 1:
        return torch.zeros(*batch_shape, 1, dtype=torch.long, device=scores.device)
    # NaN handling and ties: see `ranked_columns`.
    if rounds <= 0:
        return ranked_columns(scores.argmax(-1))
    flat = scores.detach().reshape(-1, k, k)
    work = _comparable_scores(flat)
    rows = torch.arange(k, device=flat.device)
    perm = torch.zeros(flat.shape[:2], dtype=torch.long, device=flat.device)
    free_row = torch.ones(flat.shape[:2], dtype=torch.bool, device=flat.device)
    for _ in range(max(1, int(rounds))):
        conf, col = work.max(-1)                                       # each row's best free column
        conf = conf.masked_fill(~free_row, float("-inf"))
        claims = torch.full_like(work, float("-inf")).scatter(-1, col.unsqueeze(-1), conf.unsqueeze(-1))
        best_row = claims.argmax(-2)                                   # each column's most confident claimer
        won = free_row & (best_row.gather(-1, col) == rows)
        perm = torch.where(won, col, perm)
        free_row = free_row & ~won
        work = work.masked_fill(_marked_columns(col, won).unsqueeze(-2) | ~free_row.unsqueeze(-1), float("-inf"))
    # The rest: the j-th unassigned row (by its best free column, then index) takes the j-th free column.
    # Unassigned rows and free columns are equally many, so sorting both puts them in the same slots.
    free_col = ~_marked_columns(perm, ~free_row)
    row_key = torch.where(free_row, work.argmax(-1) * k + rows, k * k + rows).float()
    col_key = torch.where(free_col, rows, k + rows).float()
    rest = torch.zeros_like(perm).scatter(-1, row_key.argsort(-1), col_key.argsort(-1).expand_as(perm))
    return torch.where(free_row, rest, perm).reshape(*batch_shape, k)


def as_float32(t: Tensor) -> Tensor:
    """`t` in float32 (scores under autocast arrive in a lower precision; the soft matrices and their penalty,
    which ends near 0, need full precision).
    Not `.float()` on a float32 tensor: an exporter writes a Cast node for it."""
    return t if t.dtype == torch.float32 else t.float()


def ranked_columns(col: Tensor, k: int | None = None, n1: int | None = None, span: int | None = None) -> Tensor:
    """The permutation that gives the k-th row by (column `col`, then row index) column k:
    `argsort(argsort(key))` with the integer key `col * k + row`, so every row has its own key and the order
    is the same on every device, eager or exported, without a stable sort.

    `col`: each row's argmax. An argmax is always a column of its row, also for a row of NaN or infinite
    scores (a diverged generator), so the key stays in range without a guard.
    `k`: the number of rows, when the caller knows it as a constant (an exporter then records no shape read).
    `n1`: two factors in one call: rows from `n1` on are B's, with columns counted from 0 within B; their keys
    carry `span * k` (`span`: how many columns an A row's argmax can take, n1 unless the scores are padded),
    so they rank after all of A's rows and get columns n1..k-1.
    """
    k = col.shape[-1] if k is None else k
    n1, b_offset = (k, 0) if n1 is None else (n1, k * (span or n1))
    keys = _tables(_row_key_base)(n1, k - n1, b_offset, True, col.device)
    # topk with a constant k rather than argsort: an exported graph then reads no shape for it.
    order = torch.add(keys, col, alpha=k).topk(k, dim=-1, largest=False).indices
    return order.topk(k, dim=-1, largest=False).indices


def factor_orders(a: Tensor, b: Tensor) -> Tensor:
    """The rows of `a` and of `b` in the order `binarize_pair` ranks them: `(..., n1 + n2)`, A's rows sorted by
    (argmax column, row), then B's rows sorted the same way and offset by n1.

    `a`, `b`: matrices `(..., n1, n1)`, `(..., n2, n2)` (scores, or the soft matrices: a softmax keeps each
    row's argmax). The order is the inverse of the permutation: row `order[r]` gets column `r`, and
    `invert_permutation(order) == binarize_pair(a, b)` (concatenated, B offset by n1). Consumers that can use
    the order directly (`inverse_composed_index`) skip the second sort. Four ops for both factors: two
    argmaxes written into one buffer, the key, one stable sort.
    """
    n1, n2 = a.shape[-1], b.shape[-1]
    if torch.compiler.is_compiling():  # dynamo takes no out= views; the compiled graph fuses the concatenation
        col = torch.cat([a.detach().argmax(-1), b.detach().argmax(-1)], -1)
    else:  # both reductions write into one buffer: no concatenation
        col = torch.empty(*a.shape[:-2], n1 + n2, dtype=torch.long, device=a.device)
        torch.argmax(a.detach(), -1, out=col[..., :n1])
        torch.argmax(b.detach(), -1, out=col[..., n1:])
    return _sorted_rows(col, n1, n1)


def block_orders(scores: Tensor, n1: int) -> Tensor:
    """`factor_orders` of both factors' scores in one tensor `(..., n1 + n2, width)`, as a fused generator
    writes them (`FusedShuffleGenerator`): A's rows, then B's, each with its columns from 0 (padding columns
    beyond the factor's own are never a row's argmax, unless its scores are NaN)."""
    return _sorted_rows(scores.argmax(-1), n1, scores.shape[-1])


def _sorted_rows(col: Tensor, n1: int, span: int) -> Tensor:
    """The rows sorted by (column, row), B's rows (from `n1` on) after A's (`span`: the columns an argmax can
    take, so B's offset keeps every B key above every A key): `ranked_columns`' order, by a stable sort of the
    key without the row term."""
    return torch.sort(torch.add(col, _tables(_row_key_base)(n1, col.shape[-1] - n1, span, False, col.device)),
                      dim=-1, stable=True).indices


@functools.lru_cache(maxsize=128)
def _row_key_base(n1: int, n2: int, b_offset: int, with_row: bool, device) -> Tensor:
    """A sort key without its column term, per row of two factors: `b_offset` on B's n2 rows (0 on A's n1),
    plus the row index when `with_row` (`ranked_columns`; a stable sort needs none). A constant built from
    Python numbers, so it stays one also inside a trace."""
    return torch.tensor([(r if with_row else 0) + (b_offset if r >= n1 else 0) for r in range(n1 + n2)],
                        device=device)


def inverse_composed_index(order: Tensor, n1: int, n2: int, groups: int, batch: int) -> Tensor:
    """Where each input channel goes: `(batch * C,)` flat row indices of the `(N * C, H * W)` view, the
    inverse of `compose_permutation` for the rows sorted by `factor_orders` (`order`: `(N|1, n1 + n2)`, or
    `(N|1, G, n1 + n2)` with one pair per group). Input channel `g * n + a * n2 + b` of sample `s` goes to
    output channel `(order_a[a] * n2 + order_b[b]) * G + g`, row `s * C` of that view. Two broadcast adds
    onto a constant base; a batch-1 order broadcasts over `batch`.
    """
    lead = order.shape[0]
    heads = groups if order.dim() == 3 else 1
    # Views of the order, laid out as the input channels (sample, group, a, b); B's entries carry n1.
    order_a = order[..., :n1].reshape(lead, heads, n1, 1)
    order_b = order[..., n1:].reshape(lead, heads, 1, n2)
    base = _tables(_inverse_base)(n1, n2, groups, batch, order.device)
    out = torch.add(base, order_a, alpha=n2 * groups)
    return torch.add(out, order_b, alpha=groups).view(-1)


@functools.lru_cache(maxsize=256)
def _inverse_base(n1: int, n2: int, groups: int, batch: int, device) -> Tensor:
    """`inverse_composed_index`'s base `s * C + g - G * n1` for sample `s` and group `g` (the `- G * n1`
    removes B's offset in the order), shaped `(batch, G, 1, 1)`."""
    c = n1 * n2 * groups
    base = [[[[s * c + g - groups * n1]] for g in range(groups)] for s in range(batch)]
    return torch.tensor(base, device=device)


def _comparable_scores(scores: Tensor) -> Tensor:
    """Row-wise log-probabilities, comparable across rows, with NaN/inf replaced by finite stand-ins that
    stay below every real score (so a free column is always preferred to a taken one, marked -inf)."""
    logp = torch.log_softmax(scores.float(), dim=-1)
    return torch.nan_to_num(logp, nan=-3e38, posinf=3e38, neginf=-3e38)


def _marked_columns(col: Tensor, mark: Tensor) -> Tensor:
    """`(M, n)` bool: column `j` is marked when some row `i` with `mark[i]` has `col[i] == j`."""
    k = col.shape[-1]
    spare = torch.where(mark, col, torch.full_like(col, k))        # unmarked rows write to a spare column
    out = torch.zeros(*col.shape[:-1], k + 1, dtype=torch.bool, device=col.device)
    return out.scatter(-1, spare, torch.ones_like(mark))[..., :k]


def is_tracing() -> bool:
    """Whether the code runs under a tracer or exporter (TorchScript tracing, ONNX export, torch.export)."""
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    if torch.jit.is_tracing() or (exporting and exporting()):
        return True
    # dynamo traces the public function, not the flags' module
    return torch.onnx.is_in_onnx_export() if torch.compiler.is_compiling() else _onnx_exporting()()


@functools.cache
def _onnx_exporting():
    """`torch.onnx.is_in_onnx_export` without the imports it runs on every call (most of its cost: the
    fused eval path asks once per module and call), or that function where its flags moved."""
    try:
        # The flags the public function reads, imported once (private modules: hence the fallback below).
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS  # the same, TorchScript exporter
    except ImportError:
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


def is_permutation(index: Tensor) -> Tensor:
    """Whether each row of `(..., n)` indices in `[0, n)` is a permutation (every value exactly once)."""
    # n values in n slots: every slot is hit exactly when none is hit twice.
    return torch.zeros_like(index, dtype=torch.bool).scatter_(-1, index, True).all(-1)


def greedy_assignment(scores: Tensor) -> Tensor:
    """Greedy batched assignment of `(M, n, n)` scores to permutations `(M, n)` (see `binarize`).

    Sequential greedy takes one entry per step. Here every round takes all "mutual best" entries at
    once: the maximum of its row and of its column among the rows and columns still free (ties go to
    the lower index, as a row-major argmax would). Such entries are exactly those sequential greedy
    takes, in a different order, so the result is the same in a few rounds instead of n steps.
    """
    m, k, _ = scores.shape
    logp = torch.log_softmax(scores.float(), dim=-1)
    # Finite stand-ins keep NaN/inf scores below every real score but above the "taken" marker.
    work = torch.nan_to_num(logp, nan=-3e38, posinf=3e38, neginf=-3e38)
    perm = torch.zeros(m, k, dtype=torch.long, device=scores.device)
    free_rows = torch.ones(m, k, dtype=torch.bool, device=scores.device)
    rows = torch.arange(k, device=scores.device)
    tracing = is_tracing()
    for _ in range(k):
        best_col = work.argmax(-1)                      # (m, k): each row's best free column
        best_row = work.argmax(-2)                      # (m, k): each column's best free row
        mutual = (best_row.gather(1, best_col) == rows) & free_rows
        perm = torch.where(mutual, best_col, perm)
        free_rows = free_rows & ~mutual
        # Columns taken this round (non-mutual rows scatter into a spare column k that is dropped).
        target = torch.where(mutual, best_col, k)
        taken_cols = torch.zeros(m, k + 1, dtype=torch.long, device=scores.device).scatter_add_(
            1, target, mutual.long())[:, :k] > 0
        work = work.masked_fill(mutual.unsqueeze(-1) | taken_cols.unsqueeze(-2), float("-inf"))
        if not tracing and not bool(free_rows.any()):
            break
    return perm


def one_hot_permutation(perm: Tensor, dtype=torch.float32) -> Tensor:
    """Permutation index `(..., n)` -> matrix `(..., n, n)` with row `i` one-hot at column `perm[i]`."""
    return torch.nn.functional.one_hot(perm, perm.shape[-1]).to(dtype)


def binarize_pair(scores_a: Tensor, scores_b: Tensor) -> tuple[Tensor, Tensor]:
    """`(binarize(scores_a), binarize(scores_b))` (no claim rounds) with one pair of sorts for both: the keys
    of B's rows are offset past A's (`ranked_columns(..., n1=n1)`), so every row of A sorts before every row
    of B. `scores_a` `(..., n1, n1)`, `scores_b` `(..., n2, n2)` with the same leading shape.
    """
    n1 = scores_a.shape[-1]
    col = torch.cat([scores_a.argmax(-1), scores_b.argmax(-1)], -1)
    ranks = ranked_columns(col, n1 + scores_b.shape[-1], n1)
    return ranks[..., :n1], ranks[..., n1:] - n1


def compose_permutation(perm_a: Tensor, perm_b: Tensor, groups: int) -> Tensor:
    """Compose within-group `A ⊗ B` permutations and the cross-group shuffle into one index `(N, C)`.

    `perm_a`: `(N, n1)` or `(N, G, n1)`; `perm_b`: `(N, n2)` or `(N, G, n2)`.
    Output channel `(i * n2 + j) * G + g` reads input `g * n + perm_a[g, i] * n2 + perm_b[g, j]`
    (see `compose_ranks`, which does the work).
    """
    n1, n2 = perm_a.shape[-1], perm_b.shape[-1]
    if perm_a.dim() != perm_b.dim():  # one factor per group, the other shared: give both a group axis
        perm_a = perm_a if perm_a.dim() == 3 else perm_a.unsqueeze(1).expand(-1, groups, -1)
        perm_b = perm_b if perm_b.dim() == 3 else perm_b.unsqueeze(1).expand(-1, groups, -1)
    return compose_ranks(torch.cat([perm_a, perm_b + n1], -1), n1, n2, groups)


def compose_ranks(ranks: Tensor, n1: int, n2: int, groups: int) -> Tensor:
    """`compose_permutation(ranks[..., :n1], ranks[..., n1:] - n1, groups)` without the slices: `ranks`
    `(N, n1 + n2)` or `(N, G, n1 + n2)` holds A's permutation, then B's offset by n1 (as
    `ranked_columns(..., n1=n1)` gives them)."""
    k = n1 + n2
    stride = k if ranks.dim() == 3 else 0
    take_a, take_b, base = _tables(_compose_tables)(n1, n2, groups, stride, n1, ranks.device)
    flat = ranks if ranks.dim() == 2 else ranks.flatten(1)
    # Two gathers from small constant tables: an exported graph stays a handful of nodes.
    return flat.index_select(1, take_a) * n2 + flat.index_select(1, take_b) + base


def _tables(cached):
    """The cached table builder in eager mode; under torch.compile the builder itself (dynamo traces it
    into constants and warns about a cache wrapper)."""
    return cached.__wrapped__ if torch.compiler.is_compiling() else cached


@functools.lru_cache(maxsize=256)
def _compose_tables(n1: int, n2: int, groups: int, stride: int, offset_b: int, device) -> tuple[Tensor, ...]:
    """Index tables of `compose_ranks`: for output channel
    `o = (i * n2 + j) * G + g`, `take_a[o] = g * stride + i`, `take_b[o] = g * stride + offset_b + j` and
    `base[o] = g * n - offset_b`. Built once per shape and device (constants in a traced graph)."""
    n = n1 * n2
    outs = [(m // n2, m % n2, g) for m in range(n) for g in range(groups)]
    take_a = torch.tensor([g * stride + i for i, _, g in outs], device=device)
    take_b = torch.tensor([g * stride + offset_b + j for _, j, g in outs], device=device)
    base = torch.tensor([g * n - offset_b for _, _, g in outs], device=device)
    return take_a, take_b, base


def permute_channels(x: Tensor, index: Tensor) -> Tensor:
    """`out[n, c] = x[n, index[n, c]]` for `x` `(N, C, H, W)` and `index` `(N, C)` or `(1, C)`: one gather.

    Keeps channels-last inputs channels-last (a gather along the innermost axis). Under an exporter it
    gathers whole rows of the `(N * C, H * W)` view (one Gather node).
    """
    n, c, h, w = x.shape
    if index.shape[0] == 1:
        return x.index_select(1, index[0])
    if is_tracing():
        # Rows of the (N * C, H * W) view, gathered whole: onnxruntime copies each row in one go, where a
        # GatherElements over a broadcast index reads one index per element (slower; docs/performance.md).
        rows = index + torch.arange(index.shape[0], device=index.device).unsqueeze(1) * c
        return x.flatten(0, 1)[rows]
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        out = torch.gather(rows, 2, index.unsqueeze(1).expand(n, h * w, c))
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    if torch.compiler.is_compiling():  # the batch size may be symbolic there
        offsets = torch.arange(0, n * c, c, device=index.device).unsqueeze(1)
    else:  # cached: at batch 1-64 the two small ops cost as much as the gather of a small tensor
        offsets = _sample_offsets(n, c, index.device)
    flat = index + offsets
    return x.reshape(n * c, h * w).index_select(0, flat.view(-1)).view(n, c, h, w)


@functools.lru_cache(maxsize=64)
def _sample_offsets(n: int, c: int, device) -> Tensor:
    """`(n, 1)` row offsets `i * c` of the samples of an `(n * c, H * W)` view."""
    return torch.tensor([[i * c] for i in range(n)], device=device)


def invert_permutation(index: Tensor) -> Tensor:
    """Inverse of batched permutations `(..., n)`: `inv[index[i]] = i`."""
    arange = torch.arange(index.shape[-1], device=index.device).expand_as(index)
    return torch.empty_like(index).scatter_(-1, index, arange)


def orthogonality_penalty(m: Tensor) -> Tensor:
    """`‖M Mᵀ − I‖²_F` for each matrix of a batch `(..., n, n)`; 0 exactly when a row-stochastic M is a permutation."""
    m = m.float()
    gram = torch.matmul(m, m.transpose(-1, -2))
    eye = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)
    return (gram - eye).pow(2).sum((-2, -1))


def batch_variance(m: Tensor) -> Tensor:
    """How much a batch of row-stochastic matrices `(N, ..., n, n)` disagrees: the variance over the batch
    of each entry, summed over a row's columns and averaged over rows. 0 when every sample has the same
    matrix; largest (1 - 1/n) when every sample's rows are one-hot and spread evenly over the columns.
    Unlike a load-balancing term on the batch mean alone, uniform (unsure) rows do not raise it."""
    return m.float().var(0, unbiased=False).sum(-1).mean()
