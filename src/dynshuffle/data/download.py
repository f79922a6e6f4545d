"""Fetching an archive safely: atomic write, md5 check, progress bar, skip when already present."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..utils import atomic_open
from .errors import DataError

_CHUNK = 1 << 20


def file_md5(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in chunks so a 160 MB archive does not sit in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_url(url: str, dest: str | os.PathLike, md5: str, *, progress: bool = True) -> Path:
    """Make `dest` a verified copy of `url` and return its path.

    A file already at `dest` with the right md5 is kept (no network access). Otherwise the data is
    streamed into a temporary file beside `dest`, hashed on the way, and renamed over `dest` only
    when the md5 matches; on a mismatch or a broken connection the temporary file is deleted, so an
    interrupted or corrupted download never looks like a valid archive on the next run.
    """
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    try:
        with urllib.request.urlopen(url) as response, atomic_open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.md5(usedforsecurity=False)
            # disable=None: no bar when stderr is not a terminal (logs, CI).
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None if progress else True)
            with bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != md5:
                raise DataError(
                    f"{dest}: checksum mismatch for the download from {url} "
                    f"(md5 {digest.hexdigest()}, expected {md5}); the file was removed, try again"
                )
    except OSError as err:  # includes urllib's URLError/HTTPError
        raise DataError(f"{dest}: could not download {url}: {err}") from err
    return dest
