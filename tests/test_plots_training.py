"""The training picture: every accuracy column visible (a duplicate column is not drawn over another)."""
from __future__ import annotations

import pytest

from dynshuffle import plots
from dynshuffle.training.logging import write_csv


def test_duplicate_accuracy_columns_are_drawn_once_with_both_names(tmp_path, monkeypatch):
    rows = [{"epoch": e, "val_top1": 0.5 + e / 10, "val_top1_hard": 0.5 + e / 10, "val_top1_soft": 0.4 + e / 10,
             "train_top1": 0.6, "penalty": 1.0 / e, "shuffle_mode": "soft" if e < 3 else "ste"} for e in (1, 2, 3)]
    write_csv(tmp_path / "log.csv", rows)
    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    assert plots.plot_training(tmp_path / "log.csv", tmp_path / "training.png").is_file()
    bottom = figures[0].axes[1]
    labels = [line.get_label() for line in bottom.get_lines()]
    assert "val_top1 = val_top1_hard" in labels and "val_top1_soft" in labels and "train_top1" in labels
    assert not any(label == "val_top1_hard" for label in labels)


def test_accuracy_vs_macs_plots_csv_rows_and_rejects_empty(tmp_path):
    from dynshuffle.plots import plot_accuracy_vs_macs

    rows = [{"variant": "static", "model": "m", "macs": "2920888", "top1_mean": "0.9", "top1_std": "0.004", "seeds": "3"},
            {"variant": "sds", "model": "m", "macs": "2214912", "top1_mean": "0.89", "top1_std": "", "seeds": "3"},
            {"variant": "broken", "model": "m", "macs": "", "top1_mean": "0.5", "top1_std": "0", "seeds": "1"}]
    path = plot_accuracy_vs_macs(rows, tmp_path / "acc.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no row has both"):
        plot_accuracy_vs_macs(rows[2:], tmp_path / "none.png", "title")
    assert not (tmp_path / "none.png").exists()
