"""The shared helpers: `shuffle_mode`, the timing functions, and where checkpoint handling lives."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import dynshuffle
from dynshuffle.layers import DynamicShuffle, LearnedShuffle, StaticDynamicShuffle
from dynshuffle.timing import device_of, median_time, time_interleaved, time_pair


def _model() -> nn.Module:
    return nn.Sequential(DynamicShuffle(8, 2, mode="soft"), nn.BatchNorm2d(8), LearnedShuffle(8, 2, mode="ste"),
                         StaticDynamicShuffle(8, 2))


def _modes(model):
    return [m.mode for m in dynshuffle.shuffle_modules(model)]


def test_shuffle_mode_switches_and_restores_each_module():
    model = _model().train()
    before = _modes(model)
    assert before == ["soft", "ste", "auto"]
    with dynshuffle.shuffle_mode(model, "hard") as m:
        assert m is model
        assert _modes(model) == ["hard"] * 3
        assert model.training  # train/eval untouched unless asked
    assert _modes(model) == before


def test_shuffle_mode_restores_on_exception_and_training_flags():
    model = _model().train()
    model[1].eval()  # mixed flags must come back one by one
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with dynshuffle.shuffle_mode(model, "soft", training=False):
            assert not any(m.training for m in model.modules())
            assert _modes(model) == ["soft"] * 3
            raise RuntimeError("boom")
    assert _modes(model) == ["soft", "ste", "auto"]
    assert [m.training for m in model.modules()] == flags


def test_shuffle_mode_nested_and_bad_mode():
    model = _model()
    with dynshuffle.shuffle_mode(model, "hard"):
        with dynshuffle.shuffle_mode(model, "soft"):
            assert _modes(model) == ["soft"] * 3
        assert _modes(model) == ["hard"] * 3
    assert _modes(model) == ["soft", "ste", "auto"]
    with pytest.raises(ValueError, match="shuffle mode"):
        with dynshuffle.shuffle_mode(model, "exact"):
            pass
    assert _modes(model) == ["soft", "ste", "auto"]


def test_deploy_mode_is_eval_and_exact_permutations():
    model = _model().train()
    x = torch.randn(2, 8, 3, 3)
    with dynshuffle.deploy_mode(model), torch.no_grad():
        assert not model.training and _modes(model) == ["hard"] * 3
        out = model(x)
    assert model.training and _modes(model) == ["soft", "ste", "auto"]
    index = model[0].permutation(x)
    assert sorted(index[0].tolist()) == list(range(8))  # a permutation: the output is the input reordered
    assert out.shape == x.shape


def test_device_of():
    assert device_of(nn.ReLU()) == torch.device("cpu")
    assert device_of(nn.Linear(2, 2)) == torch.device("cpu")


def test_time_interleaved_counts_and_orders():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.002)

    t = time_interleaved({"fast": fast, "slow": slow}, warmup=2, repeats=3)
    assert calls == {"fast": 5, "slow": 5}
    assert t["slow"] > t["fast"] >= 0
    slow_s, fast_s = time_pair(slow, fast, torch.device("cpu"), repeats=3, min_time=0.004)
    assert slow_s >= 0.0015 and slow_s > fast_s
    assert median_time(slow, warmup=0, runs=2) >= 0.0015
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"fast": fast}, repeats=0)


def test_checkpoint_helpers_have_one_home():
    from dynshuffle import checkpoints
    from dynshuffle.models import load_compatible_state_dict
    from dynshuffle.models import registry
    from dynshuffle.training import checkpoint

    assert load_compatible_state_dict is checkpoints.load_compatible_state_dict
    assert registry.state_dict_mismatch is checkpoints.state_dict_mismatch
    assert checkpoint.save_checkpoint is checkpoints.save_checkpoint
    assert dynshuffle.load_compatible_state_dict is checkpoints.load_compatible_state_dict


def test_data_modules_import_graph_has_no_cycle():
    # Every relative import between dynshuffle.data's modules (TYPE_CHECKING ones included) forms a DAG.
    import ast
    from pathlib import Path

    folder = Path(dynshuffle.__file__).parent / "data"
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module] if node.module else [a.name for a in node.names])
        graph[path.stem] = {d.split(".")[0] for d in deps} - {path.stem}
    assert "spec" in graph["transforms"] and "registry" not in graph["transforms"]
    done, stack = set(), []

    def visit(name):
        assert name not in stack, " -> ".join(stack + [name])
        if name in done or name not in graph:
            return
        stack.append(name)
        for dep in graph[name]:
            visit(dep)
        stack.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_models_do_not_import_training():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, dynshuffle.models, dynshuffle.checkpoints; "
            "print(sorted(m for m in sys.modules if m.startswith('dynshuffle.training')))")
    src = Path(dynshuffle.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(src)})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
