"""Compiled training benchmark: the train step of `train.compile`, eager and compiled, dynamic / fixed.

The step is the training loop's: `ShuffleSchedule.step` (the phase's shuffle mode), forward through the
(compiled) model, cross-entropy + the schedule's term (outside the compiled module, as in the loop),
backward, SGD step. Models: ShuffleNetV2 0.5x with the CIFAR stem at 32x32, batch 64 (defaults), the fixed
shuffle and the dynamic shuffle in its two training phases (soft, straight-through). Every callable is
timed in turn inside each repeat (`profiling.timing.time_interleaved`), eager and compiled in the same
run, so a slow phase of a shared machine hits them alike; the first (warm-up) call of a compiled model
compiles it, and the compile times are printed too.

    python benchmarks/bench_compiled_train.py [--threads 1] [--batch 64] [--repeats 10] [--mode default]
                                              [--backend inductor] [--eval] [--json OUT]

With inductor each model takes minutes to compile on a small CPU; `--backend aot_eager` checks the script
in seconds (its times are not inductor's).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from dynshuffle.layers.modes import shuffle_mode
from dynshuffle.layers.schedule import ShuffleSchedule
from dynshuffle.models.registry import create_model
from dynshuffle.profiling.timing import time_interleaved

# name -> (model keys, the schedule step of the phase: 0 soft, 1 straight-through of a 2-step schedule)
CASES = {"fixed": ({"shuffle": "static"}, None), "dynamic soft": ({"shuffle": "dynamic"}, 0),
         "dynamic ste": ({"shuffle": "dynamic"}, 1)}


def train_step(runner, model, schedule, step_index, x, y):
    """One step of the training loop: schedule, forward, loss with the schedule's term, backward, SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        if schedule is not None:
            schedule.step(step_index)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(runner(x), y)
        if schedule is not None:
            loss = loss + schedule.loss()
        loss.backward()
        opt.step()
    return step


def eval_step(runner, model, x):
    """Evaluation's forward: eval mode, no_grad, the exact permutation (as `evaluate_modes` "hard")."""
    def step():
        with torch.no_grad(), shuffle_mode(model, "frozen", training=False):
            runner(x)
    return step


def compile_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--size", type=int, default=32, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after the compiling call")
    parser.add_argument("--mode", default="default", help="torch.compile mode (as train.compile)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: a quick check)")
    parser.add_argument("--eval", action="store_true", help="also time the eval forward (exact permutation)")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    mode = None if args.mode == "default" or args.backend != "inductor" else args.mode

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    fns, compiled_fns = {}, {}
    for name, (keys, phase) in CASES.items():
        for compiled in (False, True):
            torch.manual_seed(0)
            model = create_model(args.model, stem=args.stem, num_classes=10, **keys).to(device).train()
            schedule = ShuffleSchedule(model, total_steps=2, ste_fraction=0.5) if phase is not None else None
            runner = torch.compile(model, backend=args.backend, mode=mode) if compiled else model
            label = f"{name} {'compiled' if compiled else 'eager'}"
            fns[f"train {label}"] = train_step(runner, model, schedule, phase, x, y)
            if args.eval and phase != 1:  # one eval per model: the exact permutation
                fns[f"eval {name.split()[0]} {'compiled' if compiled else 'eager'}"] = eval_step(runner, model, x)
            if compiled:
                compiled_fns.update({k: v for k, v in fns.items() if k.endswith(" compiled") and k not in compiled_fns})

    compile_s = {}
    for key, fn in compiled_fns.items():  # compile outside the timing, one model at a time
        print(f"compiling {key} ...", file=sys.stderr, flush=True)
        compile_s[key] = compile_seconds(fn)
        print(f"  {compile_s[key]:.1f} s", file=sys.stderr, flush=True)
    times = time_interleaved(fns, device, warmup=args.warmup, repeats=args.repeats)

    print(f"# compiled train step (torch {torch.__version__}, {args.threads} thread(s), backend {args.backend}, "
          f"mode {args.mode}): {args.model} {args.stem} stem {args.size}x{args.size}, batch {args.batch}; "
          f"median of {args.repeats} repeats, interleaved")
    print(f"{'step':<34} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15} {'compile s':>10}")
    kinds = ["train"] + (["eval"] if args.eval else [])
    names = {"train": list(CASES), "eval": ["fixed", "dynamic"]}
    for kind in kinds:
        for name in names[kind]:
            eager, comp = times[f"{kind} {name} eager"], times[f"{kind} {name} compiled"]
            print(f"{kind + ' ' + name:<34} {1e3 * eager:>9.2f} {1e3 * comp:>12.2f} {comp / eager:>15.2f} "
                  f"{compile_s[f'{kind} {name} compiled']:>10.1f}")
    print("dynamic / fixed:")
    for kind in kinds:
        for name in names[kind][1:]:
            for how in ("eager", "compiled"):
                ratio = times[f"{kind} {name} {how}"] / times[f"{kind} fixed {how}"]
                print(f"  {kind} {name}, {how}: {ratio:.2f}")
    if args.json:
        from dynshuffle.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps({"args": vars(args), "seconds": times, "compile_seconds": compile_s,
                                                 "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
