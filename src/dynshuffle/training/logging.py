"""Run logs: the columns of `log.csv` (one row per epoch, rewritten atomically with `utils.write_csv`) and
optional TensorBoard events."""
from __future__ import annotations

from pathlib import Path

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


class TensorBoard:
    """Scalars to `<run>/tb` when `torch.utils.tensorboard` imports; silently nothing otherwise."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
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
