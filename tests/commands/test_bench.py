"""`dynshuffle bench` (dynshuffle.commands.bench): bench.md and bench.json with ratios, eager and torch.compile
tables."""
import json

import pytest
import torch

from dynshuffle.profiling import benchmark as B


def test_quick_layers_only_writes_both_files_with_ratios(tmp_path, monkeypatch, capsys, cli):
    out = tmp_path / "b"
    assert cli(["bench", "--quick", "--layers-only", "--quiet", "--out", str(out)]) == 0
    md = (out / "bench.md").read_text()
    assert "## Layers (eager)" in md and "| ratio |" in md and "nn.ChannelShuffle" in md and "1x1 conv" in md
    assert "Model benchmark skipped (--layers-only)" in md
    report = json.loads((out / "bench.json").read_text())
    rows = report["layers"]["eager"]
    assert rows and all(r["ratio"] == pytest.approx(r["candidate_ms"] / r["baseline_ms"]) for r in rows)
    assert {r["batch"] for r in rows} == {64}  # --quick times at the batch the targets are set for
    assert {r["baseline"] for r in rows} == {"nn.ChannelShuffle", "1x1 conv eval", "1x1 conv fwd+bwd"}
    assert report["models"] == {} and report["machine"]["device"] == "cpu"
    assert "wrote" in capsys.readouterr().out

    # Files are not overwritten without --force; an --out that is a file is refused.
    before = (out / "bench.md").read_text()
    assert cli(["bench", "--quick", "--layers-only", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (out / "bench.md").read_text() == before
    (tmp_path / "f").write_text("x")
    assert cli(["bench", "--quick", "--layers-only", "--out", str(tmp_path / "f")]) == 2


def _fake_layer_rows(device="cpu", compile=False, quick=False, progress=True, **kwargs):
    tag = " (compiled)" if compile else ""
    return [B.LayerRow("hard DynamicShuffle" + tag, "C=116 28x28", 1, 0.02, "nn.ChannelShuffle", 0.01, 2.0),
            B.LayerRow("StaticDynamicShuffle eval" + tag, "C=116 28x28", 1, 0.03, "1x1 conv eval", 0.06, 0.5)]


def _fake_model_rows(device="cpu", compile=False, quick=False, progress=True, **kwargs):
    return [{"model": "shufflenet_v2_x0_5", "stem": "cifar", "input_size": 32, "variant": v, "device": device,
             "compiled": compile, "eval_b1_s": ms / 1e3, "eval_b1_ratio": ms / 1.0, "peak_bytes": 2 ** 20,
             "peak_ratio": 1.0} for v, ms in (("static", 1.0), ("dynamic", 1.1))]


def test_compile_gives_eager_and_compiled_tables_for_layers_and_models(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(B, "run_layer_benchmark", _fake_layer_rows)
    monkeypatch.setattr(B, "run_model_benchmark", _fake_model_rows)
    out = tmp_path / "b"
    assert cli(["bench", "--compile", "--quiet", "--out", str(out)]) == 0
    md = (out / "bench.md").read_text()
    for title in ("## Layers (eager)", "## Layers (torch.compile)", "## Models (eager)", "## Models (torch.compile)"):
        assert title in md
    assert "| shufflenet_v2_x0_5 | cifar | dynamic | 1.10 | 1.10x |" in md  # profiling.format_model_rows
    report = json.loads((out / "bench.json").read_text())
    assert set(report["layers"]) == set(report["models"]) == {"eager", "torch.compile"}
    assert report["models"]["torch.compile"][0]["compiled"] is True
    assert report["layers"]["eager"][1]["ratio"] == pytest.approx(0.5)


def test_rows_are_judged_only_at_the_target_batch(tmp_path, monkeypatch, cli):
    def rows(**kwargs):
        return [B.LayerRow("gather alone", "C=116 28x28", 1, 0.05, "nn.ChannelShuffle", 0.01, 1.2),
                B.LayerRow("gather alone", "C=116 28x28", 64, 0.05, "nn.ChannelShuffle", 0.01, 1.2),
                B.LayerRow("gather alone", "C=116 28x28", 64, 0.01, "nn.ChannelShuffle", 0.01, 1.2)]

    monkeypatch.setattr(B, "run_layer_benchmark", rows)
    out = tmp_path / "b"
    assert cli(["bench", "--layers-only", "--quiet", "--out", str(out)]) == 0
    lines = [line for line in (out / "bench.md").read_text().splitlines() if line.startswith("| gather alone")]
    assert lines[0].endswith("|  |  |")  # batch 1: no target, no verdict
    assert lines[1].endswith("| ≤ 1.2 | NO |") and lines[2].endswith("| ≤ 1.2 | yes |")
    assert [r["target"] for r in json.loads((out / "bench.json").read_text())["layers"]["eager"]] == [None, 1.2, 1.2]


def test_cuda_without_cuda(tmp_path, monkeypatch, capsys, cli):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the message, on any machine
    assert cli(["bench", "--device", "cuda", "--out", str(tmp_path / "b")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_with_the_real_model_benchmark(tmp_path, monkeypatch, cli):
    """The real model benchmark and its table through the command, cut down so it takes seconds."""
    import functools

    real = B.run_model_benchmark
    monkeypatch.setattr(B, "run_model_benchmark", functools.partial(
        real, variants=("static", "dynamic"), eval_batches=(1,), train_batch=2, warmup=0, repeats=1))
    out = tmp_path / "b"
    assert cli(["bench", "--quick", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = report["models"]["eager"]
    assert len(rows) == 2 and all(any("ratio" in k for k in r) for r in rows)
    md = (out / "bench.md").read_text()
    assert "## Models (eager)" in md and "dynamic" in md


def test_threads_are_set_and_recorded_and_redirected_progress_is_plain_lines(tmp_path, monkeypatch, capsys, cli):
    monkeypatch.setattr(B, "run_model_benchmark", _fake_model_rows)
    monkeypatch.setattr(B, "layer_rows", lambda c, s, b, dev, repeats, compile=False: [])  # no timing needed
    # nor the operator counts (test_quick_layers_only_... runs them): at 2 threads on a machine whose cores
    # are busy with other jobs, OpenMP threads waiting for a preempted peer slow that model run down badly
    monkeypatch.setattr("dynshuffle.profiling.operators.operator_report", lambda: [])
    threads = torch.get_num_threads()
    try:
        assert cli(["bench", "--quick", "--threads", "2", "--out", str(tmp_path / "b")]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["machine"]["cpu_threads"] == 2
    assert "2 CPU threads" in (tmp_path / "b" / "bench.md").read_text()
    err = capsys.readouterr().err  # not a terminal here: a plain line per step, no bar
    assert "layer benchmark 1/1: cifar C=116 16x16, batch 64\n" in err and "\r" not in err and "it/s" not in err
    assert cli(["bench", "--quick", "--threads", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
