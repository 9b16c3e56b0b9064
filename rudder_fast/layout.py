"""The spool directory's layout, shared by producers, the sender and the toolbox.

::

    <spool>/
      sender.lock   held with flock(LOCK_EX) by the one sender of this spool
      ledger        the sender's acknowledged offsets
      tmp/          segments are created here (header written, lock taken), then renamed into segments/
      segments/     <nonce>-<pid>-<index>.seg: one writer each, which holds flock(LOCK_EX) while writing
      rejected/     events the data plane refused, as JSON lines with its answer

Directories are 0700 and files 0600 whatever the umask: the spool holds user data.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from . import config
from .errors import SpoolError

SEGMENT_SUFFIX = ".seg"


@dataclass(frozen=True, slots=True)
class SpoolPaths:
    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def sender_lock(self) -> Path:
        return self.root / "sender.lock"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def status(self) -> Path:
        return self.root / "status"

    @property
    def control(self) -> Path:
        return self.root / "control"


def segment_name(nonce: str, pid: int, index: int) -> str:
    return f"{nonce}-{pid}-{index}{SEGMENT_SUFFIX}"


_NEW_SEGMENT = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


def create_segment(paths: SpoolPaths, name: str, header: bytes) -> tuple[int, Path]:
    """A new segment for its one writer: created in tmp/ (O_EXCL, 0600 exactly), locked (flock, held
    while the writer may append), its header written, then renamed into segments/, so that the sender
    never sees a segment without a header or a lock. The descriptor (O_APPEND) and the segment's path;
    raises OSError, leaving nothing behind (FileNotFoundError: the spool's directories are gone)."""
    tmp_path = paths.tmp / name
    try:
        fd = os.open(tmp_path, _NEW_SEGMENT, 0o600)
    except FileExistsError:
        # Its writer's own debris (the name holds the writer's nonce): an earlier attempt was interrupted.
        os.unlink(tmp_path)
        fd = os.open(tmp_path, _NEW_SEGMENT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits the sender needs (0600 exactly)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.write(fd, header) != len(header):
            raise OSError(errno.ENOSPC, "short write of segment header")
        final_path = paths.segments / name
        os.rename(tmp_path, final_path)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    return fd, final_path


def _ensure_private_dir(path: Path) -> None:
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # exactly 0700 whatever the umask
    except FileExistsError:
        pass
    mode = _check_private_dir(path)
    if mode != 0o700:
        os.chmod(path, 0o700)  # a umask may have narrowed it: make it exactly owner-only


def _whose(owner: int | None) -> tuple[int, str]:
    """The uid the checks below hold a spool to, and how a message names it: this user's, or (for
    root looking at an app user's spool, as ``doctor`` does) the owner the spool's users run as."""
    return (os.geteuid(), "this user") if owner is None else (owner, "the spool's owner")


def _check_private_dir(path: Path, owner: int | None = None) -> int:
    """Raise SpoolError unless ``path`` is a real directory of this user (or of ``owner``) that nobody
    else can write (others could plant files or symlinks in it); its permission bits otherwise."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SpoolError(f"spool path {path} is not a directory (symlinks are refused)")
    uid, who = _whose(owner)
    if st.st_uid != uid:
        raise SpoolError(f"spool directory {path} is owned by uid {st.st_uid}, not by {who} ({uid})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise SpoolError(
            f"spool directory {path} is writable by others (mode {mode:04o}); "
            f"others could plant files or symlinks in it: fix it with `chmod 700 {path}`"
        )
    return mode


def check_private(paths: SpoolPaths, owner: int | None = None) -> None:
    """The spool is still private: its directories are this user's (or ``owner``'s) and writable by
    nobody else. The sender checks this every second, not only at start, and refuses to go on when it
    is not."""
    for directory in (paths.root, paths.tmp, paths.segments, paths.rejected):
        try:
            _check_private_dir(directory, owner)
        except FileNotFoundError:
            continue  # tmp/ or rejected/ removed: recreated when next needed


# The spool's own files: each must be a regular file (or absent). A FIFO would block whoever opens it,
# a directory or a symlink in their place is damage or an attack; the sender refuses to start on them.
SPOOL_FILES = ("sender.lock", "control", "ledger", "status")


def check_spool_files(paths: SpoolPaths) -> None:
    """Raise SpoolError if a spool file's name holds anything but a regular file."""
    from .safefile import describe

    for name in SPOOL_FILES:
        path = paths.root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise SpoolError(
                f"{path} is {describe(st.st_mode)}, not a regular file: the spool is damaged or was "
                f"tampered with; remove it (the sender recreates it)"
            )


def check_parent(root: Path, owner: int | None = None) -> None:
    """The directory holding the spool must belong to root or to this user (or ``owner``): its owner
    could otherwise replace the spool with one of their own."""
    parent = root.parent
    st = os.stat(parent)
    uid, who = _whose(owner)
    if st.st_uid not in (0, uid):
        raise SpoolError(
            f"the spool's parent directory {parent} is owned by uid {st.st_uid}, neither root nor {who} "
            f"({uid}): its owner could replace the spool; move the spool elsewhere"
        )


def parent_warning(root: Path) -> str | None:
    """A warning if others may write the spool's parent without the sticky bit (as /tmp has): they
    could move the spool away (it is then refused, not being this user's), never make anyone write
    through it."""
    try:
        st = os.stat(root.parent)
    except OSError:
        return None
    if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
        return (
            f"the spool's parent directory {root.parent} is writable by everyone (mode "
            f"{stat.S_IMODE(st.st_mode):04o}, no sticky bit): others could move the spool away; prefer "
            f"a parent only its owner can write"
        )
    return None


# File systems where flock and O_APPEND do not give the guarantees the spool depends on (one writer per
# file, atomic appends, locks that die with their process), or that are shared between hosts.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
     "gfs2", "ocfs2", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "davfs"}
)  # fmt: skip


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding ``path``, from /proc/self/mountinfo (Linux), or None."""
    try:
        text = Path("/proc/self/mountinfo").read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return None
    return mount_type(text, os.fsdecode(os.path.realpath(path)))


def mount_type(mountinfo: str, target: str) -> str | None:
    """The file system type of the deepest mount point holding ``target``, per ``mountinfo`` text."""
    best, best_type = "", None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def check_local_filesystem(root: Path, allow: bool) -> None:
    """Refuse a network file system unless ``allow`` (--allow-network-fs, RUDDER_FAST_ALLOW_NETWORK_FS=1)."""
    if allow:
        return
    fstype = filesystem_type(root if root.exists() else root.parent)
    if fstype in NETWORK_FILESYSTEMS:
        raise SpoolError(
            f"spool directory {root} is on a network file system ({fstype}): flock and appends are "
            f"not reliable there; use a local disk, or set {config.ENV_ALLOW_NETWORK_FS}=1 to force it"
        )


def ensure_spool(root: Path, *, allow_network_fs: bool | None = None) -> SpoolPaths:
    """Create (or check) the spool's directories; raises SpoolError if it cannot be used safely.
    ``allow_network_fs`` None: as RUDDER_FAST_ALLOW_NETWORK_FS says (producers)."""
    paths = SpoolPaths(root)
    allow = config.allow_network_fs() if allow_network_fs is None else allow_network_fs
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        check_local_filesystem(root, allow)
        check_parent(root)
        _ensure_private_dir(root)
        for sub in (paths.tmp, paths.segments, paths.rejected):
            _ensure_private_dir(sub)
    except SpoolError:
        raise
    except OSError as exc:
        raise SpoolError(f"cannot use spool directory {root}: {exc}") from exc
    return paths
