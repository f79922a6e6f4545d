"""Pictures of what a trained dynamic shuffle does (matplotlib, Agg canvas, PNG files).

Each picture answers one question of `inspection.stats` by eye:
- `matrices_<layer>.png`: for a few inputs, the soft factors A and B, the soft C x C matrix
  `S_G · blockdiag(A ⊗ B)` the module trains with, and the exact permutation it applies at inference.
- `class_agreement.png`: per layer, the class x class agreement of the permutations (1 = the same
  permutation for both classes); `sample_agreement.png`: the same between individual inputs, sorted by class.
- `closeness.png`: per layer, how close the soft matrices are to permutations (mean row maximum, penalty).
- `diversity.png`: per layer, how much the permutation depends on the input (agreement, distinct
  permutations, share of inputs that still get the fixed shuffle).
- `training.png`: the penalty per epoch and the accuracy columns of the run's log.csv.
- `compare.png` (written by `dynshuffle compare`): top-1 ± std against multiply-adds, one point per
  variant: which variant buys accuracy for its arithmetic.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot, so
importing this module changes no global backend and works on machines without a display. Every file
is written atomically.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dynshuffle.utils import arg, atomic_open, atomic_write_text, read_csv

from .stats import matrices_for_inputs, pairwise_agreement, permutation_stats, require_layers

__all__ = ["plot_matrices", "plot_class_agreement", "plot_sample_agreement", "plot_closeness", "plot_diversity",
           "plot_training", "plot_accuracy_vs_macs", "plot_compare_curves", "render_report", "planned_files", "layer_file_name", "fit_titles"]

SAMPLE_AGREEMENT_MAX = 64  # inputs shown in sample_agreement.png (an N x N picture stops being readable)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional (the viz extra): loaded to draw
    from matplotlib.figure import Figure  # optional (the viz extra)

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _narrower(text: str, factor: float) -> str | None:
    """`text` re-wrapped so that its longest line is about `factor` times as long; None when no line can be
    wrapped further (single words)."""
    lines = text.split("\n")
    longest = max(len(line) for line in lines)
    width = max(8, int(longest * factor) - 1)
    wrapped = "\n".join(textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) or line
                        for line in lines)
    return wrapped if max(len(line) for line in wrapped.split("\n")) < longest else None


def fit_titles(fig, rounds: int = 4) -> None:
    """Make every axes title fit the width of its axes and the figure title the figure's: wrap the text, and
    shrink the font where a single word is still too wide. Layout (constrained) is recomputed between rounds,
    so a picture of one layer or of fifty keeps whole titles."""
    for _ in range(rounds):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        changed = False
        texts = [(ax.title, ax.get_window_extent(renderer).width) for ax in fig.axes if ax.get_title()]
        if fig._suptitle is not None and fig._suptitle.get_text():
            texts.append((fig._suptitle, fig.bbox.width))
        for text, room in texts:
            width = text.get_window_extent(renderer).width
            if width <= room + 0.5:
                continue
            wrapped = _narrower(text.get_text(), room / width)
            if wrapped is not None:
                text.set_text(wrapped)
            else:
                text.set_fontsize(max(4.0, text.get_fontsize() * room / width * 0.97))
            changed = True
        if not changed:
            return


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fit_titles(fig)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path


def layer_file_name(layer: str) -> str:
    """`matrices_<layer>.png` with the layer name made safe for a file name."""
    return "matrices_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", layer) + ".png"


def _grid(count: int) -> tuple[int, int]:
    cols = min(count, 4)
    return math.ceil(count / cols), cols


def _heatmap(fig, ax, matrix, title: str, xlabel: str, ylabel: str, cmap: str = "viridis",
             vmin: float | None = 0.0, vmax: float | None = 1.0, colorbar: bool = True):
    image = ax.imshow(np.asarray(matrix, dtype=float), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.8)
    return image


def _block_diag(m: torch.Tensor) -> torch.Tensor:
    """(k, k) as is; (G, k, k) -> the block-diagonal (G k, G k), so per-group factors show side by side."""
    return m if m.dim() == 2 else torch.block_diag(*m)


def plot_matrices(mats: dict[str, torch.Tensor], layer: str, path: str | os.PathLike,
                  labels: Sequence | None = None, class_names: Sequence[str] | None = None) -> Path:
    """One row per input: soft A, soft B, the soft C x C matrix and the binarized permutation of `layer`.

    `mats`: one entry of `inspection.matrices_for_inputs` ({"a", "b", "soft", "hard"}).
    """
    n = mats["a"].shape[0]
    fig = _figure(15, 3.4 * n + 0.6)
    axes = np.asarray(fig.subplots(n, 4, squeeze=False))
    per_group = mats["a"].dim() == 4
    for i in range(n):
        tag = f"input {i}"
        if labels is not None:
            cls = int(labels[i])
            tag += f", class {class_names[cls] if class_names is not None and cls < len(class_names) else cls}"
        a, b = _block_diag(mats["a"][i]), _block_diag(mats["b"][i])
        group_note = " (per group, block-diagonal)" if per_group else ""
        _heatmap(fig, axes[i, 0], a, f"soft A{group_note}\n{tag}", "input row index", "output row index")
        _heatmap(fig, axes[i, 1], b, f"soft B{group_note}\n{tag}", "input column index", "output column index")
        _heatmap(fig, axes[i, 2], mats["soft"][i], f"soft C x C: shuffle · blockdiag(A ⊗ B)\n{tag}",
                 "input channel", "output channel")
        _heatmap(fig, axes[i, 3], mats["hard"][i], f"binarized permutation (inference)\n{tag}",
                 "input channel", "output channel", cmap="Greys")
    fig.suptitle(f"{layer}: generated matrices (colour = weight an output takes from an input)", fontsize=11)
    return _save(fig, path)


def _layer_grid(fig, count: int):
    rows, cols = _grid(count)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax in axes[count:]:
        ax.set_axis_off()
    return axes[:count]


def plot_class_agreement(stats: dict[str, dict], path: str | os.PathLike,
                         class_names: Sequence[str] | None = None) -> Path:
    """Per layer, the class x class agreement matrix (needs stats computed with labels)."""
    layers = [name for name, s in stats.items() if "class_agreement" in s]
    if not layers:
        raise ValueError("plot_class_agreement needs statistics computed with labels")
    values = np.concatenate([stats[n]["class_agreement"].ravel() for n in layers])
    low = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
    vmin = min(math.floor(low * 10) / 10, 0.9)  # a scale that shows small differences near 1
    rows, cols = _grid(len(layers))
    fig = _figure(3.6 * cols + 1.2, 3.2 * rows + 0.8)
    axes = _layer_grid(fig, len(layers))
    image = None
    for ax, name in zip(axes, layers):
        s = stats[name]
        classes = s["classes"]
        names = [class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(c)
                 for c in classes]
        image = _heatmap(fig, ax, s["class_agreement"], f"{name}\nwithin {s['within_class']:.3f}, between "
                         f"{s['between_class']:.3f}", "class", "class", vmin=vmin, vmax=1.0, colorbar=False)
        if len(classes) <= 20:
            ax.set_xticks(range(len(classes)), names, fontsize=6, rotation=90)
            ax.set_yticks(range(len(classes)), names, fontsize=6)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of channels on which the permutations agree")
    fig.suptitle("Do different classes get different permutations? (1 = identical permutations)", fontsize=11)
    return _save(fig, path)


def plot_sample_agreement(stats: dict[str, dict], labels: Sequence | torch.Tensor, path: str | os.PathLike,
                          limit: int = SAMPLE_AGREEMENT_MAX) -> Path:
    """Per layer, the input x input agreement of the permutations, inputs sorted by class.

    Needs stats computed with `keep_permutations=True`; shows at most `limit` inputs.
    """
    layers = [name for name, s in stats.items() if "permutations" in s]
    if not layers:
        raise ValueError("plot_sample_agreement needs statistics computed with keep_permutations=True")
    labels = torch.as_tensor(labels).reshape(-1)
    order = torch.argsort(labels[:limit], stable=True)
    sims = {name: pairwise_agreement(stats[name]["permutations"][:limit][order]).numpy() for name in layers}
    low = min(float(s.min()) for s in sims.values())
    vmin = min(math.floor(low * 10) / 10, 0.9)
    rows, cols = _grid(len(layers))
    fig = _figure(3.6 * cols + 1.2, 3.2 * rows + 0.8)
    axes = _layer_grid(fig, len(layers))
    image = None
    sorted_labels = labels[:limit][order].numpy()
    boundaries = np.nonzero(np.diff(sorted_labels))[0] + 0.5
    for ax, name in zip(axes, layers):
        image = _heatmap(fig, ax, sims[name], f"{name}\n{stats[name]['distinct']} distinct of "
                         f"{stats[name]['samples']}", "input (sorted by class)", "input (sorted by class)",
                         vmin=vmin, vmax=1.0, colorbar=False)
        for b in boundaries:
            ax.axhline(b, color="white", linewidth=0.5)
            ax.axvline(b, color="white", linewidth=0.5)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of channels on which the permutations agree")
    fig.suptitle(f"Permutation agreement between inputs ({len(order)} inputs; white lines separate classes)",
                 fontsize=11)
    return _save(fig, path)


def _legend_outside(ax) -> None:
    """Legend to the right of the axes, where it can never hide a bar."""
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def _layer_axis(ax, names: list[str]) -> None:
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer (forward order)")


def plot_closeness(stats: dict[str, dict], path: str | os.PathLike) -> Path:
    """Per layer: mean (and smallest) row maximum of A and B, and the orthogonality penalty, as bars."""
    names = list(stats)
    x = np.arange(len(names))
    fig = _figure(max(7.0, 0.45 * len(names) + 2), 7.5)
    top, bottom = fig.subplots(2, 1)
    width = 0.38
    for offset, key, label in ((-width / 2, "a", "A"), (width / 2, "b", "B")):
        means = [stats[n][f"row_max_{key}"] for n in names]
        mins = [stats[n][f"min_row_max_{key}"] for n in names]
        top.bar(x + offset, means, width, label=f"mean row max of {label}")
        top.scatter(x + offset, mins, marker="v" if key == "a" else "^", s=18, color="black", zorder=3,
                    label=f"smallest row max of {label}")
    top.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="permutation (1.0)")
    top.set_ylim(0, 1.08)
    top.set_ylabel("row maximum of the soft matrix")
    top.set_title("How close are the soft matrices to permutations? (1 = every row one-hot)")
    _legend_outside(top)
    _layer_axis(top, names)
    penalties = [stats[n]["penalty"] for n in names]
    bottom.bar(x, penalties, color="tab:red")
    if all(p > 0 for p in penalties) and max(penalties) / max(min(penalties), 1e-12) > 100:
        bottom.set_yscale("log")
    bottom.set_ylabel("‖AAᵀ − I‖² + ‖BBᵀ − I‖²")
    bottom.set_title("Orthogonality penalty per layer (0 = exact permutations)")
    _layer_axis(bottom, names)
    return _save(fig, path)


def plot_diversity(stats: dict[str, dict], path: str | os.PathLike) -> Path:
    """Per layer: how much the permutation depends on the input and on the class."""
    names = list(stats)
    x = np.arange(len(names))
    fig = _figure(max(7.0, 0.45 * len(names) + 2), 7.5)
    top, bottom = fig.subplots(2, 1)
    series = [("agreement", "agreement between inputs")]
    if all("within_class" in stats[n] for n in names):
        series += [("within_class", "agreement within a class"), ("between_class", "agreement between classes")]
    series.append(("fixed_fraction", "inputs given the fixed shuffle"))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        values = [stats[n][key] for n in names]
        top.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(np.asarray(values, dtype=float), nan=0.0), width,
                label=label)
    top.set_ylim(0, 1.08)
    top.set_ylabel("fraction")
    top.set_title("Does the permutation depend on the input? (agreement 1 = one permutation for all inputs)")
    _legend_outside(top)
    _layer_axis(top, names)
    distinct = [stats[n]["distinct"] for n in names]
    bottom.bar(x, distinct, color="tab:purple")
    samples = max(stats[n]["samples"] for n in names)
    bottom.axhline(samples, color="black", linewidth=0.8, linestyle="--", label=f"inputs ({samples})")
    bottom.set_yscale("log")
    bottom.set_ylabel("distinct permutations")
    bottom.set_title("Number of different permutations among the inputs")
    _legend_outside(bottom)
    _layer_axis(bottom, names)
    return _save(fig, path)


def _column(rows: list[dict], key: str) -> np.ndarray:
    out = []
    for row in rows:
        try:
            out.append(float(row.get(key, "")))
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out)


def plot_training(log_csv: str | os.PathLike, path: str | os.PathLike, run: str | None = None) -> Path:
    """The penalty per epoch and every accuracy column (`*top1*`, `*top5*`, `*acc*`) of a run's log.csv.

    `run` names the run in the title (e.g. "dynamic, shufflenet_v2_x0_5, seed 0: runs/cmp/dynamic/seed0"; default:
    the log's folder). Epochs are integers on the axis; epochs trained with the straight-through estimator
    (a `shuffle_mode` column equal to "ste") are shaded.
    """
    from matplotlib.ticker import MaxNLocator  # optional (the viz extra)

    header, rows = read_csv(log_csv)
    if "epoch" not in header:
        raise ValueError(f"{log_csv}: no 'epoch' column (header: {', '.join(header)})")
    if not rows:
        raise ValueError(f"{log_csv}: no epochs logged yet")
    epochs = _column(rows, "epoch")
    acc_cols = [c for c in header if re.search(r"top1|top5|acc", c) and np.isfinite(_column(rows, c)).any()]
    fig = _figure(9, 7.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    if "penalty" in header and np.isfinite(_column(rows, "penalty")).any():
        penalty = _column(rows, "penalty")
        top.plot(epochs, penalty, marker="o", color="tab:red", label="penalty")
        if (penalty[np.isfinite(penalty)] > 0).all():
            top.set_yscale("log")
        _legend_outside(top)
    else:
        top.text(0.5, 0.5, "no penalty logged (a model without learned/dynamic shuffles?)",
                 ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("orthogonality penalty (sum over layers)")
    top.set_xlabel("epoch")
    top.set_title("Orthogonality penalty per epoch")
    # A column equal to an earlier one (val_top1_hard is val_top1 for dynamic models) would hide it under
    # the same line: plot it once, labelled with both names.
    labels: dict[str, str] = {}
    for col in acc_cols:
        same = next((c for c in labels if np.array_equal(_column(rows, c), _column(rows, col), equal_nan=True)), None)
        if same is None:
            labels[col] = col
        else:
            labels[same] += f" = {col}"
    for col, label in labels.items():
        style = "--" if "soft" in col else "-"
        bottom.plot(epochs, _column(rows, col), linestyle=style, marker=".", label=label)
    if not acc_cols:
        bottom.text(0.5, 0.5, "no accuracy columns in log.csv", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("accuracy")
    bottom.set_xlabel("epoch")
    bottom.set_title("Accuracy per epoch (soft = evaluated with soft matrices, dashed)")
    if "shuffle_mode" in header:
        ste = [e for e, r in zip(epochs, rows) if r.get("shuffle_mode") == "ste"]
        if ste:
            for ax in (top, bottom):
                ax.axvspan(min(ste) - 0.5, max(ste) + 0.5, color="grey", alpha=0.15,
                           label="straight-through epochs" if ax is bottom else None)
    if bottom.get_legend_handles_labels()[0]:
        _legend_outside(bottom)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # shared with the top axes
    bottom.set_xlim(float(np.nanmin(epochs)) - 0.5, float(np.nanmax(epochs)) + 0.5)
    fig.suptitle(f"Training history of {run or Path(log_csv).parent}", fontsize=11)
    return _save(fig, path)


def plot_accuracy_vs_macs(rows: Sequence[dict], path: str | os.PathLike, title: str) -> Path:
    """Top-1 (mean ± sample std over seeds, in %) against multiply-adds, one labelled point per row.

    `rows` are `compare` rows (or compare.csv rows): `variant`, `model`, `macs`, `top1_mean`, `top1_std`,
    `seeds`. Rows of several models (e.g. two widths) share the axes, so a variant can be read against the
    baseline at equal multiply-adds.
    """
    macs, mean, std = _column(rows, "macs") / 1e6, 100 * _column(rows, "top1_mean"), 100 * _column(rows, "top1_std")
    points = [(m, a, s if math.isfinite(s) else 0.0, f"{row.get('model', '')} {row['variant']}".strip(),
               str(row.get("seeds", "")))
              for row, m, a, s in zip(rows, macs, mean, std) if math.isfinite(m) and math.isfinite(a)]
    if not points:
        raise ValueError("no row has both multiply-adds and a top-1 to plot")
    fig = _figure(7.5, 4.8)
    ax = fig.subplots()
    for macs, mean, std, label, seeds in points:
        ax.errorbar([macs], [mean], yerr=[std], marker="o", capsize=4, linestyle="none",
                    label=f"{label} ({seeds} seeds)" if seeds else label)
    ax.set_xlabel("multiply-adds per image (millions)")
    ax.set_ylabel("top-1 % (mean ± sample std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_compare_curves(logs: dict[str, dict[int, str | os.PathLike]], path: str | os.PathLike, title: str) -> Path:
    """The training curves of a comparison: validation top-1 (exact permutation, in %) per epoch, one line per
    run, one colour per variant, and below it the number of data-dependent dynamic layers per epoch (runs
    that log it). `logs`: variant -> seed -> the run's log.csv. Epochs trained straight through (a
    `shuffle_mode` of "ste") are marked with a filled point."""
    from matplotlib.ticker import MaxNLocator  # optional (the viz extra)

    fig = _figure(9, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    colours = {variant: f"C{i}" for i, variant in enumerate(logs)}
    most_layers = None
    for variant, seeds in logs.items():
        for seed, log_csv in sorted(seeds.items()):
            header, rows = read_csv(log_csv)
            if not rows or "val_top1" not in header:
                continue
            epochs, top1 = _column(rows, "epoch"), 100 * _column(rows, "val_top1")
            label = variant if seed == min(seeds) else None
            top.plot(epochs, top1, color=colours[variant], alpha=0.8, label=label)
            ste = np.array([row.get("shuffle_mode") == "ste" for row in rows])
            if ste.any():
                top.plot(epochs[ste], top1[ste], "o", color=colours[variant], markersize=3)
            if "dynamic_layers" in header and np.isfinite(_column(rows, "dynamic_layers")).any():
                layers = _column(rows, "dynamic_layers")
                bottom.plot(epochs, layers, color=colours[variant], alpha=0.8, marker=".", label=label)
                most_layers = max(most_layers or 0.0, float(np.nanmax(layers)))
    if not top.lines:
        raise ValueError("no run has logged a validation top-1 yet")
    top.set_ylabel("validation top-1 %")
    top.set_title(title, fontsize=10)
    top.grid(alpha=0.3)
    _legend_outside(top)
    if most_layers is not None:
        bottom.set_ylabel("data-dependent layers")
        bottom.set_ylim(-0.3, most_layers + 1)  # a count: whole numbers from 0, also when it stays at 0
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        _legend_outside(bottom)
    else:
        bottom.text(0.5, 0.5, "no run logs data-dependent layers (no dynamic shuffle)", ha="center", va="center",
                    transform=bottom.transAxes)
    bottom.set_xlabel("epoch (filled points: straight-through)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(alpha=0.3)
    return _save(fig, path)


FIXED_FILES = ("class_agreement.png", "sample_agreement.png", "closeness.png", "diversity.png", "stats.json")


def planned_files(layers: Sequence[str], with_training: bool) -> list[str]:
    """File names `render_report` writes for these layers."""
    names = [layer_file_name(layer) for layer in layers] + list(FIXED_FILES)
    if with_training:
        names.append("training.png")
    return names


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    return value


def render_report(model, images: torch.Tensor, labels: torch.Tensor, out_dir: str | os.PathLike, *,
                  log_csv: str | os.PathLike | None = None, n_inputs: int = 3, force: bool = False,
                  class_names: Sequence[str] | None = None, batch_size: int = 64,
                  layers: Sequence[str] | None = None, run: str | None = None) -> list[Path]:
    """Compute the statistics of `model` on `images` and write every picture (plus stats.json) into `out_dir`.

    `layers`: fnmatch patterns of the shuffle layers to show (e.g. ["stage4.*"]); default all. `run` names the
    run in the title of training.png (see `plot_training`).
    `out_dir` is created if missing; an existing file of the same name is an error unless `force`
    (checked before anything is drawn). Returns the written paths.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{arg('out_dir', '--out')} {out} exists and is not a folder")
    all_layers = list(require_layers(model))
    if layers:
        selected = [name for name in all_layers if any(fnmatch.fnmatchcase(name, pat) for pat in layers)]
        if not selected:
            raise ValueError(f"no shuffle layer matches {', '.join(layers)}; the layers are {', '.join(all_layers)}")
        layers = selected
    else:
        layers = all_layers
    log_csv = Path(log_csv) if log_csv is not None and Path(log_csv).is_file() else None
    names = planned_files(layers, log_csv is not None)
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise FileExistsError(f"{out} already holds {shown}; pass {arg('force=True', '--force')} to overwrite")
    if not 1 <= n_inputs <= images.shape[0]:
        raise ValueError(f"n_inputs must be between 1 and the number of images ({images.shape[0]}), got {n_inputs}")
    out.mkdir(parents=True, exist_ok=True)

    stats = permutation_stats(model, images, labels, batch_size=batch_size, keep_permutations=True)
    stats = {name: stats[name] for name in layers}
    mats = matrices_for_inputs(model, images[:n_inputs])
    written = [plot_matrices(mats[layer], layer, out / layer_file_name(layer), labels[:n_inputs], class_names)
               for layer in layers]
    written.append(plot_class_agreement(stats, out / "class_agreement.png", class_names))
    written.append(plot_sample_agreement(stats, labels, out / "sample_agreement.png"))
    written.append(plot_closeness(stats, out / "closeness.png"))
    written.append(plot_diversity(stats, out / "diversity.png"))
    if log_csv is not None:
        written.append(plot_training(log_csv, out / "training.png", run))
    plain = {layer: {k: _jsonable(v) for k, v in s.items() if k != "permutations"} for layer, s in stats.items()}
    atomic_write_text(out / "stats.json", json.dumps(plain, indent=1) + "\n")
    written.append(out / "stats.json")
    return written
