"""`compare`: train shuffle variants on the same data, recipe and seeds, and report one table.

Default: ShuffleNetV2 0.5x on the bundled digits data, 3 seeds, four variants —
fixed ShuffleNet shuffle (`static`), an input-independent learned permutation (`learned`), the dynamic
shuffle (`dynamic`) and static-dynamic shuffle in place of the equal-width 1x1 convolutions (`sds`).
For each: parameters, multiply-adds, eval latency (batch 1), top-1 with the exact permutation
(mean ± std over seeds) and, for variants with learned/dynamic shuffles, top-1 with the soft matrices:
the two must agree (DESIGN "Measured: the train/inference gap").
"""
from __future__ import annotations

import copy
import csv
import io
import statistics
import time
from pathlib import Path

from dynshuffle.utils import atomic_write_text

from .config import Config, apply_overrides
from .recipes import VARIANTS, recipe

DEFAULT_VARIANTS = ("static", "learned", "dynamic", "sds")
DEFAULT_MODEL = "shufflenet_v2_x0_5"

COLUMNS = ["variant", "model", "params", "macs", "latency_ms", "top1_mean", "top1_std",
           "top1_soft_mean", "top1_soft_std", "gap", "top5_mean", "seeds", "epochs", "train_seconds"]


def base_config(data: str = "digits", epochs: int | None = None, model: str = DEFAULT_MODEL) -> Config:
    """The shared recipe: `recipes.recipe(data)` (on digits sized so that the default comparison finishes
    within 10 minutes on 2 CPU cores), quiet, with `epochs` when given."""
    cfg = recipe(data, model)
    cfg.log.tensorboard = False
    cfg.log.print_epochs = False
    if epochs is not None:
        cfg.train.epochs = epochs
    return cfg


def _parse_variant(name: str) -> dict:
    if name in VARIANTS:
        return VARIANTS[name]
    raise ValueError(f"unknown variant {name!r}; known variants: {', '.join(VARIANTS)}")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(variants: list[str] | tuple[str, ...] | None = None, seeds: int | list[int] = 3,
            epochs: int | None = None, data: str = "digits", out: str | Path = "runs/compare", *,
            data_root: str | None = None, model: str = DEFAULT_MODEL, overrides: list[str] | tuple = (),
            latency_runs: int = 30, verbose: bool = True) -> list[dict]:
    """Train every variant with every seed under one recipe; write `compare.md` and `compare.csv` into `out`
    (and one run folder per training under `out/<variant>/seed<N>`); return the table rows."""
    from .evaluate import measure_latency, profile_row
    from .loop import train

    variants = list(variants or DEFAULT_VARIANTS)
    for v in variants:
        _parse_variant(v)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("compare needs at least one seed")
    base = base_config(data, epochs, model)
    if data_root is not None:
        base.data.root = str(data_root)
    apply_overrides(base, list(overrides))
    out = Path(out)

    from dynshuffle.data import get_dataset_spec

    spec = get_dataset_spec(data)
    rows, t_all = [], time.perf_counter()
    for variant in variants:
        top1, top1_soft, top5, seconds, trained = [], [], [], 0.0, None
        for seed in seed_list:
            cfg = copy.deepcopy(base)
            for key, value in _parse_variant(variant).items():
                setattr(cfg.model, key, value)
            cfg.train.seed = seed
            t0 = time.perf_counter()
            result = train(cfg, out / variant.replace("+", "_") / f"seed{seed}", overwrite=True)
            seconds += time.perf_counter() - t0
            final = result["final"]
            top1.append(final["val_top1"])
            top5.append(final["val_top5"])
            if final.get("val_top1_soft") is not None:
                top1_soft.append(final["val_top1_soft"])
            trained = result["model"]
            if verbose:
                soft = f", soft {final['val_top1_soft']:.4f}" if final.get("val_top1_soft") is not None else ""
                print(f"compare: {variant} seed {seed}: top-1 {final['val_top1']:.4f}{soft} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
        trained = trained.cpu().eval()
        prof = profile_row(trained, spec.image_size)
        latency = measure_latency(trained, (1, 3, spec.image_size, spec.image_size), "cpu", runs=latency_runs)
        m, s = _mean_std(top1)
        ms, ss = _mean_std(top1_soft)
        rows.append({
            "variant": variant, "model": model, "params": prof["params"], "macs": prof["macs"],
            "latency_ms": latency, "top1_mean": m, "top1_std": s, "top1_soft_mean": ms, "top1_soft_std": ss,
            "gap": (ms - m) if ms is not None else None, "top5_mean": _mean_std(top5)[0],
            "seeds": len(seed_list), "epochs": base.train.epochs, "train_seconds": seconds,
        })
    total = time.perf_counter() - t_all
    md = format_markdown(rows, data=data, model=model, seeds=seed_list, epochs=base.train.epochs, seconds=total)
    atomic_write_text(out / "compare.md", md)
    atomic_write_text(out / "compare.csv", format_csv(rows))
    if verbose:
        print(md, end="")
        print(f"written: {out / 'compare.md'}, {out / 'compare.csv'}")
    return rows


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def format_markdown(rows: list[dict], *, data: str, model: str, seeds: list[int], epochs: int,
                    seconds: float | None = None) -> str:
    lines = [
        f"# dynshuffle compare: {model} on {data}, {epochs} epochs, seeds {', '.join(map(str, seeds))}",
        "",
        "| variant | params | multiply-adds | latency (ms, batch 1) | top-1 % (hard permutation) "
        "| top-1 % (soft matrices) | soft − hard |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        macs = f"{r['macs'] / 1e6:.2f} M" if r["macs"] is not None else "–"
        gap = f"{100 * r['gap']:+.2f}" if r["gap"] is not None else "–"
        lines.append(f"| {r['variant']} | {r['params'] / 1e6:.3f} M | {macs} | {r['latency_ms']:.2f} "
                     f"| {_pct(r['top1_mean'], r['top1_std'])} | {_pct(r['top1_soft_mean'], r['top1_soft_std'])} "
                     f"| {gap} |")
    lines += ["", "Top-1 on the validation split after the last epoch, mean ± sample std over seeds. "
              "'hard' is the exact permutation a deployed model computes; 'soft' evaluates the same weights "
              "with the soft matrices (variants with learned or dynamic shuffles only)."]
    if seconds is not None:
        lines.append(f"Total time {seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def format_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    return buf.getvalue()
