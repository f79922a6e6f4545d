"""Multi-process training: `torchrun --standalone --nproc_per_node=2` (gloo on CPU) for a few steps."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from dynshuffle.training import checkpoint as ckpt
from dynshuffle.training.config import Config, apply_overrides
from dynshuffle.training.distributed import DistContext, all_reduce_sum, average_buffers, setup
from dynshuffle.training.logging import read_csv

# `train` as the CLI runs it, then every process writes the weights it ended with to debug/rank<N>.safetensors.
RUNNER = """\
import os, sys
from dynshuffle.training import checkpoint as ckpt
from dynshuffle.training.config import load_config
from dynshuffle.training.loop import train

config, out = sys.argv[1], sys.argv[2]
result = train(load_config(config), out)
ckpt.save_weights(result["model"], os.path.join(out, "debug", f"rank{os.environ['RANK']}.safetensors"))
"""


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    cfg = apply_overrides(Config(), [
        "data.name=digits", "data.batch_size=32", "data.eval_batch_size=60", "data.workers=0",
        "train.epochs=2", "train.steps_per_epoch=3", "train.eval_steps=2", "train.device=cpu",
        "model.shuffle=dynamic", "shuffle.ste_fraction=0.5", "log.tensorboard=false", "log.progress=false"])
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.to_yaml())
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", str(runner), str(config), str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # rank 0 alone logs: one summary line per epoch, not two
    assert proc.stdout.count("epoch 1/2") == 1 and proc.stdout.count("epoch 2/2") == 1, proc.stdout

    for name in ("config.yaml", "log.csv", "last.safetensors", "last.state.pt", "best.safetensors", "best.state.pt"):
        assert (run / name).is_file(), name
    rows = read_csv(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["shuffle_mode"] for r in rows] == ["soft", "ste"]
    rank0, _ = ckpt.load_weights(run / "debug" / "rank0.safetensors")
    rank1, _ = ckpt.load_weights(run / "debug" / "rank1.safetensors")
    saved, _, state = ckpt.load_checkpoint(run)
    assert state["epoch"] == 2
    assert rank0.keys() == rank1.keys() == saved.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved[key]), key


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.ones(3)
    assert torch.equal(all_reduce_sum(t, ctx), torch.ones(3))
    bn = torch.nn.BatchNorm1d(2)
    average_buffers(bn, DistContext())
    assert torch.equal(bn.running_mean, torch.zeros(2))
