"""Numbers that say what a trained dynamic shuffle does: `permutation_stats` and the matrices behind it.

Questions a person asks of a trained model, and the statistic that answers each, per shuffle module:
- Are the soft matrices close to permutations (is the exact path at inference the same function as the
  soft one trained)? `row_max_a`, `row_max_b` (mean largest entry of a row: 1 for a permutation, 1/n
  for a uniform row) and `penalty` (‖AAᵀ − I‖² + ‖BBᵀ − I‖², 0 exactly for permutations).
- Does the permutation depend on the input at all, or did the module learn one fixed permutation (or
  stay at the fixed shuffle it starts from)? `fixed_fraction` (samples whose permutation is the fixed
  shuffle), `distinct` (number of different permutations), `agreement` (mean over pairs of samples of
  the fraction of output channels on which their permutations agree: 1.0 = the same for every input).
- Does it depend on the class? `class_agreement` (class x class matrix of the same agreement, averaged
  over the pairs of samples drawn from the two classes; self-pairs excluded on the diagonal).

Module inputs are recorded with forward pre-hooks during ordinary forwards of the whole model, on the
exact-permutation path by default: the statistics describe what the deployed model computes. Looking is
read-only: every function here runs the model in eval mode without gradients and restores each module's
mode, train flag and last penalties (`layers.modes.shuffle_mode`), so a model handed over in training
mode keeps its BatchNorm running statistics and its state dict exactly.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from dynshuffle.layers import functional as DF
from dynshuffle.layers.base import named_shuffle_modules
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.modes import shuffle_mode
from dynshuffle.layers.sds import StaticDynamicShuffle, named_shuffle_layers
from dynshuffle.profiling.timing import device_of

__all__ = ["permutation_stats", "collect_inputs", "matrices_for_inputs", "soft_full_matrix", "hard_full_matrix",
           "pairwise_agreement", "NoShuffleModulesError", "require_layers", "PATHS"]

PATHS = ("frozen", "soft")  # the shuffle modes the inspecting forwards may take (exact permutation, soft matrices)


class NoShuffleModulesError(ValueError):
    """The model has no learned or dynamic shuffle module, so there is no generated permutation to inspect."""


def require_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: shuffle module} of `model` (`named_shuffle_modules`), or NoShuffleModulesError (naming the
    model's shuffle) when it has none."""
    layers = dict(named_shuffle_modules(model))
    if not layers:
        cfg = getattr(model, "config", None) or {}
        what = f" (shuffle={cfg.get('shuffle')!r}, pointwise={cfg.get('pointwise')!r})" if cfg else ""
        raise NoShuffleModulesError(f"the model has no dynamic or learned shuffle module{what}: its channel "
                                    f"shuffles are fixed, there is no generated permutation to inspect")
    return layers


@contextlib.contextmanager
def _read_only(model: nn.Module, mode: str) -> Iterator[None]:
    """Inside the block `model` is a function to look at: eval mode (no BatchNorm update, no noise), every
    shuffle module on `mode`, no gradient; modes, train flags and last penalties come back afterwards."""
    if mode not in PATHS:
        raise ValueError(f"mode must be one of {', '.join(map(repr, PATHS))}, got {mode!r}")
    with shuffle_mode(model, mode, training=False), torch.no_grad():
        yield


def collect_inputs(model: nn.Module, images: Tensor, mode: str = "frozen") -> dict[str, Tensor]:
    """The input each shuffle module sees when `model(images)` runs (eval, `mode` path): {name: tensor}."""
    layers = require_layers(model)
    seen: dict[str, Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
               for name, m in layers.items()]
    # On the soft path an SDS computes its dynamic part without calling it: the SDS's input is that part's.
    handles += [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
                for name, m in ((f"{n}.dynamic" if n else "dynamic", m) for n, m in named_shuffle_layers(model)
                                if isinstance(m, StaticDynamicShuffle))]
    try:
        with _read_only(model, mode):
            model(images.to(device_of(model)))
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in layers if name not in seen]
    if missing:
        raise ValueError(f"these shuffle modules did not run during the forward: {', '.join(missing)}")
    return seen


def pairwise_agreement(perms: Tensor, chunk: int = 256) -> Tensor:
    """(N, N) matrix: fraction of positions on which the permutations `perms[i]` and `perms[j]` agree."""
    n = perms.shape[0]
    out = torch.empty(n, n)
    for start in range(0, n, chunk):
        block = perms[start:start + chunk]
        out[start:start + chunk] = (block.unsqueeze(1) == perms.unsqueeze(0)).float().mean(-1).cpu()
    return out


def _mean_pairwise_agreement(perms: Tensor) -> float:
    """Mean over unordered pairs i < j of the agreement fraction, in O(N C) memory via value counts.

    At channel c, the agreeing pairs are sum over values v of count_v (count_v - 1) / 2.
    """
    n, c = perms.shape
    if n < 2:
        return math.nan
    counts = torch.zeros(c, c, dtype=torch.float64)
    counts.scatter_add_(1, perms.t().cpu(), torch.ones(c, n, dtype=torch.float64))
    agreeing = (counts * (counts - 1) / 2).sum(1)  # per channel
    return float(agreeing.mean() / (n * (n - 1) / 2))


def _class_agreement(perms: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(class x class agreement matrix, sorted class labels). NaN where a class has a single sample (diagonal)."""
    classes = torch.unique(labels.cpu())
    sim = pairwise_agreement(perms).double()
    labels = labels.cpu()
    k = len(classes)
    matrix = np.full((k, k), np.nan)
    members = [(labels == cls).nonzero().squeeze(1) for cls in classes]
    for i, rows in enumerate(members):
        for j, cols in enumerate(members):
            block = sim[rows][:, cols]
            if i == j:
                m = len(rows)
                if m > 1:
                    matrix[i, j] = float((block.sum() - block.diagonal().sum()) / (m * (m - 1)))
            else:
                matrix[i, j] = float(block.mean())
    return matrix, classes.numpy()


def permutation_stats(model: nn.Module, images: Tensor, labels: Tensor | None = None, *, batch_size: int = 64,
                      mode: str = "frozen", keep_permutations: bool = False) -> dict[str, dict]:
    """Per-layer statistics of the permutations `model` generates for `images`.

    Args:
        model: a model with at least one DynamicShuffle / LearnedShuffle (also inside a
            StaticDynamicShuffle); NoShuffleModulesError (a ValueError) otherwise.
        images: normalised float images (N, C, H, W), as the model expects them.
        labels: optional (N,) integer class labels; adds the class x class agreement.
        batch_size: images per forward.
        mode: the path the forwards take to reach each module: "frozen" (exact permutations, as deployed)
            or "soft". It only changes the inputs of later modules; every module's own statistics are
            computed from both its soft matrices and its exact permutation.
        keep_permutations: also return each layer's permutations, "permutations" (N, C) LongTensor.

    Returns {layer name: stats}, in the model's module order, where stats holds:
        kind ("dynamic" / "learned"), channels, groups, n1, n2, samples;
        row_max_a, row_max_b: mean over samples, groups and rows of the largest entry of each row of the
            soft A and B (in (0, 1]; 1 = a permutation); min_row_max_a/b: the smallest such entry;
        penalty: mean over samples of ‖AAᵀ − I‖²_F + ‖BBᵀ − I‖²_F (per-group mean when not shared), the
            same quantity the module adds to the training loss;
        fixed_fraction: fraction of samples whose permutation equals the fixed ShuffleNet shuffle;
        fixed_channel_agreement: mean fraction of output channels that read the same input as the fixed shuffle;
        distinct: number of different permutations among the samples;
        stable_rows: fraction of the rows of A and B (all groups) whose largest score is in the same column
            for every sample: rows that no sample flips;
        margin: median over the rows of the smallest gap, over the samples, between a row's largest score and
            its second largest (scores as the binarization sees them: logits over the temperature);
        score_spread: median over the rows of the largest standard deviation over the samples of one of the
            row's scores (0 for a learned shuffle: its scores do not depend on the input);
        margin_in_spreads: median over the rows of margin / spread (inf when the scores do not move): how
            many standard deviations of the input-driven movement separate a row from a flip;
        agreement: mean over pairs of samples of the fraction of channels on which their permutations
            agree (1.0 when all are equal; NaN for a single sample);
        with labels: classes (np.ndarray of the labels present, sorted), class_agreement (np.ndarray
            K x K; the diagonal averages pairs of distinct samples of one class, NaN if it has one),
            within_class, between_class (means of the diagonal / off-diagonal entries).
    """
    labels = _check_stats_inputs(images, labels, batch_size)
    layers = require_layers(model)
    with _read_only(model, mode):
        perms, sums = _accumulate(model, layers, images, batch_size, mode)
    n = images.shape[0]
    result: dict[str, dict] = {}
    for name, module in layers.items():
        stats = _layer_stats(module, torch.cat(perms[name]), sums[name], n, labels)
        if keep_permutations:
            stats["permutations"] = torch.cat(perms[name])
        result[name] = stats
    return result


def _check_stats_inputs(images, labels, batch_size) -> Tensor | None:
    """Validate `permutation_stats`' arguments; returns the labels as a flat tensor (or None)."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W) normalised as the model expects, got "
                         f"{getattr(images, 'dtype', '')} {shape}")
    n = images.shape[0]
    if n < 1:
        raise ValueError("permutation_stats needs at least one image")
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"got {labels.shape[0]} labels for {n} images")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return labels


def _accumulate(model: nn.Module, layers: dict[str, nn.Module], images: Tensor, batch_size: int,
                mode: str) -> tuple[dict[str, list[Tensor]], dict[str, dict[str, float]]]:
    """Each layer's permutations (one tensor per batch), the sums of its soft-matrix statistics and its
    scores per batch (under "scores")."""
    perms: dict[str, list[Tensor]] = {name: [] for name in layers}
    sums = {name: {"row_max_a": 0.0, "row_max_b": 0.0, "penalty": 0.0, "min_row_max_a": 1.0,
                   "min_row_max_b": 1.0, "scores": []} for name in layers}
    for start in range(0, images.shape[0], batch_size):
        inputs = collect_inputs(model, images[start:start + batch_size], mode)
        for name, module in layers.items():
            x = inputs[name]
            # One generator pass gives both the scores (for the margins) and the soft matrices built from them
            # (the values of `module.soft_matrices(x)`).
            scores = [f.expand(x.shape[0], *f.shape[1:]) for f in module.scaled_logits(x)]
            a, b = module.soft_from_scores(*scores)
            perms[name].append(module.permutation(x).cpu())
            s = sums[name]
            s["scores"].append(tuple(f.flatten(1, -2).float().cpu() for f in scores))
            for key, m in (("a", a), ("b", b)):
                row_max = m.amax(-1).float()
                # Per sample: mean over (groups and) rows; summed over samples here, divided by n later.
                s[f"row_max_{key}"] += float(row_max.reshape(row_max.shape[0], -1).mean(1).sum())
                s[f"min_row_max_{key}"] = min(s[f"min_row_max_{key}"], float(row_max.min()))
            pen = DF.orthogonality_penalty(a).reshape(a.shape[0], -1).mean(1) \
                + DF.orthogonality_penalty(b).reshape(b.shape[0], -1).mean(1)
            s["penalty"] += float(pen.sum())
    return perms, sums


def _layer_stats(module: nn.Module, p: Tensor, sums: dict[str, float], n: int, labels: Tensor | None) -> dict:
    """The statistics of one layer from its permutations `p` (N, C) and its summed soft statistics."""
    fixed = DF.channel_shuffle_index(module.channels, module.groups)
    stats = {
        "kind": "dynamic" if isinstance(module, DynamicShuffle) else
                "learned" if isinstance(module, LearnedShuffle) else type(module).__name__,
        "channels": module.channels, "groups": module.groups, "n1": module.n1, "n2": module.n2,
        "samples": n,
        "row_max_a": sums["row_max_a"] / n, "row_max_b": sums["row_max_b"] / n,
        "min_row_max_a": sums["min_row_max_a"], "min_row_max_b": sums["min_row_max_b"],
        "penalty": sums["penalty"] / n,
        "fixed_fraction": float((p == fixed).all(1).float().mean()),
        "fixed_channel_agreement": float((p == fixed).float().mean()),
        "distinct": int(torch.unique(p, dim=0).shape[0]),
        "agreement": _mean_pairwise_agreement(p),
        **_score_margins(sums["scores"]),
    }
    if labels is not None:
        matrix, classes = _class_agreement(p, labels)
        off = ~np.eye(len(classes), dtype=bool)
        diag = np.diagonal(matrix)
        stats.update({
            "classes": classes, "class_agreement": matrix,
            "within_class": float(np.nanmean(diag)) if np.isfinite(diag).any() else math.nan,
            "between_class": float(matrix[off].mean()) if off.any() else math.nan,
        })
    return stats


def _score_margins(batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """`stable_rows`, `margin`, `score_spread` and `margin_in_spreads` (see `permutation_stats`) from the
    per-batch scores of A and B, each `(batch, rows, n)`. A factor of size 1 has no row to flip: skipped."""
    stable, margins, spreads = [], [], []
    for factor in zip(*batches):
        scores = torch.cat(factor)                                   # (N, rows, n)
        if scores.shape[-1] < 2:
            continue
        top2 = scores.topk(2, -1)
        winner = top2.indices[..., 0]
        stable.append((winner == winner[:1]).all(0))
        margins.append((top2.values[..., 0] - top2.values[..., 1]).amin(0))
        spreads.append(scores.std(0, correction=0).amax(-1))
    if not stable:
        return {"stable_rows": 1.0, "margin": math.inf, "score_spread": 0.0, "margin_in_spreads": math.inf}
    margin, spread = torch.cat(margins), torch.cat(spreads)
    in_spreads = torch.where(spread > 0, margin / spread, torch.full_like(margin, math.inf))
    return {"stable_rows": float(torch.cat(stable).float().mean()), "margin": float(margin.median()),
            "score_spread": float(spread.median()), "margin_in_spreads": float(in_spreads.median())}


def soft_full_matrix(a: Tensor, b: Tensor, groups: int) -> Tensor:
    """The module's soft C x C matrix `S_G · blockdiag_g(A_g ⊗ B_g)` for one sample.

    `a`: (n1, n1) or (G, n1, n1); `b`: (n2, n2) or (G, n2, n2). Row o is output channel o, column the
    input channel it reads: `y = M x` is what `kron_shuffle(x, a, b, groups)` computes.
    """
    a = a.float().expand(groups, *a.shape[-2:]) if a.dim() == 2 else a.float()
    b = b.float().expand(groups, *b.shape[-2:]) if b.dim() == 2 else b.float()
    n = a.shape[-1] * b.shape[-1]
    block = torch.block_diag(*[torch.kron(a[g], b[g]) for g in range(groups)])
    return block[DF.channel_shuffle_index(n * groups, groups, device=block.device)]


def hard_full_matrix(perm: Tensor) -> Tensor:
    """The C x C 0/1 matrix of a permutation index (C,) with `out[c] = in[perm[c]]`: row c is one-hot at perm[c]."""
    return DF.one_hot_permutation(perm)


def matrices_for_inputs(model: nn.Module, images: Tensor, mode: str = "frozen") -> dict[str, dict[str, Tensor]]:
    """For a few images: per layer the soft A, B, the soft C x C matrix and the binarized C x C permutation.

    Returns {layer: {"a": (N, [G,] n1, n1), "b": (N, [G,] n2, n2), "soft": (N, C, C), "hard": (N, C, C),
    "perm": (N, C)}} on the CPU.
    """
    out: dict[str, dict[str, Tensor]] = {}
    layers = require_layers(model)
    with _read_only(model, mode):
        inputs = collect_inputs(model, images, mode)
        matrices = {name: (module.soft_matrices(inputs[name]), module.permutation(inputs[name]))
                    for name, module in layers.items()}
    for name, module in layers.items():
        (a, b), perm = matrices[name]
        a, b, perm = a.cpu(), b.cpu(), perm.cpu()
        out[name] = {
            "a": a, "b": b, "perm": perm,
            "soft": torch.stack([soft_full_matrix(a[i], b[i], module.groups) for i in range(a.shape[0])]),
            "hard": torch.stack([hard_full_matrix(p) for p in perm]),
        }
    return out
