"""`compare`: train shuffle variants on the same data, recipe and seeds, and report one table.

Default: ShuffleNetV2 0.5x on the bundled digits data, 3 seeds, four variants —
fixed ShuffleNet shuffle (`static`), an input-independent learned permutation (`learned`), the dynamic
shuffle (`dynamic`) and static-dynamic shuffle in place of the equal-width 1x1 convolutions (`sds`).
For each: parameters, multiply-adds, eval latency (batch 1), top-1 with the exact permutation
(mean ± std over seeds) and, for variants with learned/dynamic shuffles, top-1 with the soft matrices:
the exact one must not fall far below the soft one (docs/design.md §9, the train/inference gap).
"""
from __future__ import annotations

import copy
import csv
import importlib.util
import io
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
import yaml

from dynshuffle.checkpoints import build_model_from_checkpoint
from dynshuffle.data.loaders import ShardSampler, make_loader
from dynshuffle.data.registry import build_datasets, get_dataset_spec
from dynshuffle.data.transforms import BatchTransform
from dynshuffle.inspection.plots import plot_accuracy_vs_macs
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.utils import atomic_write_text

from .config import Config, apply_overrides
from .evaluate import dynamic_dependence, first_images, measure_latency, profile_row
from .loop import build_model, train
from .recipes import VARIANTS, recipe

DEFAULT_VARIANTS = ("static", "learned", "dynamic", "sds")
DEFAULT_MODEL = "shufflenet_v2_x0_5"
RESULT = "result.json"  # in each run folder: the recipe it was trained with and its final figures
MARKER = "compare.json"  # in the output folder: what `compare` wrote there
DEPENDENCE_IMAGES = 1000  # validation images the data-dependence figures are computed on (at most)

COLUMNS = ["variant", "model", "params", "macs", "latency_ms", "top1_mean", "top1_std",
           "top1_soft_mean", "top1_soft_std", "gap", "top5_mean", "dynamic_layers", "dynamic_layers_total",
           "distinct_median", "seeds", "epochs", "train_seconds"]


class CompareFolderError(ValueError):
    """The output folder holds something `compare` would overwrite (pass overwrite=True / --overwrite)."""


def base_config(dataset: str = "digits", epochs: int | None = None, model: str = DEFAULT_MODEL) -> Config:
    """The shared recipe: `recipes.recipe(dataset)` (on digits sized so that the default comparison finishes
    within 10 minutes on 2 CPU cores), quiet, with `epochs` when given."""
    cfg = recipe(dataset, model)
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


def _recipe_key(cfg_dict: dict) -> dict:
    """The parts of a run's config that decide its result (not where the data lives, not the logging).

    The saved config goes through `Config` first, so a key added to the schema after the run was trained
    reads as its default: a study spanning versions keeps its finished runs while their recipe is the same.
    """
    cfg_dict = Config.from_dict(cfg_dict).to_dict()
    out = {sec: dict(values) for sec, values in cfg_dict.items() if sec != "log"}
    out.get("data", {}).pop("root", None)
    return out


# ---- one run (in a worker process or in this one) -------------------------------------------------------------

def _init_worker() -> None:
    torch.set_num_threads(1)


def _run_job(job: dict) -> dict:
    """Train one (variant, seed) run, or resume an interrupted one; write and return its result.json."""
    cfg = Config.from_dict(job["config"])
    variant, seed, epochs = job["variant"], job["seed"], cfg.train.epochs
    verbose = job["verbose"]

    def progress(row: dict) -> None:
        if verbose:
            print(f"compare: {variant} seed {seed} epoch {row['epoch']}/{epochs} top-1 {row['val_top1']:.4f}",
                  flush=True)

    t0 = time.perf_counter()
    result = train(cfg, job["run_dir"], resume=job["resume"], overwrite=not job["resume"], on_epoch=progress)
    seconds = time.perf_counter() - t0
    model = result["model"].eval()
    dependence = None
    if any(True for _ in _dynamic_modules(model)):
        spec = get_dataset_spec(cfg.data.name)
        _, val_set = build_datasets(cfg.data.name, root=cfg.data.root)
        images = _first_val_images(val_set, spec, DEPENDENCE_IMAGES, next(model.parameters()).device)
        dependence = dynamic_dependence(model, images)
    out = {"variant": variant, "seed": seed, "recipe": job["config"], "final": result["final"],
           "seconds": seconds + (job.get("seconds_before") or 0.0), "dependence": dependence}
    atomic_write_text(Path(job["run_dir"]) / RESULT, json.dumps(out, indent=1) + "\n")
    return out


def _dynamic_modules(model):
    return (m for m in model.modules() if isinstance(m, DynamicShuffle))


def _first_val_images(dataset, spec, count: int, device):
    loader = make_loader(dataset, 256, ShardSampler(len(dataset)), 0, torch.device(device))
    return first_images(loader, BatchTransform(spec, train=False).to(device), device, count)


# ---- the comparison --------------------------------------------------------------------------------------------

def _plan(jobs: list[dict], out: Path, overwrite: bool) -> tuple[list[dict], dict]:
    """(jobs to run, {(variant, seed): result} of runs finished earlier with the same recipe)."""
    done, todo, changed = {}, [], []
    for job in jobs:
        run_dir = Path(job["run_dir"])
        job["resume"] = False
        if overwrite:
            todo.append(job)
            continue
        result_file, config_file = run_dir / RESULT, run_dir / "config.yaml"
        if result_file.is_file():
            saved = json.loads(result_file.read_text())
            if _recipe_key(saved.get("recipe", {})) == _recipe_key(job["config"]):
                done[(job["variant"], job["seed"])] = saved
            else:
                changed.append(str(run_dir))
        elif (run_dir / "last.state.pt").is_file():  # interrupted: continue it if its recipe is the same
            saved = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
            if _recipe_key(saved or {}) == _recipe_key(job["config"]):
                job["resume"] = True
                todo.append(job)
            else:
                changed.append(str(run_dir))
        else:
            todo.append(job)
    if changed:
        raise CompareFolderError(f"{out} holds runs trained with a different recipe ({', '.join(changed[:3])}"
                                 f"{', ...' if len(changed) > 3 else ''}); pass --overwrite to train them "
                                 f"afresh, or choose another --out")
    return todo, done


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise CompareFolderError(f"{out} is not empty and holds no earlier compare ({MARKER} not found); "
                                 f"choose another --out, or pass --overwrite to write into it")


def _run_jobs(todo: list[dict], workers: int, verbose: bool) -> list[dict]:
    """Run the jobs: in this process for one worker, else in `workers` spawned processes of one thread each."""
    if workers <= 1:
        return [_run_job(job) for job in todo]
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the workers' torch at import (spawned processes inherit it)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [pool.submit(_run_job, job) for job in todo]
            return [f.result() for f in as_completed(futures)]
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def compare(variants: list[str] | tuple[str, ...] | None = None, seeds: int | list[int] = 3,
            epochs: int | None = None, dataset: str = "digits", out: str | Path = "runs/compare", *,
            data_root: str | None = None, model: str = DEFAULT_MODEL, overrides: list[str] | tuple = (),
            latency_runs: int = 30, verbose: bool = True, workers: int | None = None,
            overwrite: bool = False) -> list[dict]:
    """Train every variant with every seed under one recipe; write `compare.md`, `compare.csv` and (with
    matplotlib) `compare.png`, top-1 against multiply-adds, into `out`
    (and one run folder per training under `out/<variant>/seed<N>`, each with its result.json); return the rows.

    The runs go to `workers` processes of one thread each (default: one per CPU core, at most one per run).
    A second call with the same recipe reuses the finished runs and continues interrupted ones; a changed
    recipe raises CompareFolderError unless `overwrite` (which trains every run afresh).
    """
    variants = list(variants or DEFAULT_VARIANTS)
    for v in variants:
        _parse_variant(v)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("compare needs at least one seed")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    base = base_config(dataset, epochs, model)
    if data_root is not None:
        base.data.root = str(data_root)
    apply_overrides(base, list(overrides))
    out = Path(out)
    _check_out(out, overwrite)
    spec = get_dataset_spec(dataset)
    jobs = _jobs(base, variants, seed_list, out, verbose)
    todo, done = _plan(jobs, out, overwrite)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    if verbose:
        _announce(todo, done, workers)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"dataset": dataset, "model": model, "variants": variants,
                                                "seeds": seed_list, "epochs": base.train.epochs}, indent=1) + "\n")
    t_all = time.perf_counter()
    for r in _run_jobs(todo, workers, verbose):
        done[(r["variant"], r["seed"])] = r
        if verbose:
            final = r["final"]
            soft = f", soft {final['val_top1_soft']:.4f}" if final.get("val_top1_soft") is not None else ""
            print(f"compare: {r['variant']} seed {r['seed']}: top-1 {final['val_top1']:.4f}{soft} "
                  f"({r['seconds']:.0f}s)", flush=True)
    rows = [_variant_row(variant, [done[(variant, seed)] for seed in seed_list],
                         next(j["run_dir"] for j in jobs if j["variant"] == variant), model, spec.image_size,
                         base.train.epochs, latency_runs) for variant in variants]
    total = time.perf_counter() - t_all
    md = format_markdown(rows, data=dataset, model=model, seeds=seed_list, epochs=base.train.epochs, seconds=total)
    atomic_write_text(out / "compare.md", md)
    atomic_write_text(out / "compare.csv", format_csv(rows))
    written = [out / "compare.md", out / "compare.csv"]
    if importlib.util.find_spec("matplotlib") is not None:  # optional (the viz extra)
        written.append(plot_accuracy_vs_macs(
            rows, out / "compare.png", f"{model} on {dataset}, {base.train.epochs} epochs, seeds "
                                       f"{', '.join(map(str, seed_list))}"))
    if verbose:
        print(md, end="")
        print(f"written: {', '.join(map(str, written))}")
    return rows


def _jobs(base: Config, variants: list[str], seed_list: list[int], out: Path, verbose: bool) -> list[dict]:
    """One job per (variant, seed): its resolved config and run folder."""
    jobs = []
    # Seed-major: an interrupted comparison has every variant's first seeds before any variant's last.
    for seed in seed_list:
        for variant in variants:
            cfg = copy.deepcopy(base)
            for key, value in _parse_variant(variant).items():
                setattr(cfg.model, key, value)
            cfg.train.seed = seed
            jobs.append({"variant": variant, "seed": seed, "config": cfg.to_dict(), "verbose": verbose,
                         "run_dir": str(out / variant.replace("+", "_") / f"seed{seed}")})
    return jobs


def _announce(todo: list, done: dict, workers: int) -> None:
    for key in done:
        print(f"compare: {key[0]} seed {key[1]}: finished earlier with this recipe ({RESULT}), kept", flush=True)
    if todo:
        how = (f"{workers} worker processes, 1 thread each (OMP_NUM_THREADS=1)" if workers > 1 else
               f"this process, {torch.get_num_threads()} thread(s)")
        print(f"compare: {len(todo)} run(s) to train on {how}; {len(done)} kept", flush=True)


def _variant_row(variant: str, results: list[dict], first_run: str, model: str, image_size: int, epochs: int,
                 latency_runs: int) -> dict:
    """One table row: profile and latency of the first seed's model, accuracy and dependence over seeds."""
    finals = [r["final"] for r in results]
    trained = _table_model(Path(first_run), results[0]["recipe"]).eval()
    prof = profile_row(trained, image_size)
    latency = measure_latency(trained, (1, 3, image_size, image_size), "cpu", runs=latency_runs)
    m, s = _mean_std([f["val_top1"] for f in finals])
    ms, ss = _mean_std([f["val_top1_soft"] for f in finals if f.get("val_top1_soft") is not None])
    deps = [r["dependence"] for r in results if r.get("dependence")]
    return {
        "variant": variant, "model": model, "params": prof["params"], "macs": prof["macs"],
        "latency_ms": latency, "top1_mean": m, "top1_std": s, "top1_soft_mean": ms, "top1_soft_std": ss,
        "gap": (ms - m) if ms is not None else None, "top5_mean": _mean_std([f["val_top5"] for f in finals])[0],
        "dynamic_layers": _mean_std([d["dynamic_layers"] for d in deps])[0],
        "dynamic_layers_total": deps[0]["layers"] if deps else None,
        "distinct_median": statistics.median([d["distinct_median"] for d in deps]) if deps else None,
        "seeds": len(results), "epochs": epochs, "train_seconds": sum(r["seconds"] for r in results),
    }


def _table_model(run_dir: Path, recipe_dict: dict):
    """The model the table profiles and times: the run's trained weights, or, when the run folder keeps only
    its result.json (results committed without their checkpoints), the same architecture built from the
    recipe. Parameters, multiply-adds and the operations timed do not depend on the weights' values."""
    if (run_dir / "last.safetensors").is_file():
        return build_model_from_checkpoint(run_dir, "cpu")[0]
    cfg = Config.from_dict(recipe_dict)
    spec = get_dataset_spec(cfg.data.name)
    return build_model(cfg, spec.num_classes, spec.stem)


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def format_markdown(rows: list[dict], *, data: str, model: str, seeds: list[int], epochs: int,
                    seconds: float | None = None) -> str:
    lines = [
        f"# dynshuffle compare: {model} on {data}, {epochs} epochs, seeds {', '.join(map(str, seeds))}",
        "",
        "| variant | params | multiply-adds | latency (ms, batch 1) | top-1 % (exact permutation) "
        "| top-1 % (soft matrices) | soft − exact | data-dependent layers | distinct permutations (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        macs = f"{r['macs'] / 1e6:.2f} M" if r["macs"] is not None else "–"
        gap = f"{100 * r['gap']:+.2f}" if r["gap"] is not None else "–"
        dep = (f"{r['dynamic_layers']:.1f} / {r['dynamic_layers_total']}"
               if r.get("dynamic_layers") is not None else "–")
        distinct = f"{r['distinct_median']:g}" if r.get("distinct_median") is not None else "–"
        lines.append(f"| {r['variant']} | {r['params'] / 1e6:.3f} M | {macs} | {r['latency_ms']:.2f} "
                     f"| {_pct(r['top1_mean'], r['top1_std'])} | {_pct(r['top1_soft_mean'], r['top1_soft_std'])} "
                     f"| {gap} | {dep} | {distinct} |")
    lines += ["", "Top-1 on the validation split after the last epoch, mean ± sample std over seeds. "
              "'exact' is the exact permutation a deployed model computes; 'soft' evaluates the same weights "
              "with the soft matrices (variants with learned or dynamic shuffles only). "
              "Data-dependent layers: dynamic-shuffle layers where at least 5 % of the validation images leave "
              "the layer's most common permutation (mean over seeds, of all dynamic layers); distinct "
              "permutations: median over those layers of the number of different permutations generated "
              "(median over seeds)."]
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
