"""``rudder_fast.analytics`` as a drop-in for rudder-sdk-python 2.1.9's ``rudderstack.analytics``, for real.

- Its surface is the SDK's: ``Client`` (constructor and methods), ``default_client``, ``VERSION``, the
  module's calls and settings, with the SDK's parameters, order and defaults.
- The same calls, made to both (the SDK's real ``Client`` with ``send=False`` builds and cleans the
  message it would send), give the same events but for the differences the README documents
  (:func:`tests.sdk_migration.assert_same_event`); what the SDK refuses with ``AssertionError`` is refused
  with an error that is also an ``AssertionError``, writing nothing.
- The values the SDK deletes are deleted the same way (never raised), counted and logged at most once
  per interval; the values it keeps and rudder_fast cannot send raise, naming the path.
- The SDK's documented examples (``sdk_examples/``: each differs from the original in its import line
  only) run unchanged and leave exactly the expected events in the spool. (End to end against the SDK,
  through a real sender: ``tests/e2e/test_sdk_migration.py``.)
- Delivery settings give one message; ``debug``, ``send`` are honoured; importing starts nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import enum
import inspect
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# rudder-sdk-python 2.1.9, installed with the "bench" extra (./scripts/test installs it)
import rudderstack.analytics as rudderstack_analytics
from rudderstack.analytics.client import Client as SdkClient
from rudderstack.analytics.request import DatetimeSerializer

import rudder_fast
import rudder_fast.analytics as compat
import rudder_fast.analytics_clean as compat_clean
from rudder_fast import Emitter, InvalidEventError
from rudder_fast.analytics import VERSION, Client, default_client
from rudder_fast.errors import InvalidEventAssertionError
from tests.support.processes import env_with
from tests.support.producers import point_default_emitter
from tests.support.sdk_migration import (
    GENERATED_MESSAGE_ID,
    IMPORT_LINES,
    OUR_LIBRARY,
    SDK_VERSION,
    assert_same_event,
    instant,
)
from tests.support.spool import inspect_spool

EXAMPLES_DIR = Path(__file__).parent / "sdk_examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
WRITE_KEY = "wk-SECRET-2f9c1e7d"
DATA_PLANE_URL = "https://user:PASSWORD-9d1b@dataplane.invalid"
CALLS = ("track", "identify", "page", "screen", "group", "alias")
TS = dt.datetime(2024, 5, 17, 9, 30, 15, 250000, tzinfo=dt.timezone.utc)
RUN_TIMEOUT_S = 60.0
MESSAGE_START = "rudder_fast.analytics: events from this process are appended to the spool"


def spooled(spool_dir: Path) -> list[dict[str, Any]]:
    """The spool's pending events (``rudder-fast inspect``); none when nothing ever created the spool."""
    if not spool_dir.exists():
        return []
    events, _ = inspect_spool(spool_dir)
    return events


@pytest.fixture
def default_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process's default emitter on a fresh spool, and no default client yet (made on first use)."""
    spool = tmp_path / "spool"
    emitter = Emitter(spool)
    point_default_emitter(monkeypatch, emitter)
    monkeypatch.setattr(compat, "default_client", None)
    yield spool
    emitter.close()


@pytest.fixture
def sdk_client() -> SdkClient:
    """A real SDK client that builds, checks and cleans each message but sends nothing (no thread)."""
    return SdkClient(WRITE_KEY, send=False, sync_mode=True)


def sdk_json(message: dict[str, Any]) -> dict[str, Any]:
    """The message the SDK built, as the JSON it would send."""
    result: dict[str, Any] = json.loads(json.dumps(message, cls=DatetimeSerializer))
    return result


# -- the surface ------------------------------------------------------------------------------------------


def test_the_sdk_names_import() -> None:
    assert default_client is None  # as there: created by the first call
    assert rudder_fast.__version__ == VERSION  # what context.library.version says
    assert compat.SDK_VERSION == rudderstack_analytics.VERSION == SDK_VERSION
    assert issubclass(InvalidEventAssertionError, InvalidEventError)
    assert issubclass(InvalidEventAssertionError, AssertionError)
    assert issubclass(InvalidEventAssertionError, ValueError)
    assert compat.InvalidEventAssertionError is InvalidEventAssertionError
    copy = pickle.loads(pickle.dumps(InvalidEventAssertionError("properties.x", "why")))  # noqa: S301
    assert type(copy) is InvalidEventAssertionError
    assert copy.field == "properties.x"


def test_client_has_the_sdk_constructor() -> None:
    theirs = list(inspect.signature(SdkClient.__init__).parameters.values())[1:]
    ours = list(inspect.signature(Client.__init__).parameters.values())[1:]
    # The SDK's host default comes from $TEST_DATA_PLANE_URL (a .env of its own tests): None here.
    assert [(p.name, p.kind) for p in ours] == [(p.name, p.kind) for p in theirs]
    for mine, their in zip(ours, theirs, strict=True):
        assert mine.default == (None if mine.name == "host" else their.default), mine.name
    for name, value in vars(SdkClient.DefaultConfig).items():
        if not name.startswith("_") and name != "host":
            assert getattr(Client.DefaultConfig, name) == value, name


@pytest.mark.parametrize("call", CALLS)
def test_the_six_calls_have_the_sdk_parameters_order_and_defaults(call: str) -> None:
    # The SDK's module functions are ``f(*args, **kwargs)`` forwarding to the default Client's method,
    # so the parameters a caller can use are the method's (without ``self``).
    proxy = inspect.signature(getattr(rudderstack_analytics, call))
    assert [p.kind for p in proxy.parameters.values()] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]
    theirs = [
        (p.name, p.kind, p.default) for p in inspect.signature(getattr(SdkClient, call)).parameters.values()
    ]
    method = [
        (p.name, p.kind, p.default) for p in inspect.signature(getattr(Client, call)).parameters.values()
    ]
    module = [
        (p.name, p.kind, p.default) for p in inspect.signature(getattr(compat, call)).parameters.values()
    ]
    assert method == theirs
    assert module == theirs[1:]


def test_module_level_names_match_the_sdk() -> None:
    for name in ("flush", "join", "shutdown"):
        assert not inspect.signature(getattr(rudderstack_analytics, name)).parameters
        assert not inspect.signature(getattr(compat, name)).parameters
        assert not list(inspect.signature(getattr(Client, name)).parameters)[1:]
    # Every setting the SDK's module has, with the SDK's default (its ``host`` default comes from the
    # environment and its ``dataPlaneUrl`` default is a stray ``property`` object: both None here).
    settings = [
        n
        for n in vars(SdkClient.DefaultConfig)
        if not n.startswith("_") and hasattr(rudderstack_analytics, n)
    ]
    assert {"write_key", "host", "on_error", "debug", "send", "sync_mode", "gzip", "max_retries", "timeout",
            "max_queue_size", "upload_interval", "upload_size"} <= set(settings)  # fmt: skip
    for name in settings:
        assert name in compat.__all__
        if name != "host":
            assert getattr(compat, name) == getattr(SdkClient.DefaultConfig, name), name
    assert hasattr(rudderstack_analytics, "dataPlaneUrl")
    assert "dataPlaneUrl" in compat.__all__
    assert compat.host is None
    assert compat.dataPlaneUrl is None
    assert hasattr(rudderstack_analytics, "default_client")
    assert "default_client" in compat.__all__


# -- the same calls, the same events -------------------------------------------------------------------

POSITIONAL: list[tuple[str, tuple[Any, ...]]] = [
    ("track", ("u1", "Signed Up", {"plan": "pro"})),
    ("track", ("u1", "Signed Up", {"plan": "pro"}, {"ip": "1.2.3.4"}, TS, "anon-1", {"All": False}, "mid-t")),
    ("track", (1234, "Numeric Ids", None, None, None, 5.5)),
    ("track", ("u1", "No Properties")),
    ("track", ("u1", "Empty Integrations", {}, {}, None, None, {})),
    ("identify", ("u1", {"email": "a@example.com"})),
    ("identify", (42, {"n": 1}, {"locale": "en-US"})),
    ("identify", (None, None, None, None, "anon-9")),
    ("page", ("u1", "Docs", "Install", {"url": "/install"})),
    ("page", ("u1", "Docs", "Install", {"url": "/i"}, {"ip": "x"}, TS, "anon-2", {"All": True}, "mid-page")),
    ("page", ("u1",)),
    ("screen", ("u1", "Settings", "Brightness", {"from": "Settings Screen"})),
    ("group", ("u1", "g-1", {"name": "Co"})),
    ("group", ("u1", 7, None, None, TS, "anon-3")),
    ("group", ("u1", 4.5)),
    ("alias", ("old-id", "new-id")),
    ("alias", ("old-id", "new-id", {"ip": "x"}, TS, {"All": True}, "mid-alias")),
    ("alias", (99, "new-id")),
]


def test_positional_calls_send_what_the_sdk_sends(default_spool: Path, sdk_client: SdkClient) -> None:
    sdk_messages = []
    start = dt.datetime.now(dt.timezone.utc)
    for call, args in POSITIONAL:
        assert getattr(compat, call)(*args) is None  # as the SDK's module functions
        ok, message = getattr(sdk_client, call)(*args)
        assert ok
        sdk_messages.append(sdk_json(message))
    window = (start, dt.datetime.now(dt.timezone.utc))
    events = spooled(default_spool)
    assert len(events) == len(POSITIONAL)
    for (call, args), ours, theirs in zip(POSITIONAL, events, sdk_messages, strict=True):
        assert ours["type"] == call, (call, args)
        assert_same_event(ours, theirs, window=window)


def test_client_methods_return_what_the_sdk_returns(default_spool: Path, sdk_client: SdkClient) -> None:
    client = Client(WRITE_KEY)
    returned = [getattr(client, call)(*args) for call, args in POSITIONAL]
    events = spooled(default_spool)
    for (call, args), (ok, message), event in zip(POSITIONAL, returned, events, strict=True):
        their_ok, theirs = getattr(sdk_client, call)(*args)
        assert ok is their_ok is True
        assert message["messageId"] == event["messageId"]
        for key in ("type", "userId", "anonymousId", "event", "name", "category", "groupId", "previousId",
                    "properties", "traits", "channel"):  # fmt: skip
            if key in theirs:
                assert message.get(key) == theirs[key], (call, args, key)


def test_a_naive_timestamp_is_read_as_the_sdk_reads_it(tmp_path: Path) -> None:
    """datetime.now() (naive, local) is local time, an older naive datetime is UTC: as the SDK guesses.

    In a process whose local time is UTC+05:30, so that reading local time as UTC would be 5.5 h off.
    """
    script = textwrap.dedent(
        """
        import datetime as dt, json
        import rudder_fast.analytics as rudder_analytics
        now = dt.datetime.now()
        rudder_analytics.track("u1", "Local Now", timestamp=now)
        rudder_analytics.track("u1", "Old Naive", timestamp=dt.datetime(2020, 1, 1, 12, 0, 0))
        print(json.dumps(now.astimezone().isoformat()))
        """
    )
    spool = tmp_path / "spool"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env_with(RUDDER_FAST_SPOOL_DIR=str(spool), TZ="IST-5:30"),
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    local_now = dt.datetime.fromisoformat(json.loads(proc.stdout))
    assert local_now.utcoffset() == dt.timedelta(hours=5, minutes=30)
    first, second = spooled(spool)
    assert instant(first["timestamp"]) == instant(local_now.isoformat())
    assert second["timestamp"] == "2020-01-01T12:00:00.000Z"


def test_the_callers_context_is_left_alone_and_its_library_kept(
    default_spool: Path, sdk_client: SdkClient
) -> None:
    """Documented differences: the SDK adds ``library`` and ``traits`` to the caller's own context dict
    and overwrites a ``library`` in it; rudder_fast copies, and the caller's ``library`` wins."""
    context = {"locale": "en-US", "library": {"name": "my-wrapper", "version": "3.1"}}
    traits = {"plan": "pro"}
    compat.identify("u1", traits, context)
    assert context == {"locale": "en-US", "library": {"name": "my-wrapper", "version": "3.1"}}
    _, message = sdk_client.identify("u1", traits, context)
    assert context["library"] == {"name": "analytics-python", "version": SDK_VERSION}  # the SDK's doing
    assert context["traits"] == traits
    (ours,) = spooled(default_spool)
    assert ours["context"]["library"] == {"name": "my-wrapper", "version": "3.1"}
    assert_same_event(ours, sdk_json(message), caller_library=True)


# -- refused input -------------------------------------------------------------------------------------

REFUSED_BY_BOTH: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("track", (), {"event": "e"}, "user_id"),
    ("track", (0,), {"event": "e"}, "user_id"),  # the SDK tests `user_id or anonymous_id`
    ("track", ("u1",), {}, "event"),
    ("track", ("u1", 5), {}, "event"),
    ("track", ("u1", "e", ["not", "a", "dict"]), {}, "properties"),
    ("track", ("u1", "e"), {"context": ["x"]}, "context"),
    ("track", ("u1", "e"), {"integrations": ["x"]}, "integrations"),
    ("track", ("u1", "e"), {"timestamp": "yesterday"}, "timestamp"),
    ("track", ("u1", "e"), {"timestamp": 1700000000}, "timestamp"),
    ("track", (uuid.UUID(int=7), "e"), {}, "user_id"),
    ("identify", (), {"traits": {"a": 1}}, "user_id"),
    ("identify", ("u1", ["x"]), {}, "traits"),
    ("page", ("u1", 5), {}, "category"),
    ("screen", ("u1", None, 5), {}, "name"),
    ("group", ("u1",), {}, "group_id"),
    ("group", ("u1", "g", ["x"]), {}, "traits"),
    ("group", ("u1", ["g"]), {}, "group_id"),
    ("alias", (), {"user_id": "new"}, "previous_id"),
    ("alias", ("old",), {}, "user_id"),
]


@pytest.mark.parametrize(("call", "args", "kwargs", "field"), REFUSED_BY_BOTH)
def test_what_the_sdk_refuses_raises_an_assertion_error_here_too(
    default_spool: Path,
    sdk_client: SdkClient,
    call: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(AssertionError):
        getattr(sdk_client, call)(*args, **kwargs)
    for target in (compat, Client(), Client(send=False)):
        with pytest.raises(AssertionError) as refused:
            getattr(target, call)(*args, **kwargs)
        assert isinstance(refused.value, InvalidEventError)
        assert isinstance(refused.value, ValueError)
        assert refused.value.field == field
    assert not default_spool.exists(), "a refused call wrote something"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("   ", "e"), "user_id"),  # the SDK sends it, and the gateway rejects the whole batch for it
        ((True, "e"), "user_id"),  # the SDK sends userId "True"
        (("u1", ""), "event"),  # the SDK sends an empty event name
        (("u1", "e", {"big": 2**70}), "properties.big"),  # the SDK sends it (beyond a 64-bit integer)
        (("u1", "e", {"s": "a\ud800b"}), "properties.s"),  # the SDK sends a lone surrogate
        (("u1", "e", {"d": Decimal("1e400")}), "properties.d"),  # the SDK sends Infinity: invalid JSON
        (("u1", "e", {"big": "x" * 4_100_000}), "properties"),  # over the gateway's limit, not the SDK's
    ],
)
def test_what_the_sdk_sends_broken_is_refused(
    default_spool: Path, sdk_client: SdkClient, args: tuple[Any, ...], field: str
) -> None:
    ok, _ = sdk_client.track(*args)
    assert ok
    with pytest.raises(AssertionError) as refused:
        compat.track(*args)
    assert isinstance(refused.value, InvalidEventAssertionError)
    assert refused.value.field == field
    assert spooled(default_spool) == []


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"c": complex(1, 2)}, "properties.c"),  # the SDK's json.dumps raises TypeError
        ({("a", "b"): 1}, "properties"),  # a tuple key: the same
        ({"n": np.int64(3), "x": object()}, None),  # the SDK raises for the int64; here: sent, x deleted
    ],
)
def test_what_the_sdk_raises_other_errors_for(
    default_spool: Path, sdk_client: SdkClient, properties: dict[Any, Any], field: str | None
) -> None:
    with pytest.raises(TypeError):
        sdk_client.track("u1", "e", properties)
    if field is None:
        compat.track("u1", "e", properties)
        (event,) = spooled(default_spool)
        assert event["properties"] == {"n": 3}
        return
    with pytest.raises(InvalidEventAssertionError) as refused:
        compat.track("u1", "e", properties)
    assert refused.value.field == field


def test_accepted_here_where_the_sdk_raises(
    default_spool: Path, sdk_client: SdkClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documented differences, all more lenient: an ISO-8601 string timestamp, any Mapping where the SDK
    wants a dict, no write key at all; and the older docs' ``data_plane_url`` is read."""
    with pytest.raises(AssertionError):
        sdk_client.track("u1", "e", timestamp="2024-05-17T09:30:15.250Z")
    with pytest.raises(AssertionError):
        sdk_client.track("u1", "e", types.MappingProxyType({"a": 1}))
    with pytest.raises(AssertionError):
        SdkClient()
    compat.track("u1", "String Time", timestamp="2024-05-17T09:30:15.250+02:00")
    compat.track("u1", "Proxy Mapping", types.MappingProxyType({"a": 1}))
    Client().track("u1", "No Key")
    first, second, third = spooled(default_spool)
    assert first["timestamp"] == "2024-05-17T09:30:15.250+02:00"  # kept verbatim, as the gateway keeps it
    assert second["properties"] == {"a": 1}
    assert third["event"] == "No Key"
    monkeypatch.setattr(compat, "data_plane_url", "https://old-docs.example.com")
    assert compat._default_client().host == "https://old-docs.example.com"
    monkeypatch.setattr(compat, "dataPlaneUrl", "https://new.example.com")
    assert compat._default_client().host == "https://new.example.com"


def test_values_written_differently(default_spool: Path, sdk_client: SdkClient, tmp_path: Path) -> None:
    """Documented differences: NaN and infinities are null (the SDK sends NaN, invalid JSON that makes the
    gateway refuse the whole batch); a set is sorted; a Decimal is its exact text (the SDK's a float);
    a naive datetime value is read as UTC (the SDK writes it without an offset); a falsy page name or
    category that is not a str is left out (the SDK sends it as given)."""
    tags = {"pear", "apple", "fig", "kiwi", "plum", "lime"}
    values = {
        "nan": float("nan"),
        "inf": float("inf"),
        "tags": tags,
        "price": Decimal("0.12345678901234567890"),
        "naive": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
    }
    compat.track("u1", "Values", values)
    _, message = sdk_client.track("u1", "Values", values)
    text = json.dumps(message, cls=DatetimeSerializer)
    assert '"nan": NaN' in text
    assert '"inf": Infinity' in text
    assert "0.12345678901234568" in text
    assert '"naive": "2024-01-02T03:04:05.678901"' in text
    compat.page("u1", 0, "")  # type: ignore[arg-type]  # the SDK takes a falsy non-str
    _, page = sdk_client.page("u1", 0, "")
    assert page["category"] == 0
    assert page["name"] == ""
    raw = subprocess.run(
        [str(Path(sys.executable).parent / "rudder-fast"), "inspect", "--spool-dir", str(default_spool)],
        capture_output=True,
        text=True,
        check=True,
        timeout=RUN_TIMEOUT_S,
    ).stdout.splitlines()
    assert '"price":0.12345678901234567890' in raw[0]
    ours, our_page = (json.loads(line) for line in raw)
    assert ours["properties"] == {
        "nan": None,
        "inf": None,
        "tags": sorted(tags),
        "price": 0.12345678901234568,
        "naive": "2024-01-02T03:04:05.678Z",
    }
    assert "category" not in our_page
    assert our_page["name"] == ""


def test_a_blank_message_id_gets_a_generated_one(default_spool: Path, sdk_client: SdkClient) -> None:
    """The SDK sends "" (the gateway then invents a new id on every attempt): here one is generated."""
    _, message = sdk_client.track("u1", "e", message_id="")
    assert message["messageId"] == ""
    compat.track("u1", "e", message_id="")
    compat.track("u1", "e", message_id=uuid.UUID(int=5))
    first, second = spooled(default_spool)
    assert GENERATED_MESSAGE_ID.match(first["messageId"])
    assert second["messageId"] == str(uuid.UUID(int=5))


# -- the values the SDK deletes --------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    LATER = dt.timedelta(hours=1)


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Opaque:
    pass


DELETED: list[tuple[str, dict[Any, Any], int]] = [
    ("timedelta", {"ok": 1, "wait": dt.timedelta(seconds=3)}, 1),
    ("time", {"at": dt.time(9, 30), "ok": "yes"}, 1),
    ("object", {"thing": Opaque(), "ok": True}, 1),
    ("dataclass", {"point": Point(1, 2), "ok": 2.5}, 1),
    ("inside a list", {"items": [1, 2, dt.timedelta(1)], "ok": [1, 2]}, 1),
    ("inside a tuple in a list", {"rows": [(1, Opaque())], "ok": (1, 2)}, 1),
    ("in a nested dict", {"outer": {"keep": 1, "drop": Opaque(), "deeper": {"drop": dt.time(1)}}}, 2),
    ("an Enum's value", {"color": Color.RED, "later": Color.LATER}, 1),
    ("in a set", {"tags": frozenset({"a", dt.timedelta(1)}), "nums": {3, 1, 2}}, 1),
    ("several", {"a": Opaque(), "b": Opaque(), "c": dt.time(0), "d": 1}, 3),
    ("keys json.dumps writes", {1: "one", 2.5: "x", False: "f", None: "n", "s": dt.time(2)}, 1),
]


@pytest.mark.parametrize(("what", "properties", "deleted"), DELETED, ids=[d[0] for d in DELETED])
def test_values_the_sdk_deletes_are_deleted_counted_and_never_raised(
    default_spool: Path,
    sdk_client: SdkClient,
    what: str,
    properties: dict[Any, Any],
    deleted: int,
) -> None:
    before = compat.stats()
    for call, args in [
        ("track", ("u1", "E", properties, {"page": properties})),
        ("identify", ("u1", properties)),
        ("page", ("u1", "Docs", "Install", properties, None, None, None, {"All": True, "x": properties})),
        ("group", ("u1", "g", properties)),
    ]:
        getattr(compat, call)(*args)  # never raises
        ok, message = getattr(sdk_client, call)(*args)
        assert ok
        ours = spooled(default_spool)[-1]
        assert_same_event(ours, sdk_json(message))
    after = compat.stats()
    # Each call's free-form arguments are cleaned alike: track's context and page's integrations too.
    assert after["deleted_values"] - before["deleted_values"] == 6 * deleted
    assert after["cleaned_events"] - before["cleaned_events"] == 4
    assert after["last_deleted"] is not None


def test_values_the_sdk_deletes_but_rudder_fast_encodes_are_kept(
    default_spool: Path, sdk_client: SdkClient
) -> None:
    """Documented difference: a UUID, a non-dict Mapping, a numpy array, a memoryview are sent here."""
    session = uuid.UUID("12345678-1234-5678-1234-567812345678")
    properties = {
        "session": session,
        "settings": types.MappingProxyType({"dark": True}),
        "scores": np.array([1.5, 2.5]),
        "raw": memoryview(b"abc"),
        "ok": 1,
    }
    before = compat.stats()["deleted_values"]
    compat.track("u1", "E", properties)
    _, message = sdk_client.track("u1", "E", properties)
    (ours,) = spooled(default_spool)
    kept = {"properties.session", "properties.settings", "properties.scores", "properties.raw"}
    assert_same_event(ours, sdk_json(message), kept=kept)
    assert ours["properties"] == {
        "session": str(session),
        "settings": {"dark": True},
        "scores": [1.5, 2.5],
        "raw": "abc",
        "ok": 1,
    }
    assert compat.stats()["deleted_values"] == before


def test_deletions_are_logged_at_most_once_per_interval(
    default_spool: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(compat_clean, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(compat_clean._deletions, "_next_log", 0.0)
    caplog.set_level(logging.WARNING, logger="rudder_fast")

    def deletion_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if ") deleted " in r.getMessage()]

    compat.track("u1", "E", {"wait": dt.timedelta(1)})
    (line,) = deletion_lines()
    assert "track() deleted properties.wait (timedelta) from its event" in line
    for _ in range(50):
        compat.track("u1", "E", {"wait": dt.timedelta(1)})
        compat.identify("u1", {"at": dt.time(1)})
    clock[0] += rudder_fast.config.WARNING_INTERVAL_S - 0.001
    compat.track("u1", "E", {"wait": dt.timedelta(1)})
    assert len(deletion_lines()) == 1
    clock[0] += 0.002
    compat.identify("u1", {"at": dt.time(1)})
    second = deletion_lines()[1]
    assert "identify() deleted traits.at (time) from its event" in second
    assert len(spooled(default_spool)) == 103  # none refused


def test_deletion_counts_are_per_process(default_spool: Path) -> None:
    compat.track("u1", "E", {"wait": dt.timedelta(1)})
    parent = compat.stats()
    assert parent["deleted_values"] >= 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own counts, from zero
        try:
            os.close(r)
            fresh = compat.stats()
            compat.track("u1", "E", {"a": dt.timedelta(1), "b": dt.timedelta(2)})
            os.write(w, json.dumps([fresh, compat.stats()]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        fresh, child = json.loads(pipe.read())
    assert os.waitpid(pid, 0)[1] == 0
    assert fresh == {"deleted_values": 0, "cleaned_events": 0, "last_deleted": None}
    assert child == {"deleted_values": 2, "cleaned_events": 1, "last_deleted": "properties.b"}
    assert compat.stats() == parent


# -- settings honoured: send, debug ------------------------------------------------------------------------

VALID_ARGS: dict[str, tuple[Any, ...]] = {
    "track": ("u1", "Event", {"wait": dt.timedelta(1)}),
    "identify": ("u1", {"a": 1}),
    "page": ("u1", "Docs", "Install"),
    "screen": ("u1", "Settings", "Brightness"),
    "group": ("u1", "g-1"),
    "alias": ("old", "u1"),
}


def test_send_false_checks_and_writes_nothing(default_spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client(send=False)
    for call, args in VALID_ARGS.items():
        ok, message = getattr(client, call)(*args)
        assert ok is True
        assert message["type"] == call
    for call, args, kwargs, field in REFUSED_BY_BOTH:
        with pytest.raises(InvalidEventAssertionError) as refused:
            getattr(client, call)(*args, **kwargs)
        assert refused.value.field == field
    monkeypatch.setattr(compat, "send", False)
    for call, args in VALID_ARGS.items():
        assert getattr(compat, call)(*args) is None
    assert not default_spool.exists()
    # As there, the module's settings are read when the default client is made (the first call).
    monkeypatch.setattr(compat, "send", True)
    compat.track("u1", "Still Not Sent")
    monkeypatch.setattr(compat, "default_client", None)
    compat.track("u1", "Sent")
    assert [e["event"] for e in spooled(default_spool)] == ["Sent"]


def test_a_full_spool_returns_false_as_a_full_queue_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    filler = Emitter(spool)
    for _ in range(50):
        filler.track(user_id="u", event="fill", properties={"pad": "x" * 2000})
    filler.close()
    emitter = Emitter(spool, quota_bytes=10_000)
    point_default_emitter(monkeypatch, emitter)
    try:
        ok, message = Client().track("u1", "Dropped")
    finally:
        emitter.close()
    assert ok is False
    assert message["messageId"] is None
    assert message["event"] == "Dropped"


DEBUG_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    import rudder_fast.analytics as rudder_analytics
    rudder_analytics.debug = True
    rudder_analytics.track("u1", "e")
    print("level", logging.getLogger("rudder_fast").level, file=sys.stderr)
    rudder_analytics.Client(send=False, debug=True).track("u1", "e")
    """
)


def test_debug_logs_each_call(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", DEBUG_SCRIPT],
        capture_output=True,
        text=True,
        env=env_with(RUDDER_FAST_SPOOL_DIR=str(tmp_path / "spool")),
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    lines = proc.stderr.splitlines()
    assert "level 10" in lines
    (written,) = [line for line in lines if line.startswith("DEBUG rudder_fast track written")]
    assert GENERATED_MESSAGE_ID.match(written.rsplit(" ", 1)[1])
    assert "DEBUG rudder_fast track checked, not written (send is False)" in lines


# -- the delivery settings: one message, in fresh processes -------------------------------------------------

SETTINGS_SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    import rudder_fast.analytics as rudder_analytics
    from rudder_fast.analytics import Client

    KEY, URL = sys.argv[2], sys.argv[3]
    def on_error(error, items):
        pass

    scenario = sys.argv[1]
    if scenario == "defaults":
        rudder_analytics.gzip = True
        rudder_analytics.timeout = 15
        for i in range(3):
            rudder_analytics.track("u1", "e", {"i": i})
        Client().track("u1", "e")
    elif scenario == "module":
        rudder_analytics.write_key = KEY
        rudder_analytics.host = "https://ignored.invalid"
        rudder_analytics.dataPlaneUrl = URL
        rudder_analytics.gzip = False
        rudder_analytics.max_retries = 3
        rudder_analytics.timeout = 5
        rudder_analytics.sync_mode = True
        rudder_analytics.max_queue_size = 10
        rudder_analytics.upload_interval = 2.0
        rudder_analytics.upload_size = 10
        rudder_analytics.on_error = on_error
        rudder_analytics.identify("u1", {"a": 1})
        rudder_analytics.track("u1", "e")
        rudder_analytics.page("u1", "c", "n")
        rudder_analytics.flush()
        rudder_analytics.join()
        rudder_analytics.shutdown()
    elif scenario == "client":
        client = Client(KEY, host=URL, proxies={"https": "http://proxy.invalid:8080"}, thread=4)
        client.track("u1", "e")
        Client(KEY, host=URL, proxies={"https": "http://proxy.invalid:8080"}, thread=4)
    elif scenario == "threads":
        rudder_analytics.write_key = KEY
        def work():
            for i in range(50):
                rudder_analytics.track("u1", "e", {"i": i})
        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elif scenario == "send_false":
        rudder_analytics.write_key = KEY
        rudder_analytics.send = False
        rudder_analytics.track("u1", "e")
    """
)


def run_settings_scenario(scenario: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SETTINGS_SCRIPT, scenario, WRITE_KEY, DATA_PLANE_URL],
        capture_output=True,
        text=True,
        env=env_with(RUDDER_FAST_SPOOL_DIR=str(tmp_path / "spool")),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert WRITE_KEY not in proc.stderr
    assert "PASSWORD" not in proc.stderr
    return proc.stderr


def messages(output: str) -> list[str]:
    """The settings messages in a process's log (each a first line and one indented line per setting)."""
    found: list[str] = []
    for line in output.splitlines():
        if MESSAGE_START in line:
            found.append(line)
        elif line.startswith("  ") and found:
            found[-1] += "\n" + line
    return found


def test_module_settings_give_one_message_saying_what_does_each_job(tmp_path: Path) -> None:
    (message,) = messages(run_settings_scenario("module", tmp_path))
    first, *lines = message.splitlines()
    assert first.startswith(f"WARNING rudder_fast {MESSAGE_START} {tmp_path / 'spool'} ")
    said = {line.strip().split(":", 1)[0]: line.strip().split(":", 1)[1] for line in lines}
    assert list(said) == [
        "write_key and dataPlaneUrl", "gzip", "timeout", "max_retries", "sync_mode", "max_queue_size",
        "upload_interval", "upload_size", "on_error",
    ]  # fmt: skip
    no_sender = said["write_key and dataPlaneUrl"]
    assert "no rudder-fast-sender is running on this spool" in no_sender
    assert "RUDDER_WRITE_KEY=<the write key>" in no_sender
    # dataPlaneUrl wins over host, as there; shown as the sender would use it, without its password.
    assert "RUDDER_DATA_PLANE_URL=https://dataplane.invalid/v1/batch " in no_sender
    assert "ignored.invalid" not in message
    assert "--no-gzip" in said["gzip"]
    assert "--read-timeout" in said["timeout"]
    assert "retries until the data plane accepts" in said["max_retries"]
    assert "on disk" in said["sync_mode"]
    assert "--drain" in said["sync_mode"]
    assert "--quota-bytes" in said["max_queue_size"]
    assert "(False, message)" in said["max_queue_size"]
    assert "--linger" in said["upload_interval"]
    assert "--max-batch-events" in said["upload_size"]
    assert "never called" in said["on_error"]
    assert "rudder-fast status" in said["on_error"]


def test_client_settings_give_one_message_once(tmp_path: Path) -> None:
    (message,) = messages(run_settings_scenario("client", tmp_path))
    said = [line.strip().split(":", 1)[0] for line in message.splitlines()[1:]]
    assert said == ["write_key and dataPlaneUrl", "thread", "proxies"]
    assert "not supported" in message


def test_no_message_while_every_delivery_setting_has_its_default(tmp_path: Path) -> None:
    assert messages(run_settings_scenario("defaults", tmp_path)) == []


def test_one_message_from_many_threads(tmp_path: Path) -> None:
    assert len(messages(run_settings_scenario("threads", tmp_path))) == 1
    assert len(spooled(tmp_path / "spool")) == 16 * 50


def test_no_message_when_nothing_is_sent(tmp_path: Path) -> None:
    assert messages(run_settings_scenario("send_false", tmp_path)) == []
    assert not (tmp_path / "spool").exists()


# -- the documented examples, unchanged but for the import line ----------------------------------------------

DESKTOP = {"library": {"application": "Rudder Desktop", "version": "1.1.0", "platform": "osx"}}
TRAITS = {"firstname": "First", "lastname": "Last", "Role": "Jedi", "age": 25}

# Per example: the events it must leave in the spool, in order ("context" is checked as a subset).
EXPECTED: dict[str, list[dict[str, Any]]] = {
    "readme_quickstart.py": [
        {
            "type": "track",
            "userId": "developer_user_id",
            "event": "Simple Track Event",
            "properties": {"key1": "val1"},
        },
        {
            "type": "track",
            "userId": "user_id",
            "anonymousId": "anonymousId",
            "event": "Simple Track Event",
            "properties": {"key1": "val1"},
            "context": {"key1": "val1"},
        },
    ],
    "readme_proxy_client.py": [
        {
            "type": "track",
            "userId": "proxied-user",
            "event": "Checkout Started",
            "properties": {"cart_id": "c-77", "items": 3},
        },
    ],
    "docs_event_methods.py": [
        {
            "type": "identify",
            "userId": "1hKOmRA4GRlm",
            "traits": {"email": "alex@example.com", "name": "Alex Keener", "friends": 16},
            "context": {"traits": {"email": "alex@example.com", "name": "Alex Keener", "friends": 16}},
        },
        {
            "type": "track",
            "userId": "1hKOmRA4GRlm",
            "event": "Order Completed",
            "properties": {
                "checkout_id": "C324532",
                "order_id": "T1230",
                "revenue": 16.98,
                "currency": "USD",
            },
        },
        {
            "type": "page",
            "userId": "1hKOmRA4GRlm",
            "category": "Cart",
            "name": "Cart Viewed",
            "properties": {"path": "/cart", "url": "https://example.com/cart"},
        },
        {
            "type": "screen",
            "userId": "1hKOmRA4GRlm",
            "category": "Settings",
            "name": "Brightness",
            "properties": {"from": "Settings Screen"},
        },
        {
            "type": "group",
            "userId": "1hKOmRA4GRlm",
            "groupId": "12345",
            "traits": {"name": "MyGroup", "industry": "IT", "employees": 450, "plan": "basic"},
        },
        {"type": "alias", "userId": "1hKOmRA4GRlm", "previousId": "anon-7f3c"},
    ],
    "keyword_arguments.py": [
        {
            "type": "track",
            "userId": "123456",
            "anonymousId": "uid",
            "event": "Test Track",
            "properties": DESKTOP,
        },
        {
            "type": "screen",
            "userId": "123456",
            "anonymousId": "uid",
            "name": "Test Screen",
            "properties": DESKTOP,
        },
        {
            "type": "identify",
            "userId": "654321",
            "traits": TRAITS,
            "context": {
                "screen": {"width": 852, "height": 393, "density": 3},
                "os": {"name": "macOS", "version": "11"},
                "traits": TRAITS,
            },
        },
        {"type": "group", "userId": "123456", "anonymousId": "uid", "groupId": "uid", "traits": TRAITS},
        {"type": "alias", "userId": "123456", "previousId": "654321"},
        {
            "type": "page",
            "userId": "123456",
            "anonymousId": "uid",
            "category": "Docs",
            "name": "Test Page",
            "properties": DESKTOP,
        },
        {
            "type": "track",
            "userId": "123456",
            "event": "Imported Order",
            "properties": {"order_id": "T1230"},
            "context": {"ip": "14.5.67.21"},
            "timestamp": "2024-05-17T09:30:15.250Z",
            "integrations": {"All": False, "Amplitude": True},
            "messageId": "imported-order-T1230",
        },
    ],
    "docs_initialization_options.py": [
        {"type": "identify", "userId": "u-42", "traits": {"email": "u42@example.com"}},
        {"type": "track", "userId": "u-42", "event": "Settings Saved", "properties": {"theme": "dark"}},
    ],
    "send_disabled.py": [],
}


def run_example(script: Path, cwd: Path, spool_dir: Path) -> subprocess.CompletedProcess[str]:
    env = env_with(
        RUDDER_WRITE_KEY=WRITE_KEY,
        RUDDER_DATA_PLANE_URL=DATA_PLANE_URL,
        RUDDER_FAST_SPOOL_DIR=str(spool_dir),
        EXAMPLE_PROXY_URL="http://proxy.invalid:3128",
    )
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_every_example_has_expectations_and_rudder_fast_import_lines_only() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(EXPECTED)
    for example in EXAMPLES:
        text = example.read_text()
        imported = [
            node
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and "rudder" in ((getattr(node, "module", None) or "") + " ".join(a.name for a in node.names))
        ]
        assert len(imported) == 1, example.name
        lines = [line.strip() for line in text.splitlines()]
        assert sum(line in IMPORT_LINES for line in lines) == 1, example.name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_unchanged_and_spools_its_events(example: Path, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    proc = run_example(example, tmp_path, spool_dir)
    assert proc.returncode == 0, proc.stderr
    expected = EXPECTED[example.name]
    events = spooled(spool_dir)
    assert len(events) == len(expected), events
    for event, want in zip(events, expected, strict=True):
        for key, value in want.items():
            if key == "context":
                assert {k: event["context"].get(k) for k in value} == value, (key, event)
            else:
                assert event.get(key) == value, (key, event)
        assert event["context"]["library"] == OUR_LIBRARY
        if "messageId" not in want:
            assert GENERATED_MESSAGE_ID.match(event["messageId"]), event
    if not expected:
        assert not spool_dir.exists(), "send = False wrote something"
    # Delivery settings were given (and events sent): one message, with names, never the key.
    output = proc.stdout + proc.stderr
    assert output.count(MESSAGE_START) == (1 if expected else 0), output
    assert WRITE_KEY not in output
    assert "PASSWORD" not in output


# -- import, flush ---------------------------------------------------------------------------------------

IMPORT_PROBE = textwrap.dedent(
    """
    import json, os, sys, threading

    root = sys.argv[1]
    steps = {}

    def look(step):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            found += [os.path.relpath(os.path.join(dirpath, n), root) for n in dirnames + filenames]
        steps[step] = {
            "paths": sorted(found),
            "threads": threading.active_count(),
            "os_threads": len(os.listdir("/proc/self/task")),
            "fds": sorted(os.listdir("/proc/self/fd")),
        }

    look("start")
    import rudder_fast.analytics as rudder_analytics
    look("import")
    rudder_analytics.write_key = "k"
    rudder_analytics.dataPlaneUrl = "https://dataplane.invalid"
    rudder_analytics.debug = True
    rudder_analytics.flush()
    rudder_analytics.join()
    rudder_analytics.shutdown()
    look("settings and flush")
    rudder_analytics.track("u1", "First")
    look("first call")
    print(json.dumps(steps))
    """
)


def test_import_creates_no_file_and_starts_no_thread(tmp_path: Path) -> None:
    env = env_with(
        RUDDER_FAST_SPOOL_DIR=str(tmp_path / "state" / "spool"),
        HOME=str(tmp_path / "home"),
        XDG_STATE_HOME=str(tmp_path / "xdg"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, str(tmp_path)],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    steps = json.loads(proc.stdout)
    start = steps["start"]
    assert start["paths"] == []
    for step in ("import", "settings and flush"):
        seen = steps[step]
        assert seen["paths"] == [], f"{step}: created {seen['paths']}"
        assert seen["threads"] == 1, f"{step}: started a thread"
        assert seen["os_threads"] == 1, f"{step}: started a thread"
        assert seen["fds"] == start["fds"], f"{step}: left a file open"
    first = steps["first call"]
    assert any(p.startswith("state/spool/segments/") and p.endswith(".seg") for p in first["paths"])
    assert first["threads"] == 1
    assert first["os_threads"] == 1
    assert [e["event"] for e in spooled(tmp_path / "state" / "spool")] == ["First"]


def test_flush_join_and_shutdown_are_harmless(default_spool: Path) -> None:
    compat.track("u1", "e")
    client = Client(sync_mode=True)  # the SDK's join() and shutdown() raise TypeError in sync mode
    for target in (compat, client):
        assert target.flush() is None
        assert target.join() is None
        assert target.shutdown() is None
    compat.track("u1", "after shutdown")  # still works: there was nothing to shut down
    assert [e["event"] for e in spooled(default_spool)] == ["e", "after shutdown"]
