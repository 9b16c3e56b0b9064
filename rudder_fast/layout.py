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

import os
import stat
from dataclasses import dataclass
from pathlib import Path

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
    def counters(self) -> Path:
        return self.root / "counters"

    @property
    def status(self) -> Path:
        return self.root / "status"

    @property
    def control(self) -> Path:
        return self.root / "control"


def segment_name(nonce: str, pid: int, index: int) -> str:
    return f"{nonce}-{pid}-{index}{SEGMENT_SUFFIX}"


def _ensure_private_dir(path: Path) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SpoolError(f"spool path {path} is not a directory (symlinks are refused)")
    if st.st_uid != os.geteuid():
        raise SpoolError(
            f"spool directory {path} is owned by uid {st.st_uid}, not by this user ({os.geteuid()})"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)  # umask may have narrowed it; never leave it wider


def ensure_spool(root: Path) -> SpoolPaths:
    """Create (or check) the spool's directories; raises SpoolError if it cannot be used safely."""
    paths = SpoolPaths(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        _ensure_private_dir(root)
        for sub in (paths.tmp, paths.segments, paths.rejected):
            _ensure_private_dir(sub)
    except SpoolError:
        raise
    except OSError as exc:
        raise SpoolError(f"cannot use spool directory {root}: {exc}") from exc
    return paths
