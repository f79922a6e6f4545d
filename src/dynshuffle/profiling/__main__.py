"""`python -m dynshuffle.profiling`: print the docs/models.md tables (`--no-flops` for parameters and
multiply-adds only)."""
from __future__ import annotations

import sys

from .reporting import models_table_markdown

if __name__ == "__main__":
    sys.stdout.write(models_table_markdown(flops="--no-flops" not in sys.argv[1:]))
