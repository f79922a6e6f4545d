"""Routing benchmark: can a shuffle layer learn a per-input permutation? (see `dynshuffle.profiling.routing`)

For every (C, G) size and seed: train `DynamicShuffle(C, G)` with its defaults and the routing schedule
(`ROUTING_SCHEDULE`: half of the steps penalty-free, then ShuffleSchedule's defaults; plain Adam, lr 3e-3,
batch 64, 3000 steps) on K = 8 target permutations from its own family,
then report exact recovery, channel accuracy and distinct permutations, mean ± std over seeds. The
input-independent controls (`ChannelShuffle`, `LearnedShuffle`) run on the same tasks; they are capped at
about 1/K.

    python benchmarks/bench_routing.py                      # docs/method.md §7.1's sizes, 3 seeds, 2 workers
    python benchmarks/bench_routing.py --sizes 48x2 --seeds 1 --steps 1000
    python benchmarks/bench_routing.py --schedule '{"lambda_": 1.0, "penalty_free_fraction": 0.0}'  # an ablation

Each worker process runs one job at a time with one thread.
"""
from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor

LAYERS = ("dynamic", "learned", "fixed")


def run_job(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from dynshuffle import ChannelShuffle, DynamicShuffle, LearnedShuffle
    from dynshuffle.profiling.routing import run_routing

    torch.manual_seed(job["seed"])
    c, g = job["channels"], job["groups"]
    if job["layer"] == "fixed":
        module = ChannelShuffle(g)
        module.channels = c
    elif job["layer"] == "learned":
        module = LearnedShuffle(c, g, **job["module"])
    else:
        module = DynamicShuffle(c, g, **job["module"])
    result = run_routing(module, permutations=job["permutations"], steps=job["steps"], seed=job["seed"],
                         noise_std=job["noise_std"], schedule=job["schedule"])
    return {**job, **result.as_dict()}


def summarise(rows: list[dict]) -> str:
    def ms(values):
        return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"

    lines = ["| layer | C | G | K | exact recovery | channel accuracy | distinct | seeds | s/run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["layer"], r["channels"], r["groups"]) for r in rows},
                  key=lambda k: (LAYERS.index(k[0]), k[1]))
    for layer, c, g in keys:
        sel = [r for r in rows if (r["layer"], r["channels"], r["groups"]) == (layer, c, g)]
        lines.append(f"| {layer} | {c} | {g} | {sel[0]['permutations']} | {ms([r['exact'] for r in sel])} "
                     f"| {ms([r['channel_accuracy'] for r in sel])} | {statistics.median(r['distinct'] for r in sel):g} "
                     f"| {len(sel)} | {statistics.fmean(r['seconds'] for r in sel):.0f} |")
    return "\n".join(lines)


def _seed_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma-separated list of integers, got {text!r}")
    if "," not in text:
        if len(values) != 1 or values[0] < 1:
            raise argparse.ArgumentTypeError(f"a seed count must be >= 1, got {text!r}")
        return list(range(values[0]))
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be integers >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="48x2,116x2,240x3", help="comma-separated CxG")
    parser.add_argument("--seeds", type=_seed_list, default=_seed_list("3"),
                        help="a count N (seeds 0..N-1) or a comma-separated list of seeds, e.g. 0,2")
    parser.add_argument("--permutations", type=int, default=8, help="K")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--noise-std", type=float, default=0.3)
    parser.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated, of {','.join(LAYERS)}")
    parser.add_argument("--module", default="{}", help="JSON keyword arguments of the layer (an ablation)")
    parser.add_argument("--schedule", default="{}", help="JSON keyword arguments of ShuffleSchedule")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", metavar="OUT", help="write the raw rows as JSON")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    layers = [name for name in args.layers.split(",") if name]
    unknown = set(layers) - set(LAYERS)
    if unknown:
        parser.error(f"unknown layer(s) {', '.join(sorted(unknown))}; choose from {', '.join(LAYERS)}")
    jobs = [{"layer": layer, "channels": c, "groups": g, "seed": seed, "permutations": args.permutations,
             "steps": args.steps, "noise_std": args.noise_std, "module": json.loads(args.module) if layer != "fixed" else {},
             "schedule": json.loads(args.schedule)}
            for layer in layers for c, g in sizes for seed in args.seeds]
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        rows = []
        for row in pool.map(run_job, jobs):
            rows.append(row)
            print(f"{row['layer']} C={row['channels']} G={row['groups']} seed {row['seed']}: exact {row['exact']:.3f} "
                  f"channels {row['channel_accuracy']:.3f} distinct {row['distinct']} ({row['seconds']:.0f}s)",
                  flush=True)
    print(summarise(rows))
    if args.json:
        from dynshuffle.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
