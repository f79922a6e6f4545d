"""Numbers and tables as text: counts with units, byte sizes, aligned text or Markdown tables, overheads.

A leaf module: the cost counters, the reports and the benchmarks all format through it.
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_count", "format_bytes", "format_table", "overhead"]


def format_count(n: float) -> str:
    """2278604 -> '2.28 M', 146_000_000 -> '146 M' (three significant digits)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g}" if isinstance(n, float) else str(n)


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, markdown: bool = False) -> str:
    """Rows of dicts as an aligned text table (or a Markdown table)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(_looks_numeric(r[i]) for r in cells) for i in range(len(columns))]

    def fmt(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def _looks_numeric(text: str) -> bool:
    head = text.split(" ")[0].rstrip("%x").lstrip("+-")
    try:
        float(head)
    except ValueError:
        return False
    return True


def overhead(value: float, baseline: float) -> str:
    """`value` relative to `baseline` as a signed percentage ('n/a' for a zero baseline)."""
    if not baseline:
        return "n/a"
    return f"{100.0 * (value - baseline) / baseline:+.2f}%"
