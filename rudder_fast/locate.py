"""Where spools are, and what is going on in each: for the checks that catch an app and a sender on
different directories (``rudder-fast status``, ``inspect`` and ``doctor``, and the sender at start).

The default spool directory depends on the user (``/var/spool/rudder-fast`` for root, a directory under
the home otherwise), so an app and a sender started by different users, or one with
``RUDDER_FAST_SPOOL_DIR`` and one without, write and read different directories. Those places are
known: this module lists them and probes each one (cheaply: a directory listing and a lock probe per
segment), never modifying anything.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from . import config, safefile
from .layout import SpoolPaths
from .quota import sender_running
from .tail import list_segments, writer_alive

# The per-user default, relative to a home directory (when XDG_STATE_HOME is not set).
_USER_DEFAULT = Path(".local") / "state" / "rudder-fast" / "spool"


def known_spool_dirs(environ: config.Environ | None = None) -> list[Path]:
    """The directories an app or sender on this host would use without a ``spool_dir`` argument:
    ``$RUDDER_FAST_SPOOL_DIR``, root's default, this user's default, and every other user's default
    (their home directory's, as far as this user may look)."""
    environ = os.environ if environ is None else environ
    found: list[Path] = []
    env = environ.get(config.ENV_SPOOL_DIR)
    if env:
        found.append(Path(env))
    found.append(Path(config.SYSTEM_SPOOL_DIR))
    found.append(config.default_spool_dir(environ))
    try:
        homes = sorted({entry.pw_dir for entry in pwd.getpwall() if entry.pw_dir.startswith("/")})
    except OSError:
        homes = []
    found.extend(Path(home) / _USER_DEFAULT for home in homes if home != "/")
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


@dataclass(frozen=True)
class SpoolActivity:
    spool_dir: Path
    live_producers: int  # segments whose writer holds its lock now
    segments: int
    sender_running: bool
    closed_to: int | None = None  # another user's spool this user may not look into: its owner's uid

    @property
    def unread(self) -> bool:
        """Events are (or may soon be) waiting here and no sender reads them (for a spool this user
        cannot look into: may be)."""
        if self.closed_to is not None:
            return True
        return not self.sender_running and (self.live_producers > 0 or self.segments > 0)


def probe(spool_dir: Path) -> SpoolActivity | None:
    """What happens in ``spool_dir`` now; None if it is not a spool (or this user may not look)."""
    paths = SpoolPaths(spool_dir)
    try:  # another user's home, a missing directory: not a spool this user can see
        if not paths.segments.is_dir():
            return None
        segments = list_segments(paths.segments)
    except OSError:
        return None
    live = 0
    for path in segments:
        try:
            fd = safefile.open_regular(path, os.O_RDONLY, own=False)
        except OSError:
            continue
        try:
            live += writer_alive(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
    return SpoolActivity(spool_dir, live, len(segments), sender_running(paths.sender_lock))


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def closed_spool(spool_dir: Path) -> SpoolActivity | None:
    """``spool_dir`` as seen by a user it is closed to: another user's spool directory (0700, as
    spools are) that this user cannot list; None otherwise."""
    try:
        st = os.stat(spool_dir)
    except OSError:
        return None
    if st.st_uid == os.geteuid() or os.access(spool_dir, os.R_OK | os.X_OK):
        return None
    return SpoolActivity(spool_dir, 0, 0, False, closed_to=st.st_uid)


def other_spools(examined: Path, environ: config.Environ | None = None) -> list[SpoolActivity]:
    """The known spools other than ``examined`` where events wait with no sender to read them, and
    the shared ones (``$RUDDER_FAST_SPOOL_DIR``, root's default: where the README puts an app's spool)
    that this user cannot look into: an app of their owner may be writing there for nobody."""
    environ = os.environ if environ is None else environ
    shared = {Path(config.SYSTEM_SPOOL_DIR)}
    if environ.get(config.ENV_SPOOL_DIR):
        shared.add(Path(environ[config.ENV_SPOOL_DIR]))
    found = []
    for path in known_spool_dirs(environ):
        if _same_dir(path, examined):
            continue
        activity = probe(path)
        if activity is None and path in shared:
            activity = closed_spool(path)
        if activity is not None and activity.unread:
            found.append(activity)
    return found


def describe(activity: SpoolActivity) -> str:
    """One line about a spool no sender reads."""
    if activity.closed_to is not None:
        return (
            f"{activity.spool_dir} is a spool of uid {activity.closed_to}, which this user cannot look into: "
            f"if the app writes there, run the sender as uid {activity.closed_to} on that directory"
        )
    what = (
        f"{activity.live_producers} live producer(s) write to {activity.spool_dir}"
        if activity.live_producers
        else f"{activity.segments} segment(s) wait in {activity.spool_dir}"
    )
    return f"{what}, which no sender reads: run the sender on that directory, or point the app here"
