"""The training loop, top to bottom: `train` = check the run folder, `setup`, `restore` (resume), then per epoch
`train_one_epoch` and `evaluate_and_save`.

One process (`dynshuffle train ...`) or many under torchrun (`torchrun --nproc_per_node=8 -m dynshuffle.cli
train ...`): the same code. Per step, `ShuffleSchedule` sets the shuffle modes (soft, then straight-through
for the last `shuffle.ste_fraction` of the steps) and the loss is cross-entropy + the schedule's term
(lambda(step) x orthogonality penalties − diversity rewards); per epoch: evaluate with the exact
permutation and with the soft matrices, write log.csv, save `best` and `last` checkpoints (rank 0 only).

Compiled (`train.compile`): the model is compiled once, after DDP wraps it, and the train step and evaluation
call the compiled module; the loss and the schedule's term stay outside it (lambda changes every step), and
the schedule's mode switch costs one recompile per phase (docs/training.md, "Compiled training").

Faults (docs/training.md, "Faults"): `resume="auto"` continues whatever the run folder holds, so one command
line survives `torchrun --max-restarts`; every process's RNG streams are checkpointed, so a restarted job
ends with the weights of an uninterrupted one; a collective that outlasts `train.dist_timeout` stops the run
with `CollectiveTimeoutError` naming it; `data.skip_corrupt` replaces and counts images that do not decode.
"""
from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from dynshuffle import checkpoints as ckpt
from dynshuffle.data.loaders import ShardSampler, make_loader
from dynshuffle.data.registry import build_datasets, get_dataset_spec
from dynshuffle.data.transforms import BatchTransform
from dynshuffle.layers.base import has_shuffle_modules
from dynshuffle.layers.schedule import ShuffleSchedule
from dynshuffle.models.blocks import LAYER_OPTIONS
from dynshuffle.models.registry import create_model
from dynshuffle.utils import arg, write_csv

from . import distributed as D
from . import faults
from .config import Config, save_config, upgrade
from .evaluate import autocast, dynamic_dependence, evaluate_modes, first_images, progress_enabled
from .logging import COLUMNS, TensorBoard
from .optim import LRSchedule, build_lr_schedule, build_optimizer, peak_lr, set_lr


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the run stopped (a checkpoint it wrote before is untouched)."""


class RunFolderError(ValueError):
    """The run folder holds a previous run (and neither resume nor overwrite was asked for), or the
    processes of one job do not see the same run folder."""


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def build_model(cfg: Config, num_classes: int, stem: str) -> nn.Module:
    m = cfg.model
    return create_model(m.name, num_classes=num_classes, stem=m.stem or stem, shuffle=m.shuffle,
                        pointwise=m.pointwise, shuffle_groups=m.shuffle_groups,
                        factors=tuple(m.factors) if m.factors else None, hidden=m.hidden,
                        temperature=m.temperature, share=m.share, layer_options=layer_options(cfg) or None)


def layer_options(cfg: Config) -> dict:
    """The model keys that pass through to the shuffle layers (`models.blocks.LAYER_OPTIONS`; null keys keep
    the layer's defaults)."""
    return {k: getattr(cfg.model, k) for k in LAYER_OPTIONS if getattr(cfg.model, k, None) is not None}


# Keys a resumed run cannot change: the weights and the data order were built from them.
FIXED_ON_RESUME = ("model.", "data.name", "data.batch_size")
DEPENDENCE_IMAGES = 128  # images of the first eval batches for the per-epoch data-dependence columns


@dataclass
class EpochStats:
    """Sums over one epoch's training steps (this process's share until `all_reduce`)."""

    sums: torch.Tensor  # float64 (loss * n, correct, shuffle loss * n, images): one tensor, one all-reduce

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochStats":
        return cls(torch.zeros(4, dtype=torch.float64, device=device))

    def add(self, ce: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, shuffle_loss: torch.Tensor) -> None:
        n = labels.numel()
        self.sums += torch.stack([ce.detach().double() * n, (logits.detach().argmax(1) == labels).sum().double(),
                                  shuffle_loss.detach().double() * n, self.sums.new_tensor(n)])

    def all_reduce(self, ctx: D.DistContext) -> "EpochStats":
        D.all_reduce_sum(self.sums, ctx)
        return self

    @property
    def images(self) -> float:
        return float(self.sums[3])

    def mean(self, index: int) -> float:
        return float(self.sums[index]) / max(1.0, self.images)

    @property
    def loss(self) -> float:
        return self.mean(0)

    @property
    def top1(self) -> float:
        return self.mean(1)

    @property
    def shuffle_loss(self) -> float:
        return self.mean(2)


@dataclass
class Run:
    """Everything one training run holds: set up once by `setup`, advanced by `train_one_epoch`."""

    cfg: Config
    run_dir: Path
    ctx: D.DistContext
    spec: object
    train_loader: object
    val_loader: object
    train_sampler: DistributedSampler
    train_tf: Callable  # BatchTransform, then channels-last batches with train.channels_last
    val_tf: Callable
    aug_gen: torch.Generator
    model: nn.Module  # the train step's module: DDP-wrapped under torchrun, then compiled (train.compile)
    raw_model: nn.Module  # the bare model: checkpoints, the shuffle schedule and the penalties read it
    eval_model: nn.Module  # evaluation's module: the bare model, compiled with train.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    peak_lr: float
    lr_schedule: LRSchedule
    shuffle_schedule: object | None
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    show_bars: bool
    start_epoch: int = 0
    best_top1: float = -1.0
    history: list = field(default_factory=list)
    saved_epoch: int | None = None  # the epoch of the checkpoint this run folder holds (None: none yet)
    fault: Callable[[int], None] | None = None  # test-only fault hook (training/faults.py); None in real runs
    corrupt_seen: int = 0  # corrupt training images this process skipped up to the last epoch

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def epochs(self) -> int:
        return self.cfg.train.epochs

    def lr_at(self, step: int) -> float:
        return self.peak_lr * self.lr_schedule(step)


def train(cfg: Config, out_dir: str | Path, *, resume: bool | str = False, overwrite: bool = False,
          model: nn.Module | None = None, data_root: str | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train per `cfg` into the run folder `out_dir`; returns {"run_dir", "history", "best_top1", "final", "model"}.

    `model`: train this module instead of building `cfg.model` (its `config` attribute, when present,
    is saved so the checkpoint can be rebuilt). `data_root` overrides `cfg.data.root`. `cfg` is not changed.
    `on_epoch(row)` is called (on rank 0) with each epoch's log row once its checkpoint is saved.
    With `resume`, the keys of FIXED_ON_RESUME must match the checkpoint's; others (optim.lr,
    train.epochs, schedule.*, shuffle.*, ...) take their new values from the next step on.
    `resume="auto"` (or `cfg.train.resume: auto` when neither `resume` nor `overwrite` is given) resumes
    when the run folder holds a training state and starts afresh otherwise.
    """
    cfg = copy.deepcopy(cfg)
    if data_root is not None:
        cfg.data.root = str(data_root)
    run_dir = Path(out_dir)
    mode = resume_mode(cfg, resume, overwrite)
    ctx = D.setup(cfg.train.device, cfg.train.dist_timeout)
    run = None
    try:
        state = check_run_folder(cfg, run_dir, resume=mode, overwrite=overwrite)
        check_same_run_folder(ctx, run_dir, state)
        if ctx.is_main and (note := D.restart_store_note()):
            print(note, file=sys.stderr, flush=True)
        if mode == "auto" and state is None and ctx.is_main:
            print(f"resume: no training state in {run_dir} yet (--resume auto); starting a new run", flush=True)
        run = setup(cfg, run_dir, ctx, model)  # reads the data first: data that is missing or unreadable fails
        if state is not None:                    # before the run folder is written, and so does a refused resume
            restore(run, state)
        elif ctx.rank:
            torch.manual_seed(cfg.train.seed + 1000 * ctx.rank)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        wrap_model(run)
        announce(run, model_given=model is not None)
        logger = TensorBoard(run_dir / "tb", enabled=ctx.is_main and cfg.log.tensorboard,
                             purge_step=run.start_epoch + 1)
        for epoch in range(run.start_epoch, run.epochs):
            t_epoch = time.perf_counter()
            stats, last = train_one_epoch(run, epoch)
            row = evaluate_and_save(run, epoch, stats, last, t_epoch, logger)
            if ctx.is_main and cfg.log.print_epochs:
                print(_summary(row, run.epochs), flush=True)
            if ctx.is_main and on_epoch is not None:
                on_epoch(row)
        if run.shuffle_schedule is not None:
            run.shuffle_schedule.finish()  # the returned model runs as trained: "auto" (soft in train, exact in eval)
        logger.close()
        return {"run_dir": str(run_dir), "history": run.history, "best_top1": run.best_top1,
                "final": run.history[-1] if run.history else None, "model": run.raw_model}
    except RuntimeError as err:
        if ctx.distributed and D.timed_out(err):
            saved = run.saved_epoch if run is not None else None
            raise D.CollectiveTimeoutError(_timeout_message(ctx, run_dir, saved)) from err
        raise
    finally:
        D.cleanup(ctx)


# ---- setup --------------------------------------------------------------------------------------------------

def resume_mode(cfg: Config, resume: bool | str, overwrite: bool) -> bool | str:
    """True, False or "auto": the `resume` argument (--resume, --resume auto) when given; otherwise
    `train.resume` of the config, unless `overwrite` asks for a fresh start."""
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume: expected True, False or 'auto', got {resume!r}")
    if resume == "auto" and overwrite:
        auto, fresh = arg('resume="auto"', "--resume auto"), arg("overwrite=True", "--overwrite")
        raise ValueError(f"{auto} and {fresh} contradict each other (auto continues a run that {fresh} would "
                         f"start afresh); pass one of them")
    if resume is False and not overwrite and cfg.train.resume == "auto":
        return "auto"
    return resume


def check_run_folder(cfg: Config, run_dir: Path, *, resume: bool | str, overwrite: bool) -> dict | None:
    """Refuse to clobber a previous run by accident; with `resume`, the checkpoint state (overrides checked).
    `resume="auto"` resumes when the folder holds a training state (last.state.pt) and starts afresh otherwise."""
    last_state = run_dir / "last.state.pt"
    if resume == "auto":
        resume = last_state.exists()
    if resume and not last_state.exists():
        raise FileNotFoundError(f"{arg('resume=True', '--resume')}: no checkpoint to resume from "
                                f"({last_state} not found)")
    if not resume and not overwrite and last_state.exists():
        raise RunFolderError(f"{run_dir} already holds a run (last.state.pt); pass {arg('resume=True', '--resume')} "
                             f"to continue it, {arg('overwrite=True', '--overwrite')} to start afresh in it, or "
                             f"choose another {arg('out_dir', '--out')}")
    if not resume:
        return None
    tensors, _, state = ckpt.load_checkpoint(last_state)
    state["_tensors"] = tensors
    check_resume_overrides(state.get("config"), cfg)
    return state


def check_same_run_folder(ctx: D.DistContext, run_dir: Path, state: dict | None) -> None:
    """Every process must resume the same epoch, or all start afresh: with --resume auto, a run folder on a
    disk that only some nodes see would otherwise split one job into runs at different epochs."""
    mine = None if state is None else int(state["epoch"])
    found = D.all_gather_object(mine, ctx)
    if len(set(found)) > 1:
        seen = ", ".join(f"rank {r}: {'no training state' if e is None else f'epoch {e}'}"
                         for r, e in enumerate(found))
        raise RunFolderError(f"the processes do not see the same run folder {run_dir} ({seen}); "
                             f"put it on a file system every node shares")


def resume_changes(saved: dict | None, cfg: Config) -> tuple[list[str], list[str]]:
    """(changed keys, of which those that cannot change on resume), as 'section.key: old -> new'. `saved` is
    the config stored in the checkpoint, read under the current key names (`config.upgrade`)."""
    if not saved:
        return [], []
    saved = upgrade(saved)
    changed, refused = [], []
    new = cfg.to_dict()
    for sec, values in new.items():
        for key, value in values.items():
            old = (saved.get(sec) or {}).get(key, value)  # a key added since the save: unchanged
            if old != value:
                dotted = f"{sec}.{key}"
                changed.append(f"{dotted}: {old!r} -> {value!r}")
                if dotted.startswith(FIXED_ON_RESUME):
                    refused.append(changed[-1])
    return changed, refused


def check_resume_overrides(saved: dict | None, cfg: Config) -> None:
    _, refused = resume_changes(saved, cfg)
    if refused:
        raise ValueError(f"{arg('resume', '--resume')} cannot change {'; '.join(refused)} (the model, the dataset "
                         f"and the batch size are fixed for a run; start a new run with {arg('out_dir', '--out')} or "
                         f"{arg('overwrite=True', '--overwrite')})")


def _seed(cfg: Config, device: torch.device) -> None:
    seed = cfg.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _data(cfg: Config, ctx: D.DistContext):
    """(spec, train_sampler, train_loader, val_loader): uint8 batches; augmentation runs on the device."""
    spec = get_dataset_spec(cfg.data.name)
    if cfg.data.download and ctx.distributed and not ctx.is_main:
        D.barrier(ctx)  # rank 0 downloads first
    train_set, val_set = build_datasets(cfg.data.name, root=cfg.data.root, download=cfg.data.download)
    if cfg.data.download and ctx.distributed and ctx.is_main:
        D.barrier(ctx)
    if cfg.data.skip_corrupt:  # datasets that decode files (the folder datasets) know how to skip a bad one
        for dataset in (train_set, val_set):
            if hasattr(dataset, "skip_corrupt_images"):
                dataset.skip_corrupt_images(cfg.data.workers)
    if cfg.data.batch_size % ctx.world_size:
        raise ValueError(f"config key 'data.batch_size': {cfg.data.batch_size} does not split evenly "
                         f"over {ctx.world_size} processes")
    batch = cfg.data.batch_size // ctx.world_size
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    train_loader = make_loader(train_set, batch, sampler, cfg.data.workers, ctx.device, drop_last=True)
    val_loader = make_loader(val_set, cfg.data.eval_batch_size or batch,
                             ShardSampler(len(val_set), ctx.rank, ctx.world_size), cfg.data.workers, ctx.device)
    if len(train_loader) == 0:
        raise ValueError(f"config key 'data.batch_size': {cfg.data.batch_size} is larger than the "
                         f"{len(train_set)} training images (batches are dropped when incomplete)")
    return spec, sampler, train_loader, val_loader


def setup(cfg: Config, run_dir: Path, ctx: D.DistContext, model: nn.Module | None = None) -> Run:
    """Seeds, data, model, optimizer, lr and shuffle schedules: a run at step 0."""
    device = ctx.device
    _seed(cfg, device)
    spec, sampler, train_loader, val_loader = _data(cfg, ctx)
    if model is None:
        model = build_model(cfg, spec.num_classes, spec.stem)
    model = model.to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    if cfg.train.channels_last:  # 4-D weights; the batches follow in train_tf / val_tf
        model = model.to(memory_format=memory_format)
    if ctx.distributed and device.type == "cuda" and cfg.model.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    steps_per_epoch = len(train_loader)
    if cfg.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)
    total_steps = cfg.train.epochs * steps_per_epoch
    peak = peak_lr(cfg.optim, cfg.data.batch_size)
    amp_dtype = _amp_dtype(cfg.train.amp, device)
    shuffle_schedule = ShuffleSchedule(model, total_steps, **cfg.shuffle.recipe()) \
        if has_shuffle_modules(model) else None
    return Run(cfg=cfg, run_dir=run_dir, ctx=ctx, spec=spec, train_loader=train_loader, val_loader=val_loader,
               train_sampler=sampler, train_tf=in_format(BatchTransform(spec, train=True).to(device), memory_format),
               val_tf=in_format(BatchTransform(spec, train=False).to(device), memory_format),
               aug_gen=torch.Generator(device=device),  # reseeded every epoch: resumable augmentation
               model=model, raw_model=model, eval_model=model, optimizer=build_optimizer(model, cfg.optim, peak),
               scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), peak_lr=peak,
               lr_schedule=build_lr_schedule(cfg.schedule, cfg.train.epochs, steps_per_epoch),
               shuffle_schedule=shuffle_schedule, amp_dtype=amp_dtype, steps_per_epoch=steps_per_epoch,
               show_bars=progress_enabled(cfg.log.progress, ctx), fault=faults.from_env(ctx.rank))


def restore(run: Run, state: dict) -> None:
    """Continue from a checkpoint: weights, optimizer (momentum), scaler, RNG, history. The lr and the shuffle
    schedule are functions of the step, rebuilt from the config in use (a stored "scheduler" is ignored), and
    so are the optimizer's settings (weight decay, momentum, a group's lr scale): the checkpoint gives only
    its per-parameter state."""
    ckpt.load_model_weights(run.raw_model, state["_tensors"], run.run_dir / "last.safetensors")
    settings = [{k: v for k, v in group.items() if k != "params"} for group in run.optimizer.param_groups]
    saved = len(state["optimizer"]["param_groups"])
    if saved != len(settings):
        raise ValueError(f"{arg('resume', '--resume')} cannot change the optimizer's parameter groups: the run's "
                         f"has {saved}, this config builds {len(settings)} (optim.exempt_norm_bias decides the "
                         f"exempt group; optim.generator_weight_decay or optim.generator_lr_scale, set, gives the "
                         f"shuffle generators' weights a group of their own); keep the run's values, or start a new "
                         f"run with {arg('out_dir', '--out')} or {arg('overwrite=True', '--overwrite')}")
    run.optimizer.load_state_dict(state["optimizer"])
    for group, setting in zip(run.optimizer.param_groups, settings):
        group.update(setting)
    run.scaler.load_state_dict(state["scaler"])
    ranks = state.get("rng_ranks")
    if ranks and len(ranks) == run.ctx.world_size:  # every process continues its own random streams
        ckpt.set_rng_state(ranks[run.ctx.rank])
    else:  # a single-process checkpoint, or another process count: other ranks get deterministic streams
        ckpt.set_rng_state(state["rng"])
        if run.ctx.rank:
            torch.manual_seed(run.cfg.train.seed + 1000 * run.ctx.rank + state["epoch"])
    run.start_epoch, run.best_top1 = state["epoch"], state["best_top1"]
    run.history, run.saved_epoch = list(state["history"]), state["epoch"]
    if run.ctx.is_main:
        changed, _ = resume_changes(state.get("config"), run.cfg)
        if changed:
            print(f"resume: new values from this run's config: {'; '.join(changed)}")
        print(f"resume: {run.run_dir} from epoch {run.start_epoch}/{run.epochs}")


COMPILE_BACKEND_ENV = "DYNSHUFFLE_COMPILE_BACKEND"  # torch.compile's backend (default inductor); the tests
# set aot_eager, which traces and checks the same graphs in seconds where inductor takes minutes per model


def wrap_model(run: Run) -> None:
    """The modules the steps call. Under torchrun, DDP (every dynamic module's training path gives its generator
    a gradient: no unused parameters). With `train.compile`, torch.compile of that module, as PyTorch advises
    for DDP (its DDPOptimizer splits the graph at the gradient buckets, so the all-reduces still overlap the
    backward); evaluation calls the same compiled module, or under DDP the bare model compiled on its own.
    `run.raw_model` stays the plain module (no `_orig_mod.` prefix in checkpoints)."""
    if run.ctx.distributed:
        run.model = DDP(run.raw_model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.cfg.train.compile != "off":
        # A fresh compile cache: a process that trains several runs (compare, the tests) would otherwise
        # spend the per-function recompile limit on the graphs of earlier models, then run eagerly.
        torch._dynamo.reset()
    run.model = compile_model(run.model, run.cfg.train.compile, run.device)
    run.eval_model = run.model if not run.ctx.distributed else \
        compile_model(run.raw_model, run.cfg.train.compile, run.device)


def compile_model(module: nn.Module, setting: str, device: torch.device) -> nn.Module:
    """`module` compiled per `train.compile` ("off": `module` itself). The shuffle schedule's per-step
    settings are attributes of the shuffle modules, which the compiled code guards on: a mode change
    recompiles once (soft -> straight-through), and a temperature or noise that changes every step
    becomes a graph input after its first change (one more compile, then none)."""
    if setting == "off":
        return module
    if setting == "reduce-overhead" and device.type != "cuda":
        raise ValueError(f"config key 'train.compile': 'reduce-overhead' (CUDA graphs) needs a CUDA device, "
                         f"this run is on {device.type}; use default or max-autotune")
    backend = os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
    mode = None if setting == "default" or backend != "inductor" else setting  # the modes are inductor's
    return torch.compile(module, backend=backend, mode=mode)


def in_format(transform: Callable, memory_format: torch.memory_format) -> Callable:
    """`transform` followed by a copy into `memory_format` (`transform` itself for the default format)."""
    if memory_format == torch.contiguous_format:
        return transform
    return lambda images, **kwargs: transform(images, **kwargs).contiguous(memory_format=memory_format)


def announce(run: Run, model_given: bool) -> None:
    cfg = run.cfg
    if not (run.ctx.is_main and cfg.log.print_epochs):
        return
    params = sum(p.numel() for p in run.raw_model.parameters())
    what = type(run.raw_model).__name__ if model_given else \
        f"{cfg.model.name} (shuffle {cfg.model.shuffle}, pointwise {cfg.model.pointwise}"
    what += f" ({params / 1e6:.3f} M params)" if model_given else f", {params / 1e6:.3f} M params)"
    print(f"train: {what} on {run.spec.name}: {run.ctx.world_size} process(es) on {run.device.type}, "
          f"batch {cfg.data.batch_size}, {run.steps_per_epoch} steps/epoch, {run.epochs} epochs -> {run.run_dir}",
          flush=True)


# ---- one epoch ------------------------------------------------------------------------------------------------

def train_one_epoch(run: Run, epoch: int) -> tuple[EpochStats, dict]:
    """Train one epoch; returns its statistics (all-reduced) and {"lr", "lambda", "mode"} of its last step."""
    cfg, ctx, device = run.cfg, run.ctx, run.device
    run.train_sampler.set_epoch(epoch)
    run.aug_gen.manual_seed(cfg.train.seed * 1_000_003 + epoch * 1_009 + ctx.rank)
    run.model.train()
    stats = EpochStats.zeros(device)
    bad_loss = torch.zeros((), device=device)  # holds a non-finite loss once one occurs
    check_every = 1 if device.type == "cpu" else 50
    cuda_graphs = cfg.train.compile == "reduce-overhead"
    last = {"lr": None, "lambda": None, "mode": None}
    t_train = time.perf_counter()
    bar = tqdm(run.train_loader, total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.epochs}", leave=False,
               disable=not run.show_bars, dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        if step >= run.steps_per_epoch:
            break
        global_step = epoch * run.steps_per_epoch + step
        if run.fault is not None:
            run.fault(global_step)
        where = f"training step {step + 1} of epoch {epoch + 1}"
        ctx.phase = f"the DDP forward's buffer broadcast of {where}"
        last["lr"] = run.lr_at(global_step)
        set_lr(run.optimizer, last["lr"])
        if run.shuffle_schedule is not None:
            run.shuffle_schedule.step(global_step)
            last["mode"] = run.shuffle_schedule.mode_at(global_step)
            last["lambda"] = run.shuffle_schedule.lambda_at(global_step)
        images = run.train_tf(images.to(device, non_blocking=True), generator=run.aug_gen)
        labels = labels.to(device, non_blocking=True)
        if cuda_graphs:  # a new step: the graphs may reuse the memory of the previous step's outputs
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, run.amp_dtype):
            logits = run.model(images)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.train.label_smoothing)
        shuffle_loss = run.shuffle_schedule.loss() if run.shuffle_schedule is not None else ce.new_zeros(())
        loss = ce + shuffle_loss

        # A NaN/inf loss stops the run before it can reach a checkpoint (all ranks agree). On a GPU the
        # check reads the flag every `check_every` steps, so that it costs no sync per step.
        bad_loss = torch.where(torch.isfinite(loss.detach()), bad_loss, loss.detach())
        if (step + 1) % check_every == 0 or step + 1 == run.steps_per_epoch:
            ctx.phase = f"the non-finite-loss all_reduce of {where}"
            D.all_reduce_sum(bad_loss, ctx)
            if not torch.isfinite(bad_loss):
                raise NonFiniteLossError(_nan_message(run, float(bad_loss), epoch, step, check_every, last["lr"]))

        run.optimizer.zero_grad(set_to_none=True)
        ctx.phase = f"the DDP gradient all-reduce of {where}"
        run.scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.optim.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()

        stats.add(ce, logits, labels, shuffle_loss)
        if run.show_bars and step % 10 == 0:
            seen = stats.images
            bar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.top1:.3f}",
                            img_s=f"{seen * ctx.world_size / (time.perf_counter() - t_train):.0f}")
    bar.close()
    last["train_seconds"] = time.perf_counter() - t_train
    ctx.phase = f"the all_reduce of epoch {epoch + 1}'s training statistics"
    return stats.all_reduce(ctx), last


def _nan_message(run: Run, value: float, epoch: int, step: int, check_every: int, lr: float) -> str:
    """What happened, what the run folder holds, and what to do (one line)."""
    where = f"step {step + 1}" if check_every == 1 else f"by step {step + 1}"
    lower = f"{lr / 10:.3g}"
    text = f"loss is {value} at epoch {epoch + 1}, {where} (lr {lr:.4g}); stopped. "
    if run.saved_epoch is not None:
        return text + (f"{run.run_dir} holds the checkpoint of epoch {run.saved_epoch}: lower optim.lr and "
                       f"continue it, e.g. dynshuffle train --out {run.run_dir} --resume --set optim.lr={lower}")
    return text + (f"No checkpoint was written (the first epoch did not finish): lower optim.lr and start again, "
                   f"e.g. with --overwrite --set optim.lr={lower}")


# ---- evaluate and save --------------------------------------------------------------------------------------

def evaluate_and_save(run: Run, epoch: int, stats: EpochStats, last: dict, t_epoch: float, logger) -> dict:
    """Evaluate with the exact permutation (the deployed model) and the soft matrices, append the log row,
    save `best` then `last` (a crash in between leaves a consistent pair). Returns the row."""
    cfg, ctx, dynamic = run.cfg, run.ctx, run.shuffle_schedule is not None
    ctx.phase = f"the evaluation of epoch {epoch + 1} (its BatchNorm-average and metric all-reduces)"
    D.average_buffers(run.raw_model, ctx)
    ev = evaluate_modes(run.eval_model, run.val_loader, run.val_tf, run.device, soft=cfg.shuffle.eval_soft,
                        amp_dtype=run.amp_dtype, ctx=ctx, progress=run.show_bars, max_batches=cfg.train.eval_steps)
    hard, soft = ev["hard"], ev["soft"]
    dependence = None
    if dynamic and ctx.is_main:
        dependence = dynamic_dependence(run.raw_model, first_images(run.val_loader, run.val_tf, run.device,
                                                                    DEPENDENCE_IMAGES))
    row = {
        "epoch": epoch + 1, "train_loss": stats.loss, "train_top1": stats.top1,
        "val_loss": hard["loss"], "val_top1": hard["top1"], "val_top5": hard["top5"],
        "val_top1_hard": hard["top1"] if dynamic else None,
        "val_top1_soft": soft["top1"] if soft else None, "val_top5_soft": soft["top5"] if soft else None,
        "val_loss_soft": soft["loss"] if soft else None,
        "lr": last["lr"], "lambda": last["lambda"], "penalty": stats.shuffle_loss if dynamic else None,
        "shuffle_mode": last["mode"],
        "dynamic_layers": dependence["dynamic_layers"] if dependence else None,
        "distinct_median": dependence["distinct_median"] if dependence else None,
        "skipped_corrupt": skipped_corrupt(run) if cfg.data.skip_corrupt else None,
        "images_per_s": stats.images / max(last["train_seconds"], 1e-9), "seconds": time.perf_counter() - t_epoch,
    }
    run.history.append(row)
    is_best = hard["top1"] > run.best_top1
    run.best_top1 = max(run.best_top1, hard["top1"])
    ctx.phase = f"gathering the random states for epoch {epoch + 1}'s checkpoint"
    rng = D.all_gather_object(ckpt.rng_state(), ctx)  # every process's streams: a restart continues each
    if ctx.is_main:
        state = {"epoch": epoch + 1, "step": (epoch + 1) * run.steps_per_epoch,
                 "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
                 "rng": rng[0], "best_top1": run.best_top1, "history": run.history}
        if ctx.distributed:
            state["rng_ranks"] = rng
        cfg_dict = cfg.to_dict()
        if is_best:
            ckpt.save_checkpoint(run.run_dir, "best", run.raw_model, state, cfg_dict)
        ckpt.save_checkpoint(run.run_dir, "last", run.raw_model, state, cfg_dict)
        write_csv(run.run_dir / "log.csv", run.history, COLUMNS)
        logger.log_row(row, epoch + 1)
    run.saved_epoch = epoch + 1
    ctx.phase = f"the barrier after epoch {epoch + 1} (rank 0 writes the checkpoint meanwhile)"
    D.barrier(ctx)
    return row


def skipped_corrupt(run: Run) -> int:
    """Training images replaced because they did not decode (data.skip_corrupt) in this epoch, over every
    process and DataLoader worker: each corrupt file counts once per epoch that draws it. (Validation files
    are replaced too, and named in a warning, but not counted: evaluation reads them once per mode.)"""
    total = getattr(run.train_loader.dataset, "corrupt_skipped", 0)
    new = torch.tensor(float(total - run.corrupt_seen), dtype=torch.float64, device=run.device)
    run.corrupt_seen = total
    return int(D.all_reduce_sum(new, run.ctx))


def _timeout_message(ctx: D.DistContext, run_dir: Path, saved_epoch: int | None) -> str:
    """Which process waited in what, for how long, and what the run folder holds (one line)."""
    limit = f"train.dist_timeout={ctx.timeout:g} s" if ctx.timeout is not None else \
        "the process group's default timeout (train.dist_timeout: null)"
    text = (f"rank {ctx.rank} of {ctx.world_size}: {ctx.phase} did not complete within {limit}: another "
            f"process stopped responding (hung or lost). ")
    if saved_epoch is None:
        return text + f"{run_dir} holds no checkpoint of this run yet."
    return text + (f"{run_dir} holds the checkpoint of epoch {saved_epoch}: continue it with --resume auto "
                   f"(torchrun --max-restarts=N does so by itself)")


def _summary(row: dict, epochs: int) -> str:
    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

    text = (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} top1 {pct(row['train_top1'])}  "
            f"val loss {row['val_loss']:.4f} top1 {pct(row['val_top1'])} top5 {pct(row['val_top5'])}")
    if row.get("val_top1_soft") is not None:
        text += f"  soft top1 {pct(row['val_top1_soft'])}"
    if row.get("penalty") is not None:
        text += f"  penalty {row['penalty']:.4f} ({row['shuffle_mode']})"
    if row.get("dynamic_layers") is not None:
        text += f"  data-dependent layers {row['dynamic_layers']}, distinct median {row['distinct_median']:g}"
    if row.get("skipped_corrupt"):
        text += f"  skipped {row['skipped_corrupt']} corrupt image(s)"
    return text + f"  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s"
