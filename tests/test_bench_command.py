"""`dynshuffle bench`: bench.md and bench.json with ratios, eager and torch.compile tables."""
import json

import pytest
import torch

from dynshuffle import benchmark as B
from dynshuffle import cli


def _cli(monkeypatch, argv):
    monkeypatch.setattr(cli, "COMMANDS", {"bench": cli.COMMANDS["bench"]})
    return cli.main(argv)


def test_quick_layers_only_writes_both_files_with_ratios(tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    assert _cli(monkeypatch, ["bench", "--quick", "--layers-only", "--quiet", "--out", str(out)]) == 0
    md = (out / "bench.md").read_text()
    assert "## Layers (eager)" in md and "| ratio |" in md and "nn.ChannelShuffle" in md and "1x1 conv" in md
    assert "Model benchmark skipped (--layers-only)" in md
    report = json.loads((out / "bench.json").read_text())
    rows = report["layers"]["eager"]
    assert rows and all(r["ratio"] > 0 and r["baseline_ms"] > 0 for r in rows)
    assert {r["baseline"] for r in rows} == {"nn.ChannelShuffle", "1x1 conv eval", "1x1 conv fwd+bwd"}
    assert report["models"] == {} and report["machine"]["device"] == "cpu"
    assert "wrote" in capsys.readouterr().out

    # Files are not overwritten without --force; an --out that is a file is refused.
    before = (out / "bench.md").read_text()
    assert _cli(monkeypatch, ["bench", "--quick", "--layers-only", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (out / "bench.md").read_text() == before
    (tmp_path / "f").write_text("x")
    assert _cli(monkeypatch, ["bench", "--quick", "--layers-only", "--out", str(tmp_path / "f")]) == 2


def _fake_layer_rows(device="cpu", compile=False, quick=False, progress=True, **kwargs):
    tag = " (compiled)" if compile else ""
    return [B.LayerRow("hard DynamicShuffle" + tag, "C=116 28x28", 1, 0.02, "nn.ChannelShuffle", 0.01, 2.0),
            B.LayerRow("StaticDynamicShuffle eval" + tag, "C=116 28x28", 1, 0.03, "1x1 conv eval", 0.06, 0.5)]


def _fake_model_rows(device="cpu", compile=False, quick=False, progress=True, **kwargs):
    return [{"model": "shufflenet_v2_x0_5", "variant": v, "batch": 1, "what": "eval", "ms": ms,
             "baseline_ms": 1.0, "ratio": ms / 1.0, "compiled": compile} for v, ms in (("static", 1.0), ("dynamic", 1.1))]


def test_compile_gives_eager_and_compiled_tables_for_layers_and_models(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "run_layer_benchmark", _fake_layer_rows)
    monkeypatch.setattr(B, "run_model_benchmark", _fake_model_rows, raising=False)
    monkeypatch.delattr(B, "format_model_rows", raising=False)  # the command's generic table
    out = tmp_path / "b"
    assert _cli(monkeypatch, ["bench", "--compile", "--quiet", "--out", str(out)]) == 0
    md = (out / "bench.md").read_text()
    for title in ("## Layers (eager)", "## Layers (torch.compile)", "## Models (eager)", "## Models (torch.compile)"):
        assert title in md
    assert "| model | variant | batch | what | ms | baseline_ms | ratio | compiled |" in md
    assert "| shufflenet_v2_x0_5 | dynamic | 1 | eval | 1.1 | 1 | 1.1 | False |" in md
    report = json.loads((out / "bench.json").read_text())
    assert set(report["layers"]) == set(report["models"]) == {"eager", "torch.compile"}
    assert report["models"]["torch.compile"][0]["compiled"] is True
    assert report["layers"]["eager"][1]["ratio"] == pytest.approx(0.5)


def test_missing_model_benchmark_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(B, "run_layer_benchmark", _fake_layer_rows)
    monkeypatch.delattr(B, "run_model_benchmark", raising=False)
    out = tmp_path / "b"
    assert _cli(monkeypatch, ["bench", "--quiet", "--out", str(out)]) == 0
    assert "model benchmark not available" in capsys.readouterr().err
    assert "model benchmark not available" in (out / "bench.md").read_text()
    assert json.loads((out / "bench.json").read_text())["note"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(tmp_path, monkeypatch, capsys):
    assert _cli(monkeypatch, ["bench", "--device", "cuda", "--out", str(tmp_path / "b")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(B, "run_model_benchmark"), reason="dynshuffle.benchmark has no model benchmark yet")
def test_with_the_real_model_benchmark(tmp_path, monkeypatch):
    """The real model benchmark and its table through the command, cut down so it takes seconds."""
    import functools

    real = B.run_model_benchmark
    monkeypatch.setattr(B, "run_model_benchmark", functools.partial(
        real, variants=("static", "dynamic"), eval_batches=(1,), train_batch=2, warmup=0, repeats=1))
    out = tmp_path / "b"
    assert _cli(monkeypatch, ["bench", "--quick", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = report["models"]["eager"]
    assert len(rows) == 2 and all(any("ratio" in k for k in r) for r in rows)
    md = (out / "bench.md").read_text()
    assert "## Models (eager)" in md and "dynamic" in md
