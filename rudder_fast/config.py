"""Settings: every default a named constant with its reason, and the one place that reads the environment.

Nothing here runs at import time beyond defining constants; ``from_env`` style helpers are called
explicitly by the emitter (on first use) and by the command-line tools.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

ENV_SPOOL_DIR: Final = "RUDDER_FAST_SPOOL_DIR"

# Where the spool lives when neither an argument nor RUDDER_FAST_SPOOL_DIR says. Producers and the sender
# must run as the same user (the spool is 0700), so a per-user default is consistent: root gets the
# conventional system spool, everyone else a directory under their XDG state home.
SYSTEM_SPOOL_DIR: Final = "/var/spool/rudder-fast"

# A segment is sealed and a new one started once it reaches this size. The sender deletes whole
# segments once acknowledged, so this bounds how much acknowledged data lingers on disk per producer;
# 8 MiB is ~50k typical events, large enough that rotation (a few syscalls) is rare.
SEGMENT_MAX_BYTES: Final = 8 * 1024 * 1024

# ...or once it is this old (checked on a call, never by a timer): a busy-then-quiet producer does not
# pin an acknowledged file for long, and an idle producer creates no files at all.
SEGMENT_MAX_AGE_S: Final = 60.0

# After a write fails (disk full, file too large, I/O error) the producer drops events without
# touching the disk for this long: a full disk must not cost the app a failing syscall per call.
DISK_ERROR_BACKOFF_S: Final = 0.05

# Operational warnings (drops, unusable spool) are logged at most once per this many seconds.
WARNING_INTERVAL_S: Final = 60.0


def default_spool_dir() -> Path:
    if os.geteuid() == 0:
        return Path(SYSTEM_SPOOL_DIR)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "rudder-fast" / "spool"


def resolve_spool_dir(spool_dir: str | os.PathLike[str] | None) -> Path:
    """The spool directory: the argument, else $RUDDER_FAST_SPOOL_DIR, else the default above."""
    if spool_dir is not None:
        return Path(spool_dir)
    env = os.environ.get(ENV_SPOOL_DIR)
    if env:
        return Path(env)
    return default_spool_dir()


ENV_QUOTA_BYTES: Final = "RUDDER_FAST_QUOTA_BYTES"


def resolve_quota_bytes(value: int | str | None) -> tuple[int, str | None]:
    """A quota in bytes from an int, a size string ("512M"), or $RUDDER_FAST_QUOTA_BYTES (0 = none),
    and a warning to log when the environment's value was unusable and ignored. Logs nothing itself:
    producers call this where a logging handler that emits must not re-enter."""
    from .errors import ConfigurationError
    from .quota import parse_size

    if value is None:
        env = os.environ.get(ENV_QUOTA_BYTES)
        if not env:
            return 0, None
        try:
            return parse_size(env), None
        except ValueError as exc:
            # A producer must not fail every call over a deployment's typo: no quota, said loudly.
            return 0, f"ignoring {ENV_QUOTA_BYTES}: {exc}"
    if isinstance(value, int):
        if value < 0:
            raise ConfigurationError("quota_bytes must be >= 0")
        return value, None
    try:
        return parse_size(value), None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def write_key_fingerprint(write_key: str) -> str:
    """A short one-way digest of a write key, published by the sender in ``<spool>/status``.

    Enough to tell whether an app and the sender use the same key, without either ever writing the key
    itself anywhere (a write key is a long random token: its digest does not lead back to it).
    """
    return "sha256:" + hashlib.sha256(write_key.encode()).hexdigest()[:16]
