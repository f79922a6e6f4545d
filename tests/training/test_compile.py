"""`train.compile` and `train.channels_last`: the compiled train step and evaluation through the shuffle
schedule's phases (graph breaks and compiles counted), checkpoints and resume of a compiled run, the
channels-last memory format, and the config keys and flags.

The compiled runs use the `aot_eager` backend (`loop.COMPILE_BACKEND_ENV`): dynamo captures the same graphs
and AOTAutograd builds the same forward and backward as with inductor, in seconds instead of minutes. Runs
that only count compiles use dynamo alone (the `eager` backend), which counts the same in a third of the time.
They train the conftest's `small_model` (ShuffleNetV2 0.5x with 4 of its 16 units, every kind of unit): the
compile time grows with the units traced, while graph breaks, compiles per phase and the match with eager
training come from code that each unit runs alike.
"""
from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch
from torch._dynamo.backends.debugging import aot_eager
from torch._dynamo.utils import counters
from torch._guards import CompileContext

from dynshuffle import checkpoints as ckpt
from dynshuffle.cli import main as cli_main
from dynshuffle.data.registry import get_dataset_spec
from dynshuffle.training import loop
from dynshuffle.training.config import Config, apply_overrides
from dynshuffle.training.loop import build_model, train
from dynshuffle.utils import read_csv

COMPILES: dict[str, str] = {}  # dynamo's compile id -> "train" or "eval"


def _counting(backend):
    def count_then_compile(gm, example_inputs):
        # Keyed by compile id: dynamo may restart the analysis of one compile and call the backend again
        # (the straight-through graph with annealed floats does: TensorifyScalarRestartAnalysis): one compile.
        compile_id = str(CompileContext.current_compile_id())
        COMPILES[compile_id] = "train" if torch.is_grad_enabled() else "eval"  # evaluation runs under no_grad
        return backend(gm, example_inputs)

    return count_then_compile


# Counting wrappers of aot_eager (dynamo's graphs, then AOTAutograd's forward and backward, run eagerly) and
# of `eager` (dynamo's graphs only: a third of the compile time). Compiles and graph breaks are dynamo's, so
# both count the same; the runs that check numbers against eager training use aot_eager.
COUNTING_BACKEND, COUNTING_DYNAMO_BACKEND = "dynshuffle_test_counting", "dynshuffle_test_counting_dynamo"
for _name, _backend in ((COUNTING_BACKEND, aot_eager), (COUNTING_DYNAMO_BACKEND, lambda gm, _: gm.forward)):
    if _name not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(_counting(_backend), name=_name)

# 3 epochs of 2 steps, one per phase of the schedule: explore (soft, no penalty), settle (soft, lambda
# ramping up, a new value every step), straight-through.
PHASES = {"train.compile": "default", "train.epochs": 3, "train.steps_per_epoch": 2,
          "shuffle.penalty_free_fraction": 0.34, "shuffle.ste_fraction": 0.33}


def counted_train(cfg, run_dir, **kwargs):
    """`train(cfg, run_dir, **kwargs)` -> (result, the compiles of each epoch, graph breaks)."""
    COMPILES.clear()
    counters.clear()
    per_epoch = []

    def on_epoch(row):
        per_epoch.append(dict(Counter(COMPILES.values())))
        COMPILES.clear()

    result = train(cfg, run_dir, on_epoch=on_epoch, **kwargs)
    return result, per_epoch, sum(counters["graph_break"].values())


def copy_at(epoch, run_dir, to):
    """An `on_epoch` that copies the run folder once epoch `epoch` is saved: a run stopped there."""
    def on_epoch(row):
        if row["epoch"] == epoch:
            shutil.copytree(run_dir, to)

    return on_epoch


@pytest.fixture(scope="module")
def small_config(tiny_config, small_model):
    """`tiny_config` on the small model."""
    return lambda **overrides: tiny_config(**{"model.name": small_model, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_config):
    """The PHASES run compiled (counted, aot_eager) and eager; the eager run's checkpoint of epoch 2 (copied
    when it was saved: one eager run serves both) resumed compiled (counted, dynamo only): a run can switch
    compile on when it resumes."""
    folder = tmp_path_factory.mktemp("compiled")
    cfg = small_config(**PHASES)
    eager_cfg = small_config(**{**PHASES, "train.compile": "off"})
    out = {"folder": folder}
    out["eager"] = train(eager_cfg, folder / "eager", on_epoch=copy_at(2, folder / "eager", folder / "resumed"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(loop.COMPILE_BACKEND_ENV, COUNTING_BACKEND)
        out["straight"] = counted_train(cfg, folder / "straight")
        mp.setenv(loop.COMPILE_BACKEND_ENV, COUNTING_DYNAMO_BACKEND)
        out["resumed"] = counted_train(cfg, folder / "resumed", resume=True)
    return out


def test_one_compile_per_phase_and_no_graph_breaks(runs):
    _, per_epoch, breaks = runs["straight"]
    rows = read_csv(runs["folder"] / "straight" / "log.csv")[1]
    assert [r["shuffle_mode"] for r in rows] == ["soft", "soft", "ste"]
    # lambda of each epoch's last step: 0 while exploring; settle ramps it (0.5, then 1.0)
    assert [float(r["lambda"]) for r in rows] == [0.0, pytest.approx(1.0), pytest.approx(1.0)]
    assert breaks == 0
    # explore: the soft train graph, and evaluation's two (exact permutation, soft matrices); settle: none
    # (lambda is applied outside the compiled module); straight-through: the ste train graph.
    assert per_epoch == [{"train": 1, "eval": 2}, {}, {"train": 1}]


def test_compiled_run_matches_the_eager_run(runs):
    compiled, eager = runs["straight"][0], runs["eager"]
    for a, b in zip(compiled["history"], eager["history"], strict=True):
        for key in ("train_loss", "penalty", "val_loss", "val_loss_soft"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    expected = eager["model"].state_dict()
    for key, value in compiled["model"].state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_checkpoints_hold_the_plain_state_dict(runs):
    """No `_orig_mod.` prefix: the checkpoint loads into an eager model; `train` returns the bare model."""
    folder = runs["folder"] / "straight"
    tensors, _, _ = ckpt.load_checkpoint(folder)
    model, _ = ckpt.build_model_from_checkpoint(folder / "last.safetensors")
    assert tensors.keys() == model.state_dict().keys()
    assert not any("_orig_mod" in k for k in tensors)
    assert type(runs["straight"][0]["model"]) is type(model)


def test_compiled_run_resumes(runs):
    """The eager run's checkpoint of epoch 2 resumed with compile on: the straight runs' weights (up to
    float rounding). The resumed process compiles its phase's train graph (straight-through) and
    evaluation's two, without graph breaks."""
    _, per_epoch, breaks = runs["resumed"]
    assert breaks == 0 and per_epoch == [{"train": 1, "eval": 2}]
    straight, _, _ = ckpt.load_checkpoint(runs["folder"] / "straight")
    resumed, _, _ = ckpt.load_checkpoint(runs["folder"] / "resumed")
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-5, msg=key)


def test_annealed_temperature_and_noise_compile_once_more_not_every_step(tmp_path, small_config, monkeypatch):
    """A temperature and a noise scale that change every step (attributes of the shuffle modules, which the
    compiled code reads), over 4 soft steps: their first change makes them graph inputs (one more
    compile), then no step recompiles. (2.0 -> 0.3 never lands on 1.0 exactly: the layers branch on
    `temperature != 1.0`, so a step at exactly 1.0 would compile once more.) With channels_last: the compiled
    step on channels-last weights and batches."""
    cfg = small_config(**{"train.compile": "default", "train.epochs": 1, "train.steps_per_epoch": 4,
                          "shuffle.ste_fraction": 0.0, "shuffle.temperature": 2.0, "shuffle.final_temperature": 0.3,
                          "shuffle.noise": 0.3, "shuffle.eval_soft": False, "train.channels_last": True})
    monkeypatch.setenv(loop.COMPILE_BACKEND_ENV, COUNTING_DYNAMO_BACKEND)
    result, per_epoch, breaks = counted_train(cfg, tmp_path / "run")
    assert breaks == 0
    assert per_epoch == [{"train": 2, "eval": 1}]
    assert _channels_last_params(result["model"])


def _channels_last_params(model) -> bool:
    four_d = [p for p in model.parameters() if p.dim() == 4]
    return bool(four_d) and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)


def test_channels_last_run(tmp_path, tiny_config):
    """train.channels_last: the model's 4-D weights and every batch it sees (training and evaluation) are
    channels-last, and the weights stay so through the optimizer steps and the checkpoint."""
    cfg = tiny_config(**{"train.epochs": 1, "train.steps_per_epoch": 2, "train.channels_last": True})
    spec = get_dataset_spec(cfg.data.name)
    model = build_model(cfg, spec.num_classes, spec.stem)
    formats = []
    model.register_forward_pre_hook(
        lambda _, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    result = train(cfg, tmp_path / "run", model=model)
    assert _channels_last_params(result["model"])
    assert len(formats) >= 4 and all(formats)  # 2 train steps, 2 eval batches per mode
    assert any(not p.is_contiguous() for p in result["model"].parameters() if p.dim() == 4)
    tensors, _, _ = ckpt.load_checkpoint(tmp_path / "run")
    for key, value in result["model"].state_dict().items():
        assert torch.equal(tensors[key], value.cpu()), key


def test_compile_keys_defaults_choices_and_cpu_check():
    cfg = Config()
    assert cfg.train.compile == "off" and cfg.train.channels_last is False
    with pytest.raises(ValueError, match="'train.compile'.*not one of"):
        apply_overrides(Config(), ["train.compile=fast"])
    with pytest.raises(ValueError, match="'train.channels_last'"):
        apply_overrides(Config(), ["train.channels_last=maybe"])
    with pytest.raises(ValueError, match="'train.compile'.*CUDA"):
        apply_overrides(Config(), ["train.device=cpu", "train.compile=reduce-overhead"])
    apply_overrides(Config(), ["train.device=cuda", "train.compile=reduce-overhead"])  # checked, not run
    with pytest.raises(ValueError, match="'train.compile'.*CUDA"):  # train.device auto on a CPU machine
        loop.compile_model(torch.nn.Linear(2, 2), "reduce-overhead", torch.device("cpu"))
    assert loop.compile_model(lin := torch.nn.Linear(2, 2), "off", torch.device("cpu")) is lin


def test_train_flags_set_the_keys(tmp_path, static_config, write_yaml, monkeypatch):
    """`dynshuffle train --compile [MODE] --channels-last`: the keys train.compile and train.channels_last."""
    seen = {}

    def fake_train(cfg, out, **kwargs):
        seen["cfg"] = cfg
        return {"final": None}

    monkeypatch.setattr(loop, "train", fake_train)
    config = write_yaml(tmp_path / "cfg.yaml", static_config())
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "a"), "--compile"]) == 0
    assert seen.pop("cfg").train.compile == "default"
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "b"), "--compile", "max-autotune",
                     "--channels-last"]) == 0
    cfg = seen.pop("cfg")
    assert cfg.train.compile == "max-autotune" and cfg.train.channels_last is True
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "c")]) == 0
    cfg = seen.pop("cfg")
    assert cfg.train.compile == "off" and cfg.train.channels_last is False
