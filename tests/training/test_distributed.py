"""dynshuffle.training.distributed (and faults): multi-process training: `torchrun --standalone --nproc_per_node=2` (gloo on CPU) for a few steps, and the
faults of a distributed run: a rank killed (torchrun restarts the job) and a rank that hangs (train.dist_timeout)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynshuffle import checkpoints as ckpt
from dynshuffle.training import faults, loop
from dynshuffle.training.config import Config, apply_overrides
from dynshuffle.training.distributed import DistContext, all_reduce_sum, average_buffers, setup, timed_out
from dynshuffle.utils import read_csv

# `train` as the CLI runs it, then every process writes the weights it ended with to debug/rank<N>.safetensors.
RUNNER = """\
import os, sys
from dynshuffle import checkpoints as ckpt
from dynshuffle.training.config import load_config
from dynshuffle.training.loop import train

config, out = sys.argv[1], sys.argv[2]
result = train(load_config(config), out)
ckpt.save_weights(result["model"], os.path.join(out, "debug", f"rank{os.environ['RANK']}.safetensors"))
"""


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def _two_process_config(folder, *overrides: str) -> Path:
    """2 epochs of 3 steps (global batch 32, 16 per process), dynamic shuffles, straight-through in epoch 2."""
    cfg = apply_overrides(Config(), [
        "data.name=digits", "data.batch_size=32", "data.eval_batch_size=60", "data.workers=0",
        "train.epochs=2", "train.steps_per_epoch=3", "train.eval_steps=2", "train.device=cpu",
        "model.shuffle=dynamic", "shuffle.ste_fraction=0.5", "log.tensorboard=false", "log.progress=false",
        *overrides])
    config = folder / "cfg.yaml"
    config.write_text(cfg.to_yaml())
    return config


def _env(**extra) -> dict:
    """One thread per process (the same count in every run compared), no torchrun variables inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", faults.ENV)}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """(config, run folder) of one uninterrupted 2-process run: the reference of the fault tests below."""
    folder = tmp_path_factory.mktemp("straight")
    config = _two_process_config(folder)
    runner = folder / "runner.py"
    runner.write_text(RUNNER)
    run = folder / "run"
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", str(runner), str(config), str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return config, run, proc.stdout


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(straight_run):
    _, run, stdout = straight_run
    # rank 0 alone logs: one summary line per epoch, not two
    assert stdout.count("epoch 1/2") == 1 and stdout.count("epoch 2/2") == 1, stdout

    for name in ("config.yaml", "log.csv", "last.safetensors", "last.state.pt", "best.safetensors", "best.state.pt"):
        assert (run / name).is_file(), name
    _, rows = read_csv(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["shuffle_mode"] for r in rows] == ["soft", "ste"]
    rank0, _ = ckpt.load_weights(run / "debug" / "rank0.safetensors")
    rank1, _ = ckpt.load_weights(run / "debug" / "rank1.safetensors")
    saved, _, state = ckpt.load_checkpoint(run)
    assert state["epoch"] == 2 and len(state["rng_ranks"]) == 2  # each process's random streams
    assert rank0.keys() == rank1.keys() == saved.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved[key]), key


# The config trained eager, then compiled, in one torchrun job: every process joins the process group once (train
# uses a group that is already there and leaves it in place) and writes the weights of each run as RUNNER does.
EAGER_THEN_COMPILED = """\
import os, sys
import torch.distributed as dist
from dynshuffle import checkpoints as ckpt
from dynshuffle.training.config import apply_overrides, load_config
from dynshuffle.training.loop import train

config, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
for setting in ("off", "default"):
    run = os.path.join(out, setting)
    result = train(apply_overrides(load_config(config), [f"train.compile={setting}"]), run)
    ckpt.save_weights(result["model"], os.path.join(run, "debug", f"rank{os.environ['RANK']}.safetensors"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_compiled_matches_the_eager_run(tmp_path, small_model, small_model_code):
    """train.compile under DDP (the DDP module compiled, as PyTorch advises): both ranks end with the same
    weights, those of the eager two-process run up to float rounding. The `eager` backend (dynamo and its
    DDPOptimizer, no AOTAutograd: twice as fast to compile) and the conftest's small model (4 ShuffleNetV2
    units, every kind: a quarter of the graph to trace), both runs in one job (one start of the processes),
    keep this test short; tests/training/test_compile.py runs the compiled forward and backward with
    aot_eager."""
    config = _two_process_config(tmp_path, f"model.name={small_model}")
    runner = tmp_path / "runner.py"
    runner.write_text(small_model_code + EAGER_THEN_COMPILED)
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", str(runner), str(config), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=_env(**{loop.COMPILE_BACKEND_ENV: "eager"}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, _ = ckpt.load_weights(tmp_path / "default" / "debug" / "rank0.safetensors")
    rank1, _ = ckpt.load_weights(tmp_path / "default" / "debug" / "rank1.safetensors")
    eager, _ = ckpt.load_weights(tmp_path / "off" / "debug" / "rank0.safetensors")
    assert rank0.keys() == rank1.keys() == eager.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)


TRAIN = ["-m", "dynshuffle.cli", "train"]  # torchrun ... -m dynshuffle.cli train ..., as docs/training.md writes it


@pytest.mark.slow
def test_a_killed_rank_restarts_and_ends_with_the_straight_runs_weights(tmp_path, straight_run):
    """Rank 1 is SIGKILLed at global step 4 (epoch 2, step 2) on the first attempt; torchrun restarts both
    processes with the same command line, --resume auto continues from epoch 1's checkpoint, and the job
    ends with the weights of the uninterrupted run. "The same" is bit-exact (torch.equal on every tensor):
    each process's RNG streams are restored from the checkpoint, the data order and the augmentation are
    functions of (seed, epoch, rank), and the gradient all-reduce of 2 processes sums 2 numbers, exactly
    alike in both runs. (Both runs use one thread per process: the thread count can change float sums.)"""
    config, straight, _ = straight_run
    run = tmp_path / "run"
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: see docs/training.md, "Faults" (pytorch/pytorch#135712)
    env = _env(**{faults.ENV: "kill:1:4", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "--max-restarts=1", *TRAIN,
           "--config", str(config), "--out", str(run), "--resume", "auto"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "rank 1 kills itself at step 4" in log and "exitcode: -9" in log  # the fault did happen
    assert proc.stdout.count("starting a new run") == 1  # first attempt
    assert f"resume: {run} from epoch 1/2" in proc.stdout  # second attempt

    expected, _, _ = ckpt.load_checkpoint(straight)
    got, _, state = ckpt.load_checkpoint(run)
    assert state["epoch"] == 2 and expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    timing = ("images_per_s", "seconds")
    for a, b in zip(read_csv(straight / "log.csv")[1], read_csv(run / "log.csv")[1], strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


@pytest.mark.slow
def test_a_hung_rank_stops_the_job_within_the_timeout(tmp_path, straight_run):
    """Rank 1 stops responding at global step 4 (epoch 2); rank 0 waits in a collective for
    train.dist_timeout seconds, then stops with an error naming the collective, its rank and the
    checkpoint to continue from; epoch 1's checkpoint is intact."""
    config, _, _ = straight_run
    run, timeout = tmp_path / "run", 5
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", *TRAIN, "--config", str(config),
           "--out", str(run), "--set", f"train.dist_timeout={timeout}"]
    with open(out, "w") as out_fh, open(err, "w") as err_fh:
        proc = subprocess.Popen(cmd, stdout=out_fh, stderr=err_fh, env=_env(**{faults.ENV: "hang:1:4"}))
        try:
            deadline = time.monotonic() + 240
            while not (run / "last.state.pt").exists():  # epoch 1 saved: the hang comes next
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(0.05)
            saved_at = time.monotonic()
            proc.wait(timeout=timeout + 60)
            waited = time.monotonic() - saved_at
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = err.read_text()
    assert proc.returncode != 0 and "rank 1 hangs at step 4" in out.read_text()
    # Epoch 2's first step, the hang, the timeout, rank 0's exit, torchrun stopping rank 1: the margin is
    # for a machine shared with other jobs; without train.dist_timeout gloo would wait 30 minutes.
    assert waited < timeout + 25, waited
    # Which collective rank 0 waits in (the DDP forward's buffer broadcast, the non-finite-loss all_reduce, the
    # gradient all-reduce) depends on how far gloo lets it run ahead; the message names the one it was in.
    named = re.search(r"dynshuffle train: error: rank 0 of 2: the (DDP forward's buffer broadcast|non-finite-loss "
                      r"all_reduce|DDP gradient all-reduce) of training step [12] of epoch 2 did not complete "
                      rf"within train.dist_timeout={timeout} s", stderr)
    assert named, stderr[-3000:]
    assert f"{run} holds the checkpoint of epoch 1: continue it with --resume auto" in stderr
    _, _, state = ckpt.load_checkpoint(run)
    assert state["epoch"] == 1 and not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.ones(3)
    assert torch.equal(all_reduce_sum(t, ctx), torch.ones(3))
    bn = torch.nn.BatchNorm1d(2)
    average_buffers(bn, DistContext())
    assert torch.equal(bn.running_mean, torch.zeros(2))


def test_fault_hook_fires_on_the_first_attempt_only_and_the_restart_note(monkeypatch):
    monkeypatch.setenv(faults.ENV, "kill:1:4")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert faults.from_env(0) is None  # another rank's fault
    hook = faults.from_env(1)
    assert hook is not None and hook(3) is None  # not its step: nothing happens
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert faults.from_env(1) is None  # a restarted worker runs clean
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv(faults.ENV, "explode:1:4")
    with pytest.raises(ValueError, match="DYNSHUFFLE_FAULT='explode:1:4': expected ACTION:RANK:STEP"):
        faults.from_env(1)

    from dynshuffle.training.distributed import restart_store_note

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in restart_store_note()
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # no restart: nothing to warn about
    assert restart_store_note() is None
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # the workaround in place
    assert restart_store_note() is None


@pytest.mark.parametrize("message,expected", [
    ("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 3000ms for recv operation to complete", True),
    ("[../gloo/transport/tcp/pair.cc:598] Connection closed by peer: Application timeout caused pair closure", True),
    ("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE) ran for 600000 "
     "milliseconds before timing out.", True),
    ("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242", False),
])
def test_timed_out_recognises_the_backends_timeout_wordings(message, expected):
    assert timed_out(RuntimeError(message)) is expected
    assert not timed_out(ValueError(message))
