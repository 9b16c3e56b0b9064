"""The producer API: ``Emitter`` and the lazily created default ``emit``.

Each call validates its arguments (raising :class:`InvalidEventError` naming the field, writing nothing),
builds the compact record of :mod:`rudder_fast.events` and appends it to this process's segment. It
returns the event's ``messageId``, or None when the event was dropped for an operational reason
(counted, never raised). No thread, no socket, no buffering: the event is on disk when the call returns.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from . import config
from .errors import ConfigurationError
from .events import (
    _JSON_OPTIONS,
    KIND_ALIAS,
    KIND_GROUP,
    KIND_IDENTIFY,
    KIND_PAGE,
    KIND_SCREEN,
    KIND_TRACK,
    _default,
    build_record,
    check_id,
    check_identity,
    check_message_id,
    check_optional_str,
    check_required_str,
    check_timestamp,
    encode_json_field,
    keywords_from_mapping,
)
from .spool import SegmentWriter

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
        if on_full not in _ON_FULL_CHOICES:
            raise ConfigurationError(f"on_full must be one of {_ON_FULL_CHOICES}, not {on_full!r}")
        if block_timeout < 0:
            raise ConfigurationError("block_timeout must be >= 0")
        if segment_max_bytes < 4096:
            raise ConfigurationError("segment_max_bytes must be at least 4096")
        self.spool_dir: Path = config.resolve_spool_dir(spool_dir)
        self.on_full: OnFull = on_full
        self.block_timeout = block_timeout
        self._writer = SegmentWriter(
            self.spool_dir,
            segment_max_bytes=segment_max_bytes,
            segment_max_age_s=segment_max_age_s,
            on_full=on_full,
            block_timeout=block_timeout,
            quota_bytes=config.resolve_quota_bytes(quota_bytes),
        )
        self._append = self._writer.append

    def __repr__(self) -> str:
        w = self._writer
        return (
            f"<Emitter spool_dir={str(self.spool_dir)!r} accepted={w.accepted} "
            f"dropped={sum(w.dropped.values())}>"
        )

    # -- the hot path ------------------------------------------------------------------------------

    def _emit(
        self,
        kind: int,
        fields: list[Any],
        user_id: object,
        anonymous_id: object,
        context: object,
        integrations: object,
        timestamp: object,
        message_id: object,
    ) -> str | None:
        """The five calls other than track (whose inlined path is the hot one): check, build, write."""
        return self._write(
            build_record(
                kind,
                _time_ns(),
                user_id=user_id,
                anonymous_id=anonymous_id,
                context=context,
                integrations=integrations,
                timestamp=timestamp,
                message_id=message_id,
                fields=fields,
            )
        )

    def _write(self, record: list[Any]) -> str | None:
        generated = self._writer.append(record, record[1])
        message_id: str | None = record[4]
        if message_id is None or generated is None:
            return generated
        return message_id

    def track(
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
                try:
                    props_json = _dumps(properties, default=_default, option=_JSON_OPTIONS)
                except JSONEncodeError:
                    props_json = encode_json_field("properties", properties)
            else:
                props_json = encode_json_field("properties", properties)
        context_json = integrations_json = event_time = None
        if context is not None or integrations is not None or timestamp is not None:
            context_json = encode_json_field("context", context)
            integrations_json = encode_json_field("integrations", integrations)
            event_time = check_timestamp(timestamp)
        if message_id is not None:
            message_id = check_message_id(message_id)
        record = [KIND_TRACK, now, user_id, anonymous_id, message_id, event_time, context_json,
                  integrations_json, event, props_json]  # fmt: skip
        generated = self._append(record, now)
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
        fields = [encode_json_field("traits", traits)]
        return self._emit(
            KIND_IDENTIFY, fields, user_id, anonymous_id, context, integrations, timestamp, message_id
        )

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
        return self._page_or_screen(
            KIND_PAGE, user_id, name, category, properties, anonymous_id, context, integrations,
            timestamp, message_id,
        )  # fmt: skip

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
        return self._page_or_screen(
            KIND_SCREEN, user_id, name, category, properties, anonymous_id, context, integrations,
            timestamp, message_id,
        )  # fmt: skip

    def _page_or_screen(
        self,
        kind: int,
        user_id: object,
        name: object,
        category: object,
        properties: object,
        anonymous_id: object,
        context: object,
        integrations: object,
        timestamp: object,
        message_id: object,
    ) -> str | None:
        fields = [
            check_optional_str("name", name),
            check_optional_str("category", category),
            encode_json_field("properties", properties),
        ]
        return self._emit(kind, fields, user_id, anonymous_id, context, integrations, timestamp, message_id)

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
        fields = [check_required_str("group_id", group_id), encode_json_field("traits", traits)]
        return self._emit(
            KIND_GROUP, fields, user_id, anonymous_id, context, integrations, timestamp, message_id
        )

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
        fields = [check_required_str("previous_id", previous_id)]
        return self._emit(
            KIND_ALIAS, fields, user_id, anonymous_id, context, integrations, timestamp, message_id
        )

    # -- housekeeping ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """This process's counts since it started (or forked): accepted and dropped by reason."""
        w = self._writer
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
        self._writer.close()


class _DefaultEmitter:
    """``rudder_fast.emit``: creates the real Emitter on first use, never at import."""

    def __init__(self) -> None:
        self._emitter: Emitter | None = None
        self._lock = threading.Lock()
        # A fork while another thread holds the lock would leave the child's copy locked forever.
        os.register_at_fork(after_in_child=self._reset_lock)

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()

    def configure(self, spool_dir: str | os.PathLike[str] | None = None, **options: Any) -> Emitter:
        emitter = Emitter(spool_dir, **options)
        with self._lock:
            old, self._emitter = self._emitter, emitter
        if old is not None:
            old.close()
        return emitter

    def get(self) -> Emitter:
        emitter = self._emitter
        if emitter is None:
            with self._lock:
                if self._emitter is None:
                    self._emitter = Emitter()
                emitter = self._emitter
        return emitter

    def __repr__(self) -> str:
        return f"<default emitter {self._emitter!r}>"

    def track(self, message: Mapping[str, Any] | None = None, /, **kw: Any) -> str | None:
        return self.get().track(message, **kw)

    def identify(self, message: Mapping[str, Any] | None = None, /, **kw: Any) -> str | None:
        return self.get().identify(message, **kw)

    def page(self, message: Mapping[str, Any] | None = None, /, **kw: Any) -> str | None:
        return self.get().page(message, **kw)

    def screen(self, message: Mapping[str, Any] | None = None, /, **kw: Any) -> str | None:
        return self.get().screen(message, **kw)

    def group(self, message: Mapping[str, Any] | None = None, /, **kw: Any) -> str | None:
        return self.get().group(message, **kw)

    def alias(self, message: Mapping[str, Any] | None = None, /, **kw: Any) -> str | None:
        return self.get().alias(message, **kw)

    def stats(self) -> dict[str, Any]:
        return self.get().stats()

    def close(self) -> None:
        if self._emitter is not None:
            self._emitter.close()


emit: Final = _DefaultEmitter()


def configure(spool_dir: str | os.PathLike[str] | None = None, **options: Any) -> Emitter:
    """Set up the default emitter ``rudder_fast.emit`` (optional: it configures itself on first use)."""
    return emit.configure(spool_dir, **options)
