"""`dynshuffle datasets`: the registered datasets, their classes and image size, and where the data is found."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def format_table(rows: list[dict]) -> str:
    """Aligned plain-text columns: name, classes, image size, where the data is found (or what to pass)."""
    table = [("dataset", "classes", "image size", "data")]
    for r in rows:
        if r["found"] is not None:
            where = r["found"]
        else:
            where = "needs --data PATH" + (" (--download fetches it)" if r["downloadable"] else "")
        table.append((r["name"], str(r["classes"]), f"{r['image_size']}x{r['image_size']}", where))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in table) + "\n"


def run(args: argparse.Namespace) -> int:
    from dynshuffle.data.registry import dataset_table

    print(format_table(dataset_table()), end="")
    return 0
