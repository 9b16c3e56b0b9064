"""Self-tests of the power-cut file system, through a real FUSE mount: what survives a cut, and the
file-system features the spool relies on (flock between processes, mmap, O_APPEND, open unlinked files).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rudder_fast import layout, quota, tail
from tests.powercut.conftest import require_fuse
from tests.powercut.mount import PowerCutFS


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def cut(fs: PowerCutFS, out: Path) -> dict[str, bytes | None]:
    """Cut the power; the surviving tree as path -> bytes (None for a directory)."""
    fs.freeze()
    fs.write_durable(out)
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(out):
        base = Path(dirpath).relative_to(out)
        for name in dirnames:
            found[str(base / name)] = None
        for name in filenames:
            found[str(base / name)] = (Path(dirpath) / name).read_bytes()
    return found


def test_fsynced_data_survives_a_cut_and_later_writes_do_not(powercut_fs: PowerCutFS, tmp_path: Path) -> None:
    mnt = powercut_fs.mountpoint
    write_file(mnt / "f", b"synced ", sync=True)
    fsync_path(mnt)
    write_file(mnt / "f", b"unsynced", sync=False)
    assert (mnt / "f").read_bytes() == b"synced unsynced"  # the live view has everything
    assert cut(powercut_fs, tmp_path / "after") == {"f": b"synced "}


def test_a_file_created_without_a_directory_fsync_vanishes(powercut_fs: PowerCutFS, tmp_path: Path) -> None:
    mnt = powercut_fs.mountpoint
    (mnt / "d").mkdir()
    fsync_path(mnt)
    write_file(mnt / "d" / "name-synced", b"data", sync=False)
    fsync_path(mnt / "d")
    write_file(mnt / "d" / "data-synced", b"data", sync=True)
    # The name synced without the data comes back empty; the data synced without the name is lost.
    assert cut(powercut_fs, tmp_path / "after") == {"d": None, "d/name-synced": b""}


def test_a_rename_is_durable_only_after_a_directory_fsync(powercut_fs: PowerCutFS, tmp_path: Path) -> None:
    mnt = powercut_fs.mountpoint
    for name in ("src", "dst"):
        (mnt / name).mkdir()
    for name in ("kept", "moved"):
        write_file(mnt / "src" / name, name.encode(), sync=True)
    write_file(mnt / "ledger", b"old", sync=True)
    powercut_fs.sync()
    os.rename(mnt / "src" / "kept", mnt / "dst" / "kept")  # no directory fsync
    os.rename(mnt / "src" / "moved", mnt / "dst" / "moved")
    fd = os.open(mnt / "dst", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(mnt / "dst" / "kept", mnt / "src" / "kept")  # back where it was: nothing changed
        os.fsync(fd)  # makes "moved" durable at its new name, atomically
    finally:
        os.close(fd)
    write_file(mnt / "ledger.tmp", b"new", sync=True)
    os.replace(mnt / "ledger.tmp", mnt / "ledger")  # the ledger's commit, without its directory fsync
    assert cut(powercut_fs, tmp_path / "after") == {
        "src": None,
        "dst": None,
        "src/kept": b"kept",
        "dst/moved": b"moved",
        "ledger": b"old",
    }


def test_a_replacing_rename_survives_once_its_directory_is_fsynced(
    powercut_fs: PowerCutFS, tmp_path: Path
) -> None:
    mnt = powercut_fs.mountpoint
    write_file(mnt / "ledger", b"old", sync=True)
    powercut_fs.sync()
    write_file(mnt / "ledger.tmp", b"new", sync=True)
    os.replace(mnt / "ledger.tmp", mnt / "ledger")
    fsync_path(mnt)
    assert cut(powercut_fs, tmp_path / "after") == {"ledger": b"new"}


def test_an_unlink_is_undone_by_a_cut_until_its_directory_is_fsynced(
    powercut_fs: PowerCutFS, tmp_path: Path
) -> None:
    mnt = powercut_fs.mountpoint
    (mnt / "a").mkdir()
    (mnt / "b").mkdir()
    write_file(mnt / "a" / "seg", b"a", sync=True)
    write_file(mnt / "b" / "seg", b"b", sync=True)
    powercut_fs.sync()
    (mnt / "a" / "seg").unlink()
    (mnt / "b" / "seg").unlink()
    fsync_path(mnt / "b")
    assert cut(powercut_fs, tmp_path / "after") == {"a": None, "b": None, "a/seg": b"a"}


def test_what_the_backing_directory_held_at_mount_time_is_durable(tmp_path: Path) -> None:
    require_fuse()
    fs = PowerCutFS(tmp_path / "powercut")
    (fs.backing / "spool").mkdir(parents=True, mode=0o700)
    (fs.backing / "spool" / "ledger").write_bytes(b"ledger")
    with fs:
        assert (fs.mountpoint / "spool" / "ledger").read_bytes() == b"ledger"
        write_file(fs.mountpoint / "spool" / "ledger", b" more", sync=False)
        after = cut(fs, tmp_path / "after")
    assert after == {"spool": None, "spool/ledger": b"ledger"}
    assert (tmp_path / "after" / "spool").stat().st_mode & 0o777 == 0o700


def test_after_the_cut_every_operation_fails(powercut_fs: PowerCutFS, tmp_path: Path) -> None:
    mnt = powercut_fs.mountpoint
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"before")
        powercut_fs.freeze()
        for attempt in (lambda: os.write(fd, b"after"), lambda: os.fsync(fd), lambda: os.stat(mnt / "g")):
            with pytest.raises(OSError, match="Input/output error") as caught:
                attempt()
            assert caught.value.errno == errno.EIO
    finally:
        with contextlib.suppress(OSError):  # close fails too (EIO): the power is out
            os.close(fd)
    powercut_fs.write_durable(tmp_path / "after")
    assert sorted(os.listdir(tmp_path / "after")) == []  # f was never fsynced, nor its directory


def test_flock_is_shared_by_processes_and_released_when_its_holder_dies(powercut_fs: PowerCutFS) -> None:
    """The spool's liveness probe: a writer's exclusive flock, seen by the sender's shared probe."""
    path = powercut_fs.mountpoint / "segment"
    path.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        fd = os.open(path, os.O_RDONLY)
        try:
            assert tail.writer_alive(fd)
            other = os.open(path, os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(other)
            holder.kill()
            holder.wait(10)
            assert not tail.writer_alive(fd)
        finally:
            os.close(fd)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_the_control_file_is_rewritten_in_place_and_read_back(powercut_fs: PowerCutFS) -> None:
    """The sender rewrites its control file in place; producers read each publication back."""
    path = powercut_fs.mountpoint / "control"
    control = quota.ControlFile(path)
    try:
        control.publish(quota.Control(quota_bytes=100))
        first = quota.read_control(path)
        assert first is not None
        assert first.flags == 0
        control.publish(quota.Control(flags=quota.OVER_QUOTA, quota_bytes=100, usage_bytes=100))
        second = quota.read_control(path)
        assert second is not None
        assert second.flags == quota.OVER_QUOTA
    finally:
        control.close()


def test_appends_land_at_the_end_and_an_unlinked_open_file_keeps_working(powercut_fs: PowerCutFS) -> None:
    path = powercut_fs.mountpoint / "seg"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"one torn")
        os.ftruncate(fd, 4)  # as a producer takes back a short write
        os.write(fd, b"two")
        assert os.pread(fd, 100, 0) == b"one two"
        path.unlink()
        assert os.listdir(powercut_fs.mountpoint) == []
        os.write(fd, b" three")
        os.fsync(fd)
        assert os.fstat(fd).st_size == len(b"one two three")
        assert os.pread(fd, 100, 0) == b"one two three"
    finally:
        os.close(fd)
    assert not path.exists()


def test_the_spool_accepts_the_mount_as_a_local_file_system(powercut_fs: PowerCutFS) -> None:
    spool = powercut_fs.mountpoint / "spool"
    assert layout.filesystem_type(powercut_fs.mountpoint) == "fuse.powercut"
    layout.ensure_spool(spool)  # raises SpoolError on a network file system
    assert sorted(os.listdir(spool)) == ["rejected", "segments", "tmp"]
