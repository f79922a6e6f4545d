"""Export a model's inference graph to ONNX, checked and verified before it replaces anything.

What is exported is the fused inference form (`layers.fused.fuse_for_inference`, a copy): per shuffle
module one pooling, two GEMMs (BatchNorm folded into the first, one head for A and B), one argmax, the
two sorts of the branch-free binarization (`functional.ranked_columns`), two table gathers that
compose the index, and one Gather of whole rows of the (N·C, H·W) view (`functional.permute_channels`):
about 25 nodes, with no data-dependent control flow, so both exporters trace it as it runs eagerly. No
soft matrix, no multiply-add for the shuffle itself.

Why the TorchScript exporter (`exporter="torchscript"`, the default):
- It is several times faster and writes smaller files than the torch.export-based one
  (`exporter="dynamo"`; docs/performance.md, "ONNX export", has the measurements). The legacy exporter is
  deprecated upstream, so `exporter="dynamo"` is kept working as the way forward.
- The sample input has batch 2, never 1: the gather in `permute_channels` has a special case for a
  single index row, and a trace with batch 1 would freeze it. The batch axis is then declared dynamic.

The file is written to a temporary name beside `out_path`, checked with `onnx.checker` (full check,
shape inference included), compared against PyTorch with onnxruntime at two batch sizes (when
onnxruntime is installed), and only then renamed over `out_path`.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dynshuffle import __version__
from dynshuffle.checkpoints import build_model_from_checkpoint
from dynshuffle.data.registry import get_dataset_spec
from dynshuffle.layers.fused import fuse_for_inference
from dynshuffle.layers.modes import deploy_mode
from dynshuffle.models.blocks import STEM_INPUT_SIZE
from dynshuffle.profiling.timing import device_of, time_pair
from dynshuffle.utils import arg, atomic_path

__all__ = ["export_onnx", "export_onnx_report", "verify_onnx", "benchmark_onnx", "ExportError",
           "ExportResult", "DEFAULT_OPSET", "check_out_path", "data_metadata"]

# Opset 17 for the TorchScript exporter (every onnxruntime since 1.14 runs it); the torch.export-based
# exporter emits opset 18 natively and its down-conversion to 17 fails on this graph (Reduce* axes).
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# A trace at batch 1 would bake in the single-row gather special case (see the module docstring).
TRACE_BATCH = 2
VERIFY_BATCHES = (1, 3)
VERIFY_TOLERANCE = 1e-4


class ExportError(ValueError):
    """The export failed a check (checker, or onnxruntime disagreeing with PyTorch); nothing was written."""


@dataclass
class ExportResult:
    """What `export_onnx_report` did: the file, its size, and the verification it passed."""

    path: Path
    size_bytes: int
    input_shape: tuple[int, int, int, int]
    opset: int
    exporter: str
    seconds: float
    max_abs_diff: float | None = None  # onnxruntime vs PyTorch; None when onnxruntime is missing
    verified_batches: tuple[int, ...] = ()
    metadata: dict = field(default_factory=dict)


def check_out_path(out_path: str | os.PathLike, force: bool) -> Path:
    """Refuse bad output paths before any work is done, so a failure never leaves a partial file."""
    out = Path(out_path)
    parent = out.parent
    if not parent.exists():
        raise FileNotFoundError(f"output folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise NotADirectoryError(f"output folder {parent} is not a folder")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give the path of the .onnx file to write")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass {arg('force=True', '--force')} to overwrite it")
    return out




def data_metadata(checkpoint_meta: dict) -> dict:
    """The preprocessing a deployment must repeat, from a checkpoint's training config (when it names its
    dataset): {"dataset", "mean", "std"} with pixel values in [0, 1] normalised as (x - mean) / std."""
    name = ((checkpoint_meta.get("config") or {}).get("data") or {}).get("name")
    if not name:
        return {}
    try:
        spec = get_dataset_spec(name)
    except ValueError:
        return {"dataset": str(name)}
    return {"dataset": spec.name, "mean": list(spec.mean), "std": list(spec.std)}


def _load(model_or_path) -> tuple[nn.Module, dict]:
    if isinstance(model_or_path, nn.Module):
        return model_or_path, {}
    return build_model_from_checkpoint(model_or_path, "cpu")


def _input_shape(model: nn.Module, input_size: int | None) -> tuple[int, int, int, int]:
    """(TRACE_BATCH, C, S, S): S from the argument, else from the model's stem (model.config)."""
    config = getattr(model, "config", None) or {}
    in_channels = int(config.get("in_channels") or 3)
    if input_size is None:
        input_size = STEM_INPUT_SIZE.get(config.get("stem"))
        if input_size is None:
            raise ValueError("cannot tell the input size of this model (no model.config['stem']); "
                             "pass input_size (--input-size)")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input size must be a positive integer, got {input_size!r}")
    return TRACE_BATCH, in_channels, input_size, input_size


def _export_graph(model: nn.Module, sample: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    with warnings.catch_warnings():
        # TracerWarnings flag Python branches on shapes (input checks, the single-row gather case the
        # batch-2 sample avoids); the legacy exporter announces its deprecation. Neither is actionable.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        if exporter == "torchscript":
            torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
        elif exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(model, (sample,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: batch},), optimize=True, verbose=False,
                                        external_data=False)
            program.save(str(path))
        else:
            raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")


def _add_metadata(path: Path, metadata: dict) -> int:
    """Record where the graph came from in the ONNX file's metadata_props (strings); returns its opset."""
    import onnx  # optional (the export extra)

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def ort_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort  # optional (the export extra)

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # onnxruntime's worker threads busy-wait between runs by default; timed alternately with PyTorch
    # on the same cores, that spinning starves PyTorch's threads (docs/performance.md, "ONNX export").
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # constant-folding notices about CastLike are noise
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...],
                batches=VERIFY_BATCHES, tolerance: float = VERIFY_TOLERANCE, seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| over random inputs at each batch size; ExportError above `tolerance`.

    The tolerance is absolute for logits up to 1 in magnitude and relative beyond (float32 rounding of
    large logits). The model runs its inference path (eval, exact permutations) on its own device.
    """
    session = ort_session(path)
    g = torch.Generator().manual_seed(seed)
    device = device_of(model)
    worst = 0.0
    with deploy_mode(model), torch.no_grad():
        for b in batches:
            x = torch.randn((b, *input_shape[1:]), generator=g)
            ref = model(x.to(device)).float().cpu()
            out = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
            if out.shape != ref.shape:
                raise ExportError(f"onnxruntime output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)} "
                                  f"at batch {b}")
            diff = float((out - ref).abs().max())
            scale = max(1.0, float(ref.abs().max()))
            if not diff <= tolerance * scale:
                raise ExportError(f"onnxruntime and PyTorch disagree at batch {b}: max abs difference {diff:.3g} "
                                  f"(tolerance {tolerance * scale:.3g})")
            worst = max(worst, diff)
    return worst


def export_onnx_report(model_or_checkpoint_path, out_path: str | os.PathLike, input_size: int | None = None,
                       opset: int | None = None, force: bool = False, *, exporter: str = "torchscript",
                       verify: bool = True, metadata: dict | None = None) -> ExportResult:
    """`export_onnx`, returning an `ExportResult` (size, exporter, verification) instead of the path.

    `metadata`: extra entries for the ONNX file's metadata_props (e.g. the checkpoint a model came from).
    """
    out = check_out_path(out_path, force)
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset must be an integer >= 7, got {opset!r}")
    model, meta = _load(model_or_checkpoint_path)
    shape = _input_shape(model, input_size)
    import onnx  # optional (the export extra): a missing one fails here, before any file exists

    extra_metadata, config = metadata, getattr(model, "config", None)
    metadata = {"producer": f"dynshuffle {__version__}", "input_shape": ["batch", *shape[1:]],
                "input_normalised": "float32 pixels in [0, 1], then (x - mean) / std of the training data",
                "shuffle_path": "exact permutation (hard)"}
    if isinstance(config, dict):
        metadata["model_config"] = config
    if meta.get("epoch") is not None:
        metadata["epoch"] = str(meta["epoch"])
    if not isinstance(model_or_checkpoint_path, nn.Module):
        metadata["checkpoint"] = str(model_or_checkpoint_path)
        metadata.update(data_metadata(meta))
    metadata.update(extra_metadata or {})

    start = time.perf_counter()
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device_of(model))
    max_diff, batches = None, ()
    with atomic_path(out) as tmp:
        # The exported graph is the fused inference form (BatchNorm folded, one head and one pair of sorts
        # per shuffle); it is verified below against the unfused model.
        deployed = fuse_for_inference(model)
        with deploy_mode(deployed):
            _export_graph(deployed, sample, tmp, opset, exporter)
        opset = _add_metadata(tmp, metadata)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as err:
            raise ExportError(f"the exported graph fails onnx.checker: {err}") from None
        if verify:
            try:
                import onnxruntime  # noqa: F401  (optional: without it the graph is only checked)
            except ImportError:
                pass
            else:
                max_diff, batches = verify_onnx(model, tmp, shape), VERIFY_BATCHES
    return ExportResult(out, out.stat().st_size, shape, opset, exporter, time.perf_counter() - start,
                        max_diff, batches, metadata)


def export_onnx(model_or_checkpoint_path, out_path: str | os.PathLike, input_size: int | None = None,
                opset: int | None = None, force: bool = False, *, exporter: str = "torchscript",
                verify: bool = True) -> Path:
    """Export the inference graph of a model (or of a checkpoint) to ONNX; returns the written path.

    Args:
        model_or_checkpoint_path: an `nn.Module` (exported on its own device, left in the mode it was in)
            or a checkpoint (run folder, `.safetensors` or `.state.pt`), rebuilt from its metadata.
        out_path: the `.onnx` file. Its folder must exist; an existing file is replaced only with `force`.
        input_size: the square input's side; default the model's stem size (cifar 32, tiny 64, imagenet 224).
        opset: ONNX opset (default 17 with the TorchScript exporter, 18 with dynamo).
        exporter: "torchscript" (default: fast, small files) or "dynamo" (torch.export based).
        verify: compare onnxruntime with PyTorch at batch 1 and 3 before writing (needs onnxruntime).

    The graph has one input `images` (batch, C, S, S) float32, already normalised, and one output
    `logits` (batch, classes); the batch axis is dynamic. Raises FileNotFoundError / NotADirectoryError /
    IsADirectoryError / FileExistsError for bad output paths (before any work), CheckpointError (a
    ValueError) for a checkpoint that does not fit its model, ExportError (a ValueError) when the graph
    fails the checker or disagrees with PyTorch. In every failure case `out_path` is left untouched.
    """
    return export_onnx_report(model_or_checkpoint_path, out_path, input_size, opset, force,
                              exporter=exporter, verify=verify).path


def benchmark_onnx(model: nn.Module, path: str | os.PathLike, input_size: int, batches=(1, 32),
                   repeats: int = 15, threads: int | None = None) -> list[dict]:
    """Median latency of onnxruntime (CPU) and of the PyTorch model (eager, its inference path) per batch.

    The two are timed alternately in the same loop (`profiling.timing.time_pair`) so that load from
    other processes hits both alike, each with `threads` threads (default torch's current count).
    On a machine shared with other jobs use threads=1: OpenMP threads that wait for a preempted peer
    slow PyTorch down by orders of magnitude there (docs/deploy.md), which says nothing about the model. Returns rows {"batch", "threads", "onnxruntime_ms", "pytorch_ms", "ratio"} (ratio =
    onnxruntime / PyTorch). Indicative only on a shared machine.
    """
    previous = torch.get_num_threads()
    threads = threads or previous
    session = ort_session(path, threads)
    in_channels = int((getattr(model, "config", None) or {}).get("in_channels") or 3)
    rows = []
    torch.set_num_threads(threads)
    try:
        with deploy_mode(model), torch.no_grad():
            for b in batches:
                x = torch.randn(b, in_channels, input_size, input_size)
                feed = {INPUT_NAME: x.numpy()}
                ort_s, pt_s = time_pair(lambda: session.run(None, feed), lambda: model(x), torch.device("cpu"),
                                        repeats=repeats)
                rows.append({"batch": b, "threads": threads, "onnxruntime_ms": ort_s * 1e3,
                             "pytorch_ms": pt_s * 1e3, "ratio": ort_s / pt_s})
    finally:
        torch.set_num_threads(previous)
    return rows
