"""rudder-sdk-python's ``Client`` for :mod:`rudder_fast.analytics`: its constructor and methods, with
the SDK's conversions of the arguments, writing to the spool through :data:`rudder_fast.emit`."""

from __future__ import annotations

import datetime as _dt
import logging
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from . import events as _events
from .analytics_clean import lenient_retry
from .analytics_settings import explain as explain_delivery_settings
from .emitter import emit
from .errors import InvalidEventAssertionError, InvalidEventError
from .schema import CALLS, R_MESSAGE_ID

log = logging.getLogger("rudder_fast")

Id: TypeAlias = Any
"""An id as rudder-sdk-python takes it: a str, or a number (sent as its str)."""
Fields: TypeAlias = Mapping[str, Any] | None
Timestamp: TypeAlias = _dt.datetime | str | None


# -- the client ---------------------------------------------------------------------------------------------


def _falsy_as_none(value: Any) -> Any:
    """The SDK checks a page's name and category only when truthy: a falsy non-str is as good as none."""
    return None if not value and type(value) is not str else value


class Client:
    """rudder-sdk-python's ``Client``: the same constructor and methods; events go to the spool.

    Each method returns ``(True, message)`` as there, ``message`` being the event's fields in the SDK's
    names with its ``messageId``, or ``(False, message)`` when the spool is over its quota and the event
    was dropped (counted), where the SDK's full queue returned False.
    """

    class DefaultConfig:
        write_key = None
        host = None
        on_error = None
        debug = False
        send = True
        sync_mode = False
        max_queue_size = 10000
        gzip = True
        timeout = 15
        max_retries = 10
        proxies = None
        thread = 1
        upload_interval = 0.5
        upload_size = 100

    def __init__(
        self,
        write_key: str | None = DefaultConfig.write_key,
        host: str | None = DefaultConfig.host,
        debug: bool = DefaultConfig.debug,
        max_queue_size: int = DefaultConfig.max_queue_size,
        send: bool = DefaultConfig.send,
        on_error: Callable[..., Any] | None = DefaultConfig.on_error,
        gzip: bool = DefaultConfig.gzip,
        max_retries: int = DefaultConfig.max_retries,
        sync_mode: bool = DefaultConfig.sync_mode,
        timeout: float = DefaultConfig.timeout,
        proxies: Any = DefaultConfig.proxies,
        thread: int = DefaultConfig.thread,
        upload_size: int = DefaultConfig.upload_size,
        upload_interval: float = DefaultConfig.upload_interval,
    ) -> None:
        if write_key is not None and not isinstance(write_key, str):
            raise InvalidEventAssertionError("write_key", f"must be a str, not {type(write_key).__name__}")
        self.write_key = write_key
        self.host = host
        self.debug = debug
        self.send = send
        self.on_error = on_error
        self.sync_mode = sync_mode
        self._dry_run = not send
        self._delivery: dict[str, Any] = {
            "write_key": write_key, "host": host, "gzip": gzip, "timeout": timeout,
            "max_retries": max_retries, "sync_mode": sync_mode, "max_queue_size": max_queue_size,
            "upload_interval": upload_interval, "upload_size": upload_size, "thread": thread,
            "proxies": proxies, "on_error": on_error,
        }  # fmt: skip
        if debug:
            log.setLevel(logging.DEBUG)  # as the SDK does to its own logger, for good
        if send:
            explain_delivery_settings(self._delivery, emit.spool_dir)

    def __repr__(self) -> str:
        return f"<rudder_fast.analytics.Client send={self.send} spool_dir={str(emit.spool_dir)!r}>"

    # -- the six calls (each: the SDK's parameters, its conversions, the emitter, the lenient retry) --

    def track(
        self,
        user_id: Id = None,
        event: str | None = None,
        properties: Fields = None,
        context: Fields = None,
        timestamp: Timestamp = None,
        anonymous_id: Id = None,
        integrations: Fields = None,
        message_id: Any = None,
    ) -> tuple[bool, dict[str, Any]]:
        mid = self._track(
            user_id, event, properties, context, timestamp, anonymous_id, integrations, message_id
        )
        return self._result(mid, {
            "type": "track", "userId": _text(user_id), "anonymousId": _text(anonymous_id), "event": event,
            "properties": properties or {}, "context": context or {}, "integrations": integrations or {},
            "timestamp": timestamp,
        })  # fmt: skip

    def identify(
        self,
        user_id: Id = None,
        traits: Fields = None,
        context: Fields = None,
        timestamp: Timestamp = None,
        anonymous_id: Id = None,
        integrations: Fields = None,
        message_id: Any = None,
    ) -> tuple[bool, dict[str, Any]]:
        mid = self._identify(user_id, traits, context, timestamp, anonymous_id, integrations, message_id)
        return self._result(mid, {
            "type": "identify", "userId": _text(user_id), "anonymousId": _text(anonymous_id),
            "traits": traits or {}, "context": context or {}, "integrations": integrations or {},
            "timestamp": timestamp,
        })  # fmt: skip

    def page(
        self,
        user_id: Id = None,
        category: str | None = None,
        name: str | None = None,
        properties: Fields = None,
        context: Fields = None,
        timestamp: Timestamp = None,
        anonymous_id: Id = None,
        integrations: Fields = None,
        message_id: Any = None,
    ) -> tuple[bool, dict[str, Any]]:
        mid = self._page(
            user_id, category, name, properties, context, timestamp, anonymous_id, integrations, message_id
        )
        return self._result(mid, _page_message("page", user_id, category, name, properties, context,
                                               timestamp, anonymous_id, integrations))  # fmt: skip

    def screen(
        self,
        user_id: Id = None,
        category: str | None = None,
        name: str | None = None,
        properties: Fields = None,
        context: Fields = None,
        timestamp: Timestamp = None,
        anonymous_id: Id = None,
        integrations: Fields = None,
        message_id: Any = None,
    ) -> tuple[bool, dict[str, Any]]:
        mid = self._screen(
            user_id, category, name, properties, context, timestamp, anonymous_id, integrations, message_id
        )
        return self._result(mid, _page_message("screen", user_id, category, name, properties, context,
                                               timestamp, anonymous_id, integrations))  # fmt: skip

    def group(
        self,
        user_id: Id = None,
        group_id: Id = None,
        traits: Fields = None,
        context: Fields = None,
        timestamp: Timestamp = None,
        anonymous_id: Id = None,
        integrations: Fields = None,
        message_id: Any = None,
    ) -> tuple[bool, dict[str, Any]]:
        mid = self._group(
            user_id, group_id, traits, context, timestamp, anonymous_id, integrations, message_id
        )
        return self._result(mid, {
            "type": "group", "userId": _text(user_id), "anonymousId": _text(anonymous_id),
            "groupId": group_id, "traits": traits or {}, "context": context or {},
            "integrations": integrations or {}, "timestamp": timestamp,
        })  # fmt: skip

    def alias(
        self,
        previous_id: Id = None,
        user_id: Id = None,
        context: Fields = None,
        timestamp: Timestamp = None,
        integrations: Fields = None,
        message_id: Any = None,
    ) -> tuple[bool, dict[str, Any]]:
        mid = self._alias(previous_id, user_id, context, timestamp, integrations, message_id)
        return self._result(mid, {
            "type": "alias", "previousId": previous_id, "userId": _text(user_id),
            "context": context or {}, "integrations": integrations or {}, "timestamp": timestamp,
        })  # fmt: skip

    def flush(self) -> None:
        """Nothing to wait for: every event is in the spool, on disk, when its call returns."""

    def join(self) -> None:
        """Nothing to wait for: there is no consumer thread."""

    def shutdown(self) -> None:
        """Nothing to wait for: events are durable when their call returns, and there is no thread."""

    # -- the work behind each call (the module-level functions call these directly) ---------------------

    def _track(
        self, user_id: Id, event: Any, properties: Any, context: Any, timestamp: Any, anonymous_id: Id,
        integrations: Any, message_id: Any,
    ) -> str | None:  # fmt: skip
        if not (user_id or anonymous_id):
            raise _no_identity()
        if type(user_id) is not str and user_id is not None:
            user_id = _id(user_id)
        if anonymous_id is not None and type(anonymous_id) is not str:
            anonymous_id = _id(anonymous_id)
        if not properties:
            properties = {}  # the SDK always sends properties
        if timestamp is not None:
            timestamp = _timestamp(timestamp)
        if message_id is not None and type(message_id) is not str:
            message_id = str(message_id)
        sink = _DRY_RUN if self._dry_run else emit
        try:
            mid = sink.track(
                user_id=user_id, event=event, properties=properties, context=context or None,
                timestamp=timestamp, anonymous_id=anonymous_id, integrations=integrations or None,
                message_id=message_id,
            )  # fmt: skip
        except InvalidEventError as refused:
            mid = lenient_retry(sink.track, "track", refused, {
                "user_id": user_id, "event": event, "properties": properties, "context": context or None,
                "timestamp": timestamp, "anonymous_id": anonymous_id,
                "integrations": integrations or None, "message_id": message_id,
            })  # fmt: skip
        if self.debug:
            _log_call("track", mid, self._dry_run)
        return mid

    def _identify(
        self, user_id: Id, traits: Any, context: Any, timestamp: Any, anonymous_id: Id, integrations: Any,
        message_id: Any,
    ) -> str | None:  # fmt: skip
        if not (user_id or anonymous_id):
            raise _no_identity()
        if type(user_id) is not str and user_id is not None:
            user_id = _id(user_id)
        if anonymous_id is not None and type(anonymous_id) is not str:
            anonymous_id = _id(anonymous_id)
        if not traits:
            traits = {}  # the SDK always sends context.traits
        if timestamp is not None:
            timestamp = _timestamp(timestamp)
        if message_id is not None and type(message_id) is not str:
            message_id = str(message_id)
        sink = _DRY_RUN if self._dry_run else emit
        kwargs = {
            "user_id": user_id, "traits": traits, "context": context or None, "timestamp": timestamp,
            "anonymous_id": anonymous_id, "integrations": integrations or None, "message_id": message_id,
        }  # fmt: skip
        try:
            mid = sink.identify(**kwargs)
        except InvalidEventError as refused:
            mid = lenient_retry(sink.identify, "identify", refused, kwargs)
        if self.debug:
            _log_call("identify", mid, self._dry_run)
        return mid

    def _page(
        self, user_id: Id, category: Any, name: Any, properties: Any, context: Any, timestamp: Any,
        anonymous_id: Id, integrations: Any, message_id: Any,
    ) -> str | None:  # fmt: skip
        sink = _DRY_RUN if self._dry_run else emit
        return self._page_or_screen(
            sink.page, "page", user_id, category, name, properties, context, timestamp, anonymous_id,
            integrations, message_id,
        )  # fmt: skip

    def _screen(
        self, user_id: Id, category: Any, name: Any, properties: Any, context: Any, timestamp: Any,
        anonymous_id: Id, integrations: Any, message_id: Any,
    ) -> str | None:  # fmt: skip
        sink = _DRY_RUN if self._dry_run else emit
        return self._page_or_screen(
            sink.screen, "screen", user_id, category, name, properties, context, timestamp, anonymous_id,
            integrations, message_id,
        )  # fmt: skip

    def _page_or_screen(
        self, call: Callable[..., str | None], kind: str, user_id: Id, category: Any, name: Any,
        properties: Any, context: Any, timestamp: Any, anonymous_id: Id, integrations: Any,
        message_id: Any,
    ) -> str | None:  # fmt: skip
        if not (user_id or anonymous_id):
            raise _no_identity()
        if type(user_id) is not str and user_id is not None:
            user_id = _id(user_id)
        if anonymous_id is not None and type(anonymous_id) is not str:
            anonymous_id = _id(anonymous_id)
        if not properties:
            properties = {}
        name, category = _falsy_as_none(name), _falsy_as_none(category)
        if timestamp is not None:
            timestamp = _timestamp(timestamp)
        if message_id is not None and type(message_id) is not str:
            message_id = str(message_id)
        kwargs = {
            "user_id": user_id, "name": name, "category": category, "properties": properties,
            "context": context or None, "timestamp": timestamp, "anonymous_id": anonymous_id,
            "integrations": integrations or None, "message_id": message_id,
        }  # fmt: skip
        try:
            mid = call(**kwargs)
        except InvalidEventError as refused:
            mid = lenient_retry(call, kind, refused, kwargs)
        if self.debug:
            _log_call(kind, mid, self._dry_run)
        return mid

    def _group(
        self, user_id: Id, group_id: Id, traits: Any, context: Any, timestamp: Any, anonymous_id: Id,
        integrations: Any, message_id: Any,
    ) -> str | None:  # fmt: skip
        if not (user_id or anonymous_id):
            raise _no_identity()
        if type(user_id) is not str and user_id is not None:
            user_id = _id(user_id)
        if anonymous_id is not None and type(anonymous_id) is not str:
            anonymous_id = _id(anonymous_id)
        if type(group_id) is not str:
            group_id = _id(group_id)
        if not traits:
            traits = {}  # the SDK always sends traits
        if timestamp is not None:
            timestamp = _timestamp(timestamp)
        if message_id is not None and type(message_id) is not str:
            message_id = str(message_id)
        sink = _DRY_RUN if self._dry_run else emit
        kwargs = {
            "user_id": user_id, "group_id": group_id, "traits": traits, "context": context or None,
            "timestamp": timestamp, "anonymous_id": anonymous_id, "integrations": integrations or None,
            "message_id": message_id,
        }  # fmt: skip
        try:
            mid = sink.group(**kwargs)
        except InvalidEventError as refused:
            mid = lenient_retry(sink.group, "group", refused, kwargs)
        if self.debug:
            _log_call("group", mid, self._dry_run)
        return mid

    def _alias(
        self, previous_id: Id, user_id: Id, context: Any, timestamp: Any, integrations: Any, message_id: Any
    ) -> str | None:
        if type(previous_id) is not str:
            previous_id = _id(previous_id)
        if type(user_id) is not str and user_id is not None:
            user_id = _id(user_id)
        if timestamp is not None:
            timestamp = _timestamp(timestamp)
        if message_id is not None and type(message_id) is not str:
            message_id = str(message_id)
        sink = _DRY_RUN if self._dry_run else emit
        kwargs = {
            "previous_id": previous_id, "user_id": user_id, "context": context or None,
            "timestamp": timestamp, "integrations": integrations or None, "message_id": message_id,
        }  # fmt: skip
        try:
            mid = sink.alias(**kwargs)
        except InvalidEventError as refused:
            mid = lenient_retry(sink.alias, "alias", refused, kwargs)
        if self.debug:
            _log_call("alias", mid, self._dry_run)
        return mid

    def _result(self, mid: str | None, message: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        message["messageId"] = mid
        message["channel"] = "server"
        return (mid is not None or self._dry_run), message


def _page_message(
    kind: str, user_id: Id, category: Any, name: Any, properties: Any, context: Any, timestamp: Any,
    anonymous_id: Id, integrations: Any,
) -> dict[str, Any]:  # fmt: skip
    return {
        "type": kind, "userId": _text(user_id), "anonymousId": _text(anonymous_id), "category": category,
        "name": name, "properties": properties or {}, "context": context or {},
        "integrations": integrations or {}, "timestamp": timestamp,
    }  # fmt: skip


# -- rudder-sdk-python's conversions ------------------------------------------------------------------------


def _id(value: Any) -> Any:
    """A number as its str, as the SDK's ``stringify_id``; anything else is left for the emitter to judge.

    ``bool`` is a number to Python but never a meaningful id: it is left for the emitter to refuse.
    """
    if type(value) is not bool and isinstance(value, numbers.Number):
        return str(value)
    return value


def _text(value: Any) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _timestamp(value: Any) -> Any:
    """The SDK's reading of a naive datetime: local time if within 5 s of now (or later), else UTC."""
    if isinstance(value, _dt.datetime) and value.utcoffset() is None:
        if (_dt.datetime.now() - value.replace(tzinfo=None)).total_seconds() < 5:
            return value.replace(tzinfo=None).astimezone()  # made with datetime.now(): local time
        return value.replace(tzinfo=_dt.timezone.utc)
    return value


def _no_identity() -> InvalidEventAssertionError:
    # The SDK's require("user_id or anonymous_id", user_id or anonymous_id, ID_TYPES).
    return InvalidEventAssertionError("user_id", "an event needs a user_id or an anonymous_id")


def _log_call(kind: str, mid: str | None, dry_run: bool) -> None:
    if dry_run:
        log.debug("%s checked, not written (send is False)", kind)
    elif mid is None:
        log.debug("%s dropped: the spool is over its quota (see rudder-fast status)", kind)
    else:
        log.debug("%s written to the spool: messageId %s", kind, mid)


class _DryRun:
    """``send=False``: the emitter's checks of every argument (by the same table of the six calls),
    raising as it does, and nothing written. (Not the size of the whole event, which the emitter
    measures as it writes.)"""

    def __getattr__(self, name: str) -> Any:
        if name not in CALLS:
            raise AttributeError(name)
        call = CALLS[name]

        def check(**kw: Any) -> str | None:
            message_id: str | None = _events.record(call, 0, kw)[R_MESSAGE_ID]
            return message_id

        return check


_DRY_RUN: Final = _DryRun()
