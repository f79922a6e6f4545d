"""Checkpoints: weights in safetensors, training state in a torch file, both written atomically, and the
compatibility rules for loading a state dict into a model (`state_dict_mismatch`,
`load_compatible_state_dict`: a fixed-shuffle checkpoint upgraded to a learned or dynamic model).

A checkpoint named `last` is two files in the run folder:

* `last.safetensors`: the model's state_dict (contiguous CPU clones, so tied tensors save fine), with
  metadata `epoch`, `model_config` (JSON: the `create_model` arguments, enough to rebuild the model
  from this one file) and `config` (JSON: the resolved training config).
* `last.state.pt`: optimizer, GradScaler, RNG states (python, numpy, torch, cuda), the epoch and the
  step (the lr is a function of the step), the best top-1 so far, the per-epoch log rows, and the
  config. Loaded with
  `torch.load(weights_only=True)`: only tensors and plain containers, no pickled code.

Both files are serialised in memory, written to temporary names, flushed and fsynced, and only then
renamed one after the other: a crash or a full disk while writing leaves the previous pair in place (and
no temporary file), and the shared `epoch` detects a pair mismatched by a crash between the two renames.
Writing from Python (not from safetensors' or torch's own file writers, which turn a failed write into
an error without errno or path) makes a full disk an `OSError` (ENOSPC) that names the file.
"""
from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from .layers.sds import named_shuffle_layers
from .models.registry import model_from_config
from .utils import atomic_open, atomic_write_bytes, flush_to_disk

__all__ = ["CheckpointError", "save_weights", "save_checkpoint", "load_weights", "load_state", "load_checkpoint",
           "load_model_weights", "build_model_from_checkpoint", "state_dict_mismatch", "load_compatible_state_dict",
           "upgrade_state_dict", "upgrade_model_config", "RENAMED_TENSORS", "RENAMED_LAYER_OPTIONS",
           "MERGED_HEADS"]

# Names that changed after checkpoints were written with the old ones. A file is read under the new names
# (its format is kept, not an old Python name): the last component of a tensor's key, and the layer options
# in the `model_config` metadata. A StaticDynamicShuffle's learned mixing was called its "static" part.
RENAMED_TENSORS = {"static_u": "mixing_u", "static_v": "mixing_v"}
RENAMED_LAYER_OPTIONS = {"confidence": "initial_confidence"}
# A generator once had a head per factor; its one head holds their rows, A's first (`head_a` + `head_b`).
MERGED_HEADS = ("head_a", "head_b", "head")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, or not what it should be (the message names the file)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bare model's state_dict as contiguous CPU clones (safetensors refuses tensors that share
    storage: tied weights, views)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}


def model_config_of(model: nn.Module) -> dict | None:
    cfg = getattr(unwrap(model), "config", None)
    return dict(cfg) if isinstance(cfg, dict) else None


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write the model's weights to `path` atomically (safetensors)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, _safetensors_bytes(model, meta))


def _safetensors_bytes(model: nn.Module, metadata: dict[str, str]) -> bytes:
    return safetensors_save(cpu_state_dict(model), metadata=metadata)


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's state as plain values, so the file loads with weights_only=True
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, name: str, model: nn.Module, state: dict, config: dict | None = None) -> None:
    """Write `<name>.safetensors` and `<name>.state.pt` into `run_dir`, each atomically, renamed together.

    `state` must hold `epoch`; `config` (the training config as a dict) goes into both files.
    """
    run_dir = Path(run_dir)
    weights, state_file = run_dir / f"{name}.safetensors", run_dir / f"{name}.state.pt"
    metadata = {"epoch": str(int(state["epoch"])), "format": "dynshuffle-checkpoint-1"}
    model_cfg = model_config_of(model)
    if model_cfg is not None:
        metadata["model_config"] = json.dumps(model_cfg)
    if config is not None:
        metadata["config"] = json.dumps(config)
    weights_bytes = _safetensors_bytes(model, metadata)
    state_bytes = _torch_bytes({**state, "config": config, "model_config": model_cfg})
    # Both temporary files are on disk before either rename: a crash or a full disk leaves the old pair.
    # (Nested, not side by side, so that a failed write is named by the one context it passes through.)
    with atomic_open(weights, "wb") as weights_fh:
        weights_fh.write(weights_bytes)
        flush_to_disk(weights_fh)
        with atomic_open(state_file, "wb") as state_fh:
            state_fh.write(state_bytes)
            flush_to_disk(state_fh)


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, state) paths for a run folder, a `.safetensors` file, or a `.state.pt` file."""
    path = Path(path)
    if not path.exists() and not path.name.endswith((".safetensors", ".state.pt")):
        raise FileNotFoundError(f"not found: {path}")
    if path.is_dir():
        path = path / "last.safetensors"
    if path.name.endswith(".state.pt"):
        return path.with_name(path.name[: -len(".state.pt")] + ".safetensors"), path
    if path.suffix == ".safetensors":
        return path, path.with_name(path.name[: -len(".safetensors")] + ".state.pt")
    raise CheckpointError(f"{path}: expected a run folder, a .safetensors or a .state.pt file")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of a safetensors checkpoint; metadata JSON values decoded, renamed tensors and
    layer options under their current names (RENAMED_TENSORS, RENAMED_LAYER_OPTIONS)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for bad headers and short files
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated or corrupt?): {err}") from None
    decoded: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            decoded[k] = json.loads(v) if k in ("model_config", "config") else v
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: metadata {k!r} is not valid JSON") from None
    if isinstance(decoded.get("model_config"), dict):
        decoded["model_config"] = upgrade_model_config(decoded["model_config"])
    return upgrade_state_dict(tensors), decoded


def upgrade_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the tensors of RENAMED_TENSORS under their current names, and a generator's two heads of
    an earlier version as its one head (MERGED_HEADS); other keys unchanged."""
    out = {}
    for key, value in state.items():
        head, dot, last = key.rpartition(".")
        out[head + dot + RENAMED_TENSORS[last] if last in RENAMED_TENSORS else key] = value
    old_a, old_b, merged = MERGED_HEADS
    for key in list(out):
        module, _, param = key.rpartition(".")
        parent, dot, name = module.rpartition(".")
        other = f"{parent}{dot}{old_b}.{param}"
        if name == old_a and other in out:
            out[f"{parent}{dot}{merged}.{param}"] = torch.cat([out.pop(key), out.pop(other)])
    return out


def upgrade_model_config(config: dict) -> dict:
    """A saved `model_config` under current names: renamed layer options, `factors` as a tuple (JSON wrote a
    list)."""
    config = dict(config)
    options = config.get("layer_options")
    if isinstance(options, dict):
        config["layer_options"] = {RENAMED_LAYER_OPTIONS.get(k, k): v for k, v in options.items()}
    if isinstance(config.get("factors"), list):
        config["factors"] = tuple(config["factors"])
    return config


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, wrong pickle...
        raise CheckpointError(f"{path}: not a readable training state (truncated or corrupt?): {err}") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(f"{path}: not a dynshuffle training state (no 'epoch')")
    return state


def load_checkpoint(path: str | Path, with_state: bool = True) -> tuple[dict, dict, dict | None]:
    """(state_dict, metadata, state or None) of the checkpoint at `path` (run folder, .safetensors or .state.pt).

    Raises FileNotFoundError when a file is missing and CheckpointError (a ValueError) naming the file
    when one is corrupt or the pair does not belong together.
    """
    weights_path, state_path = checkpoint_files(path)
    tensors, meta = load_weights(weights_path)
    state = None
    if with_state:
        state = load_state(state_path)
        if "epoch" in meta and str(state["epoch"]) != meta["epoch"]:
            raise CheckpointError(f"{weights_path} (epoch {meta['epoch']}) and {state_path} "
                                  f"(epoch {state['epoch']}) are not from the same save")
    return tensors, meta, state


def load_model_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Copy `tensors` into `model`, with a clear error naming `source` on missing/unexpected keys or shapes."""
    target = unwrap(model)
    problems = state_dict_mismatch(target, tensors)
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model ({problems})")
    target.load_state_dict(tensors)


def build_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model recorded in a checkpoint's metadata and load its weights; returns (model, metadata)."""
    weights_path, _ = checkpoint_files(path)
    tensors, meta = load_weights(weights_path)
    model_cfg = meta.get("model_config")
    if not model_cfg:
        raise CheckpointError(f"{weights_path}: no model_config in the metadata; cannot rebuild the model")
    model = model_from_config(model_cfg)
    load_model_weights(model, tensors, weights_path)
    return model.to(device).eval(), meta


# ------------------------------------------------------------------------------------- compatibility

def shuffle_layer_prefixes(model: nn.Module) -> list[str]:
    """`name.` of every shuffle layer of `model` (`layers.sds.named_shuffle_layers`: the shuffle modules and
    the StaticDynamicShuffle layers)."""
    return [name + "." for name, _ in named_shuffle_layers(model) if name]


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], allow_missing_shuffle: bool = False) -> str:
    """Why `state` does not fit `model` (missing / unexpected keys, shape mismatches), or "" when it fits.

    `allow_missing_shuffle`: tensors under a shuffle layer (a DynamicShuffle, LearnedShuffle or
    StaticDynamicShuffle) may be absent (a fixed-shuffle checkpoint loaded into a dynamic model).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if allow_missing_shuffle:
        prefixes = tuple(shuffle_layer_prefixes(model))
        missing = [k for k in missing if not k.startswith(prefixes)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        what = "missing keys (not part of a shuffle module)" if allow_missing_shuffle else "missing keys"
        problems.append(f"{what}: {short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {short_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {short_list(mismatched)}")
    return "; ".join(problems)


def load_compatible_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load `state_dict` into `model`, allowing only the model's shuffle-module tensors to be missing.

    This is how a fixed-shuffle checkpoint becomes the starting point of a learned or dynamic model of the
    same architecture: every convolution, BatchNorm and classifier tensor must match by name and shape;
    the tensors under a DynamicShuffle / LearnedShuffle / StaticDynamicShuffle (generator, logits,
    static factors) may be absent and then keep their fresh initialisation, which makes the module
    start as the fixed shuffle. Any other missing key, any unexpected key, or a shape mismatch raises
    ValueError naming the keys. A `module.` prefix (DataParallel/DDP) on every key is removed, and tensors
    saved under an earlier name are read under the current one (RENAMED_TENSORS).
    """
    state = upgrade_state_dict(state_dict)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    problems = state_dict_mismatch(model, state, allow_missing_shuffle=True)
    if problems:
        raise ValueError("state dict does not fit the model; " + problems)
    model.load_state_dict(state, strict=False)
    return model


def short_list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
