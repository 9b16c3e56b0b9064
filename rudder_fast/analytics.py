"""A drop-in for ``rudderstack.analytics`` (rudder-sdk-python 2.1.9): migrating is the import line.

::

    import rudder_fast.analytics as rudder_analytics  # was: import rudderstack.analytics as ...

    rudder_analytics.track("123456", "Item Viewed", {"revenue": 19.95})

How this works
--------------
``track``, ``identify``, ``page``, ``screen``, ``group`` and ``alias`` take rudder-sdk-python's
parameters, in its order and with its defaults (its module functions forward ``*args, **kwargs`` to
``Client``; these are ``Client``'s parameters), and return None, as its module functions do. Each hands
the event to the default emitter :data:`rudder_fast.emit`, which validates it and appends it to the
on-disk spool before the call returns; the ``rudder-fast-sender`` daemon delivers the spool. There is no
queue, no thread and no network in this process, so ``flush()``, ``join()`` and ``shutdown()`` have
nothing to wait for. Importing this module creates no file and starts no thread: the spool
(``$RUDDER_FAST_SPOOL_DIR``) is opened by the first call.

Settings
--------
rudder-sdk-python's module-level settings are accepted as plain assignments
(``rudder_analytics.write_key = "..."``):

- ``debug``: honoured. True sets the ``rudder_fast`` logger to DEBUG and logs each call's messageId.
- ``send``: honoured. False validates each call (raising for bad input) and writes nothing.
- ``write_key``, ``dataPlaneUrl``, ``host`` (and the older docs' ``data_plane_url``), ``gzip``,
  ``max_retries``, ``timeout``, ``sync_mode``, ``max_queue_size``, ``upload_interval``, ``upload_size``
  and ``on_error`` belong to delivery, which the sender daemon does: they have no effect here. The
  first event sent after any of them was given a non-default value logs one warning (logger
  ``rudder_fast``, naming the settings, never their values) saying so. The sender takes the write key
  and data plane URL from its own options or environment (``RUDDER_WRITE_KEY``,
  ``RUDDER_DATA_PLANE_URL``). ``on_error`` is never called: no upload happens in this process (the
  sender's errors are in ``rudder-fast status``).

Differences from rudder-sdk-python
----------------------------------
- Bad input raises :class:`rudder_fast.InvalidEventError`, a ``ValueError`` naming the field, where
  rudder-sdk-python raises ``AssertionError`` (its ``require``): code that catches ``AssertionError``
  around a call must catch ``InvalidEventError`` (or ``ValueError``) instead. It is raised for more
  input too: a blank id (which rudder-sdk-python sends, and the data plane rejects the whole batch
  for), a ``bool`` id, a value of a type that cannot be encoded (``timedelta``, an arbitrary object:
  rudder-sdk-python deletes it from the event with a log line). Values it also deletes but that have
  an obvious encoding (``UUID``) are kept, normalised as for every rudder_fast call.
- Ids are str or numbers, as there; a number is turned into its ``str`` (rudder-sdk-python does that for
  ``user_id``, ``anonymous_id`` and ``message_id``; here ``group_id`` and ``previous_id`` too, which it
  sends as JSON numbers).
- ``timestamp`` is a ``datetime``, as there (a naive one is read as rudder-sdk-python reads it: local
  time if it is within 5 s of ``datetime.now()``, else UTC), or also an ISO-8601 string with an offset.
  The event carries it as ``timestamp``; ``originalTimestamp`` is always the time of the call.
  rudder-sdk-python sends the call time as ``timestamp`` when none is given; here the data plane
  derives it from ``originalTimestamp`` and ``sentAt``.
- identify's traits are in ``context.traits``, as there, and also at the top level (as the Node SDK
  does). ``context.library`` names rudder-fast. The caller's ``context`` dict is left unchanged
  (rudder-sdk-python adds ``library`` and ``traits`` to it).
- There is no ``Client`` class: create a :class:`rudder_fast.Emitter` for a second spool.
"""

from __future__ import annotations

import datetime as _dt
import logging
import numbers
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from . import events as _events
from .emitter import Emitter, emit

__all__ = [
    "alias",
    "data_plane_url",
    "dataPlaneUrl",
    "debug",
    "flush",
    "group",
    "gzip",
    "host",
    "identify",
    "join",
    "max_queue_size",
    "max_retries",
    "on_error",
    "page",
    "screen",
    "send",
    "shutdown",
    "sync_mode",
    "timeout",
    "track",
    "upload_interval",
    "upload_size",
    "write_key",
]

log = logging.getLogger("rudder_fast")

Id: TypeAlias = str | int | float | None
"""An id as rudder-sdk-python takes it: a str or a number (turned into a str)."""
Properties: TypeAlias = Mapping[str, Any] | None
Timestamp: TypeAlias = _dt.datetime | str | None
MessageId: TypeAlias = str | uuid.UUID | int | None

# -- settings (rudder-sdk-python's Client.DefaultConfig values) -------------------------------------------

write_key: str | None = None
dataPlaneUrl: str | None = None
data_plane_url: str | None = None  # the older docs' name (rudder-sdk-python 2.x ignores it)
host: str | None = None
on_error: Callable[..., Any] | None = None
debug: bool = False
send: bool = True
sync_mode: bool = False
max_queue_size: int = 10000
gzip: bool = True
timeout: float = 15
max_retries: int = 10
upload_interval: float = 0.5
upload_size: int = 100

# The settings that belong to delivery, in the order of _sender_settings() below.
_SENDER_SETTING_NAMES: Final = (
    "write_key", "dataPlaneUrl", "data_plane_url", "host", "gzip", "max_retries", "timeout",
    "sync_mode", "max_queue_size", "upload_interval", "upload_size", "on_error",
)  # fmt: skip


def _sender_settings() -> tuple[object, ...]:
    # One tuple compared with its default per call: cheaper than a loop over globals().
    return (
        write_key, dataPlaneUrl, data_plane_url, host, gzip, max_retries, timeout, sync_mode,
        max_queue_size, upload_interval, upload_size, on_error,
    )  # fmt: skip


_SENDER_DEFAULTS: Final = _sender_settings()

_warned = False
_warn_lock = threading.Lock()
_debug_applied = False
_level_before_debug = logging.NOTSET

# -- the six calls ------------------------------------------------------------------------------------------


def track(
    user_id: Id = None,
    event: str | None = None,
    properties: Properties = None,
    context: Properties = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Properties = None,
    message_id: MessageId = None,
) -> None:
    """Record that a user did something (``event``, with ``properties``)."""
    emitter = _emitter()
    uid, aid, ts, mid = _common(user_id, anonymous_id, timestamp, message_id)
    if emitter is None:
        fields = [_events.check_required_str("event", event), _encode("properties", properties)]
        _validate(_events.KIND_TRACK, uid, aid, context, integrations, ts, mid, fields)
        return
    result = emitter.track(
        user_id=uid, event=event, properties=properties, context=context, timestamp=ts,
        anonymous_id=aid, integrations=integrations, message_id=mid,
    )  # fmt: skip
    _after_send("track", result)


def identify(
    user_id: Id = None,
    traits: Properties = None,
    context: Properties = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Properties = None,
    message_id: MessageId = None,
) -> None:
    """Tie a user to their ``traits``."""
    emitter = _emitter()
    uid, aid, ts, mid = _common(user_id, anonymous_id, timestamp, message_id)
    if emitter is None:
        fields = [_encode("traits", traits)]
        _validate(_events.KIND_IDENTIFY, uid, aid, context, integrations, ts, mid, fields)
        return
    result = emitter.identify(
        user_id=uid, traits=traits, context=context, timestamp=ts, anonymous_id=aid,
        integrations=integrations, message_id=mid,
    )  # fmt: skip
    _after_send("identify", result)


def page(
    user_id: Id = None,
    category: str | None = None,
    name: str | None = None,
    properties: Properties = None,
    context: Properties = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Properties = None,
    message_id: MessageId = None,
) -> None:
    """Record a page view. Note the order, rudder-sdk-python's: ``category`` comes before ``name``."""
    emitter = _emitter()
    uid, aid, ts, mid = _common(user_id, anonymous_id, timestamp, message_id)
    if emitter is None:
        fields = _page_fields(name, category, properties)
        _validate(_events.KIND_PAGE, uid, aid, context, integrations, ts, mid, fields)
        return
    result = emitter.page(
        user_id=uid, name=name, category=category, properties=properties, context=context,
        timestamp=ts, anonymous_id=aid, integrations=integrations, message_id=mid,
    )  # fmt: skip
    _after_send("page", result)


def screen(
    user_id: Id = None,
    category: str | None = None,
    name: str | None = None,
    properties: Properties = None,
    context: Properties = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Properties = None,
    message_id: MessageId = None,
) -> None:
    """Record a screen view. Note the order, rudder-sdk-python's: ``category`` comes before ``name``."""
    emitter = _emitter()
    uid, aid, ts, mid = _common(user_id, anonymous_id, timestamp, message_id)
    if emitter is None:
        fields = _page_fields(name, category, properties)
        _validate(_events.KIND_SCREEN, uid, aid, context, integrations, ts, mid, fields)
        return
    result = emitter.screen(
        user_id=uid, name=name, category=category, properties=properties, context=context,
        timestamp=ts, anonymous_id=aid, integrations=integrations, message_id=mid,
    )  # fmt: skip
    _after_send("screen", result)


def group(
    user_id: Id = None,
    group_id: Id = None,
    traits: Properties = None,
    context: Properties = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Properties = None,
    message_id: MessageId = None,
) -> None:
    """Associate a user with the group ``group_id`` (with the group's ``traits``)."""
    emitter = _emitter()
    uid, aid, ts, mid = _common(user_id, anonymous_id, timestamp, message_id)
    gid = _id(group_id)
    if emitter is None:
        fields = [_events.check_required_str("group_id", gid), _encode("traits", traits)]
        _validate(_events.KIND_GROUP, uid, aid, context, integrations, ts, mid, fields)
        return
    result = emitter.group(
        user_id=uid, group_id=gid, traits=traits, context=context, timestamp=ts,
        anonymous_id=aid, integrations=integrations, message_id=mid,
    )  # fmt: skip
    _after_send("group", result)


def alias(
    previous_id: Id = None,
    user_id: Id = None,
    context: Properties = None,
    timestamp: Timestamp = None,
    integrations: Properties = None,
    message_id: MessageId = None,
) -> None:
    """Merge ``previous_id`` into ``user_id``. Note the order, rudder-sdk-python's: ``previous_id`` first."""
    emitter = _emitter()
    uid, _, ts, mid = _common(user_id, None, timestamp, message_id)
    pid = _id(previous_id)
    if emitter is None:
        fields = [_events.check_required_str("previous_id", pid)]
        _validate(_events.KIND_ALIAS, uid, None, context, integrations, ts, mid, fields)
        return
    result = emitter.alias(
        previous_id=pid, user_id=uid, context=context, timestamp=ts,
        integrations=integrations, message_id=mid,
    )  # fmt: skip
    _after_send("alias", result)


def flush() -> None:
    """Nothing to do: every event is in the spool, on disk, when its call returns."""


def join() -> None:
    """Nothing to do: there is no consumer thread to stop."""


def shutdown() -> None:
    """Nothing to do: events are durable when their call returns, and there is no thread to stop."""


# -- per call -------------------------------------------------------------------------------------------


def _emitter() -> Emitter | None:
    """The default emitter, or None when ``send`` is False. Applies ``debug`` first."""
    if bool(debug) is not _debug_applied:
        _apply_debug(bool(debug))
    if not send:
        return None
    return emit


def _common(
    user_id: Id, anonymous_id: Id, timestamp: Timestamp, message_id: MessageId
) -> tuple[Any, Any, Any, Any]:
    """rudder-sdk-python's conversions of the arguments every call has; the emitter checks the rest."""
    if user_id is not None and type(user_id) is not str:
        user_id = _id(user_id)
    if anonymous_id is not None and type(anonymous_id) is not str:
        anonymous_id = _id(anonymous_id)
    if isinstance(timestamp, _dt.datetime) and timestamp.tzinfo is None:
        timestamp = _guess_timezone(timestamp)
    if message_id is not None and type(message_id) is not str:
        message_id = _id(message_id)
    return user_id, anonymous_id, timestamp, message_id


def _id(value: Any) -> Any:
    """A number as its str, as rudder-sdk-python's ``stringify_id``; anything else is left to the emitter.

    ``bool`` is a number to Python but never a meaningful id: it is left for the emitter to refuse.
    """
    if type(value) is str or value is None or isinstance(value, bool):
        return value
    if isinstance(value, numbers.Number):
        return str(value)
    return value


def _guess_timezone(naive: _dt.datetime) -> _dt.datetime:
    """rudder-sdk-python's reading of a naive datetime: local time if within 5 s of now, else UTC."""
    if _dt.datetime.now() - naive < _dt.timedelta(seconds=5):
        return naive.astimezone()  # made with datetime.now(): local time
    return naive.replace(tzinfo=_dt.timezone.utc)


_encode: Final = _events.encode_json_field


def _page_fields(name: object, category: object, properties: object) -> list[Any]:
    return [
        _events.check_optional_str("name", name),
        _events.check_optional_str("category", category),
        _encode("properties", properties),
    ]


def _validate(
    kind: int,
    user_id: object,
    anonymous_id: object,
    context: object,
    integrations: object,
    timestamp: object,
    message_id: object,
    fields: list[Any],
) -> None:
    """``send = False``: the emitter's checks (raising InvalidEventError), and nothing written."""
    _events.build_record(
        kind,
        0,
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
        fields=fields,
    )
    if debug:
        log.debug("send is False: %s not written", _events.KIND_NAMES[kind])


def _after_send(call: str, message_id: str | None) -> None:
    if not _warned and _sender_settings() != _SENDER_DEFAULTS:
        _warn_sender_settings()
    if debug:
        if message_id is None:
            log.debug("%s dropped (see rudder-fast status)", call)
        else:
            log.debug("%s written to the spool: messageId %s", call, message_id)


def _warn_sender_settings() -> None:
    global _warned
    # Never block: in a child forked while another thread held the lock, that thread's process warns.
    if not _warn_lock.acquire(blocking=False):
        return
    try:
        if _warned:
            return
        _warned = True
        current = _sender_settings()
        changed = [
            name
            for name, value, default in zip(_SENDER_SETTING_NAMES, current, _SENDER_DEFAULTS, strict=True)
            if value != default
        ]
    finally:
        _warn_lock.release()
    # Names only: the values (the write key above all) never reach a log.
    log.warning(
        "rudder_fast.analytics ignores %s in this process: it only appends events to the local spool "
        "(%s), where they are durable when the call returns. The rudder-fast-sender daemon delivers them "
        "with its own settings: the write key from --write-key or RUDDER_WRITE_KEY, the data plane URL "
        "from --data-plane-url or RUDDER_DATA_PLANE_URL, gzip, retries and timeouts from its options. "
        "on_error is never called: delivery errors show in `rudder-fast status`.",
        ", ".join(changed),
        emit.spool_dir,
    )


def _apply_debug(on: bool) -> None:
    """``debug = True``: the ``rudder_fast`` logger at DEBUG (back to its own level when set to False)."""
    global _debug_applied, _level_before_debug
    if on:
        _level_before_debug = log.level
        log.setLevel(logging.DEBUG)
    else:
        log.setLevel(_level_before_debug)
    _debug_applied = on
