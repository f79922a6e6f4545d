"""Small shared helpers: atomic file writes (a crash or a full disk never leaves a half-written file behind),
CSV tables of dict rows (a run's log.csv is one), a lock file that several processes can share, and `arg`,
how an error message names an option.

A failed write, flush or fsync (ENOSPC, EIO, EFBIG: the OS names no file for these) is re-raised as the same
OSError with the target path as its filename, so the one-line message says which file could not be written.
"""
from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in `path`'s folder with the permissions a plain `open` would give it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make outputs unreadable to other users
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    If the block raises, the temporary file is removed and an existing `path` is left untouched.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes whole files; mode must contain 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            flush_to_disk(fh)
        os.replace(tmp, path)
    except BaseException as err:
        _discard(tmp, err, path)
        raise


def flush_to_disk(fh: IO) -> None:
    """Flush Python's buffer and fsync: a full disk shows up here, not later at close or rename."""
    fh.flush()
    os.fsync(fh.fileno())


def _named(err: OSError, path: str | os.PathLike) -> OSError:
    """`err`, or when it names no file (a failed write(2) or fsync(2)) the same error naming `path`."""
    if err.filename is not None or err.errno is None:
        return err
    return type(err)(err.errno, err.strerror, str(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for libraries that write by file name (safetensors, onnx);
    it replaces `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        # The library may have replaced the file (safetensors writes a new one, mode 0600): the umask's mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        _discard(tmp, err, path)
        raise


def _discard(tmp: str, err: BaseException, path: Path) -> None:
    """Remove the temporary file of a failed write; an OSError that names no file is re-raised naming `path`."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    if isinstance(err, OSError):
        named = _named(err, path)
        if named is not err:
            raise named from None


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: str | os.PathLike, rows: list[dict], columns: list[str]) -> None:
    """Write `rows` (dicts; missing keys and None as empty cells, floats to 6 significant digits) under the
    header `columns`, atomically: the whole table each time."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """(header, rows) of a CSV file with a header line; every cell a string."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


# ---- a lock several processes can share -----------------------------------------------------------------------

def try_lock(path: str | os.PathLike) -> IO | None:
    """Take the exclusive lock of the file `path` (created if missing) without waiting: the open file, which
    holds the lock until it is closed, or None when another process holds it. The file then names its
    holder (`lock_holder`). The operating system releases the lock when its process ends, even killed, so no
    lock outlives a crash. Advisory (`fcntl.flock`): it keeps out only processes that ask for it; where
    there is no `fcntl` (Windows) every call gets the lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        import fcntl  # POSIX only: where it is missing (Windows), every call gets the lock
    except ImportError:
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.truncate(0)
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    fh.flush()
    return fh


def lock_holder(path: str | os.PathLike) -> str:
    """Who holds the lock file `path`, as its holder wrote it ("pid 1234 on host"), or "another process"."""
    with contextlib.suppress(OSError):
        text = Path(path).read_text().strip()
        if text:
            return text
    return "another process"


# ---- naming options in error messages ------------------------------------------------------------------------

_COMMAND_LINE = contextvars.ContextVar("dynshuffle_command_line", default=False)


def arg(python: str, flag: str) -> str:
    """How an error message names an option: `flag` (e.g. "--overwrite") while a `dynshuffle` command runs,
    `python` (e.g. "overwrite=True") for a caller of the Python API."""
    return flag if _COMMAND_LINE.get() else python


@contextlib.contextmanager
def command_line_names(on: bool = True) -> Iterator[None]:
    """Within the block, `arg` names command-line flags (the CLI runs every command inside it)."""
    token = _COMMAND_LINE.set(on)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def command_line_active() -> bool:
    """True inside `command_line_names()` (so a worker process can be told which names to use)."""
    return _COMMAND_LINE.get()
