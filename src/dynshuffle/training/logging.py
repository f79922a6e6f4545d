"""Run logs: `log.csv` (one row per epoch, rewritten atomically) and optional TensorBoard events."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dynshuffle.utils import atomic_write_text

# Columns of log.csv, in order. `val_top1` is the deployable figure: the exact (hard) permutation;
# the `_soft` columns evaluate the same weights with the soft matrices (empty for fixed-shuffle models).
COLUMNS = [
    "epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
    "val_top1_hard", "val_top1_soft", "val_top5_soft", "val_loss_soft",
    "lr", "lambda", "penalty", "shuffle_mode", "dynamic_layers", "distinct_median", "images_per_s", "seconds",
    "skipped_corrupt",
]
# dynamic_layers: dynamic-shuffle layers where >= 5 % of the first eval images leave the layer's most common
# permutation (data-dependent layers); distinct_median: median number of distinct permutations per layer.
# skipped_corrupt: training images replaced because they did not decode (data.skip_corrupt; empty when it is off).


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: str | Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    """Write all `rows` at once (atomically): a resumed run rewrites the history it checkpointed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class TensorBoard:
    """Scalars to `<run>/tb` when `torch.utils.tensorboard` imports; silently nothing otherwise."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is an optional dependency
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    @property
    def available(self) -> bool:
        return self.writer is not None

    def log_row(self, row: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                group = "train" if key.startswith("train_") else "val" if key.startswith("val_") else "opt"
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
