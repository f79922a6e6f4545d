"""`dynshuffle compare` on a tiny setting: 2 variants, 1 seed, 1 short epoch; the table files."""
from __future__ import annotations

import csv

import pytest

from dynshuffle.cli import main as cli_main
from dynshuffle.training.compare import COLUMNS, DEFAULT_VARIANTS, base_config, compare

FAST = ["train.steps_per_epoch=2", "train.eval_steps=1", "data.eval_batch_size=90"]


def test_compare_writes_the_table(tmp_path, capsys):
    rows = compare(["static", "dynamic"], seeds=1, epochs=1, out=tmp_path, overrides=FAST, latency_runs=3)
    assert [r["variant"] for r in rows] == ["static", "dynamic"]
    static, dynamic = rows
    for r in rows:
        assert r["params"] > 0 and r["macs"] > 0 and r["latency_ms"] > 0
        assert 0 <= r["top1_mean"] <= 1 and r["top1_std"] == 0.0 and r["seeds"] == 1 and r["epochs"] == 1
    assert static["top1_soft_mean"] is None and static["gap"] is None
    assert dynamic["top1_soft_mean"] is not None  # the train/inference gap check
    assert dynamic["gap"] == pytest.approx(dynamic["top1_soft_mean"] - dynamic["top1_mean"])
    assert dynamic["params"] > static["params"]

    md = (tmp_path / "compare.md").read_text()
    assert "| variant | params | multiply-adds | latency (ms, batch 1) | top-1 % (hard permutation)" in md
    assert md.count("\n| static |") == 1 and md.count("\n| dynamic |") == 1
    assert md in capsys.readouterr().out  # printed as well
    with open(tmp_path / "compare.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == COLUMNS and [r["variant"] for r in table] == ["static", "dynamic"]
    assert table[0]["top1_soft_mean"] == "" and table[1]["top1_soft_mean"] != ""
    # one run folder per (variant, seed)
    assert (tmp_path / "dynamic" / "seed0" / "last.safetensors").is_file()


def test_compare_cli_and_errors(tmp_path, capsys):
    args = ["compare", "--variants", "sds", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)]
    for o in FAST:
        args += ["--set", o]
    assert cli_main(args) == 0
    assert "| sds |" in (tmp_path / "compare.md").read_text()
    capsys.readouterr()
    assert cli_main(["compare", "--variants", "wobbly", "--out", str(tmp_path)]) == 2
    assert "unknown variant 'wobbly'" in capsys.readouterr().err
    assert cli_main(["compare", "--seeds", "0", "--out", str(tmp_path)]) == 2


def test_default_comparison():
    assert DEFAULT_VARIANTS == ("static", "learned", "dynamic", "sds")
    cfg = base_config("digits")
    assert cfg.model.name == "shufflenet_v2_x0_5" and cfg.data.name == "digits"
    assert cfg.shuffle.lambda_ == 1.0 and cfg.shuffle.ste_fraction == 0.25
