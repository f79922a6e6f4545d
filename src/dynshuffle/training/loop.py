"""The training loop, top to bottom: setup, data, model, optimizer, resume, then epochs.

One process (`dynshuffle train ...`) or many under torchrun (`torchrun --nproc_per_node=8 -m dynshuffle.cli
train ...`): the same code. Per epoch: pick the shuffle mode of the binarization schedule (soft, then
straight-through for the last `shuffle.ste_fraction` of the epochs), train with
cross-entropy + lambda * orthogonality penalty, evaluate with the exact permutation and with the soft
matrices, write log.csv, save `best` and `last` checkpoints (rank 0 only).
"""
from __future__ import annotations

import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed as D
from .config import Config, diff_configs, save_config
from .evaluate import autocast, evaluate_modes, has_shuffle_modes, make_loader, progress_enabled, ShardSampler
from .logging import TensorBoard, write_csv
from .optim import build_optimizer, build_schedule, peak_lr


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is untouched."""


class RunFolderError(ValueError):
    """The run folder holds a previous run (and neither resume nor overwrite was asked for)."""


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def build_model(cfg: Config, num_classes: int, stem: str) -> nn.Module:
    from dynshuffle.models import create_model

    m = cfg.model
    return create_model(m.name, num_classes=num_classes, stem=m.stem or stem, shuffle=m.shuffle,
                        pointwise=m.pointwise, shuffle_groups=m.shuffle_groups,
                        factors=tuple(m.factors) if m.factors else None, hidden=m.hidden,
                        temperature=m.temperature, share=m.share, layer_options=layer_options(cfg) or None)


def layer_options(cfg: Config) -> dict:
    """The model keys that pass through to the shuffle layers (null keys keep the layer's defaults)."""
    keys = ("confidence", "relaxation", "stats", "head_init")
    return {k: getattr(cfg.model, k) for k in keys if getattr(cfg.model, k) is not None}


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          model: nn.Module | None = None, data_root: str | None = None) -> dict:
    """Train per `cfg` into the run folder `out_dir`; returns {"run_dir", "history", "best_top1", "final"}.

    `model`: train this module instead of building `cfg.model` (its `config` attribute, when present,
    is saved so the checkpoint can be rebuilt). `data_root` overrides `cfg.data.root`.
    """
    run_dir = Path(out_dir)
    if data_root is not None:
        cfg.data.root = str(data_root)

    # ---- processes and device ---------------------------------------------------------------------
    ctx = D.setup(cfg.train.device)
    device, main = ctx.device, ctx.is_main
    try:
        # ---- run folder: refuse to clobber a previous run by accident --------------------------------
        last_state = run_dir / "last.state.pt"
        if resume and not last_state.exists():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from ({last_state} does not exist)")
        if not resume and not overwrite and last_state.exists():
            raise RunFolderError(f"{run_dir} already holds a run (last.state.pt); pass --resume to continue "
                                 f"it or choose another --out")
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")

        # ---- seeds --------------------------------------------------------------------------------------
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        # ---- data: uint8 batches from the loader, augmentation + normalisation on the device ----------
        from dynshuffle.data import BatchTransform, build_datasets, get_dataset_spec

        spec = get_dataset_spec(cfg.data.name)
        if cfg.data.download and ctx.distributed and not main:
            D.barrier(ctx)  # rank 0 downloads first
        train_set, val_set = build_datasets(cfg.data.name, root=cfg.data.root, download=cfg.data.download)
        if cfg.data.download and ctx.distributed and main:
            D.barrier(ctx)
        if cfg.data.batch_size % ctx.world_size:
            raise ValueError(f"config key 'data.batch_size': {cfg.data.batch_size} does not split evenly "
                             f"over {ctx.world_size} processes")
        batch = cfg.data.batch_size // ctx.world_size
        train_sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                           shuffle=True, seed=seed, drop_last=True)
        train_loader = make_loader(train_set, batch, train_sampler, cfg.data.workers, device, drop_last=True)
        val_loader = make_loader(val_set, cfg.data.eval_batch_size or batch,
                                 ShardSampler(len(val_set), ctx.rank, ctx.world_size), cfg.data.workers, device)
        if len(train_loader) == 0:
            raise ValueError(f"config key 'data.batch_size': {cfg.data.batch_size} is larger than the "
                             f"{len(train_set)} training images (batches are dropped when incomplete)")
        train_tf = BatchTransform(spec, train=True).to(device)
        val_tf = BatchTransform(spec, train=False).to(device)
        aug_gen = torch.Generator(device=device)  # reseeded every epoch: resumable augmentation

        # ---- model -----------------------------------------------------------------------------------------
        if model is None:
            model = build_model(cfg, spec.num_classes, spec.stem)
        model = model.to(device)
        dynamic = has_shuffle_modes(model)
        if ctx.distributed and device.type == "cuda" and cfg.model.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        raw_model = model  # checkpoints, evaluation and the penalty read the bare model

        # ---- optimizer and per-iteration schedule ---------------------------------------------------------
        epochs = cfg.train.epochs
        steps_per_epoch = len(train_loader)
        if cfg.train.steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)
        lr = peak_lr(cfg.optim, cfg.data.batch_size)
        optimizer = build_optimizer(raw_model, cfg.optim, lr)
        scheduler = build_schedule(optimizer, cfg.schedule, epochs, steps_per_epoch)
        amp_dtype = _amp_dtype(cfg.train.amp, device)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        if scaler.is_enabled():  # fp16 skips the optimizer step on overflow; the schedule moves on anyway
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        from dynshuffle.schedule import ShuffleSchedule

        shuffle_schedule = ShuffleSchedule(raw_model, epochs * steps_per_epoch, **cfg.shuffle.recipe()) \
            if dynamic else None

        # ---- resume: weights, optimizer, schedule, scaler, RNG, history ----------------------------------
        start_epoch, best_top1, history = 0, -1.0, []
        if resume:
            tensors, _, state = ckpt.load_checkpoint(last_state)
            ckpt.load_model_weights(raw_model, tensors, run_dir / "last.safetensors")
            optimizer.load_state_dict(state["optimizer"])
            # The step count comes from the checkpoint, the schedule's shape from the config in use (so a
            # resumed run may extend train.epochs): drop the saved schedule object's attributes.
            sched_state = dict(state["scheduler"])
            sched_state["lr_lambdas"] = [None] * len(sched_state.get("lr_lambdas", []))
            scheduler.load_state_dict(sched_state)
            scaler.load_state_dict(state["scaler"])
            ckpt.set_rng_state(state["rng"])
            if ctx.rank:  # rank 0's RNG was saved; other ranks get their own deterministic streams
                torch.manual_seed(seed + 1000 * ctx.rank + state["epoch"])
            start_epoch, best_top1, history = state["epoch"], state["best_top1"], list(state["history"])
            if main:
                changed = diff_configs(Config.from_dict(state["config"]), cfg) if state.get("config") else []
                if changed:
                    print(f"resume: config differs from the checkpoint's: {'; '.join(changed)}")
                print(f"resume: {run_dir} from epoch {start_epoch}/{epochs}")
        elif ctx.rank:
            torch.manual_seed(seed + 1000 * ctx.rank)

        if ctx.distributed:
            # Every dynamic module's training path gives its generator a gradient: no unused parameters.
            model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None)

        if main and cfg.log.print_epochs:
            params = sum(p.numel() for p in raw_model.parameters())
            print(f"train: {cfg.model.name} (shuffle {cfg.model.shuffle}, pointwise {cfg.model.pointwise}, "
                  f"{params / 1e6:.3f} M params) on {spec.name}: {ctx.world_size} process(es) on {device.type}, "
                  f"batch {cfg.data.batch_size}, {steps_per_epoch} steps/epoch, {epochs} epochs -> {run_dir}",
                  flush=True)
        logger = TensorBoard(run_dir / "tb", enabled=main and cfg.log.tensorboard, purge_step=start_epoch + 1)
        show_bars = progress_enabled(cfg.log.progress, ctx)
        label_smoothing = cfg.train.label_smoothing
        check_every = 1 if device.type == "cpu" else 50

        # ---- epochs ----------------------------------------------------------------------------------------
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            mode = None
            train_sampler.set_epoch(epoch)
            aug_gen.manual_seed(seed * 1_000_003 + epoch * 1_009 + ctx.rank)
            model.train()

            sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, penalty, images
            bad_loss = torch.zeros((), device=device)  # holds a non-finite loss once one occurs
            t_train = time.perf_counter()
            bar = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       disable=not show_bars, dynamic_ncols=True)
            for step, (images, labels) in enumerate(bar):
                if step >= steps_per_epoch:
                    break
                images = train_tf(images.to(device, non_blocking=True), generator=aug_gen)
                labels = labels.to(device, non_blocking=True)
                if dynamic:
                    global_step = epoch * steps_per_epoch + step
                    shuffle_schedule.step(global_step)
                    mode = shuffle_schedule.mode_at(global_step)
                    lam = shuffle_schedule.lambda_at(global_step)

                with autocast(device, amp_dtype):
                    logits = model(images)
                ce = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
                penalty = shuffle_schedule.penalty() if dynamic else ce.new_zeros(())
                loss = ce + penalty

                # A NaN/inf loss stops the run before it can reach a checkpoint (all ranks agree). On a GPU
                # the check reads the flag every `check_every` steps, so that it costs no sync per step.
                bad_loss = torch.where(torch.isfinite(loss.detach()), bad_loss, loss.detach())
                if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                    D.all_reduce_sum(bad_loss, ctx)
                    if not torch.isfinite(bad_loss):
                        where = f"step {step + 1}" if check_every == 1 else f"by step {step + 1}"
                        raise NonFiniteLossError(
                            f"loss is {float(bad_loss)} at epoch {epoch + 1}, {where} (lr "
                            f"{scheduler.get_last_lr()[0]:.4g}); stopped. The last good checkpoint "
                            f"is kept in {run_dir} (resume with --resume, perhaps with a lower optim.lr)")

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()

                n = labels.numel()
                sums[0] += ce.detach() * n
                sums[1] += (logits.detach().argmax(1) == labels).sum()
                sums[2] += penalty.detach() * n  # weighted by lambda
                sums[3] += n
                if show_bars and step % 10 == 0:
                    seen = float(sums[3])
                    bar.set_postfix(loss=f"{float(sums[0]) / seen:.3f}", acc=f"{float(sums[1]) / seen:.3f}",
                                    img_s=f"{seen * ctx.world_size / (time.perf_counter() - t_train):.0f}")
            bar.close()
            train_seconds = time.perf_counter() - t_train
            D.all_reduce_sum(sums, ctx)
            seen = max(1.0, float(sums[3]))

            # ---- evaluate: exact permutation (the deployed model) and soft matrices -----------------------
            D.average_buffers(raw_model, ctx)
            ev = evaluate_modes(raw_model, val_loader, val_tf, device, soft=cfg.shuffle.eval_soft,
                                amp_dtype=amp_dtype, ctx=ctx, progress=show_bars, max_batches=cfg.train.eval_steps)
            hard, soft = ev["hard"], ev["soft"]
            row = {
                "epoch": epoch + 1, "train_loss": float(sums[0]) / seen, "train_top1": float(sums[1]) / seen,
                "val_loss": hard["loss"], "val_top1": hard["top1"], "val_top5": hard["top5"],
                "val_top1_hard": hard["top1"] if dynamic else None,
                "val_top1_soft": soft["top1"] if soft else None, "val_top5_soft": soft["top5"] if soft else None,
                "val_loss_soft": soft["loss"] if soft else None,
                "lr": optimizer.param_groups[0]["lr"], "lambda": lam if dynamic else None,
                "penalty": float(sums[2]) / seen if dynamic else None, "shuffle_mode": mode,
                "images_per_s": seen / max(train_seconds, 1e-9), "seconds": time.perf_counter() - t_epoch,
            }
            history.append(row)

            # ---- checkpoints (best first, then last: a crash in between leaves a consistent pair) ----------
            is_best = hard["top1"] > best_top1
            best_top1 = max(best_top1, hard["top1"])
            if main:
                state = {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng": ckpt.rng_state(), "best_top1": best_top1, "history": history}
                cfg_dict = cfg.to_dict()
                if is_best:
                    ckpt.save_checkpoint(run_dir, "best", raw_model, state, cfg_dict)
                ckpt.save_checkpoint(run_dir, "last", raw_model, state, cfg_dict)
                write_csv(run_dir / "log.csv", history)
                logger.log_row(row, epoch + 1)
                if cfg.log.print_epochs:
                    print(_summary(row, epochs), flush=True)
            D.barrier(ctx)

        if shuffle_schedule is not None:
            shuffle_schedule.finish()  # the returned model runs as trained: "auto" (soft in train, exact in eval)

        # ---- end: test hook for the multi-process test ------------------------------------------------------
        if cfg.train.debug_dump_weights:
            ckpt.save_weights(raw_model, run_dir / "debug" / f"rank{ctx.rank}.safetensors")
            D.barrier(ctx)
        logger.close()
        return {"run_dir": str(run_dir), "history": history, "best_top1": best_top1,
                "final": history[-1] if history else None, "model": raw_model}
    finally:
        D.cleanup(ctx)


def _summary(row: dict, epochs: int) -> str:
    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

    text = (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} top1 {pct(row['train_top1'])}  "
            f"val loss {row['val_loss']:.4f} top1 {pct(row['val_top1'])} top5 {pct(row['val_top5'])}")
    if row.get("val_top1_soft") is not None:
        text += f"  soft top1 {pct(row['val_top1_soft'])}"
    if row.get("penalty") is not None:
        text += f"  penalty {row['penalty']:.4f} ({row['shuffle_mode']})"
    return text + f"  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s"
