"""dynshuffle.training.compare (and `dynshuffle compare`) on a tiny setting: 2 variants, 1 seed, 1 short epoch;
the table files, reruns, workers, progress, latency ratios, checks before anything is written, and stopping:
Ctrl-C to the process group, and a killed parent whose workers exit by themselves."""
from __future__ import annotations

import copy
import csv
import json
import os

import pytest
import torch

from dynshuffle.checkpoints import build_model_from_checkpoint
from dynshuffle.cli import main as cli_main
from dynshuffle.profiling.counting import count_macs, count_params
from dynshuffle.training.compare import (COLUMNS, DEFAULT_VARIANTS, MARKER, RUN_LOCK, CompareFolderError, _Claims,
                                         _Progress, base_config, compare)
from dynshuffle.training.recipes import VARIANTS, recipe
from dynshuffle.utils import try_lock

FAST = ["train.steps_per_epoch=3", "train.eval_steps=1", "data.eval_batch_size=90"]


def test_compare_writes_the_table_and_reruns_keep_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    rows = compare(["static", "dynamic"], seeds=1, epochs=1, out=out, overrides=FAST, latency_runs=3, workers=1)
    assert [r["variant"] for r in rows] == ["static", "dynamic"]
    static, dynamic = rows
    for r in rows:  # the profile of the trained model, the accuracy of its result.json
        model, _ = build_model_from_checkpoint(out / r["variant"] / "seed0")
        assert (r["params"], r["macs"]) == (count_params(model), count_macs(model, (3, 32, 32)))
        final = json.loads((out / r["variant"] / "seed0" / "result.json").read_text())["final"]
        assert (r["top1_mean"], r["top5_mean"]) == (final["val_top1"], final["val_top5"])
        assert r["latency_ms"] > 0 and r["top1_std"] == 0.0 and r["seeds"] == 1 and r["epochs"] == 1
    assert static["latency_ratio"] == 1.0 and dynamic["latency_ratio"] > 0  # timed in turn with the fixed model
    assert static["top1_soft_mean"] is None and static["gap"] is None
    assert dynamic["top1_soft_mean"] is not None  # the train/inference gap check
    assert dynamic["gap"] == pytest.approx(dynamic["top1_soft_mean"] - dynamic["top1_mean"])
    assert dynamic["params"] > static["params"]
    # data dependence of the dynamic shuffles, from the trained model on the validation set
    assert static["dynamic_layers"] is None and static["distinct_median"] is None
    # three training steps leave every dynamic layer on the fixed shuffle for every validation image
    assert (dynamic["dynamic_layers"], dynamic["dynamic_layers_total"], dynamic["distinct_median"]) == (0, 16, 1)

    md = (out / "compare.md").read_text()
    assert "| top-1 % (exact permutation) |" in md and "data-dependent layers" in md and "hard" not in md
    assert md.count("\n| static |") == 1 and md.count("\n| dynamic |") == 1
    printed = capsys.readouterr().out
    assert md in printed  # printed as well
    assert "compare: dynamic seed 0 epoch 1/1 top-1 " in printed  # a progress line per epoch
    assert "(runs 1/2 done, " in printed and " elapsed" in printed and "left)" in printed  # runs, time, ETA
    assert "runs 2/2 done" in printed
    assert "this process" in printed  # the thread/worker settings it chose
    with open(out / "compare.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == COLUMNS and [r["variant"] for r in table] == ["static", "dynamic"]
    assert table[0]["top1_soft_mean"] == "" and table[1]["top1_soft_mean"] != ""
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # top-1 against multiply-adds
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # every run's curves
    assert f"{out / 'curves.png'}" in printed
    result = out / "dynamic" / "seed0" / "result.json"
    assert (out / "dynamic" / "seed0" / "last.safetensors").is_file() and result.is_file()

    # The same recipe again: nothing is trained, the table is the same.
    stamp = result.stat().st_mtime_ns
    again = compare(["static", "dynamic"], seeds=1, epochs=1, out=out, overrides=FAST, latency_runs=3, workers=1)
    assert "finished earlier" in capsys.readouterr().out and result.stat().st_mtime_ns == stamp
    assert [r["top1_mean"] for r in again] == [r["top1_mean"] for r in rows]
    # Without the fixed variant, its model is built for the timing; the thread setting is left as it was.
    threads = torch.get_num_threads()
    (only,) = compare(["dynamic"], seeds=1, epochs=1, out=out, overrides=FAST, latency_runs=3, workers=1)
    assert only["latency_ratio"] > 0 and torch.get_num_threads() == threads

    # Results kept without their checkpoints (as committed beside the docs): the table is rebuilt from
    # result.json, with the architecture built from the recipe for the profile and the latency.
    for weights in out.rglob("*.safetensors"):
        weights.unlink()
    for state in out.rglob("*.pt"):
        state.unlink()
    rebuilt = compare(["static", "dynamic"], seeds=1, epochs=1, out=out, overrides=FAST, latency_runs=3, workers=1)
    assert result.stat().st_mtime_ns == stamp  # nothing was trained again
    for before, after in zip(rows, rebuilt):
        assert {k: after[k] for k in ("params", "macs", "top1_mean", "dynamic_layers")} == \
            {k: before[k] for k in ("params", "macs", "top1_mean", "dynamic_layers")}

    # A changed recipe is refused unless overwrite, which trains afresh.
    with pytest.raises(CompareFolderError, match="different recipe.*overwrite=True"):
        compare(["dynamic"], seeds=1, epochs=1, out=out, overrides=FAST + ["optim.lr=0.01"], workers=1)
    compare(["dynamic"], seeds=1, epochs=1, out=out, overrides=FAST + ["optim.lr=0.01"], workers=1,
            latency_runs=1, overwrite=True, verbose=False)
    assert json.loads(result.read_text())["recipe"]["optim"]["lr"] == 0.01


def test_foreign_folder_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CompareFolderError, match="holds no earlier compare") as err:
        compare(["static"], seeds=1, epochs=1, out=tmp_path, overrides=FAST, workers=1)
    assert "overwrite=True" in str(err.value) and "--" not in str(err.value)  # Python names for a Python caller
    assert cli_main(["compare", "--variants", "static", "--out", str(tmp_path)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err  # and flags on the command line
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "static").exists()


def test_compare_cli_two_workers_and_errors(tmp_path, capfd):
    args = ["compare", "--variants", "static", "sds", "--seeds", "1", "--epochs", "1", "--workers", "2",
            "--out", str(tmp_path)]
    for o in FAST:
        args += ["--set", o]
    assert cli_main(args) == 0
    printed = capfd.readouterr().out
    assert "2 worker processes, 1 thread each" in printed
    assert "compare: sds seed 0 epoch 1/1 top-1 " in printed  # from the worker process
    assert "| sds |" in (tmp_path / "compare.md").read_text()
    assert cli_main(["compare", "--variants", "wobbly", "--out", str(tmp_path)]) == 2
    assert "unknown variant 'wobbly'" in capfd.readouterr().err
    assert cli_main(["compare", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert cli_main(["compare", "--data", "cifar10", "--out", str(tmp_path)]) == 2
    assert "--dataset cifar10" in capfd.readouterr().err


@pytest.mark.parametrize("workers", [1, 2])
def test_compares_sharing_a_folder_divide_its_runs(tmp_path, capfd, workers):
    """A run whose folder another process has locked is skipped (and named unfinished in the table); a run
    another process finished after this compare planned it is taken from its result.json, not trained."""
    out = tmp_path / "cmp"
    out.mkdir()
    (out / MARKER).write_text("{}")  # as another compare training seed 0 left them: its marker and its lock
    lock = try_lock(out / "static" / "seed0" / RUN_LOCK)
    try:
        rows = compare(["static"], seeds=2, epochs=1, out=out, overrides=FAST, latency_runs=0, workers=workers)
    finally:
        lock.close()
    printed = capfd.readouterr().out
    assert f"static seed 0: skipped, pid {os.getpid()} on " in printed and "is training it" in printed
    assert not (out / "static" / "seed0" / "result.json").exists()
    assert (out / "static" / "seed1" / "result.json").is_file()
    assert rows[0]["seeds"] == 1 and "**Unfinished** (1 run(s)): static seed 0" in (out / "compare.md").read_text()
    assert "1 of 2 run(s) still training in other processes" in printed

    # Planned while seed 0 was unfinished, then finished by the other process before this one reached it.
    seed1 = json.loads((out / "static" / "seed1" / "result.json").read_text())
    recipe0 = copy.deepcopy(seed1["recipe"])
    recipe0["train"]["seed"] = 0
    finished = {**seed1, "seed": 0, "recipe": recipe0}
    (out / "static" / "seed0" / "result.json").write_text(json.dumps(finished))
    job = {"variant": "static", "seed": 0, "config": recipe0, "run_dir": str(out / "static" / "seed0")}
    got = []
    assert _Claims(False, _Progress([job], 1, 0, False)).take(job, got.append) is False and got == [finished]
    lock = try_lock(out / "static" / "seed0" / RUN_LOCK)  # released again
    assert lock is not None
    lock.close()


def test_base_config_is_the_dataset_recipe_made_quiet():
    assert set(DEFAULT_VARIANTS) <= set(VARIANTS)
    for dataset in ("digits", "cifar10"):
        cfg, ref = base_config(dataset).to_dict(), recipe(dataset).to_dict()
        assert cfg["log"]["tensorboard"] is False and cfg["log"]["print_epochs"] is False
        cfg.pop("log"), ref.pop("log")
        assert cfg == ref
    assert base_config("digits", epochs=2).train.epochs == 2


def test_a_resumed_runs_time_counts_the_epochs_before_its_resume(tmp_path, monkeypatch):
    import dynshuffle.training.compare as compare_module

    def resumed_train(cfg, run_dir, *, resume, overwrite, on_epoch):
        restored = [{"epoch": 1, "seconds": 1000.0}, {"epoch": 2, "seconds": 2000.0}]  # from the checkpoint
        row = {"epoch": 3, "seconds": 0.5}
        on_epoch(row)
        return {"history": restored + [row], "final": row, "model": torch.nn.Linear(2, 2)}

    monkeypatch.setattr(compare_module, "train", resumed_train)
    job = {"config": base_config().to_dict(), "variant": "static", "seed": 0, "run_dir": str(tmp_path),
           "resume": True}
    seconds = compare_module._run_job(job)["seconds"]
    assert 3000.0 < seconds < 3060.0  # the two restored epochs and this call's own time
    assert json.loads((tmp_path / "result.json").read_text())["seconds"] == seconds


def test_a_run_saved_before_a_config_key_existed_keeps_its_recipe():
    from dynshuffle.training.compare import _recipe_key

    current = base_config("digits").to_dict()
    older = base_config("digits").to_dict()
    del older["train"]["resume"], older["data"]["skip_corrupt"]  # keys added after such a run was trained
    assert _recipe_key(older) == _recipe_key(current)
    older["optim"]["lr"] = 0.01
    assert _recipe_key(older) != _recipe_key(current)


# ---------------------------------------------------------------------------------- checks before anything runs

def test_a_dataset_without_data_fails_before_anything_is_planned_or_written(tmp_path, capsys, monkeypatch):
    from dynshuffle.data.errors import DataError

    out = tmp_path / "cmp"
    with pytest.raises(DataError, match=r"cifar10 needs a data folder: pass data_root=PATH \(with download=True"):
        compare(["static"], seeds=1, dataset="cifar10", out=out)
    assert cli_main(["compare", "--dataset", "cifar10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pass --data PATH (with --download to fetch it there)" in err and err.count("\n") == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    assert cli_main(["compare", "--dataset", "cifar10", "--data", str(tmp_path / "bad"), "--out", str(out)]) == 2
    assert "corrupt or truncated archive" in capsys.readouterr().err  # read once, before any run is planned
    assert not out.exists()

    # --download reaches the dataset, once, in this process, before the runs are planned
    seen = []

    def fake_build(name, root=None, download=False):
        seen.append((name, root, download))
        raise DataError("stop here")

    monkeypatch.setattr("dynshuffle.training.compare.build_datasets", fake_build)
    argv = ["compare", "--dataset", "cifar10", "--data", str(tmp_path / "new"), "--download", "--out", str(out)]
    assert cli_main(argv) == 2 and seen == [("cifar10", str(tmp_path / "new"), True)] and not out.exists()


# ---------------------------------------------------------------------------------- stopping

STOP_FAST = ["train.steps_per_epoch=4", "train.eval_steps=1", "data.eval_batch_size=90"]


def _start(tmp_path, args: list[str]):
    """`dynshuffle compare ARGS` in a process group of its own (as a terminal runs it), stdout as lines."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import dynshuffle

    env = {**os.environ, "PYTHONPATH": str(Path(dynshuffle.__file__).parents[1]), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dynshuffle.cli", "compare", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _session_processes(sid: int) -> list[int]:
    """Pids of the live processes of session `sid` (from /proc: no zombies)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _wait_gone(sid: int, seconds: float) -> list[int]:
    import time

    deadline = time.monotonic() + seconds
    while (left := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _kill_session(proc) -> None:
    import os
    import signal

    for pid in _session_processes(proc.pid):
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def test_ctrl_c_stops_every_worker_keeps_checkpoints_and_a_rerun_continues(tmp_path):
    import os
    import signal

    out = tmp_path / "cmp"
    args = ["--variants", "static", "--seeds", "3", "--epochs", "4", "--workers", "2", "--out", str(out)]
    for o in STOP_FAST:
        args += ["--set", o]
    proc = _start(tmp_path, args)
    lines, finished = [], 0
    try:
        for line in proc.stdout:  # Ctrl-C once a run has finished and another is between two epochs
            lines.append(line)
            finished += ": top-1 " in line
            if finished and " epoch " in line and " epoch 4/4 " not in line:
                os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
                break
        else:
            pytest.fail("compare ended before it could be interrupted:\n" + "".join(lines))
        rest = proc.communicate(timeout=60)[0]  # it stops within seconds, not after the other runs
    finally:
        _kill_session(proc)
    assert proc.returncode == 130, "".join(lines) + rest
    assert not _wait_gone(proc.pid, 10)  # no worker left behind
    done = sorted(p.parent.name for p in out.glob("static/seed*/result.json"))
    unfinished = sorted({"seed0", "seed1", "seed2"} - set(done))
    assert done and unfinished
    md = (out / "compare.md").read_text()
    assert "**Unfinished**" in md and all(f"static seed {s[4:]}" in md for s in unfinished)
    assert f"| static (seed{'s' if len(done) > 1 else ''} {', '.join(s[4:] for s in done)} of 3) |" in md
    interrupted = [s for s in unfinished if (out / "static" / s / "last.state.pt").is_file()]
    assert interrupted  # the run in progress keeps its last checkpoint

    # The same compare again: the finished runs are kept, the interrupted one continues from its checkpoint.
    stamps = {s: (out / "static" / s / "result.json").stat().st_mtime_ns for s in done}
    rows = compare(["static"], seeds=3, epochs=4, out=out, overrides=STOP_FAST, latency_runs=1, workers=1,
                   verbose=False)
    assert rows[0]["seeds"] == 3 and "Unfinished" not in (out / "compare.md").read_text()
    assert {s: (out / "static" / s / "result.json").stat().st_mtime_ns for s in done} == stamps
    for s in interrupted:
        logged = [int(r.split(",")[0]) for r in (out / "static" / s / "log.csv").read_text().splitlines()[1:]]
        assert logged == [1, 2, 3, 4]  # resumed: every epoch once


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    import os
    import signal

    args = ["--variants", "static", "--seeds", "2", "--epochs", "200", "--workers", "2", "--out", str(tmp_path / "c"),
            "--set", "train.steps_per_epoch=2", "--set", "train.eval_steps=1", "--set", "data.eval_batch_size=90"]
    proc = _start(tmp_path, args)
    try:
        for line in proc.stdout:
            if " epoch 1/200 " in line:  # a worker is training
                break
        workers = [p for p in _session_processes(proc.pid) if p != proc.pid]
        assert workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert not _wait_gone(proc.pid, 10)  # the workers (and the resource tracker) noticed and exited
    finally:
        _kill_session(proc)


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import dynshuffle

    script = tmp_path / "script.py"
    script.write_text("from dynshuffle.training.compare import compare\n"
                      f"compare(['static', 'dynamic'], seeds=1, epochs=1, out='cmp', overrides={STOP_FAST!r})\n")
    env = {"PYTHONPATH": str(Path(dynshuffle.__file__).parents[1]), "OMP_NUM_THREADS": "1", "PATH": ""}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "a worker process could not start" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr
    assert not list((tmp_path / "cmp").glob("*/seed0/config.yaml"))  # no run was started, by anyone


def _compare_folder(folder, model, rows):
    from dynshuffle.training.compare import format_csv

    folder.mkdir(parents=True)
    (folder / "compare.csv").write_text(format_csv([{"model": model, "epochs": 10, **r} for r in rows]))
    return folder


def test_merge_puts_several_compare_tables_on_one_multiply_add_axis(tmp_path, cli):
    narrow = _compare_folder(tmp_path / "x0_5", "shufflenet_v2_x0_5", [
        {"variant": "static", "params": 352042, "macs": 2920888, "top1_mean": 0.9012, "top1_std": 0.0021, "seeds": 3},
        {"variant": "sds", "params": 277156, "macs": 2220480, "top1_mean": 0.8850, "top1_std": 0.0030, "seeds": 3}])
    wide = _compare_folder(tmp_path / "x0_625", "shufflenet_v2_x0_625", [
        {"variant": "sds", "params": 354244, "macs": 2807772, "top1_mean": 0.9034, "top1_std": 0.0012, "seeds": 2}])
    out = tmp_path / "merged"
    assert cli(["compare", "--merge", str(narrow), str(wide), "--out", str(out), "--title", "SDS at equal cost"]) == 0
    table = (out / "compare.md").read_text().splitlines()
    assert table[0] == "# dynshuffle compare --merge: SDS at equal cost"
    rows = [line for line in table if line.startswith("| shufflenet")]
    assert rows == [  # sorted by multiply-adds
        "| shufflenet_v2_x0_5 | sds | 0.277 M | 2.22 M | 88.50 ± 0.30 | 3 | 10 | x0_5 |",
        "| shufflenet_v2_x0_625 | sds | 0.354 M | 2.81 M | 90.34 ± 0.12 | 2 | 10 | x0_625 |",
        "| shufflenet_v2_x0_5 | static | 0.352 M | 2.92 M | 90.12 ± 0.21 | 3 | 10 | x0_5 |"]
    with open(out / "compare.csv", newline="") as fh:
        merged = list(csv.DictReader(fh))
    assert [(r["model"], r["variant"], r["macs"], r["source"]) for r in merged] == [
        ("shufflenet_v2_x0_5", "sds", "2220480", "x0_5"), ("shufflenet_v2_x0_625", "sds", "2807772", "x0_625"),
        ("shufflenet_v2_x0_5", "static", "2920888", "x0_5")]
    assert (out / "compare.png").stat().st_size > 0


def test_merge_errors_name_the_folder_and_never_overwrite_a_source(tmp_path, cli, capsys):
    from dynshuffle.data.errors import DataError
    from dynshuffle.training.compare import merge_compares

    source = _compare_folder(tmp_path / "a", "m", [{"variant": "static", "params": 1, "macs": 2, "top1_mean": 0.5,
                                                    "top1_std": 0.0, "seeds": 3}])
    before = (source / "compare.csv").read_text()
    with pytest.raises(ValueError, match="one of the folders to merge"):
        merge_compares([source], source, verbose=False)
    assert (source / "compare.csv").read_text() == before
    with pytest.raises(DataError, match=r"missing.*compare\.csv: no such file"):
        merge_compares([source, tmp_path / "missing"], tmp_path / "out", verbose=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "compare.csv").write_text("variant,model,macs,top1_mean,top1_std,seeds\nstatic,m,lots,0.5,0,3\n")
    with pytest.raises(DataError, match=r"compare\.csv, line 2: macs is 'lots', not a number"):
        merge_compares([tmp_path / "bad"], tmp_path / "out", verbose=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "compare.csv").write_text("a,b\n1,2\n")
    assert cli(["compare", "--merge", str(tmp_path / "other"), "--out", str(tmp_path / "out")]) != 0
    assert "is not a compare table: it lacks the column(s) variant, model, macs" in capsys.readouterr().err
