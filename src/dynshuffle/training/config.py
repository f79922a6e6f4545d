"""Training configuration: one dataclass per YAML section, strict loading, `--set key=value` overrides.

A recipe is a YAML file with the sections below. Every key has a default, so a file only needs the keys
it changes; the run folder keeps the *resolved* config (every key) so a run can be repeated exactly.
An unknown section or key, a wrong type, or a value outside a key's choices raises ValueError naming the
key (and the expected type), whether it comes from YAML or from `--set`.

    model:    name, shuffle, pointwise, stem, shuffle_groups, factors, hidden, temperature, share,
              confidence, relaxation, stats, head_init, diversity, sync_bn
    data:     name, root, download, batch_size (global, over all processes), eval_batch_size, workers, skip_corrupt
    optim:    name, lr, base_batch_size (lr is scaled by batch_size / base_batch_size), momentum, nesterov,
              weight_decay, exempt_norm_bias, grad_clip
    schedule: name (cosine | linear | step | constant), warmup_epochs, min_lr_factor, milestones, gamma
    shuffle:  lambda, explore_fraction, ste_fraction, temperature, final_temperature, noise, train_mode,
              eval_soft (the settings of dynshuffle.ShuffleSchedule)
    train:    epochs, seed, device, amp, label_smoothing, steps_per_epoch, eval_steps, deterministic, resume,
              dist_timeout
    log:      tensorboard, progress, print_epochs
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from dynshuffle.schedule import ShuffleRecipe


def _key(name: str | None = None, choices: tuple | None = None, doc: str = "") -> dict:
    """Field metadata: the YAML key when it differs from the attribute (e.g. `lambda`), allowed values."""
    meta: dict[str, Any] = {"doc": doc}
    if name:
        meta["key"] = name
    if choices:
        meta["choices"] = choices
    return meta


def _dataset_names() -> list[str]:
    """The names `data.name` accepts: those of the dynshuffle.data registry (looked up when a value is set)."""
    from dynshuffle.data import list_datasets

    return list_datasets()


@dataclass
class ModelConfig:
    name: str = field(default="shufflenet_v2_x0_5", metadata=_key(doc="registered model name"))
    shuffle: str = field(default="dynamic", metadata=_key(choices=("static", "learned", "dynamic", "none")))
    pointwise: str = field(default="conv", metadata=_key(choices=("conv", "sds")))
    stem: Optional[str] = field(default=None, metadata=_key(choices=("cifar", "tiny", "imagenet"),
                                                            doc="null: the dataset's stem"))
    shuffle_groups: Optional[int] = None
    factors: Optional[list[int]] = None
    hidden: Optional[int] = None
    temperature: float = 1.0
    share: bool = True
    confidence: Optional[float] = field(default=None, metadata=_key(
        doc="initial diagonal probability of the soft factors; null: the layer's default"))
    relaxation: Optional[str] = field(default=None, metadata=_key(
        choices=("softmax", "sinkhorn"), doc="null: the layer's default"))
    stats: Optional[str] = field(default=None, metadata=_key(
        choices=("mean", "mean_std"), doc="generator input; null: the layer's default"))
    head_init: Optional[float] = field(default=None, metadata=_key(
        doc="std of the generator heads' initial weights; null: the layer's default"))
    diversity: Optional[float] = field(default=None, metadata=_key(
        doc="weight of the batch-concentration term of dynamic layers; null: the layer's default"))
    sync_bn: bool = field(default=True, metadata=_key(doc="SyncBatchNorm under multi-GPU DDP (CUDA only)"))


@dataclass
class DataConfig:
    name: str = field(default="digits", metadata=_key(
        choices=lambda: _dataset_names(),
        doc="a dataset of the dynshuffle.data registry"))
    root: Optional[str] = None
    download: bool = False
    batch_size: int = field(default=128, metadata=_key(doc="global batch, split evenly over processes"))
    eval_batch_size: Optional[int] = field(default=None, metadata=_key(doc="per process; null: batch_size"))
    workers: int = 2
    skip_corrupt: bool = field(default=False, metadata=_key(
        doc="folder datasets: an image that does not decode is replaced by the next one and counted (log.csv "
            "skipped_corrupt); false: the run stops with an error naming the file"))


@dataclass
class OptimConfig:
    name: str = field(default="sgd", metadata=_key(choices=("sgd",)))
    lr: float = 0.1
    base_batch_size: Optional[int] = field(default=128, metadata=_key(
        doc="peak lr = lr * batch_size / base_batch_size; null: no scaling"))
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    exempt_norm_bias: bool = field(default=True, metadata=_key(
        doc="no weight decay on norm weights and on biases (the shuffle generator's logit biases included)"))
    grad_clip: Optional[float] = None


@dataclass
class ScheduleConfig:
    name: str = field(default="cosine", metadata=_key(choices=("cosine", "linear", "step", "constant")))
    warmup_epochs: float = 0.0
    min_lr_factor: float = field(default=0.0, metadata=_key(doc="final lr as a fraction of the peak"))
    milestones: Optional[list[int]] = field(default=None, metadata=_key(
        doc="epochs where the step schedule multiplies lr by gamma; null: 50% and 75% of epochs"))
    gamma: float = 0.1


_RECIPE = ShuffleRecipe()  # the schedule's defaults are the config's: one home for the recipe


@dataclass
class ShuffleConfig:
    """`dynshuffle.ShuffleSchedule`'s settings (see dynshuffle/schedule.py) plus the evaluation switch."""

    lambda_: float = field(default=_RECIPE.lambda_, metadata=_key("lambda", doc="orthogonality penalty weight"))
    explore_fraction: float = field(default=_RECIPE.explore_fraction, metadata=_key(
        doc="first fraction of the steps trained with no penalty; then lambda ramps up until the ste phase"))
    ste_fraction: float = field(default=_RECIPE.ste_fraction, metadata=_key(
        doc="last fraction of the steps trained with the straight-through exact permutation"))
    temperature: Optional[float] = field(default=_RECIPE.temperature, metadata=_key(
        doc="scheduled temperature at step 0; null: the modules keep model.temperature"))
    final_temperature: Optional[float] = field(default=_RECIPE.final_temperature, metadata=_key(
        doc="temperature at the end of the soft phase (geometric); null: constant"))
    noise: float = field(default=_RECIPE.noise, metadata=_key(
        doc="Gumbel noise scale on the logits, decaying to 0 at the end of the soft phase"))
    train_mode: str = field(default=_RECIPE.train_mode, metadata=_key(
        choices=("soft", "ste"), doc="mode before the straight-through phase"))
    eval_soft: bool = field(default=True, metadata=_key(doc="also evaluate with the soft matrices"))

    def recipe(self) -> dict:
        """The keyword arguments of `ShuffleSchedule`."""
        return {"lambda_": self.lambda_, "explore_fraction": self.explore_fraction,
                "ste_fraction": self.ste_fraction, "temperature": self.temperature,
                "final_temperature": self.final_temperature, "noise": self.noise, "train_mode": self.train_mode}


@dataclass
class TrainConfig:
    epochs: int = 200
    seed: int = 0
    device: str = field(default="auto", metadata=_key(doc="auto | cpu | cuda | cuda:N"))
    amp: str = field(default="auto", metadata=_key(choices=("auto", "bf16", "fp16", "off"),
                                                   doc="mixed precision on CUDA (always off on CPU)"))
    label_smoothing: float = 0.0
    steps_per_epoch: Optional[int] = field(default=None, metadata=_key(doc="cap on steps (smoke tests)"))
    eval_steps: Optional[int] = field(default=None, metadata=_key(doc="cap on evaluation batches (smoke tests)"))
    deterministic: bool = False
    resume: Optional[str] = field(default=None, metadata=_key(
        choices=("auto",), doc="auto: continue the run folder's training state when it holds one, else start "
                               "afresh (one command line for torchrun --max-restarts); null: as --resume says"))
    dist_timeout: Optional[float] = field(default=None, metadata=_key(
        doc="seconds a collective waits for the other processes before the run stops with an error naming it; "
            "null: the backend's default (30 min gloo, 10 min nccl)"))


@dataclass
class LogConfig:
    tensorboard: bool = True
    progress: Optional[bool] = field(default=None, metadata=_key(doc="tqdm bars; null: when stderr is a TTY"))
    print_epochs: bool = field(default=True, metadata=_key(doc="one summary line per epoch on stdout"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    shuffle: ShuffleConfig = field(default_factory=ShuffleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    # --- conversions -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict | None) -> "Config":
        cfg = cls()
        update(cfg, data or {})
        return cfg

    def to_dict(self) -> dict:
        return {sec.name: {_yaml_key(f): _plain(getattr(getattr(self, sec.name), f.name))
                           for f in dataclasses.fields(getattr(self, sec.name))}
                for sec in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def get(self, dotted: str) -> Any:
        section, f = _lookup(self, dotted)
        return getattr(section, f.name)


# --- schema helpers ------------------------------------------------------------------------------------

def _yaml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _fields_by_key(section: Any) -> dict[str, dataclasses.Field]:
    return {_yaml_key(f): f for f in dataclasses.fields(section)}


def _hints(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def _lookup(cfg: Config, dotted: str) -> tuple[Any, dataclasses.Field]:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"config key {dotted!r}: expected 'section.key', e.g. 'optim.lr' "
                         f"(sections: {', '.join(f.name for f in dataclasses.fields(cfg))})")
    sec_name, key = parts
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    if sec_name not in sections:
        raise ValueError(f"unknown config section {sec_name!r}{_suggest(sec_name, sections)} "
                         f"(sections: {', '.join(sections)})")
    section = getattr(cfg, sec_name)
    fields = _fields_by_key(section)
    if key not in fields:
        raise ValueError(f"unknown config key '{sec_name}.{key}'{_suggest(key, fields, sec_name + '.')} "
                         f"(keys of {sec_name}: {', '.join(fields)})")
    return section, fields[key]


def _suggest(word: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(dotted: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float, list/tuple -> list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        try:
            return _coerce(dotted, inner, value)
        except ValueError:
            raise ValueError(f"config key {dotted!r}: expected {_type_name(tp)}, got {value!r} "
                             f"({type(value).__name__})") from None
    bad = ValueError(f"config key {dotted!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(dotted, inner, v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {tp!r} for {dotted!r}")


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set one key (`section.key`) with type and choice checks."""
    section, f = _lookup(cfg, dotted)
    value = _coerce(dotted, _hints(section)[f.name], value)
    choices = f.metadata.get("choices")
    if callable(choices):  # looked up when used, e.g. the data registry's names
        choices = tuple(choices())
    if choices and value is not None and value not in choices:
        raise ValueError(f"config key {dotted!r}: {value!r} is not one of {', '.join(map(str, choices))}")
    setattr(section, f.name, value)


# Keys of earlier versions, skipped when a saved config is loaded (so old run folders still resume).
REMOVED_KEYS = {"train.debug_dump_weights"}


def update(cfg: Config, data: dict) -> Config:
    """Apply a nested mapping {section: {key: value}} (a parsed YAML file) onto `cfg`."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(data).__name__}")
    for sec_name, values in data.items():
        sections = [f.name for f in dataclasses.fields(cfg)]
        if sec_name not in sections:
            raise ValueError(f"unknown config section {sec_name!r}{_suggest(str(sec_name), sections)} "
                             f"(sections: {', '.join(sections)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"config section {sec_name!r}: expected a mapping of keys, got {values!r}")
        for key, value in values.items():
            if f"{sec_name}.{key}" not in REMOVED_KEYS:
                set_value(cfg, f"{sec_name}.{key}", value)
    validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value, e.g. optim.lr=0.1")
    key, raw = text.split("=", 1)
    return key.strip(), raw.strip()


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Apply `section.key=value` strings. Values are read as YAML scalars (`0.1`, `true`, `null`,
    `[2, 3]`); a string-typed key takes the text as it is."""
    for text in overrides:
        dotted, raw = parse_override(text)
        section, f = _lookup(cfg, dotted)
        tp = _hints(section)[f.name]
        if raw.lower() in ("null", "none", "~"):
            value: Any = None
        elif tp is str or tp == Optional[str]:
            value = raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        set_value(cfg, dotted, value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-key and range checks, each naming its key."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ValueError(f"config key {key!r}: {what}, got {cfg.get(key)!r}")

    need(cfg.train.epochs >= 1, "train.epochs", "must be >= 1")
    need(cfg.data.batch_size >= 1, "data.batch_size", "must be >= 1")
    need(cfg.data.eval_batch_size is None or cfg.data.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")
    need(cfg.data.workers >= 0, "data.workers", "must be >= 0")
    need(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    need(cfg.optim.base_batch_size is None or cfg.optim.base_batch_size >= 1, "optim.base_batch_size", "must be >= 1")
    need(0 <= cfg.optim.momentum < 1, "optim.momentum", "must be in [0, 1)")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(not cfg.optim.nesterov or cfg.optim.momentum > 0, "optim.nesterov", "needs optim.momentum > 0")
    need(cfg.schedule.warmup_epochs >= 0, "schedule.warmup_epochs", "must be >= 0")
    need(0 <= cfg.schedule.min_lr_factor <= 1, "schedule.min_lr_factor", "must be in [0, 1]")
    need(cfg.shuffle.lambda_ >= 0, "shuffle.lambda", "must be >= 0")
    need(0 <= cfg.shuffle.explore_fraction <= 1, "shuffle.explore_fraction", "must be in [0, 1]")
    need(0 <= cfg.shuffle.ste_fraction <= 1, "shuffle.ste_fraction", "must be in [0, 1]")
    need(cfg.shuffle.explore_fraction + cfg.shuffle.ste_fraction <= 1, "shuffle.explore_fraction",
         "plus shuffle.ste_fraction must be <= 1")
    need(cfg.shuffle.temperature is None or cfg.shuffle.temperature > 0, "shuffle.temperature", "must be > 0")
    need(cfg.shuffle.final_temperature is None or cfg.shuffle.final_temperature > 0, "shuffle.final_temperature",
         "must be > 0")
    need(cfg.shuffle.noise >= 0, "shuffle.noise", "must be >= 0")
    need(0 <= cfg.train.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
    need(cfg.train.steps_per_epoch is None or cfg.train.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1")
    need(cfg.train.eval_steps is None or cfg.train.eval_steps >= 1, "train.eval_steps", "must be >= 1")
    need(cfg.train.dist_timeout is None or cfg.train.dist_timeout > 0, "train.dist_timeout", "must be > 0 (seconds)")
    dev = cfg.train.device
    need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), "train.device",
         "must be auto, cpu, cuda or cuda:N")
    need(cfg.model.factors is None or len(cfg.model.factors) == 2, "model.factors", "must be two integers [n1, n2]")


# --- files ------------------------------------------------------------------------------------------------

def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then the `key=value` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(f"{where}: not valid YAML ({problem})") from None
        try:
            update(cfg, data or {})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return apply_overrides(cfg, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    from dynshuffle.utils import atomic_write_text

    atomic_write_text(path, cfg.to_yaml())


def diff_configs(a: Config, b: Config) -> list[str]:
    """Keys whose values differ, as 'section.key: a -> b'."""
    out = []
    da, db = a.to_dict(), b.to_dict()
    for sec, values in da.items():
        for key, va in values.items():
            if db[sec][key] != va:
                out.append(f"{sec}.{key}: {va!r} -> {db[sec][key]!r}")
    return out
