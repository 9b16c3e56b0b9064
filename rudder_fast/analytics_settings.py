"""rudder-sdk-python's delivery settings, said once: what does each one's job with rudder_fast.

How this works
--------------
A ``rudder_fast.analytics.Client`` (the module's default one included) given a delivery setting calls
:func:`explain` once. In this process nothing is delivered, so each setting is mapped to what does its
job: ``write_key`` and ``dataPlaneUrl``/``host`` are compared with what the spool's running sender
reports in ``<spool>/status`` (a digest of its write key, never the key, and its URL without any
password), or the message says that no sender runs and how to start one; the others name the sender's
option that replaces them, or say plainly that they are not needed or not supported. One log record
(logger ``rudder_fast``) says it all: WARNING when anything needs the reader's attention, INFO when the
running sender already uses the same key and URL. The same text is never logged twice in a process.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Final

import orjson

from . import config

log = logging.getLogger("rudder_fast")

DEFAULTS: Final = {
    "write_key": None, "host": None, "gzip": True, "timeout": 15, "max_retries": 10, "sync_mode": False,
    "max_queue_size": 10000, "upload_interval": 0.5, "upload_size": 100, "thread": 1, "proxies": None,
    "on_error": None,
}  # fmt: skip
"""rudder-sdk-python's defaults for the settings that belong to delivery (``Client.DefaultConfig``)."""

# What does each setting's job here (write_key and the URL are compared with the sender instead).
_ELSEWHERE: Final = {
    "gzip": "set on the sender (--no-gzip or RUDDER_FAST_NO_GZIP=1)",
    "timeout": "set on the sender (--connect-timeout, --read-timeout)",
    "max_retries": (
        "the sender retries until the data plane accepts, backing off up to 30 s "
        "(a --drain gives up after --drain-timeout)"
    ),
    "max_queue_size": (
        "the spool's quota bounds the backlog (rudder-fast-sender --quota-bytes, or "
        "RUDDER_FAST_QUOTA_BYTES); over it a call returns (False, message), as when the SDK's queue is full"
    ),
    "upload_interval": "set on the sender (--linger)",
    "upload_size": "set on the sender (--max-batch-events, --max-batch-bytes)",
    "thread": "set on the sender (--concurrency)",
    "proxies": "not supported: the sender connects to the data plane directly",
    "sync_mode": (
        "not needed: each call returns once its event is on disk, safe from a crash of this process; "
        "to wait until events are delivered, run `rudder-fast-sender --drain` (e.g. at the end of a job)"
    ),
    "on_error": (
        "never called: this process delivers nothing. A failed delivery keeps the events in the spool "
        "(none is lost) and shows in the sender's log and in `rudder-fast status` (last_error)"
    ),
}

_said: set[str] = set()
_said_lock = threading.Lock()


def explain(settings: dict[str, Any], spool_dir: Path) -> None:
    """Log, once per process and text, what does the job of each delivery setting that was given."""
    given = [name for name, default in DEFAULTS.items() if settings[name] != default]
    if not given:
        return
    level, lines = delivery_lines(settings, given, spool_dir, sender_report(spool_dir))
    text = (
        f"rudder_fast.analytics: events from this process are appended to the spool {spool_dir} (on disk "
        "when each call returns) and rudder-fast-sender delivers them with its own settings. Of the "
        "rudder-sdk-python settings given here:\n" + "\n".join(f"  {line}" for line in lines)
    )
    # Never block: in a child forked while another thread held the lock, say it rather than hang.
    locked = _said_lock.acquire(blocking=False)
    try:
        if text in _said:
            return
        _said.add(text)
    finally:
        if locked:
            _said_lock.release()
    log.log(level, "%s", text)


def delivery_lines(
    settings: dict[str, Any], given: list[str], spool_dir: Path, sender: dict[str, Any] | None
) -> tuple[int, list[str]]:
    """(log level, one line per setting given). ``sender``: the running sender's status, None if none."""
    lines: list[str] = []
    level = logging.INFO
    key, url = settings["write_key"], settings["host"]
    if key is not None or url is not None:
        named = " and ".join(n for n, v in (("write_key", key), ("dataPlaneUrl", url)) if v is not None)
        if sender is None:
            level = logging.WARNING
            shown = shown_url(url) if url is not None else "<the data plane URL>"
            lines.append(
                f"{named}: no rudder-fast-sender is running on this spool, so events wait there. Start one "
                f"with the same settings: RUDDER_WRITE_KEY=<the write key> RUDDER_DATA_PLANE_URL={shown} "
                f"rudder-fast-sender --spool-dir {spool_dir}"
            )
        else:
            pid = sender.get("pid")
            if key is not None:
                theirs = sender.get("write_key_fingerprint")
                if theirs == config.write_key_fingerprint(key):
                    lines.append(f"write_key: the same as the running sender's (pid {pid})")
                elif theirs is None:
                    level = logging.WARNING
                    lines.append(
                        f"write_key: the running sender (pid {pid}) has not said which key it uses; "
                        "check its --write-key or RUDDER_WRITE_KEY"
                    )
                else:
                    level = logging.WARNING
                    lines.append(
                        f"write_key: the running sender (pid {pid}) uses a DIFFERENT write key, so these "
                        "events go to that key's source. Give the sender this key (--write-key or "
                        "RUDDER_WRITE_KEY), or run a second spool and sender for it"
                    )
            if url is not None:
                theirs_url = sender.get("data_plane_url")
                if theirs_url == shown_url(url):
                    lines.append(f"dataPlaneUrl: the same as the running sender's ({theirs_url})")
                else:
                    level = logging.WARNING
                    lines.append(
                        f"dataPlaneUrl: the running sender (pid {pid}) posts to {theirs_url}, not to "
                        f"{shown_url(url)}. Set its --data-plane-url or RUDDER_DATA_PLANE_URL"
                    )
    for name in given:
        if name in _ELSEWHERE:
            level = logging.WARNING
            lines.append(f"{name}: {_ELSEWHERE[name]}")
    return level, lines


def shown_url(url: object) -> str:
    """The batch URL the sender would post to for ``url``, without any user:password part."""
    from .transport import batch_url, redact_url  # imports urllib3: only on this once-a-process path

    try:
        return redact_url(batch_url(str(url)))
    except ValueError:
        return redact_url(str(url))


def sender_report(spool_dir: Path) -> dict[str, Any] | None:
    """What the spool's running sender reports in ``<spool>/status``; None if no sender runs."""
    from .layout import SpoolPaths
    from .quota import sender_running

    paths = SpoolPaths(spool_dir)
    if not sender_running(paths.sender_lock):
        return None
    try:
        doc = orjson.loads(paths.status.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}
