"""Test-only fault injection, so the fault tests can break one rank of a real torchrun job at a known step.

    DYNSHUFFLE_FAULT=kill:1:4   rank 1 SIGKILLs itself when it reaches global training step 4
    DYNSHUFFLE_FAULT=hang:1:4   rank 1 stops responding there (sleeps until it is killed)

A fault fires on the first attempt only: torchelastic counts restarts in TORCHELASTIC_RESTART_COUNT, so
the restarted workers of `torchrun --max-restarts=N` run clean and the tests can check the recovery.
Unset (every real run), the loop gets None and checks nothing per step.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

ENV = "DYNSHUFFLE_FAULT"
ACTIONS = ("kill", "hang")


def from_env(rank: int) -> Callable[[int], None] | None:
    """The per-step hook `fault(global_step)` for this rank, or None when no fault applies to it."""
    text = os.environ.get(ENV)
    if not text or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return None
    action, target, step = parse(text)
    if target != rank:
        return None

    def fault(global_step: int) -> None:
        if global_step == step:
            print(f"{ENV}: rank {rank} {'kills itself' if action == 'kill' else 'hangs'} at step {step}",
                  flush=True)
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:
                time.sleep(60)

    return fault


def parse(text: str) -> tuple[str, int, int]:
    """(action, rank, global step) of 'ACTION:RANK:STEP'; ValueError naming the variable otherwise."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ACTIONS or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"{ENV}={text!r}: expected ACTION:RANK:STEP with ACTION one of {', '.join(ACTIONS)}, "
                         f"e.g. kill:1:4")
    return parts[0], int(parts[1]), int(parts[2])
