"""Parameter / multiply-add / FLOP / memory counting, the profile and models commands, the model benchmark."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dynshuffle
from dynshuffle.models import ShuffleNetV1, ShuffleNetV2
from dynshuffle.profiling import (
    ProfileResult,
    count_conv_linear_macs,
    count_flops,
    count_macs,
    format_table,
    peak_activation_bytes,
    profile,
)

ROOT = Path(__file__).resolve().parents[1]



def test_grouped_and_depthwise_conv_macs():
    grouped = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False))
    assert count_macs(grouped, (8, 10, 10)) == 16 * (8 // 4) * 9 * 100
    assert count_conv_linear_macs(grouped, (8, 10, 10)) == 16 * 2 * 9 * 100
    depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), nn.Flatten(),
                              nn.Linear(8 * 25, 3))
    assert count_macs(depthwise, (8, 10, 10)) == 8 * 9 * 25 + 200 * 3
    assert count_conv_linear_macs(depthwise, (8, 10, 10)) == 8 * 9 * 25 + 200 * 3


def test_shufflenet_v2_macs_match_published():
    # Published: 41 M (0.5x) and 146 M (1.0x) at 224x224. Ours counts convolutions and the classifier
    # only (no BatchNorm/pooling), exactly: 40.48 M and 144.91 M; 2 % covers the counters' conventions.
    for width, published in ((0.5, 41e6), (1.0, 146e6)):
        model = ShuffleNetV2(width)
        macs = count_macs(model, 224)
        assert abs(macs - published) <= 0.02 * published, (width, macs)
        assert macs == count_conv_linear_macs(model, 224)  # the two counters agree on a static model
    assert count_macs(ShuffleNetV2(1.0), 224) == 144_907_992


def test_shufflenet_v1_macs_match_published():
    # ShuffleNet-Series: 1.0x g=3 138 M, 1.0x g=8 138 M, 0.5x g=8 40 M. Ours (convolutions + classifier,
    # 137.46 M / 138.37 M / 40.47 M) must be within 0.5 M + 1 %: the published numbers are rounded to
    # 1 M, and their counter's treatment of pooling (the 3x3 average-pool shortcuts) is unknown.
    for groups, width, published in ((3, 1.0, 138e6), (8, 1.0, 138e6), (8, 0.5, 40e6)):
        macs = count_macs(ShuffleNetV1(groups, width), 224)
        assert abs(macs - published) <= 0.5e6 + 0.01 * published, (groups, width, macs)


def test_dynamic_work_is_counted():
    kw = {"num_classes": 10, "stem": "cifar"}
    static, dynamic = ShuffleNetV2(0.5, **kw), ShuffleNetV2(0.5, shuffle="dynamic", **kw)
    sds = ShuffleNetV2(0.5, pointwise="sds", **kw)
    learned = ShuffleNetV2(0.5, shuffle="learned", **kw)
    assert count_flops(dynamic, 32) > count_flops(static, 32)
    assert count_flops(learned, 32) > count_flops(static, 32)  # the soft path's products and softmax
    assert count_macs(dynamic, 32) > count_macs(static, 32)  # the generators' linears
    assert count_macs(learned, 32) == count_macs(static, 32)  # inference is a gather: nothing to count
    assert count_flops(sds, 32) > 0 and count_macs(sds, 32) > 0
    # SDS's static mixing is matrix work the conv/linear hooks cannot see; count_macs does
    assert count_macs(sds, 32) > count_conv_linear_macs(sds, 32)
    # a static model's training FLOPs are twice its multiply-adds (no elementwise work is counted there)
    assert count_flops(static, 32) == 2 * count_macs(static, 32)


def test_peak_activation_bytes():
    model = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic")
    b2 = peak_activation_bytes(model, 32, batch=2)
    b4 = peak_activation_bytes(model, 32, batch=4)
    assert b2 > 0 and abs(b4 / b2 - 2) < 0.1
    assert peak_activation_bytes(model, 32, batch=1) == b2 // 2
    with pytest.raises(ValueError, match="batch"):
        peak_activation_bytes(model, 32, batch=0)


def test_profile_result_and_model_untouched():
    model = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic").eval()
    model.train()
    model(torch.randn(2, 3, 32, 32))  # leaves a non-leaf penalty in the modules: profile must cope
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = profile(model, 32, batch=2)
    assert isinstance(result, ProfileResult)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.name == "shufflenet_v2_x0_5" and result.shuffle == "dynamic" and result.stem == "cifar"
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.macs > 0 and result.flops > 2 * result.macs * 0.99 and result.peak_activation_bytes > 0
    row = result.as_row()
    assert row["input_size"] == "3x32x32" and row["params"] == result.params
    assert "shufflenet_v2_x0_5" in str(result) and "MACs" in str(result)
    by_name = dynshuffle.profile("shufflenet_v2_x0_5", (32, 32), num_classes=10, stem="cifar", batch=2)
    assert by_name.params == profile(ShuffleNetV2(0.5, 10, stem="cifar"), 32).params
    with pytest.raises(ValueError, match="input_size"):
        profile(model, (3, 0, 32))


def test_format_table():
    text = format_table([{"a": "x", "b": "1.5"}, {"a": "long", "b": "10"}])
    assert text.splitlines()[0].split() == ["a", "b"] and "long" in text
    md = format_table([{"a": 1}], markdown=True)
    assert md.splitlines()[:2] == ["| a |", "|---|"]


def _run_command(module_name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"dynshuffle.commands.{module_name}")
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return module.run(parser.parse_args(argv))


def test_profile_command(capsys, tmp_path):
    out = tmp_path / "rows.json"
    rc = _run_command("profile", ["shufflenet_v2_x0_5", "--stem", "cifar", "--shuffle", "dynamic",
                                  "--batch", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "shufflenet_v2_x0_5" in text and "dynamic" in text and "MACs" in text and "3x32x32" in text
    rows = json.loads(out.read_text())
    assert rows[0]["shuffle"] == "dynamic"
    rc = _run_command("profile", ["shufflenet_v1_g8_x0_25", "--stem", "cifar", "--compare", "--batch", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and "+params" in text and "learned" in text and "sds" in text


def test_profile_and_models_commands_import_without_torch():
    # `dynshuffle --help` and `dynshuffle models` must stay fast: importing the command modules may not
    # load torch or numpy (they import the heavy stacks inside `run`).
    code = ("import sys, dynshuffle.commands.profile, dynshuffle.commands.models; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_models_command(capsys):
    assert _run_command("models", ["shufflenet_v2_*"]) == 0
    assert capsys.readouterr().out.split() == ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
                                               "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
    assert _run_command("models", []) == 0
    assert "shufflenet_v1_g3_x1_0" in capsys.readouterr().out.split()
    assert _run_command("models", ["nothing*"]) == 1


def test_bench_models_quick_prints_the_table(capsys, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_models", ROOT / "benchmarks" / "bench_models.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_models", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--repeats", "1", "--variants", "static,dynamic", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "eval@1 ms" in lines[1] and "train@8 ms" in lines[1] and "x mem" in lines[1]
    body = [line.split() for line in lines[3:]]
    assert [row[2] for row in body] == ["static", "dynamic"]
    assert body[0][4] == "1.00x"
    rows = json.loads(out.read_text())
    assert rows[1]["variant"] == "dynamic" and rows[1]["train_b8_ratio"] > 0 and rows[1]["peak_bytes"] > 0
    from dynshuffle.profiling import run_model_benchmark

    with pytest.raises(ValueError, match="bogus"):
        run_model_benchmark(variants=["static", "bogus"], quick=True)
