"""`dynshuffle show` (dynshuffle.commands.show): pictures and statistics of a checkpoint's permutations."""
import json

from dynshuffle.checkpoints import save_weights
from dynshuffle.models.registry import create_model


def _checkpoint(folder, **kwargs):
    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "last.safetensors",
                 metadata={"model_config": model.config, "epoch": "2", "config": {"data": {"name": "digits"}}})
    return model


def test_show_command(tmp_path, monkeypatch, capsys, cli):
    run = tmp_path / "run"
    _checkpoint(run, shuffle="dynamic")
    (run / "log.csv").write_text("epoch,val_top1,val_top1_hard,val_top1_soft,penalty\n0,0.2,0.2,0.3,5\n1,0.4,0.4,0.5,2\n")
    out = tmp_path / "pics"
    # Two layers keep the test short; render_report above covers a whole model's pictures.
    argv = ["show", "--checkpoint", str(run), "--samples", "6", "--inputs", "1", "--out", str(out),
            "--layers", "stage2.0.*", "--layers", "stage4.3.*"]
    assert cli(argv) == 0
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
    assert cli(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "closeness.png").stat().st_mtime_ns == before


def test_show_command_errors(tmp_path, monkeypatch, capsys, cli):
    _checkpoint(tmp_path / "static")
    rc = cli(["show", "--checkpoint", str(tmp_path / "static"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no dynamic or learned shuffle" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "afile").write_text("x")
    _checkpoint(tmp_path / "dyn", shuffle="dynamic")
    rc = cli(["show", "--checkpoint", str(tmp_path / "dyn"), "--out", str(tmp_path / "afile")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err
    rc = cli(["show", "--checkpoint", str(tmp_path / "dyn"), "--out", str(tmp_path / "o"),
                            "--data", str(tmp_path / "nowhere")])
    assert rc == 2 and "not a dataset name" in capsys.readouterr().err


def test_the_training_picture_names_the_variant_model_seed_and_folder():
    from dynshuffle.commands.show import run_label

    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, shuffle="static", pointwise="sds")
    assert run_label(model.config, {"train": {"seed": 2}}, "runs/cmp/sds/seed2") == \
        "sds, shufflenet_v2_x0_5, seed 2: runs/cmp/sds/seed2"
    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, shuffle="dynamic")
    assert run_label(model.config, {}, "run") == "dynamic, shufflenet_v2_x0_5: run"
