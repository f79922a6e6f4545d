"""dynshuffle.profiling.formatting: counts, byte sizes, overheads and tables as text."""
from dynshuffle.profiling.formatting import format_bytes, format_count, format_table, overhead


def test_counts_bytes_and_overheads():
    assert [format_count(n) for n in (2278604, 146_000_000, 1_500_000_000, 999, 12.5)] == \
        ["2.28 M", "146 M", "1.5 G", "999", "12.5"]
    assert [format_bytes(n) for n in (512, 2048, 3 * 2 ** 20, 1.5 * 2 ** 30)] == ["512 B", "2 KiB", "3 MiB", "1.5 GiB"]
    assert (overhead(110, 100), overhead(90, 100), overhead(1, 0)) == ("+10.00%", "-10.00%", "n/a")


def test_format_table():
    text = format_table([{"a": "x", "b": "1.5"}, {"a": "long", "b": "10"}])
    assert text.splitlines() == ["a       b", "----  ---", "x     1.5", "long   10"]  # numbers right-aligned
    md = format_table([{"a": 1}], markdown=True)
    assert md.splitlines() == ["| a |", "|---|", "| 1 |"]
    assert format_table([]) == ""
