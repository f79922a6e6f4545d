"""`compare`: train shuffle variants on the same data, recipe and seeds, and report one table.

Default: ShuffleNetV2 0.5x on the bundled digits data, 3 seeds, four variants —
fixed ShuffleNet shuffle (`static`), an input-independent learned permutation (`learned`), the dynamic
shuffle (`dynamic`) and static-dynamic shuffle in place of the equal-width 1x1 convolutions (`sds`).
For each: parameters, multiply-adds, eval latency (batch 1) and its ratio to the fixed-shuffle model, top-1
with the exact permutation (mean ± std over seeds) and, for variants with learned/dynamic shuffles, top-1
with the soft matrices: the exact one must not fall far below the soft one (docs/design.md §9, the
train/inference gap).

The runs go to worker processes of one thread each (or this process). Ctrl-C (or an error in one run)
stops every worker within seconds; each run keeps its last per-epoch checkpoint, the table of the finished
runs is written with the unfinished ones named, and the same call again continues them. A worker whose
`compare` process dies (even killed) notices within a second and exits. Several `compare` processes may
share one output folder (two terminals, the jobs of a cluster array): each run folder is locked while a run
trains in it (`RUN_LOCK`), so they divide the runs between them, and none trains a run another has
finished or is training.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import io
import json
import multiprocessing
import os
import pickle
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from dynshuffle.checkpoints import build_model_from_checkpoint
from dynshuffle.data.errors import DataError
from dynshuffle.data.loaders import ShardSampler, make_loader
from dynshuffle.data.registry import build_datasets, dataset_info, get_dataset_spec
from dynshuffle.data.transforms import BatchTransform
from dynshuffle.inspection.plots import plot_accuracy_vs_macs, plot_compare_curves
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.utils import (arg, atomic_write_text, command_line_active, command_line_names, lock_holder,
                              read_csv, try_lock)

from .config import Config, apply_overrides
from .evaluate import dynamic_dependence, first_images, measure_latencies, profile_row
from .loop import build_model, train
from .recipes import VARIANTS, recipe

DEFAULT_VARIANTS = ("static", "learned", "dynamic", "sds")
DEFAULT_MODEL = "shufflenet_v2_x0_5"
FIXED = "static"  # the variant every latency is a ratio to (built for the timing when it is not compared)
RESULT = "result.json"  # in each run folder: the recipe it was trained with and its final figures
MARKER = "compare.json"  # in the output folder: what `compare` wrote there
RUN_LOCK = "compare.lock"  # in each run folder: locked by the compare process while the run trains
DEPENDENCE_IMAGES = 1000  # validation images the data-dependence figures are computed on (at most)
LATENCY_THREADS = 1  # torch threads of the latency timing: one, like the training workers
STOP_GRACE = 3.0  # seconds a worker gets to stop on Ctrl-C before it is terminated
PARENT_POLL = 0.5  # seconds between a worker's checks that its compare process is still there

COLUMNS = ["variant", "model", "params", "macs", "latency_ms", "latency_ratio", "top1_mean", "top1_std",
           "top1_soft_mean", "top1_soft_std", "gap", "top5_mean", "dynamic_layers", "dynamic_layers_total",
           "distinct_median", "seeds", "epochs", "train_seconds"]


class CompareFolderError(ValueError):
    """The output folder holds something `compare` would overwrite (pass overwrite=True / --overwrite)."""


class WorkerError(ChildProcessError):
    """A worker process ended without finishing its run (killed, out of memory)."""


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
    out.get("data", {}).pop("download", None)
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# ---- one run (in a worker process or in this one) -------------------------------------------------------------

def _run_job(job: dict, on_epoch: Callable[[str, int, dict], None] | None = None) -> dict:
    """Train one (variant, seed) run, or resume an interrupted one; write and return its result.json.
    `on_epoch(variant, seed, row)` after each epoch's checkpoint."""
    cfg = Config.from_dict(job["config"])
    variant, seed = job["variant"], job["seed"]

    trained = []  # the epochs this call trains (a resumed run's history also holds those before)

    def progress(row: dict) -> None:
        trained.append(row)
        if on_epoch is not None:
            on_epoch(variant, seed, row)

    t0 = time.perf_counter()
    result = train(cfg, job["run_dir"], resume=job["resume"], overwrite=not job["resume"], on_epoch=progress)
    # A resumed run's time: this call's, plus the epochs it restored (their own per-epoch seconds).
    restored = result["history"][:len(result["history"]) - len(trained)]
    seconds = time.perf_counter() - t0 + sum(row["seconds"] for row in restored)
    model = result["model"].eval()
    dependence = None
    if any(True for _ in _dynamic_modules(model)):
        spec = get_dataset_spec(cfg.data.name)
        _, val_set = build_datasets(cfg.data.name, root=cfg.data.root)
        images = _first_val_images(val_set, spec, DEPENDENCE_IMAGES, next(model.parameters()).device)
        dependence = dynamic_dependence(model, images)
    out = {"variant": variant, "seed": seed, "recipe": job["config"], "final": result["final"],
           "seconds": seconds, "dependence": dependence}
    atomic_write_text(Path(job["run_dir"]) / RESULT, json.dumps(out, indent=1) + "\n")
    return out


def _dynamic_modules(model):
    return (m for m in model.modules() if isinstance(m, DynamicShuffle))


def _first_val_images(dataset, spec, count: int, device):
    loader = make_loader(dataset, 256, ShardSampler(len(dataset)), 0, torch.device(device))
    return first_images(loader, BatchTransform(spec, train=False).to(device), device, count)


# ---- worker processes ------------------------------------------------------------------------------------------
# One pipe per worker: the worker says ("ready",) once started; the parent sends a job (a dict) or None (stop);
# the worker answers ("epoch", variant, seed, row) after each epoch and ("done", result) or ("error", exception,
# traceback) at the end of the run.

def _stop_on_first_interrupt(signum, frame) -> None:
    """A worker's SIGINT handler: stop the run (KeyboardInterrupt) and ignore the repeats (the terminal's
    Ctrl-C reaches the whole process group, and the parent passes it on as well)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _watch_parent(parent_pid: int, interval: float = PARENT_POLL) -> None:
    """Exit this worker when the process that started it is gone (killed, even by SIGKILL): its run keeps the
    last checkpoint, and no orphan keeps training or holding memory."""
    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                with contextlib.suppress(Exception):
                    print(f"compare worker {os.getpid()}: the compare process {parent_pid} is gone; stopping "
                          f"(the run folder keeps its last checkpoint)", file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="compare-parent-watch", daemon=True).start()


def _picklable(err: BaseException) -> BaseException:
    """`err` if it survives the trip through the pipe, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def _worker(conn, parent_pid: int) -> None:
    """A worker process: run the jobs the parent sends, one at a time, until it sends None or stops. It then
    leaves at once (os._exit after flushing its output): what it wrote is on disk (atomic, fsynced files)
    and in the pipe, and the interpreter's teardown with torch loaded takes seconds on a busy machine."""
    code = 0
    try:
        _serve(conn, parent_pid)
    except BaseException:  # noqa: BLE001 - reported here, as a process's uncaught error would be
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _serve(conn, parent_pid: int) -> None:
    _watch_parent(parent_pid)
    signal.signal(signal.SIGINT, _stop_on_first_interrupt)
    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing semaphore, which the quick exit would leave to the resource
    # tracker (with a warning); one process needs only a thread lock.
    tqdm.set_lock(threading.RLock())
    try:
        conn.send(("ready",))
        while (job := conn.recv()) is not None:
            def on_epoch(variant: str, seed: int, row: dict) -> None:
                conn.send(("epoch", variant, seed, row))

            try:
                with command_line_names(job["command_line"]):
                    result = _run_job(job, on_epoch)
            except KeyboardInterrupt:
                return
            except Exception as err:  # sent to the parent, which stops the others and reports it
                conn.send(("error", _picklable(err), traceback.format_exc()))
                return
            conn.send(("done", result))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return  # stopped, or the parent is gone


@dataclass
class _Slot:
    process: multiprocessing.process.BaseProcess
    conn: object
    job: dict | None = None
    ready: bool = False  # the worker has started (imported this module, installed its handlers)


def _start_workers(count: int) -> list[_Slot]:
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the workers' torch at import (spawned processes inherit it)
    slots = []
    # The workers start with SIGINT ignored (inherited), so a Ctrl-C while they import stops them quietly (the
    # parent stops them); each installs its own handler before it trains.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        for _ in range(count):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(theirs, os.getpid()), daemon=True,
                                  name="dynshuffle-compare-worker")
            process.start()
            theirs.close()
            slots.append(_Slot(process, mine))
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return slots


def _stop_workers(slots: list[_Slot], grace: float = STOP_GRACE) -> None:
    """Stop every worker: a finished one has been told to exit; one still training gets SIGINT (its run keeps
    its last checkpoint), then SIGTERM and SIGKILL if it has not exited after `grace` seconds."""
    for slot in slots:
        if slot.process.is_alive() and slot.job is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, signal.SIGINT)
        elif slot.job is None:
            with contextlib.suppress(OSError):
                slot.conn.send(None)
    deadline = time.monotonic() + grace
    for slot in slots:
        slot.process.join(max(0.0, deadline - time.monotonic()))
    for stop in ("terminate", "kill"):
        alive = [s for s in slots if s.process.is_alive()]
        for slot in alive:
            getattr(slot.process, stop)()
        for slot in alive:
            slot.process.join(1.0)
    for slot in slots:
        slot.conn.close()


def _run_in_workers(todo: list[dict], workers: int, on_epoch, on_result, claims: _Claims) -> None:
    """Run the jobs in `workers` spawned processes of one thread each; `on_epoch` and `on_result` are called in
    this process. Returns when every job is done; raises KeyboardInterrupt, a run's error, or WorkerError, after
    stopping every worker."""
    pending = list(todo)

    def give(slot: _Slot) -> None:
        slot.job = None
        while pending and slot.job is None:
            job = pending.pop(0)
            slot.job = job if claims.take(job, on_result) else None
        with contextlib.suppress(OSError):  # a worker that died: the loop below reports it with its run
            slot.conn.send(slot.job)

    slots = _start_workers(workers)
    try:
        for slot in slots:
            give(slot)
        while busy := [s for s in slots if s.job is not None]:
            ready = wait_for([s.conn for s in busy] + [s.process.sentinel for s in busy])
            for slot in busy:
                try:
                    if slot.conn.poll():
                        message = slot.conn.recv()
                    elif slot.process.sentinel in ready:
                        message = None
                    else:
                        continue
                except (EOFError, OSError):  # the worker's end closed (a reset when it died abruptly)
                    message = None
                if message is None:  # the process ended without a word about its run
                    slot.process.join(1.0)
                    job = slot.job
                    if not slot.ready:
                        raise WorkerError(f"a worker process could not start (exit code {slot.process.exitcode}; "
                                          f"its error is printed above). A script that calls compare needs "
                                          f"`if __name__ == \"__main__\":` around it: the workers import the "
                                          f"script again")
                    raise WorkerError(f"the worker process training {job['variant']} seed {job['seed']} ended "
                                      f"(exit code {slot.process.exitcode}) before the run finished; "
                                      f"{job['run_dir']} keeps its last checkpoint, and the same compare again "
                                      f"continues it")
                if message[0] == "ready":
                    slot.ready = True
                elif message[0] == "epoch":
                    on_epoch(*message[1:])
                elif message[0] == "done":
                    claims.release(slot.job)
                    on_result(message[1])
                    give(slot)
                else:
                    _, err, text = message
                    slot.job = None
                    err.add_note(f"in the compare worker process:\n{text}")
                    raise err
    finally:
        _stop_workers(slots)


def _run_jobs(todo: list[dict], workers: int, on_epoch, on_result, claims: _Claims) -> None:
    """Run the jobs that `claims` gives this process: in this process for one worker, else in `workers` spawned
    processes of one thread each. Every lock is released on the way out."""
    try:
        if workers <= 1:
            for job in todo:
                if claims.take(job, on_result):
                    result = _run_job(job, on_epoch)
                    claims.release(job)
                    on_result(result)
        else:
            _run_in_workers(todo, workers, on_epoch, on_result, claims)
    finally:
        claims.release_all()


class _Progress:
    """The progress lines of a comparison: per epoch and per finished run, with runs done / total, the elapsed
    time and an estimate of the time left (from the epochs trained so far in this call); printed to stdout
    line by line, on a terminal or into a log alike."""

    def __init__(self, todo: list[dict], total: int, kept: int, verbose: bool) -> None:
        self.t0 = time.perf_counter()
        self.epochs = {(j["variant"], j["seed"]): int(j["config"]["train"]["epochs"]) for j in todo}
        self.left = dict(self.epochs)  # epochs still to train per run (a resumed run: known from its first epoch)
        self.trained, self.done, self.total, self.verbose = 0, kept, total, verbose

    def status(self) -> str:
        elapsed = time.perf_counter() - self.t0
        text = f"runs {self.done}/{self.total} done, {_duration(elapsed)} elapsed"
        left = sum(self.left.values())
        if left and self.trained:
            text += f", about {_duration(elapsed / self.trained * left)} left"
        return text

    def epoch(self, variant: str, seed: int, row: dict) -> None:
        self.trained += 1
        epochs = self.epochs[(variant, seed)]
        self.left[(variant, seed)] = max(0, epochs - int(row["epoch"]))
        if self.verbose:
            print(f"compare: {variant} seed {seed} epoch {row['epoch']}/{epochs} top-1 {row['val_top1']:.4f} "
                  f"({self.status()})", flush=True)

    def skipped(self, job: dict, why: str) -> None:
        self.left[(job["variant"], job["seed"])] = 0
        if self.verbose:
            print(f"compare: {job['variant']} seed {job['seed']}: skipped, {why} ({job['run_dir']}); the table "
                  f"takes its result if it is finished by then", flush=True)

    def finished(self, r: dict) -> None:
        self.done += 1
        self.left[(r["variant"], r["seed"])] = 0
        if self.verbose:
            final = r["final"]
            soft = f", soft {final['val_top1_soft']:.4f}" if final.get("val_top1_soft") is not None else ""
            print(f"compare: {r['variant']} seed {r['seed']}: top-1 {final['val_top1']:.4f}{soft} "
                  f"({r['seconds']:.0f}s; {self.status()})", flush=True)


# ---- the comparison --------------------------------------------------------------------------------------------

def _saved_state(job: dict) -> tuple[str, dict | None]:
    """What a job's run folder holds: `("done", result)` a run finished with the job's recipe, `("resume",
    None)` one interrupted with it, `("new", None)` nothing to go on, `("changed", None)` another recipe's."""
    run_dir = Path(job["run_dir"])
    result_file, config_file = run_dir / RESULT, run_dir / "config.yaml"
    if result_file.is_file():
        saved = json.loads(result_file.read_text())
        same = _recipe_key(saved.get("recipe", {})) == _recipe_key(job["config"])
        return ("done", saved) if same else ("changed", None)
    if (run_dir / "last.state.pt").is_file():  # interrupted: continue it if its recipe is the same
        saved = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
        return ("resume", None) if _recipe_key(saved or {}) == _recipe_key(job["config"]) else ("changed", None)
    return "new", None


def _plan(jobs: list[dict], out: Path, overwrite: bool) -> tuple[list[dict], dict]:
    """(jobs to run, {(variant, seed): result} of runs finished earlier with the same recipe)."""
    done, todo, changed = {}, [], []
    for job in jobs:
        state, saved = ("new", None) if overwrite else _saved_state(job)
        if state == "done":
            done[(job["variant"], job["seed"])] = saved
        elif state == "changed":
            changed.append(job["run_dir"])
        else:
            todo.append(job)
    if changed:
        raise CompareFolderError(f"{out} holds runs trained with a different recipe ({', '.join(changed[:3])}"
                                 f"{', ...' if len(changed) > 3 else ''}); pass {arg('overwrite=True', '--overwrite')}"
                                 f" to train them afresh, or choose another {arg('out', '--out')}")
    return todo, done


class _Claims:
    """The run folders this process trains in, each locked (`RUN_LOCK`) from the moment its run is handed out
    until it ends, so that compares sharing an output folder divide the runs: a run locked by another process
    is skipped, and one that another process finished since the plan is taken from its result.json."""

    def __init__(self, overwrite: bool, progress: _Progress) -> None:
        self.overwrite, self.progress = overwrite, progress
        self.locks: dict[tuple[str, int], object] = {}

    def take(self, job: dict, on_result: Callable[[dict], None]) -> bool:
        """Lock the job's run folder: True when this process is to train the run; False when another holds it,
        or finished it meanwhile (then `on_result` gets its result)."""
        key, lock_file = (job["variant"], job["seed"]), Path(job["run_dir"]) / RUN_LOCK
        lock = try_lock(lock_file)
        if lock is None:
            self.progress.skipped(job, f"{lock_holder(lock_file)} is training it")
            return False
        state, saved = ("new", None) if self.overwrite else _saved_state(job)
        if state in ("done", "changed"):
            lock.close()
            if state == "done":
                on_result(saved)
            else:
                self.progress.skipped(job, "another process trained it with a different recipe meanwhile")
            return False
        job["resume"] = state == "resume"  # read again under the lock: the plan may be out of date
        self.locks[key] = lock
        return True

    def release(self, job: dict | None) -> None:
        if job is not None and (lock := self.locks.pop((job["variant"], job["seed"]), None)) is not None:
            lock.close()

    def release_all(self) -> None:
        for lock in self.locks.values():
            lock.close()
        self.locks.clear()


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{arg('out', '--out')} {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise CompareFolderError(f"{out} is not empty and holds no earlier compare ({MARKER} not found); "
                                 f"choose another {arg('out', '--out')}, or pass "
                                 f"{arg('overwrite=True', '--overwrite')} to write into it")


def _check_data(cfg: Config, download: bool) -> None:
    """Read the dataset once, before any run is announced or any file written: a dataset that needs a folder
    and has none, or whose files cannot be read, fails here (with `download`, missing files are fetched
    first)."""
    name, root = cfg.data.name, cfg.data.root
    info = dataset_info(name)
    if root is None and info["found"] is None:
        fetch = f" (with {arg('download=True', '--download')} to fetch it there)" if info["downloadable"] else ""
        raise DataError(f"{name} needs a data folder: pass {arg('data_root=PATH', '--data PATH')}{fetch}")
    build_datasets(name, root=root, download=download)


def compare(variants: list[str] | tuple[str, ...] | None = None, seeds: int | list[int] = 3,
            epochs: int | None = None, dataset: str = "digits", out: str | Path = "runs/compare", *,
            data_root: str | None = None, download: bool = False, model: str = DEFAULT_MODEL,
            overrides: list[str] | tuple = (), latency_runs: int = 30, verbose: bool = True,
            workers: int | None = None, overwrite: bool = False) -> list[dict]:
    """Train every variant with every seed under one recipe; write `compare.md`, `compare.csv` and (with
    matplotlib) `compare.png`, top-1 against multiply-adds, into `out`
    (and one run folder per training under `out/<variant>/seed<N>`, each with its result.json); return the rows.

    The runs go to `workers` processes of one thread each (default: one per CPU core, at most one per run);
    start them from a script under `if __name__ == "__main__":` (the workers are spawned and import it). When
    there is something to train, the dataset is read once first (`download` fetches missing files): missing
    or unreadable data fails before anything is written. A second call with the same recipe reuses
    the finished runs and continues interrupted ones; a changed recipe raises CompareFolderError unless
    `overwrite` (which trains every run afresh). Latency: batch 1, CPU, `LATENCY_THREADS` thread(s), each
    variant timed in turn with the fixed-shuffle model (`latency_runs` rounds; 0 skips it).

    KeyboardInterrupt (Ctrl-C) or an error in a run stops every worker within seconds; runs in progress keep
    their last checkpoint; the table of the finished runs is written, naming the unfinished ones; then the
    exception is raised again. Compares that share `out` divide its runs: a run another process is training
    (its folder's `RUN_LOCK` is held) is skipped, and the table takes its result if it is finished by then.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # a worker importing the caller's script
        raise RuntimeError("compare was called while a worker process imported the calling script: put the call "
                           "under `if __name__ == \"__main__\":` (the workers import the script again)")
    variants = list(variants or DEFAULT_VARIANTS)
    for v in variants:
        _parse_variant(v)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError(f"compare needs at least one seed ({arg('seeds', '--seeds')})")
    if workers is not None and workers < 1:
        raise ValueError(f"{arg('workers', '--workers')} must be >= 1, got {workers}")
    if latency_runs < 0:
        raise ValueError(f"latency_runs must be >= 0, got {latency_runs}")
    base = base_config(dataset, epochs, model)
    if data_root is not None:
        base.data.root = str(data_root)
    apply_overrides(base, list(overrides))
    out = Path(out)
    _check_out(out, overwrite)
    spec = get_dataset_spec(base.data.name)
    jobs = _jobs(base, variants, seed_list, out)
    todo, done = _plan(jobs, out, overwrite)
    if todo:  # (a table rebuilt from finished runs needs no data)
        _check_data(base, download or base.data.download)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    if verbose:
        _announce(todo, done, workers)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"dataset": dataset, "model": model, "variants": variants,
                                                "seeds": seed_list, "epochs": base.train.epochs}, indent=1) + "\n")
    t_all = time.perf_counter()
    progress = _Progress(todo, len(jobs), len(done), verbose)

    def finished(r: dict) -> None:
        done[(r["variant"], r["seed"])] = r
        progress.finished(r)

    stopped: BaseException | None = None
    try:
        _run_jobs(todo, workers, progress.epoch, finished, _Claims(overwrite, progress))
    except (KeyboardInterrupt, Exception) as err:  # the table of the finished runs first, then raise it again
        stopped = err
    for job in jobs:  # runs that another compare sharing the folder finished meanwhile
        key = (job["variant"], job["seed"])
        if key not in done and (state := _saved_state(job))[0] == "done":
            done[key] = state[1]
    unfinished = [(j["variant"], j["seed"]) for j in jobs if (j["variant"], j["seed"]) not in done]
    table = (variants, seed_list, jobs, done, model, spec.image_size, base.train.epochs)
    try:
        rows = _table(*table, latency_runs if stopped is None else 0)
    except KeyboardInterrupt as err:  # during the latency timing: the table without it
        stopped = err
        rows = _table(*table, 0)
    total = time.perf_counter() - t_all
    md = format_markdown(rows, data=dataset, model=model, seeds=seed_list, epochs=base.train.epochs,
                         seconds=total, unfinished=unfinished)
    atomic_write_text(out / "compare.md", md)
    atomic_write_text(out / "compare.csv", format_csv(rows))
    written = [out / "compare.md", out / "compare.csv"]
    if rows and stopped is None and importlib.util.find_spec("matplotlib") is not None:  # the viz extra
        title = f"{model} on {dataset}, {base.train.epochs} epochs, seeds {', '.join(map(str, seed_list))}"
        written.append(plot_accuracy_vs_macs(rows, out / "compare.png", title))
        logs: dict[str, dict[int, Path]] = {}
        for job in jobs:
            log_csv = Path(job["run_dir"]) / "log.csv"
            if (job["variant"], job["seed"]) in done and log_csv.is_file():
                logs.setdefault(job["variant"], {})[job["seed"]] = log_csv
        if logs:
            written.append(plot_compare_curves(logs, out / "curves.png", title))
    if verbose:
        print(md, end="")
        print(f"written: {', '.join(map(str, written))}", flush=True)
    if stopped is not None:
        if verbose:
            why = "interrupted" if isinstance(stopped, KeyboardInterrupt) else "a run failed"
            print(f"compare: {why}: {len(unfinished)} of {len(jobs)} run(s) unfinished; their folders keep their "
                  f"last checkpoint, and the same compare again continues them", flush=True)
        raise stopped
    if unfinished and verbose:  # skipped: other processes sharing the folder are training them
        print(f"compare: {len(unfinished)} of {len(jobs)} run(s) still training in other processes; the same "
              f"compare again, once they finish, writes the whole table", flush=True)
    return rows


def _jobs(base: Config, variants: list[str], seed_list: list[int], out: Path) -> list[dict]:
    """One job per (variant, seed): its resolved config and run folder."""
    jobs = []
    command_line = command_line_active()
    # Seed-major: an interrupted comparison has every variant's first seeds before any variant's last.
    for seed in seed_list:
        for variant in variants:
            cfg = copy.deepcopy(base)
            for key, value in _parse_variant(variant).items():
                setattr(cfg.model, key, value)
            cfg.train.seed = seed
            jobs.append({"variant": variant, "seed": seed, "config": cfg.to_dict(), "command_line": command_line,
                         "run_dir": str(out / variant.replace("+", "_") / f"seed{seed}")})
    return jobs


def _announce(todo: list, done: dict, workers: int) -> None:
    for key in done:
        print(f"compare: {key[0]} seed {key[1]}: finished earlier with this recipe ({RESULT}), kept", flush=True)
    if todo:
        how = (f"{workers} worker processes, 1 thread each (OMP_NUM_THREADS=1)" if workers > 1 else
               f"this process, {torch.get_num_threads()} thread(s)")
        print(f"compare: {len(todo)} run(s) to train on {how}; {len(done)} kept", flush=True)


def _table(variants: list[str], seed_list: list[int], jobs: list[dict], done: dict, model: str, image_size: int,
           epochs: int, latency_runs: int) -> list[dict]:
    """One row per variant with at least one finished run: profile and latency of its first finished seed's
    model (the latency timed in turn with the fixed-shuffle model), accuracy and dependence over its seeds."""
    rows, models = [], {}
    for variant in variants:
        results = [done[(variant, seed)] for seed in seed_list if (variant, seed) in done]
        if not results:
            continue
        first = next(j["run_dir"] for j in jobs if (j["variant"], j["seed"]) == (variant, results[0]["seed"]))
        models[variant] = _table_model(Path(first), results[0]["recipe"]).eval()
        rows.append(_variant_row(variant, results, models[variant], model, image_size, epochs))
    if rows and latency_runs:
        if FIXED not in models:
            fixed = copy.deepcopy(rows[0]["_recipe"])
            fixed["model"].update(VARIANTS[FIXED])
            models[FIXED] = _architecture(fixed).eval()
        times = measure_latencies(models, (1, 3, image_size, image_size), FIXED, threads=LATENCY_THREADS,
                                  repeats=latency_runs)
        for row in rows:
            row["latency_ms"], row["latency_ratio"] = times[row["variant"]]["ms"], times[row["variant"]]["ratio"]
    for row in rows:
        del row["_recipe"]
    return rows


def _variant_row(variant: str, results: list[dict], trained, model: str, image_size: int, epochs: int) -> dict:
    finals = [r["final"] for r in results]
    prof = profile_row(trained, image_size)
    m, s = _mean_std([f["val_top1"] for f in finals])
    ms, ss = _mean_std([f["val_top1_soft"] for f in finals if f.get("val_top1_soft") is not None])
    deps = [r["dependence"] for r in results if r.get("dependence")]
    return {
        "variant": variant, "model": model, "params": prof["params"], "macs": prof["macs"],
        "latency_ms": None, "latency_ratio": None, "top1_mean": m, "top1_std": s, "top1_soft_mean": ms,
        "top1_soft_std": ss, "gap": (ms - m) if ms is not None else None,
        "top5_mean": _mean_std([f["val_top5"] for f in finals])[0],
        "dynamic_layers": _mean_std([d["dynamic_layers"] for d in deps])[0],
        "dynamic_layers_total": deps[0]["layers"] if deps else None,
        "distinct_median": statistics.median([d["distinct_median"] for d in deps]) if deps else None,
        "seeds": len(results), "seed_list": [r["seed"] for r in results], "epochs": epochs,
        "train_seconds": sum(r["seconds"] for r in results), "_recipe": results[0]["recipe"],
    }


def _table_model(run_dir: Path, recipe_dict: dict):
    """The model the table profiles and times: the run's trained weights, or, when the run folder keeps only
    its result.json (results committed without their checkpoints), the same architecture built from the
    recipe. Parameters, multiply-adds and the operations timed do not depend on the weights' values."""
    if (run_dir / "last.safetensors").is_file():
        return build_model_from_checkpoint(run_dir, "cpu")[0]
    return _architecture(recipe_dict)


def _architecture(recipe_dict: dict):
    """The model of a run's recipe, freshly initialised."""
    cfg = Config.from_dict(recipe_dict)
    spec = get_dataset_spec(cfg.data.name)
    return build_model(cfg, spec.num_classes, spec.stem)


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def format_markdown(rows: list[dict], *, data: str, model: str, seeds: list[int], epochs: int,
                    seconds: float | None = None, unfinished: list[tuple[str, int]] = ()) -> str:
    lines = [
        f"# dynshuffle compare: {model} on {data}, {epochs} epochs, seeds {', '.join(map(str, seeds))}",
        "",
        "| variant | params | multiply-adds | latency (ms, batch 1) | latency / fixed | top-1 % (exact permutation) "
        "| top-1 % (soft matrices) | soft − exact | data-dependent layers | distinct permutations (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["variant"]
        if r["seeds"] < len(seeds):
            name += f" (seed{'s' if r['seeds'] > 1 else ''} {', '.join(map(str, r['seed_list']))} of {len(seeds)})"
        macs = f"{r['macs'] / 1e6:.2f} M" if r["macs"] is not None else "–"
        latency = f"{r['latency_ms']:.2f}" if r.get("latency_ms") is not None else "–"
        ratio = f"{r['latency_ratio']:.2f}" if r.get("latency_ratio") is not None else "–"
        gap = f"{100 * r['gap']:+.2f}" if r["gap"] is not None else "–"
        dep = (f"{r['dynamic_layers']:.1f} / {r['dynamic_layers_total']}"
               if r.get("dynamic_layers") is not None else "–")
        distinct = f"{r['distinct_median']:g}" if r.get("distinct_median") is not None else "–"
        lines.append(f"| {name} | {r['params'] / 1e6:.3f} M | {macs} | {latency} | {ratio} "
                     f"| {_pct(r['top1_mean'], r['top1_std'])} | {_pct(r['top1_soft_mean'], r['top1_soft_std'])} "
                     f"| {gap} | {dep} | {distinct} |")
    lines += ["", "Top-1 on the validation split after the last epoch, mean ± sample std over seeds. "
              "'exact' is the exact permutation a deployed model computes; 'soft' evaluates the same weights "
              "with the soft matrices (variants with learned or dynamic shuffles only). "
              "Data-dependent layers: dynamic-shuffle layers where at least 5 % of the validation images leave "
              "the layer's most common permutation (mean over seeds, of all dynamic layers); distinct "
              "permutations: median over those layers of the number of different permutations generated "
              "(median over seeds). "
              f"Latency: one forward of the deployed model (exact permutations) on a batch of 1, CPU, "
              f"{LATENCY_THREADS} thread, median over rounds in which every variant and the fixed-shuffle model "
              f"run in turn, measured when this table was written; 'latency / fixed' divides it by the "
              f"fixed-shuffle model's, the figure that stays comparable on a busy machine."]
    if seconds is not None:
        trained = sum(r["train_seconds"] for r in rows)
        lines.append(f"Training time of the finished runs, summed: {_duration(trained)}; this call: "
                     f"{_duration(seconds)}.")
    if unfinished:
        names = ", ".join(f"{v} seed {s}" for v, s in unfinished)
        lines += ["", f"**Unfinished** ({len(unfinished)} run(s)): {names}. Those that started keep the checkpoint "
                  f"of their last finished epoch; the same compare again continues them."]
    return "\n".join(lines) + "\n"


MERGED_COLUMNS = ["model", "variant", "params", "macs", "top1_mean", "top1_std", "seeds", "epochs", "source"]
_INTEGER_COLUMNS = ("params", "macs", "seeds", "epochs", "dynamic_layers_total")


def read_compare_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a `compare.csv` with numbers as numbers (an empty cell is None); `DataError` naming the file
    when it is missing or is not a compare table."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (a folder that `dynshuffle compare` wrote holds one)")
    header, raw_rows = read_csv(path)
    missing = [c for c in ("variant", "model", "macs", "top1_mean", "top1_std", "seeds") if c not in header]
    if missing:
        raise DataError(f"{path} is not a compare table: it lacks the column(s) {', '.join(missing)}")
    return [{key: _compare_cell(path, line, key, text) for key, text in raw.items() if key is not None}
            for line, raw in enumerate(raw_rows, start=2)]


def _compare_cell(path: Path, line: int, key: str, text: str | None):
    if key in ("variant", "model", "source"):
        return text
    if text in ("", None):
        return None
    try:
        return int(float(text)) if key in _INTEGER_COLUMNS else float(text)
    except ValueError:
        raise DataError(f"{path}, line {line}: {key} is {text!r}, not a number") from None


def merge_compares(folders: list[str | os.PathLike], out: str | os.PathLike, title: str | None = None,
                   verbose: bool = True) -> list[Path]:
    """One table and one picture of several finished `compare` folders, e.g. two widths of a model: top-1
    against multiply-adds, so a variant reads against the fixed shuffle at equal cost. Trains nothing; reads
    each folder's `compare.csv` and writes `compare.md`, `compare.csv` and (with matplotlib) `compare.png`
    into `out`. Returns the paths written."""
    if not folders:
        raise ValueError(f"{arg('folders', '--merge')} needs at least one compare folder")
    out = Path(out)
    for folder in folders:
        if out.resolve() == Path(folder).resolve():
            raise ValueError(f"{arg('out', '--out')} {out} is one of the folders to merge: its compare table would be "
                             f"overwritten; write the merged table elsewhere")
    if (out / MARKER).exists():
        raise CompareFolderError(f"{out} holds the runs of a compare ({MARKER}): write the merged table elsewhere")
    rows = []
    for folder in folders:
        for row in read_compare_csv(Path(folder) / "compare.csv"):
            rows.append({**row, "source": Path(folder).name})
    rows.sort(key=lambda r: (r["macs"] if r["macs"] is not None else float("inf"), r["model"], r["variant"]))
    out.mkdir(parents=True, exist_ok=True)
    title = title or "top-1 against multiply-adds: " + ", ".join(Path(f).name for f in folders)
    lines = [f"# dynshuffle compare --merge: {title}", "",
             "| model | variant | params | multiply-adds | top-1 % | seeds | epochs | folder |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        macs = f"{r['macs'] / 1e6:.2f} M" if r["macs"] is not None else "–"
        epochs = r.get("epochs") if r.get("epochs") is not None else "–"
        lines.append(f"| {r['model']} | {r['variant']} | {r['params'] / 1e6:.3f} M | {macs} "
                     f"| {_pct(r['top1_mean'], r['top1_std'])} | {r['seeds']} | {epochs} | {r['source']} |")
    lines += ["", "Rows of the `compare` tables of the folders named, sorted by multiply-adds; top-1 mean ± sample "
              "std over seeds, as in each folder's table (which also holds latency and data dependence)."]
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "compare.csv", format_csv(rows, MERGED_COLUMNS))
    written = [out / "compare.md", out / "compare.csv"]
    if importlib.util.find_spec("matplotlib") is not None:
        written.append(plot_accuracy_vs_macs(rows, out / "compare.png", title))
    if verbose:
        print("\n".join(lines))
        print(f"written: {', '.join(map(str, written))}", flush=True)
    return written


def format_csv(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    return buf.getvalue()
