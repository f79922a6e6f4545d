"""dynshuffle.deploy.export: the inference graph runs in onnxruntime with PyTorch's outputs, bad input fails
cleanly, and the onnxruntime benchmark; `dynshuffle export`."""

import numpy as np
import pytest
import torch
from torch import nn

from dynshuffle.checkpoints import CheckpointError, save_weights
from dynshuffle.layers import functional as DF
from dynshuffle.layers.base import shuffle_modules
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.models.registry import create_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dynshuffle.deploy import export as E  # noqa: E402
from dynshuffle.deploy.export import ExportError, benchmark_onnx, export_onnx, export_onnx_report  # noqa: E402



@pytest.fixture(scope="module")
def tiny_model(random_generators):
    """`tiny_model(variant, seed=0)`: ShuffleNetV2 0.5x (CIFAR stem) with random, calibrated generators."""
    def make(variant, seed=0):
        torch.manual_seed(seed)
        kwargs = {"static": {}, "dynamic": {"shuffle": "dynamic"}, "sds": {"pointwise": "sds"}}[variant]
        model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, **kwargs)
        return random_generators(model, scale=1.0, seed=seed, size=32)

    return make



def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    """Each variant exported once for the whole module (exports are the slow part)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for variant in ("static", "dynamic", "sds"):
        model = tiny_model(variant)
        out[variant] = (model, export_onnx_report(model, folder / f"{variant}.onnx"))
    return out


@pytest.mark.parametrize("variant", ["static", "dynamic", "sds"])
def test_onnxruntime_matches_pytorch_at_batch_1_and_7(exported, variant):
    model, result = exported[variant]
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4  # export's own check
    onnx.checker.check_model(str(result.path), full_check=True)
    g = torch.Generator().manual_seed(1)
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        out = ort_run(result.path, x)
        assert out.shape == (batch, 10)
        assert np.abs(out - ref).max() <= 1e-4


def test_exported_graph_is_the_inference_path(exported):
    """Dynamic batch axis, no soft matrices (no MatMul over feature maps), a branch-free binarization (TopK,
    no If / Loop), a graph within 1.5x of the fixed model's, metadata recorded, model state left alone."""
    model, result = exported["dynamic"]
    proto = onnx.load(str(result.path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    ops = {n.op_type for n in proto.graph.node}
    assert "MatMul" not in ops and "Gather" in ops and "TopK" in ops
    assert not ops & {"If", "Loop", "Scan"}
    fixed_nodes = len(onnx.load(str(exported["static"][1].path)).graph.node)
    assert len(proto.graph.node) <= 1.5 * fixed_nodes
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"shuffle": "dynamic"' in meta["model_config"]
    assert all(m.mode == "auto" for m in shuffle_modules(model))


def test_dynamic_permutations_really_differ_per_input(exported):
    """The comparison above only means something if the exported permutations are input-dependent."""
    from dynshuffle.inspection.stats import collect_inputs

    model, _ = exported["dynamic"]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    inputs = collect_inputs(model, x)
    distinct = [len({tuple(p.tolist()) for p in m.permutation(inputs[name])})
                for name, m in model.named_modules() if isinstance(m, DynamicShuffle)]
    assert max(distinct) > 1


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = DynamicShuffle(12, 2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.shuffle(self.conv(x)).mean((2, 3)))


def _colliding_tiny_net():
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():
        for p in net.shuffle.parameters():
            p.normal_(0, 3.0)
    return net


def test_collisions_after_export_give_pytorch_outputs(tmp_path):
    net = _colliding_tiny_net()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        la, lb = net.shuffle.logits(net.conv(x))
    assert not (DF.is_permutation(la.argmax(-1)).all() and DF.is_permutation(lb.argmax(-1)).all())
    path = export_onnx(net, tmp_path / "tiny.onnx", input_size=8)
    with torch.no_grad():
        assert np.abs(ort_run(path, x) - net(x).numpy()).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_dynamo_exporter(tmp_path):
    net = _colliding_tiny_net()
    result = export_onnx_report(net, tmp_path / "tiny.onnx", input_size=8, exporter="dynamo")
    assert result.opset == 18 and result.max_abs_diff <= 1e-5
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert np.abs(ort_run(result.path, x) - net(x).numpy()).max() <= 1e-5


# ---- bad input ------------------------------------------------------------------------------------------

def test_bad_output_paths_fail_before_any_work(tmp_path):
    net = TinyNet()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(net, tmp_path / "missing" / "m.onnx", input_size=8)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        export_onnx(net, tmp_path / "afile" / "m.onnx", input_size=8)
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError):
        export_onnx(net, tmp_path / "adir", input_size=8)
    assert not (tmp_path / "missing").exists()


def test_existing_file_needs_force_and_failures_leave_it_untouched(tmp_path, monkeypatch):
    net = TinyNet()
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(FileExistsError, match="force"):
        export_onnx(net, out, input_size=8)
    assert out.read_bytes() == b"previous"

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(E, "_export_graph", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        export_onnx(net, out, input_size=8, force=True)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left behind

    monkeypatch.undo()
    export_onnx(net, out, input_size=8, force=True)
    onnx.checker.check_model(str(out))


def test_verification_failure_writes_nothing(tmp_path, monkeypatch):
    def disagree(*args, **kwargs):
        raise ExportError("onnxruntime and PyTorch disagree")

    monkeypatch.setattr(E, "verify_onnx", disagree)
    with pytest.raises(ExportError):
        export_onnx(TinyNet(), tmp_path / "m.onnx", input_size=8)
    assert list(tmp_path.iterdir()) == []


def test_input_size_is_needed_for_models_without_a_stem(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(TinyNet(), tmp_path / "m.onnx")


# ---- checkpoints and the command line --------------------------------------------------------------------

def test_export_command_from_checkpoint(tmp_path, capsys, cli, tiny_model):
    model = tiny_model("static")
    save_weights(model, tmp_path / "last.safetensors", metadata={"model_config": model.config, "epoch": "0"})
    out = tmp_path / "model.onnx"
    assert cli(["export", "--checkpoint", str(tmp_path), "--onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime matches PyTorch" in text and "MB" in text
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert np.abs(ort_run(out, x) - model(x).numpy()).max() <= 1e-4
    # A second export without --force is refused and leaves the file as it was.
    before = out.read_bytes()
    assert cli(["export", "--checkpoint", str(tmp_path), "--onnx", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_checkpoint_that_does_not_fit_its_model(tmp_path, capsys, cli):
    static = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10)
    dynamic = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, shuffle="dynamic")
    # Weights of a dynamic model under the config of a static one.
    save_weights(dynamic, tmp_path / "bad.safetensors", metadata={"model_config": static.config, "epoch": "0"})
    with pytest.raises(CheckpointError, match="do not fit"):
        export_onnx(tmp_path / "bad.safetensors", tmp_path / "m.onnx")
    rc = cli(["export", "--checkpoint", str(tmp_path / "bad.safetensors"),
                            "--onnx", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dynshuffle export: error:") and "do not fit" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(FileNotFoundError):
        export_onnx(tmp_path / "nothing.safetensors", tmp_path / "m.onnx")


def test_benchmark_onnx_times_both_and_restores_the_threads(exported, monkeypatch):
    """Each row: onnxruntime and PyTorch timed in turn (`time_pair`) on the same batch; the ratio is theirs."""
    model, result = exported["dynamic"]
    calls = []

    def fake_time_pair(candidate, baseline, device, repeats):
        out_ort, out_pt = candidate()[0], baseline()
        calls.append((out_ort.shape, tuple(out_pt.shape), model.training, repeats))
        return 0.004, 0.002

    monkeypatch.setattr(E, "time_pair", fake_time_pair)
    before = torch.get_num_threads()
    model.train()
    rows = benchmark_onnx(model, result.path, 32, batches=(1, 3), repeats=2, threads=1)
    assert rows == [{"batch": b, "threads": 1, "onnxruntime_ms": 4.0, "pytorch_ms": 2.0, "ratio": 2.0} for b in (1, 3)]
    assert calls == [((1, 10), (1, 10), False, 2), ((3, 10), (3, 10), False, 2)]  # timed as deployed
    assert torch.get_num_threads() == before and model.training
