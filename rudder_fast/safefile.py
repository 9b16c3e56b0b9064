"""Opening, reading and replacing the spool's small files without being tricked.

How this works
--------------
The spool is private (0700, owned by the user), but the files in it are opened by name, and a name can
be replaced by something else: a symlink to a file the sender may write (it may run as root), a FIFO
that blocks ``open()`` forever, a directory. Every open here therefore uses ``O_NOFOLLOW`` (a symlink
is refused, never followed) and ``O_NONBLOCK`` (a FIFO cannot block the open), and checks on the
*descriptor* that what was opened is a regular file owned by this user. Files are created with
``O_EXCL`` after the old name is removed, so a planted link is replaced rather than written through.

Errors are :class:`NotRegularFile` (an ``OSError``): the caller decides whether it is fatal.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_SAFE: int = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """A spool file's name holds a symlink, FIFO, directory or another user's file."""


def describe(mode: int) -> str:
    """What kind of file ``mode`` is, in words."""
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path, flags: int, mode: int = 0o600, *, own: bool = True) -> int:
    """``os.open`` that refuses anything but a regular file (raises NotRegularFile); with ``own``, also
    a file of another user (files the sender writes; readers such as ``status`` run as root too)."""
    try:
        fd = os.open(path, flags | _SAFE, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            # ELOOP: a symlink (O_NOFOLLOW); EISDIR: a directory opened for writing; ENXIO: a FIFO
            # opened for writing with no reader, or a socket.
            try:
                kind = describe(os.lstat(path).st_mode)
            except OSError:
                kind = "not a regular file"
            raise NotRegularFile(exc.errno, f"{path} is {kind}, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"{path} is {describe(st.st_mode)}, not a regular file")
        if own and st.st_uid != os.geteuid():
            raise NotRegularFile(errno.EPERM, f"{path} is owned by uid {st.st_uid}, not by this user")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: Path, max_bytes: int = 64 << 20) -> bytes | None:
    """The whole content of a small regular file, or None if it does not exist."""
    try:
        fd = open_regular(path, os.O_RDONLY, own=False)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        total = 0
        while total < max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def pread_small(path: Path, size: int) -> bytes | None:
    """The first ``size`` bytes of a regular file (fewer if it is shorter), or None if it is missing."""
    try:
        fd = open_regular(path, os.O_RDONLY, own=False)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def create_exclusive(path: Path, mode: int = 0o600, *, append: bool = False) -> int:
    """A new, empty regular file at ``path`` for writing; whatever had the name is removed first
    (a planted symlink is unlinked, never followed)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise NotRegularFile(errno.EISDIR, f"{path} is a directory, not a regular file") from None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_APPEND if append else 0) | _SAFE, mode)
    try:
        os.fchmod(fd, mode)  # exactly this mode, whatever the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path) -> int:
    """``path`` opened for appending (created if missing). Anything but this user's regular file under
    the name (a planted symlink, a FIFO, another user's hard link) is set aside and a new file made:
    an append-only log must not be stopped for good by whatever someone put in its place."""
    try:
        return open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except NotRegularFile:
        return create_exclusive(path, append=True)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(path: Path, data: bytes, *, durable: bool, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically (write ``<path>.tmp``, rename over ``path``); with
    ``durable``, fsync the file before the rename and the directory after it, so a crash or power cut
    leaves the old content or the new, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = create_exclusive(tmp, mode)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)
