"""dynshuffle.training.loop: the training loop end to end on tiny data: run folder, every dataset kind, resume
(exact and after SIGKILL), NaN stop, corrupt checkpoints, gradient clipping, `dynshuffle train` and `eval`."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from dynshuffle import checkpoints as ckpt
from dynshuffle.cli import main as cli_main
from dynshuffle.models.registry import create_model
from dynshuffle.training.config import Config
from dynshuffle.training.evaluate import evaluate_checkpoint
from dynshuffle.training.logging import COLUMNS
from dynshuffle.training.loop import NonFiniteLossError, RunFolderError, train
from dynshuffle.utils import read_csv, write_csv


def read_rows(path):
    return read_csv(path)[1]


def test_run_folder_is_complete(tmp_path, tiny_config):
    cfg = tiny_config(**{"shuffle.penalty_free_fraction": 0.5})
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "last.safetensors", "last.state.pt", "best.safetensors", "best.state.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp")), "temporary files left behind"
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()

    rows = read_rows(run / "log.csv")
    assert list(rows[0]) == COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["shuffle_mode"] for r in rows] == ["soft", "ste"]  # the last 50 % straight-through
    for r in rows:  # dynamic model: top-1 with the hard permutation and with the soft matrices
        assert r["val_top1_soft"] != "" and r["val_top1_hard"] == r["val_top1"]
        assert float(r["penalty"]) >= 0 and float(r["images_per_s"]) > 0 and float(r["seconds"]) > 0
    # No penalty while exploring (the first 50 % of steps), full weight in the straight-through phase;
    # the column holds the weight of the epoch's last step.
    assert [float(r["lambda"]) for r in rows] == [0.0, pytest.approx(1.0)]
    assert result["final"]["epoch"] == 2

    tensors, meta, state = ckpt.load_checkpoint(run / "last.safetensors")
    assert meta["epoch"] == "2" and meta["model_config"]["shuffle"] == "dynamic"
    assert meta["config"] == cfg.to_dict()
    for key in ("optimizer", "step", "scaler", "rng", "epoch", "config", "best_top1", "history"):
        assert key in state, key
    assert "scheduler" not in state  # the lr is a function of the step
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert state["step"] == 6  # per-iteration schedule: 2 epochs x 3 steps
    model, _ = ckpt.build_model_from_checkpoint(run / "last.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, tensors[k])


def test_existing_run_needs_resume_or_overwrite(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.epochs": 1, "train.steps_per_epoch": 1, "model.shuffle": "static"})
    train(cfg, tmp_path / "run")
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(cfg, tmp_path / "run")
    train(cfg, tmp_path / "run", overwrite=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(cfg, tmp_path / "other", resume=True)


def test_missing_data_fails_before_the_run_folder_is_written(tmp_path, tiny_config, capsys):
    from dynshuffle.data.errors import DataError

    cfg = tiny_config(**{"data.name": "cifar10"})
    with pytest.raises(DataError, match="cifar10 needs a data folder: pass root=PATH"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dataset", ["cifar10", "tiny-imagenet", "imagenet"])
def test_one_short_run_per_dataset_kind(tmp_path, dataset, tiny_config, dataset_tree):
    root = dataset_tree(dataset, tmp_path / "data")
    batch = 16 if dataset == "cifar10" else 4
    cfg = tiny_config(**{"data.name": dataset, "data.batch_size": batch, "data.eval_batch_size": 8,
                         "train.epochs": 1, "train.steps_per_epoch": 2,
                         # the folder datasets decode in DataLoader worker processes
                         "data.workers": 0 if dataset == "cifar10" else 1})
    result = train(cfg, tmp_path / "run", data_root=str(root))
    row = result["final"]
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"]) and 0 <= row["val_top1"] <= 1
    expected_count = {"cifar10": 20, "tiny-imagenet": 2, "imagenet": 2}[dataset]
    _, meta = ckpt.build_model_from_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["model_config"]["stem"] == {"cifar10": "cifar", "tiny-imagenet": "tiny", "imagenet": "imagenet"}[dataset]
    report = evaluate_checkpoint(tmp_path / "run", data_root=str(root), batch_size=8)
    assert report["hard"]["count"] == expected_count and report["soft"] is not None


@pytest.mark.parametrize("variant", [{"model.shuffle": "dynamic"}, {"model.shuffle": "static", "model.pointwise": "sds"}])
def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path, variant, tiny_config, small_model):
    # the small model: three runs of the same steps, and what resume restores (weights, momentum, RNG streams,
    # the schedules' step) does not depend on the depth of the network
    cfg = tiny_config(**variant, **{"shuffle.penalty_free_fraction": 0.5, "model.name": small_model})
    train(cfg, tmp_path / "straight")  # 2 epochs in one go

    one = tmp_path / "resumed"
    _train_first_epoch_only(cfg, one)  # 1 epoch, then the process "stops"
    assert ckpt.load_state(one / "last.state.pt")["epoch"] == 1
    train(cfg, one, resume=True)  # resume for epoch 2

    straight, _, s_state = ckpt.load_checkpoint(tmp_path / "straight")
    resumed, _, r_state = ckpt.load_checkpoint(one)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    timing = ("images_per_s", "seconds")
    for a, b in zip(read_rows(tmp_path / "straight" / "log.csv"), read_rows(one / "log.csv"), strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    for a, b in zip(s_state["optimizer"]["state"].values(), r_state["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def _train_first_epoch_only(cfg: Config, run: Path) -> None:
    """Run `cfg` but stop after its first epoch's checkpoint (as if the job had been preempted there)."""
    original = ckpt.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(run_dir, name, model, state, config=None):
        original(run_dir, name, model, state, config)
        if name == "last":
            write_csv(Path(run_dir) / "log.csv", state["history"], COLUMNS)
            raise Stop

    ckpt.save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            train(cfg, run)
    finally:
        ckpt.save_checkpoint = original


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path, tiny_config, write_yaml, cli_script):
    cfg = tiny_config(**{"train.epochs": 3, "train.steps_per_epoch": 12, "shuffle.eval_soft": False,
                         "log.print_epochs": True})
    config = write_yaml(tmp_path / "cfg.yaml", cfg)
    run = tmp_path / "run"
    runner = cli_script
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(runner), "train", "--config", str(config), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while not (run / "last.state.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "epoch 1 never finished"
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive, "the run finished before it could be killed"
    epoch = ckpt.load_state(run / "last.state.pt")["epoch"]
    assert 1 <= epoch < 3
    ckpt.load_checkpoint(run)  # the pair on disk is consistent

    assert cli_main(["train", "--out", str(run), "--resume"]) == 0  # config from the run folder
    rows = read_rows(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert ckpt.load_state(run / "last.state.pt")["epoch"] == 3


class NaNAfter(nn.Module):
    """A small classifier whose training forwards return NaN after `after` calls."""

    def __init__(self, after: int):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)
        self.after, self.calls = after, 0

    def forward(self, x):
        y = self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                y = y * float("nan")
        return y


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, tiny_config, write_yaml):
    run = tmp_path / "run"
    cfg = tiny_config(**{"train.epochs": 3})
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 1"):
        train(cfg, run, model=NaNAfter(after=3))  # epoch 1 = 3 good steps
    tensors, meta, state = ckpt.load_checkpoint(run)
    assert state["epoch"] == 1 and meta["epoch"] == "1"
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert len(read_rows(run / "log.csv")) == 1 and not list(run.glob(".*.tmp"))
    assert issubclass(NonFiniteLossError, ValueError)  # the CLI shows it as one line

    # Through the CLI: exit code 2, one line on stderr.
    import dynshuffle.training.loop as loop

    monkeypatch.setattr(loop, "build_model", lambda *a, **k: NaNAfter(after=0))
    config = write_yaml(tmp_path / "cfg.yaml", cfg)
    capsys.readouterr()
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynshuffle train: error: loss is nan at epoch 1, step 1") and "\n" not in err


def test_corrupt_checkpoints_name_the_file(tmp_path, capsys, tiny_config):
    run = tmp_path / "run"
    cfg = tiny_config(**{"train.epochs": 1, "train.steps_per_epoch": 1, "model.shuffle": "static"})
    train(cfg, run)
    weights, state = run / "last.safetensors", run / "last.state.pt"

    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ckpt.CheckpointError, match="last.safetensors"):
        ckpt.load_checkpoint(run)
    with pytest.raises(ckpt.CheckpointError, match="last.safetensors"):
        train(cfg, run, resume=True)
    weights.write_bytes(b"\x00garbage" * 10)
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(weights)]) == 2
    assert "last.safetensors" in capsys.readouterr().err

    weights.write_bytes(good)
    state.write_bytes(os.urandom(300))
    with pytest.raises(ckpt.CheckpointError, match="last.state.pt"):
        train(cfg, run, resume=True)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ckpt.load_checkpoint(run / "missing.safetensors")


def test_cli_train_then_eval(tmp_path, capsys, tiny_config, write_yaml):
    cfg = tiny_config(**{"train.epochs": 1})
    config = write_yaml(tmp_path / "cfg.yaml", cfg)
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--out", str(out), "--set", "optim.lr=0.05"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.05
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(out / "best.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "(hard permutation)" in text and "(soft matrices" in text
    assert "params 0.3" in text and "multiply-adds 10." in text

    # bad keys and types: one line naming the key
    for bad, needle in (("optim.lrr=1", "unknown config key 'optim.lrr'"),
                        ("train.epochs=two", "'train.epochs': expected int, got 'two'")):
        assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "x"), "--set", bad]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "nothing.safetensors")]) == 2
    assert "nothing.safetensors" in capsys.readouterr().err


def test_lr_scales_with_batch_and_warms_up_per_iteration(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.epochs": 1, "train.steps_per_epoch": 4, "schedule.warmup_epochs": 1.0,
                         "schedule.name": "constant", "optim.lr": 0.1, "optim.base_batch_size": 64,
                         "model.shuffle": "static"})
    result = train(cfg, tmp_path / "run")
    # batch 32 / base 64 -> peak 0.05; warm-up over the 4 steps -> after the last step the factor is 1
    assert result["final"]["lr"] == pytest.approx(0.05)
    assert [r["lr"] for r in result["history"]] == [pytest.approx(0.05)]


def test_resume_takes_new_lr_and_epochs_but_refuses_model_changes(tmp_path, capsys, tiny_config, write_yaml):
    cfg = tiny_config(**{"train.epochs": 1, "model.shuffle": "static", "schedule.name": "constant",
                         "schedule.warmup_epochs": 0, "optim.lr": 0.1, "optim.base_batch_size": "null"})
    config = write_yaml(tmp_path / "cfg.yaml", cfg)
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli_main(["train", "--out", str(run), "--resume", "--set", "optim.lr=0.5",
                     "--set", "train.epochs=2"]) == 0
    assert "optim.lr: 0.1 -> 0.5" in capsys.readouterr().out
    assert [float(r["lr"]) for r in read_rows(run / "log.csv")] == [pytest.approx(0.1), pytest.approx(0.5)]
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.5

    before = (run / "last.state.pt").read_bytes()
    for override, key in (("model.name=shufflenet_v2_x1_0", "model.name"), ("data.batch_size=16", "data.batch_size")):
        assert cli_main(["train", "--out", str(run), "--resume", "--set", "train.epochs=3", "--set", override]) == 2
        err = capsys.readouterr().err
        assert f"--resume cannot change {key}" in err and err.count("\n") == 1
    assert (run / "last.state.pt").read_bytes() == before
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.5  # config.yaml untouched


def test_resume_takes_the_optimizer_settings_of_the_config_and_refuses_a_new_generator_group(
        tmp_path, capsys, tiny_config, write_yaml):
    """The checkpoint gives the momentum buffers; weight decay and the generators' lr scale come from the config
    in use. Adding the generators' own group on resume is refused in one line, before anything is written."""
    cfg = tiny_config(**{"train.epochs": 1, "model.shuffle": "dynamic"})
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(write_yaml(tmp_path / "cfg.yaml", cfg)), "--out", str(run)]) == 0
    before = (run / "last.state.pt").read_bytes()
    assert cli_main(["train", "--out", str(run), "--resume", "--set", "train.epochs=2",
                     "--set", "optim.generator_lr_scale=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot change the optimizer's parameter groups: the run's has 2, this config builds 3" in err
    assert "optim.generator_lr_scale" in err and err.count("\n") == 1
    assert (run / "last.state.pt").read_bytes() == before
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["generator_lr_scale"] is None
    assert cli_main(["train", "--out", str(run), "--resume", "--set", "train.epochs=2",
                     "--set", "optim.weight_decay=0.01"]) == 0
    groups = torch.load(run / "last.state.pt", weights_only=False)["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0


def test_nan_message_says_what_the_run_folder_holds(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.epochs": 2, "model.shuffle": "static"})
    with pytest.raises(NonFiniteLossError) as first:
        train(cfg, tmp_path / "early", model=NaNAfter(after=0))
    text = str(first.value)
    assert "No checkpoint was written" in text and "--overwrite --set optim.lr=" in text
    assert "kept" not in text and not (tmp_path / "early" / "last.state.pt").exists()
    with pytest.raises(NonFiniteLossError) as later:
        train(cfg, tmp_path / "later", model=NaNAfter(after=3))
    text = str(later.value)
    assert "holds the checkpoint of epoch 1" in text and "--resume --set optim.lr=" in text


def test_train_leaves_the_config_alone_and_names_a_given_module(tmp_path, capsys, tiny_config):
    cfg = tiny_config(**{"train.epochs": 1, "train.steps_per_epoch": 1, "log.print_epochs": True})
    before = cfg.to_dict()
    module = NaNAfter(after=10)
    train(cfg, tmp_path / "run", model=module, data_root=str(tmp_path / "unused"))
    assert cfg.to_dict() == before  # data_root went into a copy
    out = capsys.readouterr().out
    params = sum(p.numel() for p in module.parameters())
    assert f"train: NaNAfter ({params / 1e6:.3f} M params)" in out and cfg.model.name not in out.split("\n")[0]


def test_dynamic_models_log_data_dependence(tmp_path, tiny_config):
    from dynshuffle.data.registry import build_datasets, get_dataset_spec
    from dynshuffle.data.transforms import BatchTransform
    from dynshuffle.training.evaluate import dynamic_dependence
    from dynshuffle.training.loop import DEPENDENCE_IMAGES

    result = train(tiny_config(**{"train.epochs": 1}), tmp_path / "run")
    rows = result["history"]
    # The log's columns are the data dependence of the first validation images through the trained model.
    _, val = build_datasets("digits")
    transform = BatchTransform(get_dataset_spec("digits"), train=False)
    images = transform(torch.stack([val[i][0] for i in range(DEPENDENCE_IMAGES)]))
    expected = dynamic_dependence(result["model"], images)
    assert (rows[0]["dynamic_layers"], rows[0]["distinct_median"]) == (expected["dynamic_layers"],
                                                                       expected["distinct_median"])
    assert expected == {"dynamic_layers": 0, "distinct_median": 1.0, "layers": 16}  # 3 steps: still the fixed shuffle
    static = train(tiny_config(**{"train.epochs": 1, "model.shuffle": "static"}), tmp_path / "s")["history"]
    assert static[0]["dynamic_layers"] is None and static[0]["distinct_median"] is None


def test_training_with_a_batch_of_one(tmp_path, tiny_config):
    """A batch of one sample: the generators normalise with their running statistics, nothing is NaN."""
    cfg = tiny_config(**{"data.batch_size": 1, "data.eval_batch_size": 4, "train.epochs": 2,
                         "train.steps_per_epoch": 3, "optim.base_batch_size": "null"})
    result = train(cfg, tmp_path / "run")
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in result["history"])



def test_grad_clip_bounds_the_step(tmp_path, tiny_config):
    """One plain SGD step (no momentum, no weight decay) moves the weights by lr x the clipped gradient, whose
    norm is exactly `optim.grad_clip` when the gradient is larger."""
    settings = {"train.epochs": 1, "train.steps_per_epoch": 1, "optim.momentum": 0.0, "optim.nesterov": False,
                "optim.weight_decay": 0.0, "optim.lr": 0.5, "optim.base_batch_size": "null",
                "schedule.name": "constant", "schedule.warmup_epochs": 0.0}
    steps = {}
    for clip in ("null", 1e-3):
        torch.manual_seed(0)
        model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic")
        before = [p.detach().clone() for p in model.parameters()]
        train(tiny_config(**settings, **{"optim.grad_clip": clip}), tmp_path / str(clip), model=model)
        steps[clip] = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert steps[1e-3].item() == pytest.approx(0.5 * 1e-3, rel=1e-3)
    assert steps["null"].item() > 100 * steps[1e-3].item()  # unclipped, the same step is far larger
