"""The one error type raised for bad or missing data."""
from __future__ import annotations

WORKER_PREFIX = "Caught DataError in DataLoader worker process"


class DataError(ValueError):
    """Data that cannot be used: a missing folder, a corrupt or truncated file, a wrong checksum,
    a pickle without the expected keys, arrays of the wrong shape, an empty class folder.

    The message always names the file or folder and the problem, so a user can fix the data without
    reading a pickle/PIL/tarfile stack trace. It subclasses `ValueError` so callers that already
    report bad input (the CLI) show it as one line.

    A DataError raised in a DataLoader worker reaches the main process re-created from the worker's whole
    formatted traceback (torch's ExceptionWrapper); the constructor keeps only the original message and
    says which worker, so that error stays one line too.
    """

    def __init__(self, *args) -> None:
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith(WORKER_PREFIX):
            args = (_from_worker(args[0]),)
        super().__init__(*args)


def _from_worker(text: str) -> str:
    """'MESSAGE (in DataLoader worker process N)' from torch's 'Caught DataError in DataLoader worker
    process N.\nOriginal Traceback ...\n<module path>.DataError: MESSAGE'."""
    where = text.splitlines()[0].removeprefix("Caught DataError ").rstrip(".")
    head, sep, message = text.rstrip().rpartition("DataError: ")
    return f"{message.strip()} ({where})" if sep else text
