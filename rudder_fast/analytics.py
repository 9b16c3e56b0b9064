"""A drop-in for ``rudderstack.analytics`` (rudder-sdk-python 2.x): migrating is the import line.

::

    import rudder_fast.analytics as rudder_analytics  # was: import rudderstack.analytics as ...
    from rudder_fast.analytics import Client          # was: from rudderstack.analytics.client import Client

    rudder_analytics.track("123456", "Item Viewed", {"revenue": 19.95})

How this works
--------------
:class:`Client` has rudder-sdk-python's constructor (same parameters, same defaults) and methods, and the
module-level ``track``, ``identify``, ``page``, ``screen``, ``group``, ``alias``, ``flush``, ``join`` and
``shutdown`` forward to :data:`default_client`, created on first use from the module's settings, as
there. A call applies rudder-sdk-python's conversions (numeric ids become strings, a naive timestamp is
read as it reads one, missing properties and traits become ``{}``) and hands the event to the default
emitter :data:`rudder_fast.emit`, which validates it and appends it to the on-disk spool before the call
returns; the ``rudder-fast-sender`` daemon delivers the spool. There is no queue, no thread and no
network in this process: ``flush()``, ``join()`` and ``shutdown()`` have nothing to wait for. Importing
this module creates no file and starts no thread.

Only when the emitter refuses a call does the slow path run (:mod:`rudder_fast.analytics_clean`): the
values rudder-sdk-python would have deleted from the event (a ``timedelta``, an arbitrary object:
whatever its ``clean`` cannot encode) are deleted the same way, counted (:func:`stats`) and logged at
most once a minute, naming the field, and the call is made again; dict keys that are ints, floats, bools
or None become the text ``json.dumps`` gives them. Anything else the emitter refuses raises
:class:`InvalidEventAssertionError`, which is both :class:`rudder_fast.InvalidEventError` (with
``.field``) and the ``AssertionError`` rudder-sdk-python raises for bad input.

Settings
--------
As there, the module's settings are read when :data:`default_client` is made. ``debug`` (the
``rudder_fast`` logger at DEBUG, a line per call) and ``send`` (False: every check, nothing written) are
honoured. The delivery settings (``write_key``, ``dataPlaneUrl``/``host``, ``gzip``, ``timeout``,
``max_retries``, ``sync_mode``, ``max_queue_size``, ``upload_interval``, ``upload_size``, ``on_error``;
``proxies`` and ``thread`` for a Client) belong to the sender. A client given any of them logs one
message (:mod:`rudder_fast.analytics_settings`; never a key's value) saying, for each, what does its job
instead: ``write_key`` and ``dataPlaneUrl`` are compared with what the spool's running sender reports in
``<spool>/status`` (a digest of its key, its URL), or the message says that no sender runs; ``on_error``
is never called (nothing is delivered from this process: a failed delivery keeps the events in the
spool and shows in ``rudder-fast status``); ``sync_mode`` is not needed (each call already returns once
its event is durable; ``rudder-fast-sender --drain`` waits for delivery).

Every remaining difference in what is sent and how calls behave is listed, each with the test that
checks it, in the README's section "Migrating from rudder-sdk-python".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from . import __version__
from .analytics_clean import stats
from .analytics_client import Client, Fields, Id, Timestamp
from .errors import InvalidEventAssertionError

__all__ = [
    "Client",
    "InvalidEventAssertionError",
    "SDK_VERSION",
    "VERSION",
    "alias",
    "dataPlaneUrl",
    "data_plane_url",
    "debug",
    "default_client",
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
    "stats",
    "sync_mode",
    "timeout",
    "track",
    "upload_interval",
    "upload_size",
    "write_key",
]

log = logging.getLogger("rudder_fast")

VERSION: Final = __version__
"""rudder_fast's version: what events carry in ``context.library.version``, as the SDK's ``VERSION``."""
SDK_VERSION: Final = "2.1.9"
"""The rudder-sdk-python release whose API this module mirrors."""

# -- module settings (rudder-sdk-python's names and defaults) ---------------------------------------------

write_key: str | None = None
host: str | None = None
dataPlaneUrl: str | None = None
data_plane_url: str | None = None  # the older docs' name; rudder-sdk-python 2.x ignores it, here it is read
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

default_client: Client | None = None
"""The client the module-level calls use, created on first use from the settings above (as there)."""


# -- the module-level calls -------------------------------------------------------------------------------


def track(
    user_id: Id = None,
    event: str | None = None,
    properties: Fields = None,
    context: Fields = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Fields = None,
    message_id: Any = None,
) -> None:
    """Record that a user did something (``event``, with ``properties``)."""
    (default_client or _default_client())._track(
        user_id, event, properties, context, timestamp, anonymous_id, integrations, message_id
    )


def identify(
    user_id: Id = None,
    traits: Fields = None,
    context: Fields = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Fields = None,
    message_id: Any = None,
) -> None:
    """Tie a user to their ``traits``."""
    (default_client or _default_client())._identify(
        user_id, traits, context, timestamp, anonymous_id, integrations, message_id
    )


def page(
    user_id: Id = None,
    category: str | None = None,
    name: str | None = None,
    properties: Fields = None,
    context: Fields = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Fields = None,
    message_id: Any = None,
) -> None:
    """Record a page view. Note the order, rudder-sdk-python's: ``category`` comes before ``name``."""
    (default_client or _default_client())._page(
        user_id, category, name, properties, context, timestamp, anonymous_id, integrations, message_id
    )


def screen(
    user_id: Id = None,
    category: str | None = None,
    name: str | None = None,
    properties: Fields = None,
    context: Fields = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Fields = None,
    message_id: Any = None,
) -> None:
    """Record a screen view. Note the order, rudder-sdk-python's: ``category`` comes before ``name``."""
    (default_client or _default_client())._screen(
        user_id, category, name, properties, context, timestamp, anonymous_id, integrations, message_id
    )


def group(
    user_id: Id = None,
    group_id: Id = None,
    traits: Fields = None,
    context: Fields = None,
    timestamp: Timestamp = None,
    anonymous_id: Id = None,
    integrations: Fields = None,
    message_id: Any = None,
) -> None:
    """Associate a user with the group ``group_id`` (with the group's ``traits``)."""
    (default_client or _default_client())._group(
        user_id, group_id, traits, context, timestamp, anonymous_id, integrations, message_id
    )


def alias(
    previous_id: Id = None,
    user_id: Id = None,
    context: Fields = None,
    timestamp: Timestamp = None,
    integrations: Fields = None,
    message_id: Any = None,
) -> None:
    """Merge ``previous_id`` into ``user_id``. Note the order, rudder-sdk-python's: ``previous_id`` first."""
    (default_client or _default_client())._alias(
        previous_id, user_id, context, timestamp, integrations, message_id
    )


def flush() -> None:
    """Nothing to wait for: every event is in the spool, on disk, when its call returns."""
    (default_client or _default_client()).flush()


def join() -> None:
    """Nothing to wait for: there is no consumer thread."""
    (default_client or _default_client()).join()


def shutdown() -> None:
    """Nothing to wait for: events are durable when their call returns, and there is no thread."""
    (default_client or _default_client()).shutdown()


def _default_client() -> Client:
    """Create :data:`default_client` from the module's settings, as rudder-sdk-python's ``_proxy``."""
    global default_client
    url = dataPlaneUrl if isinstance(dataPlaneUrl, str) and dataPlaneUrl else host or data_plane_url
    client = Client(
        write_key, host=url, debug=debug, max_queue_size=max_queue_size, send=send, on_error=on_error,
        gzip=gzip, max_retries=max_retries, sync_mode=sync_mode, timeout=timeout,
        upload_size=upload_size, upload_interval=upload_interval,
    )  # fmt: skip
    default_client = client
    return client
