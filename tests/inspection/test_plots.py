"""dynshuffle.inspection.plots: every picture has a title, labels and colour bars; files are not overwritten;
the training picture draws each accuracy column once."""
import json

import numpy as np
import pytest
import torch

from dynshuffle.inspection import plots as P
from dynshuffle.inspection.stats import permutation_stats
from dynshuffle.utils import write_csv


def test_every_picture_has_title_labels_and_colour_bars(tmp_path, monkeypatch, user_net, images):
    figures = []
    original = P._save

    def capture(fig, path):
        figures.append((path.name, fig))
        return original(fig, path)

    monkeypatch.setattr(P, "_save", capture)
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_top1,val_top1_soft,penalty,shuffle_mode\n"
                   "0,2.0,0.3,0.35,4.0,soft\n1,1.5,0.5,0.52,1.0,soft\n2,1.2,0.6,0.6,0.1,ste\n")
    x, labels = images(10), torch.arange(10) % 3
    written = P.render_report(user_net(), x, labels, tmp_path / "pics", log_csv=log, n_inputs=2)
    names = sorted(p.name for p in written)
    assert names == sorted(["matrices_shared.png", "matrices_body.2.png", "matrices_learned.png",
                            "matrices_sds.dynamic.png", "class_agreement.png", "sample_agreement.png",
                            "closeness.png", "diversity.png", "training.png", "stats.json"])
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, fig in figures:
        colorbar_axes = {id(im.colorbar.ax) for ax in fig.axes for im in ax.images if im.colorbar is not None}
        plotted = [ax for ax in fig.axes if id(ax) not in colorbar_axes and ax.axison]
        assert plotted, name
        for ax in plotted:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
        if any(ax.images for ax in plotted):
            assert colorbar_axes, f"{name}: heatmaps without a colour bar"
    saved = json.loads((tmp_path / "pics" / "stats.json").read_text())
    expected = permutation_stats(user_net(), x, labels)  # the same numbers, as JSON (NaN as null)
    assert list(saved) == list(expected)
    for layer, values in expected.items():
        assert saved[layer]["distinct"] == values["distinct"] and saved[layer]["kind"] == values["kind"]
        assert saved[layer]["agreement"] == pytest.approx(values["agreement"])
        np.testing.assert_allclose(np.array(saved[layer]["class_agreement"], dtype=float), values["class_agreement"])


def test_render_report_refuses_to_overwrite(tmp_path, user_net, images):
    out = tmp_path / "pics"
    out.mkdir()
    (out / "closeness.png").write_bytes(b"mine")
    model = user_net()
    with pytest.raises(FileExistsError, match="closeness.png"):
        P.render_report(model, images(4), torch.arange(4) % 2, out)
    assert (out / "closeness.png").read_bytes() == b"mine" and len(list(out.iterdir())) == 1
    P.render_report(model, images(4), torch.arange(4) % 2, out, force=True, n_inputs=1, layers=["shared"])
    assert (out / "matrices_shared.png").exists() and not (out / "matrices_learned.png").exists()
    assert (out / "closeness.png").read_bytes() != b"mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="no shuffle layer matches"):
        P.render_report(model, images(4), torch.arange(4) % 2, out, force=True, layers=["nothing*"])
    with pytest.raises(NotADirectoryError):
        P.render_report(model, images(4), torch.arange(4) % 2, tmp_path / "file")


def test_duplicate_accuracy_columns_are_drawn_once_with_both_names(tmp_path, monkeypatch):
    rows = [{"epoch": e, "val_top1": 0.5 + e / 10, "val_top1_hard": 0.5 + e / 10, "val_top1_soft": 0.4 + e / 10,
             "train_top1": 0.6, "penalty": 1.0 / e, "shuffle_mode": "soft" if e < 3 else "ste"} for e in (1, 2, 3)]
    write_csv(tmp_path / "log.csv", rows, list(rows[0]))
    figures = []
    real_save = P._save
    monkeypatch.setattr(P, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    assert P.plot_training(tmp_path / "log.csv", tmp_path / "training.png").is_file()
    bottom = figures[0].axes[1]
    labels = [line.get_label() for line in bottom.get_lines()]
    assert "val_top1 = val_top1_hard" in labels and "val_top1_soft" in labels and "train_top1" in labels
    assert not any(label == "val_top1_hard" for label in labels)


def test_accuracy_vs_macs_plots_csv_rows_and_rejects_empty(tmp_path):
    rows = [{"variant": "static", "model": "m", "macs": "2920888", "top1_mean": "0.9", "top1_std": "0.004", "seeds": "3"},
            {"variant": "sds", "model": "m", "macs": "2214912", "top1_mean": "0.89", "top1_std": "", "seeds": "3"},
            {"variant": "broken", "model": "m", "macs": "", "top1_mean": "0.5", "top1_std": "0", "seeds": "1"}]
    path = P.plot_accuracy_vs_macs(rows, tmp_path / "acc.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no row has both"):
        P.plot_accuracy_vs_macs(rows[2:], tmp_path / "none.png", "title")
    assert not (tmp_path / "none.png").exists()


def _captured(monkeypatch):
    figures = []
    real_save = P._save
    monkeypatch.setattr(P, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    return figures


def _titles_fit(fig) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if ax.get_title() and ax.title.get_window_extent(renderer).width > ax.get_window_extent(renderer).width + 1:
            return False
    sup = fig._suptitle
    return sup is None or sup.get_window_extent(renderer).width <= fig.bbox.width + 1


@pytest.mark.parametrize("count", [1, 2, 40])
def test_titles_fit_at_any_number_of_layers(tmp_path, monkeypatch, user_net, images, count):
    stats = permutation_stats(user_net(), images(6), torch.arange(6) % 2, keep_permutations=True)
    one = next(iter(stats.values()))
    chosen = {f"stage{i // 8 + 2}.{i % 8}.branch2.shuffle": one for i in range(count)}
    figures = _captured(monkeypatch)
    P.plot_closeness(chosen, tmp_path / "closeness.png")
    P.plot_diversity(chosen, tmp_path / "diversity.png")
    P.plot_class_agreement(chosen, tmp_path / "class_agreement.png")
    assert len(figures) == 3
    for fig in figures:
        assert _titles_fit(fig), [ax.get_title() for ax in fig.axes]
        # wrapping keeps every word of the title
        assert all("permutation" in " ".join(ax.get_title().split()) or "within" in ax.get_title()
                   for ax in fig.axes if ax.get_title())


def test_training_picture_names_the_run_and_counts_whole_epochs(tmp_path, monkeypatch):
    figures = _captured(monkeypatch)
    write_csv(tmp_path / "log.csv", [{"epoch": 1, "val_top1": 0.5, "penalty": 0.2, "shuffle_mode": "ste"}],
              ["epoch", "val_top1", "penalty", "shuffle_mode"])
    P.plot_training(tmp_path / "log.csv", tmp_path / "one.png",
                    "dynamic, shufflenet_v2_x0_5, seed 0: runs/c/dynamic/seed0")
    P.plot_training(tmp_path / "log.csv", tmp_path / "default.png")
    rows = [{"epoch": e, "val_top1": e / 10} for e in range(1, 8)]
    write_csv(tmp_path / "seven.csv", rows, ["epoch", "val_top1"])
    P.plot_training(tmp_path / "seven.csv", tmp_path / "seven.png")
    one, default, seven = figures
    assert "dynamic, shufflenet_v2_x0_5, seed 0" in " ".join(one._suptitle.get_text().split())
    assert str(tmp_path) in default._suptitle.get_text().replace("\n", "")
    for fig in figures:
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_compare_curves_draw_every_run_and_mark_straight_through_epochs(tmp_path, monkeypatch):
    columns = ["epoch", "val_top1", "shuffle_mode", "dynamic_layers"]
    logs = {}
    for variant, layers in (("static", None), ("dynamic", 0)):
        for seed in (0, 1):
            rows = [{"epoch": e, "val_top1": 0.5 + 0.1 * e + 0.01 * seed, "shuffle_mode": "ste" if e == 3 else "soft",
                     "dynamic_layers": layers} for e in (1, 2, 3)]
            logs.setdefault(variant, {})[seed] = tmp_path / f"{variant}{seed}.csv"
            write_csv(logs[variant][seed], rows, columns)
    drawn = {}
    real_save = P._save

    def spy(fig, path):
        top, bottom = fig.axes[:2]
        drawn["top"] = [(line.get_label(), [round(v, 4) for v in line.get_ydata()]) for line in top.lines]
        drawn["bottom"] = [line.get_label() for line in bottom.lines]
        return real_save(fig, path)

    monkeypatch.setattr(P, "_save", spy)
    out = P.plot_compare_curves(logs, tmp_path / "curves.png", "a title")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One line per run (the first seed carries the legend) and one filled point per straight-through epoch.
    labels = [label if not label.startswith("_") else "" for label, _ in drawn["top"]]
    assert labels == ["static", "", "", "", "dynamic", "", "", ""]
    assert [ys for _, ys in drawn["top"]] == [[60.0, 70.0, 80.0], [80.0], [61.0, 71.0, 81.0], [81.0]] * 2
    assert len(drawn["bottom"]) == 2 and drawn["bottom"][0] == "dynamic"  # only runs that log the layers

    write_csv(tmp_path / "untrained.csv", [{"epoch": 1}], ["epoch", "train_loss"])
    with pytest.raises(ValueError, match="no run has logged a validation top-1"):
        P.plot_compare_curves({"static": {0: tmp_path / "untrained.csv"}}, tmp_path / "x.png", "t")
