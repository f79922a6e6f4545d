"""dynshuffle.profiling.benchmark: the model benchmark (through benchmarks/bench_models.py) and its rows."""
import importlib.util
import json
import sys

import pytest

from dynshuffle.models.registry import create_model
from dynshuffle.profiling.benchmark import LayerRow, format_rows, run_model_benchmark
from dynshuffle.profiling.counting import peak_activation_bytes


def test_bench_models_quick_prints_the_table(capsys, tmp_path, monkeypatch, root):
    spec = importlib.util.spec_from_file_location("bench_models", root / "benchmarks" / "bench_models.py")
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
    static, dynamic = json.loads(out.read_text())
    assert dynamic["variant"] == "dynamic"
    for key in ("eval_b1", "eval_b8", "train_b8"):  # every ratio is to the static model timed beside it
        assert dynamic[f"{key}_ratio"] == pytest.approx(dynamic[f"{key}_s"] / static[f"{key}_s"])
        assert static[f"{key}_ratio"] == 1.0
    # on a CPU the memory figure is the activations saved for backward
    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, shuffle="dynamic")
    assert dynamic["peak_bytes"] == peak_activation_bytes(model, 32, 8)
    assert dynamic["peak_ratio"] == pytest.approx(dynamic["peak_bytes"] / static["peak_bytes"])
    with pytest.raises(ValueError, match="bogus"):
        run_model_benchmark(variants=["static", "bogus"], quick=True)


def test_layer_rows_table_judges_the_target():
    rows = [LayerRow("gather alone", "C=116 28x28", 64, 0.012, "nn.ChannelShuffle", 0.01, 1.2),
            LayerRow("soft fwd+bwd", "C=116 28x28", 64, 0.03, "1x1 conv fwd+bwd", 0.02, 1.0)]
    assert rows[0].ratio == pytest.approx(1.2) and rows[0].as_dict()["ratio"] == pytest.approx(1.2)
    lines = format_rows(rows).splitlines()
    assert lines[2] == "| gather alone | C=116 28x28 | 64 | 0.012 | nn.ChannelShuffle | 0.010 | 1.20 | ≤ 1.2 | yes |"
    assert lines[3].endswith("| 1.50 | ≤ 1 | NO |")


def test_bench_compiled_train_prints_eager_and_compiled_ratios(capsys, tmp_path, root, small_model):
    """benchmarks/bench_compiled_train.py end to end with the `eager` backend (dynamo only: seconds) on the
    conftest's small model (--model: 4 ShuffleNetV2 units, a quarter of the graph for each of its 5 compiles)."""
    spec = importlib.util.spec_from_file_location("bench_compiled_train", root / "benchmarks" / "bench_compiled_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "compiled.json"
    assert bench.main(["--model", small_model, "--backend", "eager", "--batch", "2", "--repeats", "1", "--warmup",
                       "0", "--eval", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for line in ("train fixed", "train dynamic soft", "train dynamic ste", "eval fixed", "eval dynamic",
                 "train dynamic ste, compiled:", "eval dynamic, eager:"):
        assert line in text, line
    figures = json.loads(out.read_text())
    assert len(figures["seconds"]) == 10 and len(figures["compile_seconds"]) == 5
