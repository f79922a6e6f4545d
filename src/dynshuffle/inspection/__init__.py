"""Looking at trained shuffles, read-only: numbers (`stats`: `permutation_stats` and the matrices behind it)
and pictures (`plots`, matplotlib, used by `dynshuffle show`)."""
