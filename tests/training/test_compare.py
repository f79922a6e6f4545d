"""dynshuffle.training.compare (and `dynshuffle compare`) on a tiny setting: 2 variants, 1 seed, 1 short epoch;
the table files, reruns, workers."""
from __future__ import annotations

import csv
import json

import pytest

from dynshuffle.checkpoints import build_model_from_checkpoint
from dynshuffle.cli import main as cli_main
from dynshuffle.profiling.counting import count_macs, count_params
from dynshuffle.training.compare import COLUMNS, DEFAULT_VARIANTS, CompareFolderError, base_config, compare
from dynshuffle.training.recipes import VARIANTS, recipe

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
    assert "this process" in printed  # the thread/worker settings it chose
    with open(out / "compare.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == COLUMNS and [r["variant"] for r in table] == ["static", "dynamic"]
    assert table[0]["top1_soft_mean"] == "" and table[1]["top1_soft_mean"] != ""
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # top-1 against multiply-adds
    result = out / "dynamic" / "seed0" / "result.json"
    assert (out / "dynamic" / "seed0" / "last.safetensors").is_file() and result.is_file()

    # The same recipe again: nothing is trained, the table is the same.
    stamp = result.stat().st_mtime_ns
    again = compare(["static", "dynamic"], seeds=1, epochs=1, out=out, overrides=FAST, latency_runs=3, workers=1)
    assert "finished earlier" in capsys.readouterr().out and result.stat().st_mtime_ns == stamp
    assert [r["top1_mean"] for r in again] == [r["top1_mean"] for r in rows]

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
    with pytest.raises(CompareFolderError, match="different recipe.*--overwrite"):
        compare(["dynamic"], seeds=1, epochs=1, out=out, overrides=FAST + ["optim.lr=0.01"], workers=1)
    compare(["dynamic"], seeds=1, epochs=1, out=out, overrides=FAST + ["optim.lr=0.01"], workers=1,
            latency_runs=1, overwrite=True, verbose=False)
    assert json.loads(result.read_text())["recipe"]["optim"]["lr"] == 0.01


def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CompareFolderError, match="holds no earlier compare"):
        compare(["static"], seeds=1, epochs=1, out=tmp_path, overrides=FAST, workers=1)
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


def test_base_config_is_the_dataset_recipe_made_quiet():
    assert set(DEFAULT_VARIANTS) <= set(VARIANTS)
    for dataset in ("digits", "cifar10"):
        cfg, ref = base_config(dataset).to_dict(), recipe(dataset).to_dict()
        assert cfg["log"]["tensorboard"] is False and cfg["log"]["print_epochs"] is False
        cfg.pop("log"), ref.pop("log")
        assert cfg == ref
    assert base_config("digits", epochs=2).train.epochs == 2


def test_a_run_saved_before_a_config_key_existed_keeps_its_recipe():
    from dynshuffle.training.compare import _recipe_key

    current = base_config("digits").to_dict()
    older = base_config("digits").to_dict()
    del older["train"]["resume"], older["data"]["skip_corrupt"]  # keys added after such a run was trained
    assert _recipe_key(older) == _recipe_key(current)
    older["optim"]["lr"] = 0.01
    assert _recipe_key(older) != _recipe_key(current)
