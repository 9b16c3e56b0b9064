"""The producer API: ``Emitter`` and the lazily created default ``emit``.

Each call validates its arguments (raising :class:`InvalidEventError` naming the field, writing nothing),
builds the compact record of :mod:`rudder_fast.events` and appends it to this process's segment. It
returns the event's ``messageId``, or None when the event was dropped for an operational reason
(counted, never raised). No thread, no socket, no buffering: the event is on disk when the call returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from . import config
from .counts import DROP_REENTRANT
from .errors import ConfigurationError
from .events import (
    KIND_TRACK,
    check_id,
    check_identity,
    check_message_id,
    check_required_str,
    check_timestamp,
    keywords_from_mapping,
    record,
)
from .jsonvalue import _JSON_OPTIONS, encode_json_field, encode_snapshot
from .schema import CALLS
from .spool import SegmentWriter

log = logging.getLogger("rudder_fast")

OnFull = Literal["drop", "block"]
_ON_FULL_CHOICES: Final = ("drop", "block")

_time_ns = time.time_ns
_dumps = orjson.dumps
JSONEncodeError = orjson.JSONEncodeError


class Emitter:
    """Writes events to a spool directory. Safe to share between threads and across fork.

    ``spool_dir``: the spool (default: ``$RUDDER_FAST_SPOOL_DIR``, else the documented default).
    ``on_full``: what a call does when the spool is over its quota: ``"drop"`` (return None at once) or
    ``"block"`` (wait up to ``block_timeout`` seconds for room, then drop).
    ``quota_bytes``: the quota to enforce while no sender is running (a running sender's own
    ``--quota-bytes`` wins); default ``$RUDDER_FAST_QUOTA_BYTES``, else none.
    """

    def __init__(
        self,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        on_full: OnFull = "drop",
        block_timeout: float = 5.0,
        segment_max_bytes: int = config.SEGMENT_MAX_BYTES,
        segment_max_age_s: float = config.SEGMENT_MAX_AGE_S,
        quota_bytes: int | str | None = None,
    ) -> None:
        warning = self._setup(
            spool_dir,
            on_full=on_full,
            block_timeout=block_timeout,
            segment_max_bytes=segment_max_bytes,
            segment_max_age_s=segment_max_age_s,
            quota_bytes=quota_bytes,
        )
        if warning:
            log.error("%s", warning)

    def _setup(
        self,
        spool_dir: str | os.PathLike[str] | None,
        *,
        on_full: OnFull = "drop",
        block_timeout: float = 5.0,
        segment_max_bytes: int = config.SEGMENT_MAX_BYTES,
        segment_max_age_s: float = config.SEGMENT_MAX_AGE_S,
        quota_bytes: int | str | None = None,
    ) -> str | None:
        """Check the options and open a writer for them. Logs nothing (the caller may hold a lock that
        a logging handler calling back in would need): returns the warning to log, if any."""
        if on_full not in _ON_FULL_CHOICES:
            raise ConfigurationError(f"on_full must be one of {_ON_FULL_CHOICES}, not {on_full!r}")
        if block_timeout < 0:
            raise ConfigurationError("block_timeout must be >= 0")
        if segment_max_bytes < 4096:
            raise ConfigurationError("segment_max_bytes must be at least 4096")
        quota, warning = config.resolve_quota_bytes(quota_bytes)
        self.spool_dir: Path = config.resolve_spool_dir(spool_dir)
        self.on_full: OnFull = on_full
        self.block_timeout = block_timeout
        self._writer: SegmentWriter | None = SegmentWriter(
            self.spool_dir,
            segment_max_bytes=segment_max_bytes,
            segment_max_age_s=segment_max_age_s,
            on_full=on_full,
            block_timeout=block_timeout,
            quota_bytes=quota,
        )
        self._append: Callable[[list[Any], int], str | None] = self._writer.append
        return warning

    def __repr__(self) -> str:
        w = self._writer
        if w is None:
            return "<Emitter (not used yet)>"
        return (
            f"<Emitter spool_dir={str(self.spool_dir)!r} accepted={w.accepted} "
            f"dropped={sum(w.dropped.values())}>"
        )

    # -- the hot path ------------------------------------------------------------------------------

    def _call(self, name: str, values: dict[str, Any]) -> str | None:
        """The five calls other than track (whose inlined path is the hot one): checked by the table of
        :mod:`rudder_fast.schema`, built, written."""
        return self._write(record(CALLS[name], _time_ns(), values))

    def _write(self, record: list[Any]) -> str | None:
        generated = self._append(record, record[1])
        message_id: str | None = record[4]
        if message_id is None or generated is None:
            return generated
        return message_id

    def track(  # noqa: C901 - the hot path, inlined: each helper call would cost a share of the budget
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        user_id: str | None = None,
        event: str | None = None,
        properties: Mapping[str, Any] | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        message_id: str | None = None,
    ) -> str | None:
        """Record that a user did something. Returns the messageId, or None if dropped."""
        if message is not None:
            return self.track(**keywords_from_mapping("track", message, locals()))
        # The hot path, kept flat: every function call here costs a measurable share of the budget.
        now = _time_ns()
        if type(event) is not str or not event or not "!" <= event[0] <= "~":
            event = check_required_str("event", event)
        if type(user_id) is str and user_id and "!" <= user_id[0] <= "~":
            if anonymous_id is not None:
                anonymous_id = check_id("anonymous_id", anonymous_id)
        else:
            user_id, anonymous_id = check_identity(user_id, anonymous_id)
        props_json: bytes | None = None
        if properties is not None:
            if type(properties) is dict:
                try:  # C only, no hook: see jsonvalue.encode_json_field
                    props_json = _dumps(properties, option=_JSON_OPTIONS)
                except JSONEncodeError:
                    props_json = encode_snapshot("properties", properties)
            else:
                props_json = encode_json_field("properties", properties)
        context_json = integrations_json = event_time = None
        if context is not None or integrations is not None or timestamp is not None:
            context_json = encode_json_field("context", context)
            integrations_json = encode_json_field("integrations", integrations)
            event_time = check_timestamp(timestamp)
        if message_id is not None:
            message_id = check_message_id(message_id)
        rec = [KIND_TRACK, now, user_id, anonymous_id, message_id, event_time, context_json,
               integrations_json, event, props_json]  # fmt: skip
        generated = self._append(rec, now)
        if message_id is None or generated is None:
            return generated
        return message_id

    def identify(
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        user_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        message_id: str | None = None,
    ) -> str | None:
        """Tie a user to their traits. Returns the messageId, or None if dropped."""
        if message is not None:
            return self.identify(**keywords_from_mapping("identify", message, locals()))
        return self._call("identify", locals())

    def page(
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        user_id: str | None = None,
        name: str | None = None,
        category: str | None = None,
        properties: Mapping[str, Any] | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        message_id: str | None = None,
    ) -> str | None:
        """Record a page view. Returns the messageId, or None if dropped."""
        if message is not None:
            return self.page(**keywords_from_mapping("page", message, locals()))
        return self._call("page", locals())

    def screen(
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        user_id: str | None = None,
        name: str | None = None,
        category: str | None = None,
        properties: Mapping[str, Any] | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        message_id: str | None = None,
    ) -> str | None:
        """Record a screen view (apps). Returns the messageId, or None if dropped."""
        if message is not None:
            return self.screen(**keywords_from_mapping("screen", message, locals()))
        return self._call("screen", locals())

    def group(
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        user_id: str | None = None,
        group_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        message_id: str | None = None,
    ) -> str | None:
        """Associate a user with a group. Returns the messageId, or None if dropped."""
        if message is not None:
            return self.group(**keywords_from_mapping("group", message, locals()))
        return self._call("group", locals())

    def alias(
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        previous_id: str | None = None,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        message_id: str | None = None,
    ) -> str | None:
        """Merge a previous identity into ``user_id``. Returns the messageId, or None if dropped."""
        if message is not None:
            return self.alias(**keywords_from_mapping("alias", message, locals()))
        return self._call("alias", locals())

    # -- housekeeping ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """This process's counts since it started (or forked): accepted and dropped by reason."""
        w = self._writer_for_use()
        if w is None:
            return {"accepted": 0, "dropped": {}, "segment": None}
        return {
            "accepted": w.accepted,
            "dropped": dict(w.dropped),
            "segment": str(w.segment_path) if w.segment_path else None,
        }

    def close(self) -> None:
        """Seal this process's segment so the sender can finish it now rather than after a minute.

        Optional: a process that just exits (or is killed) loses nothing; its segment is finished when
        the kernel releases its lock. A later call opens a new segment.
        """
        if self._writer is not None:
            self._writer.close()

    def _writer_for_use(self) -> SegmentWriter | None:
        return self._writer


class _DefaultEmitter(Emitter):
    """``rudder_fast.emit``: an :class:`Emitter` that sets itself up on first use, never at import
    (the spool directory and options come from the environment as it is at the first call).

    The first call builds the writer under a lock; a call that comes back in from that very setup (a
    logging or signal handler) is dropped and counted as ``reentrant`` rather than deadlocking, and the
    setup's own warnings are logged after the lock is released, so a handler that emits works.
    """

    def __init__(self) -> None:  # deliberately not Emitter.__init__: nothing is resolved or opened yet
        self._writer = None
        self._append = self._first_append
        self._lock = threading.Lock()
        self._setting_up = threading.local()
        self._reentrant_at_setup = 0
        # A fork while another thread holds the lock would leave the child's copy locked forever.
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._setting_up = threading.local()

    def __getattr__(self, name: str) -> Any:
        # ``spool_dir``, ``on_full`` and ``block_timeout`` exist once set up: asking sets it up.
        if name in ("spool_dir", "on_full", "block_timeout"):
            self._writer_for_use()
            if name in self.__dict__:
                return self.__dict__[name]
        raise AttributeError(name)

    def _writer_for_use(self) -> SegmentWriter | None:
        writer = self._writer
        if writer is not None:
            return writer
        if getattr(self._setting_up, "active", False):
            self._reentrant_at_setup += 1
            return None
        warning = None
        with self._lock:
            if self._writer is None:
                self._setting_up.active = True
                try:
                    warning = self._setup(None)
                finally:
                    self._setting_up.active = False
            writer = self._writer
        if writer is None:  # the setup failed: it raised
            return None
        if self._reentrant_at_setup:
            for _ in range(self._reentrant_at_setup):
                writer.count_drop(DROP_REENTRANT, time.time_ns())
            self._reentrant_at_setup = 0
        if warning:
            log.error("%s", warning)
        return writer

    def _first_append(self, record: list[Any], now_ns: int) -> str | None:
        writer = self._writer_for_use()
        if writer is None:
            return None  # called back from the setup itself: dropped, counted once it is done
        return writer.append(record, now_ns)

    def get(self) -> Emitter:
        """This emitter, set up (for code that needs its ``spool_dir`` or options)."""
        self._writer_for_use()
        return self

    def configure(self, spool_dir: str | os.PathLike[str] | None = None, **options: Any) -> Emitter:
        with self._lock:
            old = self._writer
            warning = self._setup(spool_dir, **options)
        if old is not None:
            old.close()
        if warning:
            log.error("%s", warning)
        return self

    def __repr__(self) -> str:
        if self._writer is None:
            return "<default emitter (not used yet)>"
        return f"<default emitter {super().__repr__()}>"


_DEFAULT: Final = _DefaultEmitter()
emit: Final[Emitter] = _DEFAULT
"""The default emitter: ``from rudder_fast import emit; emit.track(...)``. Set up on first use."""


def configure(spool_dir: str | os.PathLike[str] | None = None, **options: Any) -> Emitter:
    """Set up the default emitter ``rudder_fast.emit`` (optional: it configures itself on first use)."""
    return _DEFAULT.configure(spool_dir, **options)
