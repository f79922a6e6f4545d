"""dynshuffle.utils: atomic writes (all or nothing, readable permissions, a failed write that names its file)
and CSV tables."""
import errno
import os
import stat

import pytest

from dynshuffle.utils import atomic_open, atomic_path, atomic_write_text, read_csv, write_csv


def test_atomic_write_replaces_whole_file_with_plain_permissions(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as fh:
            fh.write(b"partial")
            raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def test_a_full_disk_names_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as err:
        with atomic_open(target, "wb") as fh:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write(2) gives: no file name
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert str(err.value) == f"[Errno {errno.ENOSPC}] No space left on device: '{target}'"
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.bin"]

    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as err:  # an error that names its own file keeps it
        with atomic_path(target):
            missing.read_bytes()
    assert err.value.filename == str(missing)


def test_csv_tables_round_trip_with_empty_cells(tmp_path):
    rows = [{"epoch": 1, "loss": 0.123456789, "mode": "soft", "note": None}, {"epoch": 2, "loss": float("nan")}]
    write_csv(tmp_path / "log.csv", rows, ["epoch", "loss", "mode", "note"])
    assert (tmp_path / "log.csv").read_text() == "epoch,loss,mode,note\n1,0.123457,soft,\n2,nan,,\n"
    header, read = read_csv(tmp_path / "log.csv")
    assert header == ["epoch", "loss", "mode", "note"]
    assert read == [{"epoch": "1", "loss": "0.123457", "mode": "soft", "note": ""},
                    {"epoch": "2", "loss": "nan", "mode": "", "note": ""}]
    write_csv(tmp_path / "empty.csv", [], ["epoch"])
    assert read_csv(tmp_path / "empty.csv") == (["epoch"], [])


def test_a_lock_file_admits_one_holder_and_dies_with_its_process(tmp_path):
    import socket
    import subprocess
    import sys

    from dynshuffle.utils import lock_holder, try_lock

    path = tmp_path / "run" / "compare.lock"
    first = try_lock(path)
    assert first is not None and try_lock(path) is None  # a second open file description is refused
    assert lock_holder(path) == f"pid {os.getpid()} on {socket.gethostname()}"
    first.close()
    again = try_lock(path)
    assert again is not None
    again.close()
    # A process killed while it holds the lock leaves no stale lock behind.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dynshuffle.utils import try_lock; "
                               f"lock = try_lock({str(path)!r}); print(lock is not None, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert try_lock(path) is None and lock_holder(path) == f"pid {holder.pid} on {socket.gethostname()}"
    finally:
        holder.kill()
        holder.wait()
    taken = try_lock(path)
    assert taken is not None
    taken.close()
