"""The one error type raised for bad or missing data."""
from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be used: a missing folder, a corrupt or truncated file, a wrong checksum,
    a pickle without the expected keys, arrays of the wrong shape, an empty class folder.

    The message always names the file or folder and the problem, so a user can fix the data without
    reading a pickle/PIL/tarfile stack trace. It subclasses `ValueError` so callers that already
    report bad input (the CLI) show it as one line.
    """
