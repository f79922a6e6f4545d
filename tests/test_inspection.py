"""permutation_stats (the numbers), the pictures, and `dynshuffle show`."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import dynshuffle
from dynshuffle import DynamicShuffle, LearnedShuffle, StaticDynamicShuffle
from dynshuffle import functional as DF
from dynshuffle.inspection import (NoShuffleModulesError, collect_inputs, hard_full_matrix, matrices_for_inputs,
                                   permutation_stats, soft_full_matrix)
from dynshuffle.models import create_model



class UserNet(nn.Module):
    """Small network with a shared and a per-group dynamic shuffle, a learned one and an SDS."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.shared = DynamicShuffle(12, 2)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1, groups=12),
                                  DynamicShuffle(12, 3, share=False))
        self.learned = LearnedShuffle(12, 2)
        self.sds = StaticDynamicShuffle(12, 2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = self.body(self.shared(self.stem(x)))
        return self.fc(self.sds(self.learned(x)).mean((2, 3)))


def randomize(model, scale=3.0, seed=0, size=8, calibrate=True):
    """Random shuffle-module weights; each generator's BatchNorm statistics then measured on the pooled
    features it sees in eval mode (as training would), so inputs differ in their permutations."""
    g = torch.Generator().manual_seed(seed)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (DynamicShuffle, LearnedShuffle))}
    model.eval()
    with torch.no_grad():
        for m in dynshuffle.shuffle_modules(model):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        x = torch.randn(16, 3, size, size, generator=g)
        for _ in range(2 if calibrate else 0):
            inputs = collect_inputs(model, x)
            for name, m in layers.items():
                if isinstance(m, DynamicShuffle):
                    z = m.generator.reduce(inputs[name].mean((2, 3)))
                    m.generator.norm.running_mean.copy_(z.mean(0))
                    m.generator.norm.running_var.copy_(z.var(0) + 1e-6)
    return model


def images(n, seed=0, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_fresh_dynamic_model_gives_the_fixed_shuffle_everywhere():
    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, shuffle="dynamic")
    stats = permutation_stats(model, images(6, size=32), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert len(stats) == 16
    for s in stats.values():
        assert s["kind"] == "dynamic" and s["samples"] == 6
        assert s["fixed_fraction"] == 1.0 and s["fixed_channel_agreement"] == 1.0
        assert s["agreement"] == 1.0 and s["distinct"] == 1
        np.testing.assert_allclose(s["class_agreement"], np.ones((3, 3)))
        assert list(s["classes"]) == [0, 1, 2]
        # Initialised at softmax confidence 0.9 on the diagonal: near, not at, a permutation.
        # confidence 0.9 puts 1/n + 0.9 (1 - 1/n) on the diagonal
        assert s["row_max_a"] == pytest.approx(1 / s["n1"] + 0.9 * (1 - 1 / s["n1"]), abs=1e-4)
        assert s["row_max_b"] == pytest.approx(1 / s["n2"] + 0.9 * (1 - 1 / s["n2"]), abs=1e-4)
        assert s["penalty"] > 0
    assert all(m.training for m in [model])  # the model's mode is restored (it was built in train mode)


def test_random_generators_give_input_dependent_permutations():
    model = randomize(UserNet())
    x = images(24)
    labels = torch.arange(24) % 3
    stats = permutation_stats(model, x, labels, batch_size=10)
    assert set(stats) == {"shared", "body.2", "learned", "sds.dynamic"}
    for name, s in stats.items():
        for key in ("row_max_a", "row_max_b", "min_row_max_a", "min_row_max_b"):
            assert 0 < s[key] <= 1
        assert s["min_row_max_a"] <= s["row_max_a"]
        assert s["penalty"] >= 0 and 1 <= s["distinct"] <= 24
        assert 0 <= s["agreement"] <= 1
        m = s["class_agreement"]
        assert m.shape == (3, 3) and np.allclose(m, m.T)
    assert stats["learned"]["distinct"] == 1 and stats["learned"]["agreement"] == 1.0
    assert stats["learned"]["kind"] == "learned"
    assert stats["shared"]["agreement"] < 1 and stats["shared"]["distinct"] > 1
    assert stats["body.2"]["agreement"] < 1


def test_stats_agree_with_module_permutation_and_regularization():
    model = randomize(UserNet(), seed=1)
    x, labels = images(12, seed=3), torch.tensor([0, 1, 2, 3] * 3)
    stats = permutation_stats(model, x, labels, keep_permutations=True)
    inputs = collect_inputs(model, x)
    for name, module in [("shared", model.shared), ("body.2", model.body[2]), ("sds.dynamic", model.sds.dynamic)]:
        perms = module.permutation(inputs[name])
        assert torch.equal(stats[name]["permutations"], perms)
        fixed = DF.channel_shuffle_index(12, module.groups)
        assert stats[name]["distinct"] == len({tuple(p.tolist()) for p in perms})
        assert stats[name]["fixed_fraction"] == pytest.approx(float((perms == fixed).all(1).float().mean()))
        # Brute-force pairwise agreement, overall and per class.
        pairs = [(i, j) for i, j in itertools.combinations(range(12), 2)]
        brute = np.mean([float((perms[i] == perms[j]).float().mean()) for i, j in pairs])
        assert stats[name]["agreement"] == pytest.approx(brute)
        for a, b in [(0, 0), (0, 1), (2, 3)]:
            pa = [i for i in range(12) if labels[i] == a]
            pb = [j for j in range(12) if labels[j] == b]
            vals = [float((perms[i] == perms[j]).float().mean()) for i in pa for j in pb if i != j]
            assert stats[name]["class_agreement"][a, b] == pytest.approx(np.mean(vals))
        # The penalty is the module's own regularization of a soft forward on the same input.
        old = module.mode
        module.mode = "soft"
        with torch.no_grad():
            module(inputs[name])
        module.mode = old
        assert stats[name]["penalty"] == pytest.approx(float(module.regularization), rel=1e-5)
        a, b = module.soft_matrices(inputs[name])
        assert stats[name]["row_max_a"] == pytest.approx(float(a.amax(-1).mean()), rel=1e-5)


def test_single_sample_class_and_single_image():
    model = randomize(UserNet())
    stats = permutation_stats(model, images(3), torch.tensor([0, 0, 1]))
    s = stats["shared"]
    assert math.isnan(s["class_agreement"][1, 1]) and not math.isnan(s["class_agreement"][0, 0])
    one = permutation_stats(model, images(1))
    assert math.isnan(one["shared"]["agreement"]) and one["shared"]["distinct"] == 1


def test_full_matrices_match_the_module():
    """soft_full_matrix is the C x C map the soft path applies; with binarized factors it is the permutation."""
    for module in (randomize(DynamicShuffle(12, 2), calibrate=False),
                   randomize(DynamicShuffle(12, 3, share=False), calibrate=False)):
        x = torch.randn(2, 12, 3, 3)
        a, b = module.soft_matrices(x)
        soft = soft_full_matrix(a[0], b[0], module.groups)
        expected = DF.kron_shuffle(x[:1], a[:1], b[:1], module.groups)
        assert torch.allclose(torch.einsum("oc,nchw->nohw", soft, x[:1]), expected, atol=1e-5)
        la, lb = module.logits(x)
        pa, pb = module._squeeze_groups(DF.binarize(la)), module._squeeze_groups(DF.binarize(lb))
        hard = soft_full_matrix(DF.one_hot_permutation(pa[0]), DF.one_hot_permutation(pb[0]), module.groups)
        assert torch.equal(hard, hard_full_matrix(module.permutation(x)[0]))
    mats = matrices_for_inputs(randomize(UserNet()), images(2))
    assert mats["body.2"]["a"].shape == (2, 3, 2, 2) and mats["body.2"]["soft"].shape == (2, 12, 12)
    assert torch.equal(mats["shared"]["hard"].sum(-1), torch.ones(2, 12))


def test_bad_input():
    with pytest.raises(NoShuffleModulesError, match="no dynamic or learned shuffle"):
        permutation_stats(create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10), images(2, size=32))
    model = UserNet()
    with pytest.raises(ValueError, match="float tensor"):
        permutation_stats(model, images(2).to(torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        permutation_stats(model, images(2), torch.tensor([0, 1, 2]))


# ---- pictures ---------------------------------------------------------------------------------------------

def test_every_picture_has_title_labels_and_colour_bars(tmp_path, monkeypatch):
    import dynshuffle.plots as P

    figures = []
    original = P._save

    def capture(fig, path):
        figures.append((path.name, fig))
        return original(fig, path)

    monkeypatch.setattr(P, "_save", capture)
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_top1,val_top1_soft,penalty,shuffle_mode\n"
                   "0,2.0,0.3,0.35,4.0,soft\n1,1.5,0.5,0.52,1.0,soft\n2,1.2,0.6,0.6,0.1,ste\n")
    x, labels = images(10), torch.arange(10) % 3
    written = P.render_report(randomize(UserNet()), x, labels, tmp_path / "pics", log_csv=log, n_inputs=2)
    names = sorted(p.name for p in written)
    assert names == sorted(["matrices_shared.png", "matrices_body.2.png", "matrices_learned.png",
                            "matrices_sds.dynamic.png", "class_agreement.png", "sample_agreement.png",
                            "closeness.png", "diversity.png", "training.png", "stats.json"])
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, fig in figures:
        colorbar_axes = {id(im.colorbar.ax) for ax in fig.axes for im in ax.images if im.colorbar is not None}
        plotted = [ax for ax in fig.axes if id(ax) not in colorbar_axes and ax.axison]
        assert plotted, name
        for ax in plotted:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
        if any(ax.images for ax in plotted):
            assert colorbar_axes, f"{name}: heatmaps without a colour bar"
    stats = json.loads((tmp_path / "pics" / "stats.json").read_text())
    assert stats["shared"]["distinct"] >= 1 and len(stats["shared"]["class_agreement"]) == 3


def test_render_report_refuses_to_overwrite(tmp_path):
    import dynshuffle.plots as P

    out = tmp_path / "pics"
    out.mkdir()
    (out / "closeness.png").write_bytes(b"mine")
    model = randomize(UserNet())
    with pytest.raises(FileExistsError, match="closeness.png"):
        P.render_report(model, images(4), torch.arange(4) % 2, out)
    assert (out / "closeness.png").read_bytes() == b"mine" and len(list(out.iterdir())) == 1
    P.render_report(model, images(4), torch.arange(4) % 2, out, force=True, n_inputs=1, layers=["shared"])
    assert (out / "matrices_shared.png").exists() and not (out / "matrices_learned.png").exists()
    assert (out / "closeness.png").read_bytes() != b"mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="no shuffle layer matches"):
        P.render_report(model, images(4), torch.arange(4) % 2, out, force=True, layers=["nothing*"])
    with pytest.raises(NotADirectoryError):
        P.render_report(model, images(4), torch.arange(4) % 2, tmp_path / "file")


# ---- the command -------------------------------------------------------------------------------------------

def _cli(monkeypatch, argv):
    from dynshuffle import cli

    monkeypatch.setattr(cli, "COMMANDS", {argv[0]: cli.COMMANDS[argv[0]]})
    return cli.main(argv)


def _checkpoint(folder, **kwargs):
    from dynshuffle.training.checkpoint import save_weights

    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "last.safetensors",
                 metadata={"model_config": model.config, "epoch": "2", "config": {"data": {"name": "digits"}}})
    return model


def test_show_command(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _checkpoint(run, shuffle="dynamic")
    (run / "log.csv").write_text("epoch,val_top1,val_top1_hard,val_top1_soft,penalty\n0,0.2,0.2,0.3,5\n1,0.4,0.4,0.5,2\n")
    out = tmp_path / "pics"
    # Two layers keep the test short; render_report above covers a whole model's pictures.
    argv = ["show", "--checkpoint", str(run), "--samples", "6", "--inputs", "1", "--out", str(out),
            "--layers", "stage2.0.*", "--layers", "stage4.3.*"]
    assert _cli(monkeypatch, argv) == 0
    files = sorted(p.name for p in out.iterdir())
    assert [f for f in files if f.startswith("matrices_")] == ["matrices_stage2.0.shuffle.png",
                                                                "matrices_stage4.3.shuffle.png"]
    assert {"class_agreement.png", "sample_agreement.png", "closeness.png", "diversity.png", "training.png",
            "stats.json"} <= set(files)
    stats = json.loads((out / "stats.json").read_text())
    assert sorted(stats) == ["stage2.0.shuffle", "stage4.3.shuffle"]
    assert all(s["fixed_fraction"] == 1.0 for s in stats.values())  # a fresh model: the fixed shuffle
    assert "6 digits val images" in capsys.readouterr().out

    # Existing pictures are not overwritten without --force.
    before = (out / "closeness.png").stat().st_mtime_ns
    assert _cli(monkeypatch, argv) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "closeness.png").stat().st_mtime_ns == before


def test_show_command_errors(tmp_path, monkeypatch, capsys):
    _checkpoint(tmp_path / "static")
    rc = _cli(monkeypatch, ["show", "--checkpoint", str(tmp_path / "static"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no dynamic or learned shuffle" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "afile").write_text("x")
    _checkpoint(tmp_path / "dyn", shuffle="dynamic")
    rc = _cli(monkeypatch, ["show", "--checkpoint", str(tmp_path / "dyn"), "--out", str(tmp_path / "afile")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err
    rc = _cli(monkeypatch, ["show", "--checkpoint", str(tmp_path / "dyn"), "--out", str(tmp_path / "o"),
                            "--data", str(tmp_path / "nowhere")])
    assert rc == 2 and "not a dataset name" in capsys.readouterr().err
