"""The training picture: every accuracy column visible (a duplicate column is not drawn over another)."""
from __future__ import annotations

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
