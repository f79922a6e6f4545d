"""What a model costs: parameters, multiply-adds, FLOPs of a training forward, activation memory.

`profile(model, input_size)` measures one model (a `ProfileResult`); the `count_*` functions and
`peak_activation_bytes` measure one quantity each. Every measurement runs on a copy of the model, so
the caller's BatchNorm statistics and shuffle penalties are untouched. Tables are in `reporting`,
timings in `timing` / `benchmark`.

Definitions (all for one image unless stated):
- `params`: trainable and frozen parameters (buffers excluded).
- `macs`: multiply-adds counted the papers' way: convolutions, linear layers and the other matrix
  products (mm/bmm/einsum: the static part of a static-dynamic shuffle) of one forward in eval mode.
  A dynamic shuffle's inference path is a scatter, 0 multiply-adds; its generator's linears count as eval
  runs them (the inference form, `ShuffleModule.inference_form`: C·d + d·k·max(k, 16) per module for
  k = n1 + n2, the head writing A's and B's blocks of one score matrix in rows padded to 16 columns).
- `flops`: every floating-point operation of one training-mode forward: 2 per multiply-add of every
  convolution / matrix product (torch.utils.flop_counter, so the soft path's A·Z·Bᵀ products and the
  orthogonality penalty's Gram matrices are included), plus the elementwise and reduction work inside
  the shuffle layers (`layers.sds.named_shuffle_layers`: pooling, BatchNorm and activation of the
  generator, softmax, the penalty), counted by a dispatch mode: 5 per softmax element, 4 per BatchNorm
  element, 1 per element of any other arithmetic op (the largest operand), 0 for views, copies, gathers
  and concatenations. The main network's
  BatchNorm/ReLU/additions are not counted (the same in every variant, and not counted by the papers).
- `peak_activation_bytes`: bytes of the tensors autograd saves for backward in one training forward at
  the given batch (deduplicated by storage, parameters excluded): the activation memory that is live
  at the peak of a training step, when the backward starts.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from dynshuffle.layers.sds import named_shuffle_layers
from dynshuffle.models.registry import create_model

from .formatting import format_bytes, format_count
from .timing import device_of

__all__ = [
    "ProfileResult",
    "profile",
    "count_params",
    "count_macs",
    "count_conv_linear_macs",
    "count_flops",
    "peak_activation_bytes",
    "input_shape",
]


@dataclass
class ProfileResult:
    """The cost of one model at one input size (see the module docstring for the definitions)."""

    name: str
    input_size: tuple[int, int, int]
    batch: int
    params: int
    macs: int
    flops: int
    peak_activation_bytes: int
    shuffle: str | None = None
    pointwise: str | None = None
    stem: str | None = None

    def as_row(self) -> dict:
        """A flat dict of the raw numbers (for JSON and tables)."""
        row = asdict(self)
        row["input_size"] = "x".join(str(s) for s in self.input_size)
        return row

    def __str__(self) -> str:
        variant = ", ".join(f"{k}={v}" for k, v in (("shuffle", self.shuffle), ("pointwise", self.pointwise),
                                                   ("stem", self.stem)) if v is not None)
        return (f"{self.name}" + (f" ({variant})" if variant else "")
                + f" @ {'x'.join(map(str, self.input_size))}: params {format_count(self.params)}, "
                f"MACs {format_count(self.macs)}, train FLOPs {format_count(self.flops)}, "
                f"peak activations {format_bytes(self.peak_activation_bytes)} at batch {self.batch}")


def input_shape(input_size) -> tuple[int, int, int]:
    """(C, H, W) of an int side, an (H, W) or a (C, H, W) (3 channels unless given)."""
    if isinstance(input_size, int):
        shape = (3, input_size, input_size)
    else:
        shape = tuple(int(s) for s in input_size)
        if len(shape) == 2:
            shape = (3, *shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"input_size must be an int, (H, W) or (C, H, W) of positive sizes, got {input_size!r}")
    return shape


def _working_copy(model: nn.Module, device) -> nn.Module:
    """A private copy: a training-mode forward updates BatchNorm statistics and the shuffle modules'
    penalties, which the caller's model must not see (a copy starts without penalties)."""
    clone = copy.deepcopy(model)
    return clone.to(device) if device is not None else clone


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size, device=None) -> int:
    """Multiply-adds of one eval-mode forward of one image (convolutions and matrix products)."""
    shape = input_shape(input_size)
    m = _working_copy(model, device).eval()
    x = torch.randn(1, *shape, device=device_of(m))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    return counter.get_total_flops() // 2


def count_conv_linear_macs(model: nn.Module, input_size, device=None) -> int:
    """Multiply-adds of the nn.Conv2d and nn.Linear modules only (forward hooks, eval, one image).

    The classic counter, kept as a cross-check of `count_macs` (they agree on models whose only matrix
    products are convolutions and linear layers). A grouped convolution costs
    out_channels * (in_channels / groups) * kh * kw per output pixel.
    """
    shape = input_shape(input_size)
    m = _working_copy(model, device).eval()
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [mod.register_forward_hook(hook) for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            m(torch.randn(1, *shape, device=device_of(m)))
    finally:
        for h in handles:
            h.remove()
    return total


_NO_FLOP_OPS = frozenset("""
view _unsafe_view reshape _reshape_alias permute transpose t expand expand_as unsqueeze squeeze select
slice clone copy _to_copy detach alias as_strided contiguous index_select gather scatter scatter_add cat
stack split split_with_sizes chunk unbind empty empty_like empty_strided zeros zeros_like ones ones_like
arange eye full full_like new_zeros new_empty new_empty_strided new_ones new_full fill zero lift_fresh
lift_fresh_copy _local_scalar_dense index index_put repeat view_as flip roll one_hot _to_dtype
sym_size sym_stride sym_numel is_same_size set resize_ unfold narrow masked_fill where
""".split())
_WEIGHTS = {"_softmax": 5, "softmax": 5, "_log_softmax": 5, "log_softmax": 5,
            "native_batch_norm": 4, "_native_batch_norm_legit": 4, "_native_batch_norm_legit_no_training": 4,
            "_native_batch_norm_legit_functional": 4, "batch_norm": 4, "cudnn_batch_norm": 4}
_MATMUL_PACKETS = frozenset(flop_registry)


def _numel(obj) -> int:
    if isinstance(obj, Tensor):
        return obj.numel()
    if isinstance(obj, (list, tuple)):
        return max((_numel(o) for o in obj), default=0)
    return 0


class _ElementwiseCounter(TorchDispatchMode):
    """Counts elementwise/reduction work while `active` (inside a shuffle module's forward)."""

    def __init__(self):
        super().__init__()
        self.active = 0
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.active and func.overloadpacket not in _MATMUL_PACKETS:
            name = func.overloadpacket.__name__.rstrip("_") or func.overloadpacket.__name__
            if name not in _NO_FLOP_OPS:
                size = max(_numel(args), _numel(out))
                if name.startswith("native_batch_norm") or "batch_norm" in name:
                    size = _numel(args[0]) if args else size
                self.flops += _WEIGHTS.get(name, 1) * size
        return out


def count_flops(model: nn.Module, input_size, device=None) -> int:
    """FLOPs of one training-mode forward of one image (see the module docstring).

    Measured at batch 2 (training-mode BatchNorm needs more than one value per channel) and halved.
    """
    shape = input_shape(input_size)
    m = _working_copy(model, device).train()
    x = torch.randn(2, *shape, device=device_of(m))
    counter = _ElementwiseCounter()
    handles = []

    def enter(module, inputs):
        counter.active += 1

    def leave(module, inputs, output):
        counter.active -= 1

    for _, mod in named_shuffle_layers(m):
        handles.append(mod.register_forward_pre_hook(enter))
        handles.append(mod.register_forward_hook(leave))
    try:
        with FlopCounterMode(display=False) as matmuls, counter:
            m(x)
    finally:
        for h in handles:
            h.remove()
    return (matmuls.get_total_flops() + counter.flops) // 2


def peak_activation_bytes(model: nn.Module, input_size, batch: int = 8, device=None) -> int:
    """Bytes saved for backward by one training forward at `batch` (storages counted once, parameters
    and buffers excluded). A batch of 1 is measured at 2 and halved (BatchNorm needs two values)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    shape = input_shape(input_size)
    m = _working_copy(model, device).train()
    run_batch = max(batch, 2)
    dev = device_of(m)
    x = torch.randn(run_batch, *shape, device=dev)
    own = {t.untyped_storage().data_ptr() for t in list(m.parameters()) + list(m.buffers())}
    saved: dict[int, int] = {}
    # The graph keeps an index into `alive`, not the tensor: a pack hook that returns a saved *output*
    # itself makes a reference cycle (graph node -> tensor -> grad_fn) that Python's GC cannot see, and
    # every call would leak its activations. `alive` holds detached views (no grad_fn, same storage), so
    # storages stay allocated during the forward, as in real training, and no address is reused.
    alive: list[Tensor] = []

    def pack(t: Tensor) -> int:
        alive.append(t.detach())
        try:
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse, nested)
            return len(alive) - 1
        if ptr not in own:
            saved[ptr] = max(saved.get(ptr, 0), nbytes)
        return len(alive) - 1

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda i: alive[i]):
        out = m(x)
    del out
    alive.clear()
    total = sum(saved.values())
    return total if run_batch == batch else total * batch // run_batch


def profile(model: nn.Module | str, input_size=224, device=None, batch: int = 8, **model_kwargs) -> ProfileResult:
    """Parameters, multiply-adds, training FLOPs and activation memory of `model` at `input_size`.

    `model`: a module or a registry name (built with `model_kwargs`); `input_size`: int, (H, W) or
    (C, H, W); `device`: where to run the measuring forwards (default: where the model is);
    `batch`: the batch of the activation-memory measurement. The model itself is not modified
    (the measurements run on a copy).
    """
    if isinstance(model, str):
        model = create_model(model, **model_kwargs)
    elif model_kwargs:
        raise ValueError(f"model keyword arguments {sorted(model_kwargs)} need a model name, not a module")
    shape = input_shape(input_size)
    config = getattr(model, "config", None) or {}
    return ProfileResult(
        name=str(config.get("name", type(model).__name__)),
        input_size=shape,
        batch=batch,
        params=count_params(model),
        macs=count_macs(model, shape, device),
        flops=count_flops(model, shape, device),
        peak_activation_bytes=peak_activation_bytes(model, shape, batch, device),
        shuffle=config.get("shuffle"),
        pointwise=config.get("pointwise"),
        stem=config.get("stem"),
    )
