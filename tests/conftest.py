"""Fixtures shared by the test files (which mirror the package: tests/layers/test_dynamic.py tests
dynshuffle/layers/dynamic.py, and so on). Helpers are fixtures, not imports between test files."""
from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynshuffle.layers import functional as DF
from dynshuffle.layers.base import shuffle_modules
from dynshuffle.layers.dynamic import DynamicShuffle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread per test module: the suite's tensors are tiny, and on a machine shared with other
    jobs OpenMP threads waiting for a preempted peer slow every small op down severely."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root (configs/, docs/, benchmarks/)."""
    return ROOT


# ---------------------------------------------------------------------------------------------- layers

def _randomize_parameters(module, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


@pytest.fixture(scope="session")
def randomize():
    """`randomize(module, scale=3.0, seed=0)`: random weights for every parameter of `module` (a generator:
    permutations that differ per input and whose argmaxes collide often); returns the module."""
    return _randomize_parameters


@pytest.fixture(scope="session")
def random_generators():
    """`random_generators(model, scale=3.0, seed=0, size=8, calibrate=True)`: random weights for every
    shuffle module of `model`, then (calibrate) each generator's BatchNorm statistics measured on the pooled
    features it sees in eval mode on random `3 x size x size` images, as training would, so that inputs
    differ in their permutations. Two passes: the second sees the permutations the first pass's statistics
    produce upstream. Returns the model in eval mode."""
    from dynshuffle.inspection.stats import collect_inputs, require_layers

    def apply(model, scale=3.0, seed=0, size=8, calibrate=True):
        g = torch.Generator().manual_seed(seed)
        model.eval()
        with torch.no_grad():
            for module in shuffle_modules(model):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
            x = torch.randn(16, 3, size, size, generator=g)
            for _ in range(2 if calibrate and any(True for _ in shuffle_modules(model)) else 0):
                inputs = collect_inputs(model, x)
                for name, module in require_layers(model).items():
                    if isinstance(module, DynamicShuffle):
                        z = module.generator.reduce(inputs[name].mean((2, 3)))
                        module.generator.norm.running_mean.copy_(z.mean(0))
                        module.generator.norm.running_var.copy_(z.var(0) + 1e-6)
        return model

    return apply


@pytest.fixture(scope="session")
def initial_penalty():
    """`initial_penalty(n, confidence) -> float`: ‖AAᵀ − I‖² of the n x n matrix with 1/n + confidence (1 − 1/n)
    on the diagonal and the rest of each row spread evenly: the penalty of a fresh module's soft factor."""
    def penalty(n: int, confidence: float) -> float:
        if n == 1:
            return 0.0
        p = 1 / n + confidence * (1 - 1 / n)
        a = torch.full((n, n), (1 - p) / (n - 1), dtype=torch.float64).fill_diagonal_(p)
        return float(((a @ a.T - torch.eye(n, dtype=torch.float64)) ** 2).sum())

    return penalty


@pytest.fixture(scope="session")
def warm_bn():
    """`warm_bn(model, size, steps=2)`: move BatchNorm running statistics away from their initial values with
    training forwards of random `3 x size x size` images, so that tests of checkpoints are not trivial."""
    def warm(model, size: int, steps: int = 2) -> None:
        model.train()
        with torch.no_grad():
            for _ in range(steps):
                model(torch.randn(2, 3, size, size))

    return warm


@pytest.fixture(scope="session")
def exact_factors():
    """`exact_factors(module, x, dtype=x.dtype)`: the one-hot matrices (A, B) of the exact permutation a
    shuffle module applies to `x` (binarized scaled logits, through the module's public path)."""
    def factors(module, x, dtype=None):
        _, perm_a, perm_b = module.index_from_scores(*module.scaled_logits(x))
        dtype = dtype or x.dtype
        return DF.one_hot_permutation(perm_a, dtype), DF.one_hot_permutation(perm_b, dtype)

    return factors


# ----------------------------------------------------------------------------------------- the CLI, runs

@pytest.fixture
def cli(monkeypatch):
    """`cli(argv) -> exit code`: `dynshuffle.cli.main` with only the called command's parser built (the
    others are not needed to run it)."""
    from dynshuffle import cli as cli_module

    def run(argv):
        monkeypatch.setattr(cli_module, "COMMANDS", {argv[0]: cli_module.COMMANDS[argv[0]]})
        return cli_module.main(argv)

    return run


@pytest.fixture
def cli_script(tmp_path) -> Path:
    """A file that runs the CLI (`python cli_script train ...`), for tests that need a real subprocess."""
    path = tmp_path / "runner.py"
    path.write_text("import sys\nfrom dynshuffle.cli import main\nsys.exit(main())\n")
    return path


FAST_RUN = {"data.name": "digits", "data.batch_size": 32, "data.eval_batch_size": 60, "train.eval_steps": 2,
            "data.workers": 0, "train.epochs": 2, "train.steps_per_epoch": 3, "train.device": "cpu",
            "log.tensorboard": False, "log.print_epochs": False, "log.progress": False,
            "shuffle.ste_fraction": 0.5, "schedule.warmup_epochs": 0.5, "model.shuffle": "dynamic"}


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**overrides) -> Config`: ShuffleNetV2 0.5x (dynamic) on digits, 2 epochs of 3 steps:
    seconds on a CPU. Keys as `section.key`."""
    from dynshuffle.training.config import Config, apply_overrides

    def make(**overrides):
        return apply_overrides(Config(), [f"{k}={v}" for k, v in {**FAST_RUN, **overrides}.items()])

    return make


@pytest.fixture(scope="session")
def static_config(tiny_config):
    """`static_config(**overrides)`: the cheapest run of tiny_config, a fixed shuffle, one step of one epoch."""
    def make(**overrides):
        return tiny_config(**{"model.shuffle": "static", "train.steps_per_epoch": 1, "train.epochs": 1,
                              **overrides})

    return make


def small_shufflenet_v2(**kwargs):
    """ShuffleNetV2 0.5x cut to 4 of its 16 units: stage 2's stride-2 unit and its first stride-1 unit, and the
    stride-2 units of stages 3 and 4. Every kind of unit, shuffle slot and head is there, so the code paths are
    the full model's; compiling it traces a quarter of the graph. Self-contained (its source is written into
    the runner scripts of subprocesses, see `small_model_code`)."""
    from dynshuffle.models.registry import create_model

    kwargs.pop("width", None)  # a checkpoint's model config (model_from_config) passes the recorded width back
    model = create_model("shufflenet_v2_x0_5", **kwargs)
    model.stage2, model.stage3, model.stage4 = model.stage2[:2], model.stage3[:1], model.stage4[:1]
    return model


SMALL_MODEL = "test_shufflenet_v2_4_units"


@pytest.fixture(scope="module")
def small_model():
    """The registry name of `small_shufflenet_v2`, registered while the test module that asks for it runs (and
    removed after it: other modules see the package's registry). For the tests whose cost grows with the number
    of units (torch.compile's tracing above all) and whose checks hold for any number of them: graph breaks,
    compiles per phase, compiled against eager numbers, exact resume."""
    from dynshuffle.models import registry

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry._REGISTRY, SMALL_MODEL, small_shufflenet_v2)
        yield SMALL_MODEL


@pytest.fixture(scope="session")
def small_model_code() -> str:
    """Python source that registers `small_model` under the same name, for a script that a subprocess runs."""
    return (inspect.getsource(small_shufflenet_v2) + "\n\nfrom dynshuffle.models.registry import register_model\n"
            f"register_model(small_shufflenet_v2, name={SMALL_MODEL!r})\n")


@pytest.fixture(scope="session")
def write_yaml():
    """`write_yaml(path, cfg) -> path`: a Config as a YAML recipe file."""
    def write(path: Path, cfg) -> Path:
        path.write_text(cfg.to_yaml())
        return path

    return write


# ---------------------------------------------------------------------------------------- dataset trees

def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def _cifar10_folder(root: Path, rows: int = 20) -> Path:
    """The official python-pickle CIFAR-10 layout (cifar-10-batches-py/...), with random pixels."""
    from dynshuffle.data import cifar

    spec = cifar.ARCHIVES["cifar10"]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for member in spec.train + spec.test:
        batch = {b"batch_label": member.encode(), spec.label_key: rng.integers(0, 10, rows).tolist(),
                 b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(rows)]}
        # The official files were pickled by numpy 1 (module numpy.core).
        blob = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (folder / member).write_bytes(blob)
    (folder / spec.meta).write_bytes(pickle.dumps({spec.names_key: [f"c{i}".encode() for i in range(10)]}, protocol=2))
    return root


def _imagenet_tree(root: Path) -> Path:
    """train/<class>/*.JPEG and val/<class>/*.JPEG, generated with Pillow."""
    for c, cls in enumerate(("n01", "n02")):
        for i in range(4):
            _image(root / "train" / cls / f"{cls}_{i}.JPEG", (80 + 10 * i, 64), seed=10 * c + i)
        _image(root / "val" / cls / f"{cls}_v.JPEG", (72, 72), seed=100 + c)
    return root


def _tiny_imagenet_tree(root: Path) -> Path:
    """The official tiny-imagenet-200 layout: wnids.txt, train/<wnid>/images, val/images + annotations
    (2 classes, 8 training and 2 validation images)."""
    root = root / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, wnid in enumerate(wnids):
        for i in range(4):
            _image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64), seed=10 * c + i)
        _image(root / "val" / "images" / f"val_{c}.JPEG", (64, 64), seed=100 + c)
        lines.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root.parent


@pytest.fixture(scope="session")
def dataset_tree():
    """`dataset_tree(name, root) -> root`: a small on-disk dataset in the official layout of `name`
    ("cifar10", "imagenet" or "tiny-imagenet"), with random images."""
    makers = {"cifar10": _cifar10_folder, "imagenet": _imagenet_tree, "tiny-imagenet": _tiny_imagenet_tree}
    return lambda name, root: makers[name](Path(root))


@pytest.fixture
def env_with_src() -> dict:
    """The environment for a subprocess that must import this checkout's dynshuffle."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}
