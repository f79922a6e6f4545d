"""Training configuration: the schema of a recipe, one dataclass per YAML section, strict loading,
`--set key=value` overrides, and the key names of earlier versions.

A recipe is a YAML file with the sections below. Every key has a default, so a file only needs the keys
it changes; the run folder keeps the *resolved* config (every key) so a run can be repeated exactly.
An unknown section or key, a wrong type, or a value outside a key's choices raises ValueError naming the
key (and the expected type), whether it comes from YAML or from `--set` (the engine: `typed_yaml`). The
lists of allowed values and the range checks of the layers' and schedule's settings live with the code
that uses them; the schema refers to them.

    model:    name, shuffle, pointwise, stem, shuffle_groups, factors, hidden, temperature, share,
              initial_confidence, relaxation, stats, head_init, diversity, sync_bn
    data:     name, root, download, batch_size (global, over all processes), eval_batch_size, workers, skip_corrupt
    optim:    name, lr, base_batch_size (lr is scaled by batch_size / base_batch_size), momentum, nesterov,
              weight_decay, exempt_norm_bias, generator_weight_decay, grad_clip
    schedule: name (cosine | linear | step | constant), warmup_epochs, min_lr_factor, milestones, gamma
    shuffle:  lambda, penalty_free_fraction, ste_fraction, temperature, final_temperature, noise, train_mode,
              eval_soft (the settings of dynshuffle.ShuffleSchedule)
    train:    epochs, seed, device, amp, compile, channels_last, label_smoothing, steps_per_epoch, eval_steps,
              deterministic, resume, dist_timeout
    log:      tensorboard, progress, print_epochs
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dynshuffle.data.registry import list_datasets
from dynshuffle.layers.base import RELAXATIONS
from dynshuffle.layers.generator import GENERATOR_STATS
from dynshuffle.layers.schedule import TRAIN_MODES, ShuffleRecipe, recipe_problems
from dynshuffle.models.blocks import POINTWISE_KINDS, SHUFFLE_KINDS, STEMS
from dynshuffle.utils import atomic_write_text

from .optim import LR_SCHEDULES, OPTIMIZERS
from .typed_yaml import get, key, load_mapping, load_overrides, read_yaml, to_dict, to_yaml, yaml_key

__all__ = ["Config", "ModelConfig", "DataConfig", "OptimConfig", "ScheduleConfig", "ShuffleConfig", "TrainConfig",
           "LogConfig", "COMPILE_MODES", "RENAMED_KEYS", "REMOVED_KEYS", "upgrade", "validate", "apply_overrides",
           "load_config", "save_config"]

# Saved files (a run's config.yaml, the config in its checkpoints, compare's result.json) keep loading after
# a key is renamed or removed: a config read from a file or a dict goes through `upgrade`, which puts the
# value of an old key under its new name and drops removed keys. (File-format compatibility: `--set` takes
# the current names only.)
RENAMED_KEYS = {
    "model.confidence": "model.initial_confidence",
    "shuffle.explore_fraction": "shuffle.penalty_free_fraction",
}
REMOVED_KEYS = {"train.debug_dump_weights"}

# train.compile: "off", or the `mode` of torch.compile ("default" is torch's default mode). "reduce-overhead"
# captures CUDA graphs: CUDA only.
COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")


@dataclass
class ModelConfig:
    name: str = field(default="shufflenet_v2_x0_5", metadata=key(doc="registered model name"))
    shuffle: str = field(default="dynamic", metadata=key(choices=SHUFFLE_KINDS))
    pointwise: str = field(default="conv", metadata=key(choices=POINTWISE_KINDS))
    stem: Optional[str] = field(default=None, metadata=key(choices=STEMS, doc="null: the dataset's stem"))
    shuffle_groups: Optional[int] = None
    factors: Optional[list[int]] = None
    hidden: Optional[int] = None
    temperature: float = 1.0
    share: bool = True
    initial_confidence: Optional[float] = field(default=None, metadata=key(
        doc="how far the initial soft rows are from uniform (0) toward one-hot at the diagonal (1); null: the "
            "models' default (blocks.SHUFFLENET_INITIAL_CONFIDENCE)"))
    relaxation: Optional[str] = field(default=None, metadata=key(
        choices=RELAXATIONS, doc="null: the layer's default"))
    stats: Optional[str] = field(default=None, metadata=key(
        choices=GENERATOR_STATS, doc="generator input; null: the layer's default"))
    head_init: Optional[float] = field(default=None, metadata=key(
        doc="std of the generator heads' initial weights; null: the layer's default"))
    diversity: Optional[float] = field(default=None, metadata=key(
        doc="weight of the diversity reward of dynamic layers (batch variance of the soft factors, subtracted "
            "from the penalty); null: the layer's default"))
    sync_bn: bool = field(default=True, metadata=key(doc="SyncBatchNorm under multi-GPU DDP (CUDA only)"))


@dataclass
class DataConfig:
    name: str = field(default="digits", metadata=key(
        choices=list_datasets,
        doc="a dataset of the dynshuffle.data registry"))
    root: Optional[str] = None
    download: bool = False
    batch_size: int = field(default=128, metadata=key(doc="global batch, split evenly over processes"))
    eval_batch_size: Optional[int] = field(default=None, metadata=key(doc="per process; null: batch_size"))
    workers: int = 2
    skip_corrupt: bool = field(default=False, metadata=key(
        doc="folder datasets: an image that does not decode is replaced by the next one and counted (log.csv "
            "skipped_corrupt); false: the run stops with an error naming the file"))


@dataclass
class OptimConfig:
    name: str = field(default="sgd", metadata=key(choices=OPTIMIZERS))
    lr: float = 0.1
    base_batch_size: Optional[int] = field(default=128, metadata=key(
        doc="peak lr = lr * batch_size / base_batch_size; null: no scaling"))
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    exempt_norm_bias: bool = field(default=True, metadata=key(
        doc="no weight decay on norm weights and on biases (the shuffle generator's logit biases included)"))
    generator_weight_decay: Optional[float] = field(default=None, metadata=key(
        doc="weight decay on the shuffle generators' weights; null: weight_decay"))
    generator_lr_scale: Optional[float] = field(default=None, metadata=key(
        doc="the shuffle generators' weights train at this multiple of the lr; null: 1"))
    grad_clip: Optional[float] = None


@dataclass
class ScheduleConfig:
    name: str = field(default="cosine", metadata=key(choices=LR_SCHEDULES))
    warmup_epochs: float = 0.0
    min_lr_factor: float = field(default=0.0, metadata=key(doc="final lr as a fraction of the peak"))
    milestones: Optional[list[int]] = field(default=None, metadata=key(
        doc="epochs where the step schedule multiplies lr by gamma; null: 50% and 75% of epochs"))
    gamma: float = 0.1


_RECIPE = ShuffleRecipe()  # the schedule's defaults are the config's: one home for the recipe


@dataclass
class ShuffleConfig:
    """`dynshuffle.ShuffleSchedule`'s settings (see dynshuffle/schedule.py) plus the evaluation switch."""

    lambda_: float = field(default=_RECIPE.lambda_, metadata=key("lambda", doc="orthogonality penalty weight"))
    penalty_free_fraction: float = field(default=_RECIPE.penalty_free_fraction, metadata=key(
        doc="first fraction of the steps trained with no penalty; then lambda ramps up until the ste phase"))
    ste_fraction: float = field(default=_RECIPE.ste_fraction, metadata=key(
        doc="last fraction of the steps trained with the straight-through exact permutation"))
    temperature: Optional[float] = field(default=_RECIPE.temperature, metadata=key(
        doc="scheduled temperature at step 0; null: the modules keep model.temperature"))
    final_temperature: Optional[float] = field(default=_RECIPE.final_temperature, metadata=key(
        doc="temperature at the end of the soft phase (geometric); null: constant"))
    noise: float = field(default=_RECIPE.noise, metadata=key(
        doc="Gumbel noise scale on the logits, decaying to 0 at the end of the soft phase"))
    train_mode: str = field(default=_RECIPE.train_mode, metadata=key(
        choices=TRAIN_MODES, doc="mode before the straight-through phase"))
    eval_soft: bool = field(default=True, metadata=key(doc="also evaluate with the soft matrices"))

    def recipe(self) -> dict:
        """The keyword arguments of `ShuffleSchedule`."""
        return {"lambda_": self.lambda_, "penalty_free_fraction": self.penalty_free_fraction,
                "ste_fraction": self.ste_fraction, "temperature": self.temperature,
                "final_temperature": self.final_temperature, "noise": self.noise, "train_mode": self.train_mode}


@dataclass
class TrainConfig:
    epochs: int = 200
    seed: int = 0
    device: str = field(default="auto", metadata=key(doc="auto | cpu | cuda | cuda:N"))
    amp: str = field(default="auto", metadata=key(choices=("auto", "bf16", "fp16", "off"),
                                                   doc="mixed precision on CUDA (always off on CPU)"))
    compile: str = field(default="off", metadata=key(
        choices=COMPILE_MODES, doc="torch.compile the model for the train step and evaluation: off, or the "
                                   "compile mode (reduce-overhead: CUDA graphs, CUDA only)"))
    channels_last: bool = field(default=False, metadata=key(
        doc="model and input batches in torch.channels_last memory format"))
    label_smoothing: float = 0.0
    steps_per_epoch: Optional[int] = field(default=None, metadata=key(doc="cap on steps (smoke tests)"))
    eval_steps: Optional[int] = field(default=None, metadata=key(doc="cap on evaluation batches (smoke tests)"))
    deterministic: bool = False
    resume: Optional[str] = field(default=None, metadata=key(
        choices=("auto",), doc="auto: continue the run folder's training state when it holds one, else start "
                               "afresh (one command line for torchrun --max-restarts); null: as --resume says"))
    dist_timeout: Optional[float] = field(default=None, metadata=key(
        doc="seconds a collective waits for the other processes before the run stops with an error naming it; "
            "null: the backend's default (30 min gloo, 10 min nccl)"))


@dataclass
class LogConfig:
    tensorboard: bool = True
    progress: Optional[bool] = field(default=None, metadata=key(doc="tqdm bars; null: when stderr is a TTY"))
    print_epochs: bool = field(default=True, metadata=key(doc="one summary line per epoch on stdout"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    shuffle: ShuffleConfig = field(default_factory=ShuffleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Config":
        """The defaults updated by `data` ({section: {key: value}}, e.g. a saved config: old key names are
        read under the new ones), checked."""
        cfg = cls()
        load_mapping(cfg, upgrade(data or {}))
        validate(cfg)
        return cfg

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return to_yaml(self)

    def get(self, dotted: str) -> Any:
        return get(self, dotted)


def upgrade(data: Any) -> Any:
    """A copy of the config mapping `data` under the current key names (RENAMED_KEYS), without removed keys
    (REMOVED_KEYS); anything that is not a mapping of sections is returned as it is (the engine rejects it).
    A file that holds both a key and its old name keeps the current one."""
    if not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    for dotted in REMOVED_KEYS:
        section, name = dotted.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    for old, new in RENAMED_KEYS.items():
        (section, old_name), (_, new_name) = old.split("."), new.split(".")
        values = out.get(section)
        if isinstance(values, dict) and old_name in values:
            value = values.pop(old_name)
            values.setdefault(new_name, value)
    return out


def validate(cfg: Config) -> None:
    """Cross-key and range checks, each naming its key."""
    def need(ok: bool, dotted: str, what: str) -> None:
        if not ok:
            raise ValueError(f"config key {dotted!r}: {what}, got {cfg.get(dotted)!r}")

    need(cfg.train.epochs >= 1, "train.epochs", "must be >= 1")
    need(cfg.data.batch_size >= 1, "data.batch_size", "must be >= 1")
    need(cfg.data.eval_batch_size is None or cfg.data.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")
    need(cfg.data.workers >= 0, "data.workers", "must be >= 0")
    need(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    need(cfg.optim.base_batch_size is None or cfg.optim.base_batch_size >= 1, "optim.base_batch_size", "must be >= 1")
    need(0 <= cfg.optim.momentum < 1, "optim.momentum", "must be in [0, 1)")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(cfg.optim.generator_weight_decay is None or cfg.optim.generator_weight_decay >= 0,
         "optim.generator_weight_decay", "must be >= 0 or null")
    need(cfg.optim.generator_lr_scale is None or cfg.optim.generator_lr_scale > 0,
         "optim.generator_lr_scale", "must be > 0 or null")
    need(not cfg.optim.nesterov or cfg.optim.momentum > 0, "optim.nesterov", "needs optim.momentum > 0")
    need(cfg.schedule.warmup_epochs >= 0, "schedule.warmup_epochs", "must be >= 0")
    need(0 <= cfg.schedule.min_lr_factor <= 1, "schedule.min_lr_factor", "must be in [0, 1]")
    shuffle_keys = {yaml_key(f): f.name for f in dataclasses.fields(cfg.shuffle)}
    for setting, rule in recipe_problems(**cfg.shuffle.recipe()).items():  # the schedule's own rules
        need(False, "shuffle." + next(k for k, name in shuffle_keys.items() if name == setting), rule)
    need(0 <= cfg.train.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
    need(cfg.train.steps_per_epoch is None or cfg.train.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1")
    need(cfg.train.eval_steps is None or cfg.train.eval_steps >= 1, "train.eval_steps", "must be >= 1")
    need(cfg.train.dist_timeout is None or cfg.train.dist_timeout > 0, "train.dist_timeout", "must be > 0 (seconds)")
    dev = cfg.train.device
    need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), "train.device",
         "must be auto, cpu, cuda or cuda:N")
    need(not (cfg.train.compile == "reduce-overhead" and dev == "cpu"), "train.compile",
         "reduce-overhead (CUDA graphs) needs a CUDA device (train.device is cpu); use default or max-autotune")
    need(cfg.model.factors is None or len(cfg.model.factors) == 2, "model.factors", "must be two integers [n1, n2]")


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Apply `section.key=value` strings (values read as YAML scalars, see `typed_yaml.load_overrides`), then
    check the whole config."""
    load_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any; old key names read under the new ones), then the overrides."""
    cfg = Config()
    if path is not None:
        data = read_yaml(path)
        try:
            cfg = Config.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return apply_overrides(cfg, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, cfg.to_yaml())
