"""The power-cut file system: a FUSE pass-through over a backing directory that can "lose power".

Run as ``python -m tests.powercut.fs --backing DIR --mountpoint DIR`` (as root); :mod:`.mount` does it
for the tests. Every operation goes to the backing directory, which holds the live state (what the
page cache would show), and to a :class:`~.model.DurabilityModel`, which tracks what a power cut would
leave (the rules are in that module's docstring): fsync/fdatasync of a file records its bytes, fsync of
a directory its entries. Whatever the backing directory holds at mount time counts as durable.

Commands, one line each on stdin, answered by one line on stdout ("ok ..." or "error ..."); "ready" is
printed once the kernel has initialised the mount:

    sync            everything live becomes durable (as ``sync(1)``: the state long before a cut)
    freeze          the power cut: from now on every operation fails with EIO, so nothing more
                    becomes durable and no process learns anything new from the disk
    write DIR       write the durable state (only it) into the new directory DIR: the disk after reboot
    stats           counts of writes, file syncs, directory syncs and bytes written, as JSON

At the end of stdin it unmounts itself (lazily) and exits.

Why fusepy (ctypes over libfuse 2's high-level, path-based API): it is one pure-Python file from PyPI
plus Debian's ``libfuse2``, with nothing to compile; pyfuse3 needs libfuse3-dev, a C build and trio.
libfuse's multi-threaded loop serves each request in a worker thread: on two shared cores the mount
takes 11,000-16,000 producer events a second (one small write each), several times what the tests
make. Every read, write, truncate and fsync goes through the backing descriptor opened for the file,
never through its path.

Kernel features the spool relies on:

* flock: fusepy has no ``flock`` operation and this file system implements no ``lock`` (an attribute
  of that name would be taken for one), so the kernel keeps flock and POSIX locks itself, per inode
  of the mount: exactly what processes sharing one mount need.
* mmap: no ``direct_io``, so files go through the page cache and can be mapped. Attribute and entry
  caching stay on: every change goes through this mount, so the kernel's caches stay right.
* unlink of an open file: libfuse renames it to ``.fuse_hidden*`` (the kernel asks for attributes by
  path) and unlinks that name at the last close. The model takes the rename as the unlink, and
  listings do not show such names.
* the mount's type in /proc/self/mountinfo is ``fuse.powercut``, which the spool accepts as local.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from fuse import FUSE, FuseOSError, Operations

from .model import DurabilityModel, Kind, Node
from .mount import detach

FS_NAME = "powercut"
HIDDEN_PREFIX = ".fuse_hidden"
_READ_CHUNK = 1 << 20


class PowerCutOperations(Operations):  # type: ignore[misc]
    """The FUSE operations: pass-through to ``backing``, durability in the model."""

    use_ns = True  # times in integer nanoseconds

    def __init__(self, backing: Path) -> None:
        self.backing = str(backing)
        # Namespace changes and syncs: the backing and the model move together. Not named ``lock``: fusepy
        # would take that for the POSIX-lock operation and stop the kernel from keeping the locks itself.
        self.mutex = threading.Lock()
        self.frozen = False
        self.model = DurabilityModel(os.stat(backing).st_mode & 0o7777)
        self.open_nodes: dict[int, int] = {}  # backing descriptor -> node id
        self.counts = {"writes": 0, "bytes_written": 0, "file_syncs": 0, "dir_syncs": 0}
        self._adopt_backing()

    def __repr__(self) -> str:
        return f"<PowerCutOperations backing={self.backing} frozen={self.frozen} {self.counts}>"

    # -- helpers ------------------------------------------------------------------------------------

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _alive(self) -> None:
        if self.frozen:
            raise FuseOSError(errno.EIO)

    def _node(self, path: str) -> Node:
        node = self.model.lookup(path)
        if node is None:
            raise FuseOSError(errno.ENOENT)
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        return self._node(head or "/"), name

    def _read_all(self, fd: int) -> bytes:
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(fd, _READ_CHUNK, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)

    def _read_path(self, relpath: str) -> bytes:
        fd = os.open(self._real(relpath), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            return self._read_all(fd)
        finally:
            os.close(fd)

    def _adopt_backing(self) -> None:
        """What the backing directory holds at mount time is the durable state to start from."""
        model = self.model

        def adopt(real: str, parent: Node) -> None:
            with os.scandir(real) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    mode = st.st_mode & 0o7777
                    if entry.is_symlink():
                        model.add(parent, entry.name, Kind.SYMLINK, mode, os.readlink(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        adopt(entry.path, model.add(parent, entry.name, Kind.DIR, mode))
                    else:
                        model.add(parent, entry.name, Kind.FILE, mode)

        adopt(self.backing, self._node("/"))
        model.sync_all(self._read_path)

    # -- commands -----------------------------------------------------------------------------------

    def sync_everything(self) -> None:
        with self.mutex:
            self._alive()
            self.model.sync_all(self._read_path)

    def freeze(self) -> None:
        with self.mutex:
            self.frozen = True

    def write_durable(self, out: Path) -> tuple[int, int]:
        """Write the durable tree into the new directory ``out``: (files, bytes)."""
        with self.mutex:
            files = size = 0
            os.mkdir(out, self.model.nodes[1].mode)
            os.chmod(out, self.model.nodes[1].mode)
            for relpath, node in self.model.durable_paths():
                target = out / relpath
                if node.kind is Kind.DIR:
                    os.mkdir(target, node.mode)
                    os.chmod(target, node.mode)
                elif node.kind is Kind.SYMLINK:
                    os.symlink(node.target, target)
                else:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, node.mode)
                    try:
                        os.write(fd, node.data)
                        os.fchmod(fd, node.mode)
                    finally:
                        os.close(fd)
                    files += 1
                    size += len(node.data)
            return files, size

    # -- namespace ----------------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: Any = None) -> dict[str, int]:
        self._alive()
        if isinstance(fh, int) and fh > 0:
            st = os.fstat(fh)
        elif path is not None:
            st = os.lstat(self._real(path))
        else:
            raise FuseOSError(errno.EBADF)
        return {
            "st_mode": st.st_mode,
            "st_nlink": st.st_nlink,
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_size": st.st_size,
            "st_blocks": st.st_blocks,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        self._alive()
        return [".", "..", *(name for name in os.listdir(self._real(path)) if not _hidden(name))]

    def readlink(self, path: str) -> str:
        self._alive()
        return os.readlink(self._real(path))

    def statfs(self, path: str) -> dict[str, int]:
        self._alive()
        st = os.statvfs(self._real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")  # fmt: skip
        return {key: getattr(st, key) for key in keys}

    def mkdir(self, path: str, mode: int) -> None:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            os.mkdir(self._real(path), mode)
            self.model.add(parent, name, Kind.DIR, os.lstat(self._real(path)).st_mode & 0o7777)

    def rmdir(self, path: str) -> None:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            os.rmdir(self._real(path))
            self.model.remove(parent, name)

    def unlink(self, path: str) -> None:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            os.unlink(self._real(path))
            if not _hidden(name):
                self.model.remove(parent, name)

    def symlink(self, target: str, source: str) -> None:
        """Create ``target``, a symlink pointing at ``source`` (fusepy's naming)."""
        with self.mutex:
            self._alive()
            parent, name = self._parent(target)
            os.symlink(source, self._real(target))
            self.model.add(parent, name, Kind.SYMLINK, 0o777, source)

    def rename(self, old: str, new: str) -> None:
        with self.mutex:
            self._alive()
            src, src_name = self._parent(old)
            dst, dst_name = self._parent(new)
            os.rename(self._real(old), self._real(new))
            if _hidden(dst_name):
                self.model.remove(src, src_name)  # an unlink while open: see _hidden
            else:
                self.model.rename(src, src_name, dst, dst_name)

    def link(self, target: str, source: str) -> None:
        raise FuseOSError(errno.EPERM)  # hard links are not modelled

    def mknod(self, path: str, mode: int, dev: int) -> None:
        raise FuseOSError(errno.EPERM)  # only regular files, directories and symlinks are modelled

    def chmod(self, path: str, mode: int) -> None:
        with self.mutex:
            self._alive()
            os.chmod(self._real(path), mode)
            self._node(path).mode = mode & 0o7777

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._alive()
        os.chown(self._real(path), uid, gid, follow_symlinks=False)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        self._alive()
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)

    # -- files --------------------------------------------------------------------------------------

    @staticmethod
    def _backing_flags(flags: int) -> int:
        # O_APPEND is dropped: the kernel already turned appends into offsets, and pwrite on an
        # O_APPEND descriptor would ignore them. Descriptors are readable so that fsync can copy.
        access = os.O_RDONLY if flags & os.O_ACCMODE == os.O_RDONLY else os.O_RDWR
        return access | (flags & os.O_TRUNC) | os.O_CLOEXEC

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            fd = os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
            node = self.model.add(parent, name, Kind.FILE, os.fstat(fd).st_mode & 0o7777)
            self.open_nodes[fd] = node.id
            return fd

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            self._alive()
            node = self._node(path)
            fd = os.open(self._real(path), self._backing_flags(flags))
            self.open_nodes[fd] = node.id
            return fd

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        self._alive()
        return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self._alive()
        written = os.pwrite(fh, data, offset)
        counts = self.counts
        counts["writes"] += 1  # not locked: a lost increment under races only blurs a statistic
        counts["bytes_written"] += written
        return written

    def truncate(self, path: str | None, length: int, fh: Any = None) -> None:
        self._alive()
        if isinstance(fh, int) and fh > 0:
            os.ftruncate(fh, length)
        elif path is not None:
            os.truncate(self._real(path), length)
        else:
            raise FuseOSError(errno.EBADF)

    def flush(self, path: str | None, fh: int) -> None:
        self._alive()

    def release(self, path: str | None, fh: int) -> None:
        with self.mutex:
            self.open_nodes.pop(fh, None)
            os.close(fh)

    def fsync(self, path: str | None, datasync: int, fh: int) -> None:
        with self.mutex:
            self._alive()
            self.counts["file_syncs"] += 1
            node_id = self.open_nodes.get(fh)
            if node_id is not None:
                self.model.sync_file(node_id, self._read_all(fh))

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> None:
        with self.mutex:
            self._alive()
            if path is None:
                raise FuseOSError(errno.EBADF)
            self.counts["dir_syncs"] += 1
            node = self._node(path)
            if node.kind is not Kind.DIR:
                raise FuseOSError(errno.ENOTDIR)
            self.model.sync_dir(node)

    def init(self, path: str) -> None:
        _reply("ready")


def _hidden(name: str) -> bool:
    """libfuse's stand-in for an unlink of an open file: it renames the file to ``.fuse_hidden*`` and
    unlinks that name at the last close. For the model it is the unlink; listings do not show it."""
    return name.startswith(HIDDEN_PREFIX)


def _reply(line: str) -> None:
    os.write(1, (line + "\n").encode())


def serve_commands(ops: PowerCutOperations, mountpoint: Path) -> None:
    """The command loop on stdin (module docstring); unmounts at its end."""
    for raw in sys.stdin:
        command, _, arg = raw.strip().partition(" ")
        try:
            if command == "sync":
                ops.sync_everything()
                _reply("ok")
            elif command == "freeze":
                ops.freeze()
                _reply("ok")
            elif command == "write":
                files, size = ops.write_durable(Path(arg))
                _reply(f"ok {files} {size}")
            elif command == "stats":
                _reply("ok " + json.dumps(ops.counts))
            else:
                _reply(f"error unknown command {command!r}")
        except Exception as exc:  # noqa: BLE001 - the answer carries it to the test
            _reply(f"error {type(exc).__name__}: {exc}")
    detach(mountpoint)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--backing", type=Path, required=True)
    parser.add_argument("--mountpoint", type=Path, required=True)
    args = parser.parse_args(argv)
    ops = PowerCutOperations(args.backing)
    threading.Thread(target=serve_commands, args=(ops, args.mountpoint), daemon=True).start()
    FUSE(
        ops,
        str(args.mountpoint),
        foreground=True,
        fsname=FS_NAME,
        subtype=FS_NAME,
        default_permissions=True,
    )


if __name__ == "__main__":
    main()
