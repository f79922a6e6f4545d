"""Model costs and benchmarks, one import away: a facade over the modules that hold them.

- `dynshuffle.counting`: `profile`, `ProfileResult`, `count_params`, `count_macs`,
  `count_conv_linear_macs`, `count_flops`, `peak_activation_bytes` (the definitions are there).
- `dynshuffle.reporting`: `format_count`, `format_bytes`, `format_table`, `profile_rows`,
  `models_table_markdown`.
- `dynshuffle.benchmark`: `run_model_benchmark`, `format_model_rows`, `ModelSetup` (timed with
  `dynshuffle.timing`).

`python -m dynshuffle.profiling` prints the docs/models.md tables (`--no-flops` for parameters and
multiply-adds only).
"""
from __future__ import annotations

from .counting import (
    ProfileResult,
    count_conv_linear_macs,
    count_flops,
    count_macs,
    count_params,
    input_shape,
    peak_activation_bytes,
    profile,
)
from .reporting import format_bytes, format_count, format_table, models_table_markdown, overhead, profile_rows


def __getattr__(name: str):
    # The model benchmark imports the layers; load it only when asked for.
    if name in ("ModelSetup", "MODEL_BENCH_VARIANTS", "run_model_benchmark", "format_model_rows"):
        from . import benchmark

        return getattr(benchmark, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ProfileResult", "profile", "count_params", "count_macs", "count_conv_linear_macs", "count_flops",
    "peak_activation_bytes", "input_shape", "format_count", "format_bytes", "format_table", "overhead",
    "profile_rows", "models_table_markdown", "ModelSetup", "MODEL_BENCH_VARIANTS", "run_model_benchmark",
    "format_model_rows",
]

if __name__ == "__main__":  # python -m dynshuffle.profiling > tables for docs/models.md
    import sys

    sys.stdout.write(models_table_markdown(flops="--no-flops" not in sys.argv[1:]))
