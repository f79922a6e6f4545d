"""What a model costs and how fast it runs: counting, timing, benchmarks.

- `timing`: one way to time things (`time_interleaved`, `time_pair`, `median_time`), `device_of`.
- `counting`: parameters, multiply-adds, FLOPs, activation memory (`profile`, `ProfileResult`, `count_*`).
- `formatting`: numbers and tables as text; `reporting`: the tables of a model's shuffle variants
  (`python -m dynshuffle.profiling` prints those of docs/models.md).
- `benchmark`: the layer and model benchmarks, as ratios to baselines timed beside them.
- `routing`: the routing task, whether a shuffle layer learns per-input permutations.
"""
