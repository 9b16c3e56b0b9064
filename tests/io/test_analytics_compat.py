"""``rudder_fast.analytics`` as a drop-in for rudder-sdk-python 2.1.9's ``rudderstack.analytics``, for real.

- The SDK's documented usage (``sdk_examples/``: each script differs from the original in its import line
  only) runs in a subprocess and leaves exactly the expected events in the spool; and the same script,
  with the original import line, run against the real SDK and a loopback devserver, sends the same
  events (compared field by field, minus what is documented to differ).
- The six calls have the SDK's parameters, order and defaults; positional calls land in the same fields
  as the message the SDK builds for the same call; what the SDK refuses (AssertionError) is refused
  (InvalidEventError, a ValueError), and nothing is written.
- Delivery settings log one warning, naming the settings and never the write key.
- Importing the module creates no file and starts no thread.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import inspect
import json
import re
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

# rudder-sdk-python 2.1.9, installed with the "bench" extra (./scripts/test installs it)
import rudderstack.analytics as rudderstack_analytics  # type: ignore[import-untyped]
from rudderstack.analytics.client import Client  # type: ignore[import-untyped]

import rudder_fast
import rudder_fast.analytics as compat
from rudder_fast import Emitter, InvalidEventError
from tests.support import console_script, env_with, inspect_spool

EXAMPLES_DIR = Path(__file__).parent / "sdk_examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
IMPORT_LINE = "import rudder_fast.analytics as rudder_analytics"
SDK_IMPORT_LINE = "import rudderstack.analytics as rudder_analytics"

WRITE_KEY = "wk-SECRET-2f9c1e7d"
DATA_PLANE_URL = "https://user:PASSWORD-9d1b@dataplane.invalid"
CALLS = ("track", "identify", "page", "screen", "group", "alias")
TS = dt.datetime(2024, 5, 17, 9, 30, 15, 250000, tzinfo=dt.timezone.utc)
GENERATED_MESSAGE_ID = re.compile(r"^[0-9a-f]{16}-\d+$")
RUN_TIMEOUT_S = 60.0
WARNING_PREFIX = "rudder_fast.analytics ignores "

# -- the documented examples ---------------------------------------------------------------------------

DESKTOP = {"library": {"application": "Rudder Desktop", "version": "1.1.0", "platform": "osx"}}
ORDER = {"checkout_id": "C324532", "order_id": "T1230", "revenue": 16.98, "currency": "USD"}

# Per example: the events it must leave in the spool, in order; "context" is checked as a subset (the
# event's context also has ``library``).
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
            "properties": {
                "library": {"application": "Rudder Desktop", "version": "1.1.0", "platform": "osx"}
            },
        },
        {
            "type": "screen",
            "userId": "123456",
            "anonymousId": "uid",
            "name": "Test Screen",
            "properties": {
                "library": {"application": "Rudder Desktop", "version": "1.1.0", "platform": "osx"}
            },
        },
        {
            "type": "identify",
            "userId": "654321",
            "traits": {"firstname": "First", "lastname": "Last", "Role": "Jedi", "age": 25},
            "context": {
                "screen": {"width": 852, "height": 393, "density": 3},
                "os": {"name": "macOS", "version": "11"},
                "traits": {"firstname": "First", "lastname": "Last", "Role": "Jedi", "age": 25},
            },
        },
        {
            "type": "group",
            "userId": "123456",
            "anonymousId": "uid",
            "groupId": "uid",
            "traits": {"firstname": "First", "lastname": "Last", "Role": "Jedi", "age": 25},
        },
        {"type": "alias", "userId": "123456", "previousId": "654321"},
        {
            "type": "page",
            "userId": "123456",
            "anonymousId": "uid",
            "category": "Docs",
            "name": "Test Page",
            "properties": {
                "library": {"application": "Rudder Desktop", "version": "1.1.0", "platform": "osx"}
            },
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


def run_example(
    script: Path, cwd: Path, *, spool_dir: Path | None = None, data_plane_url: str = DATA_PLANE_URL
) -> subprocess.CompletedProcess[str]:
    extra = {"RUDDER_WRITE_KEY": WRITE_KEY, "RUDDER_DATA_PLANE_URL": data_plane_url}
    if spool_dir is not None:
        extra["RUDDER_FAST_SPOOL_DIR"] = str(spool_dir)
    env = env_with(**extra, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def spooled(spool_dir: Path) -> list[dict[str, Any]]:
    """The spool's pending events (``rudder-fast inspect``); none when nothing ever created the spool."""
    if not spool_dir.exists():
        return []
    events, _ = inspect_spool(spool_dir)
    return events


def test_every_example_has_expectations_and_differs_only_in_its_import_line() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(EXPECTED)
    for example in EXAMPLES:
        text = example.read_text()
        imported = [
            (alias.name, alias.asname)
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
            if "rudder" in f"{getattr(node, 'module', '')}.{alias.name}"
        ]
        assert imported == [("rudder_fast.analytics", "rudder_analytics")], example.name
        assert text.splitlines().count(IMPORT_LINE) == 1, example.name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_unchanged_and_spools_its_events(example: Path, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    proc = run_example(example, tmp_path, spool_dir=spool_dir)
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
        if "messageId" not in want:
            assert GENERATED_MESSAGE_ID.match(event["messageId"]), event
    if not expected:
        assert not spool_dir.exists(), "send = False wrote something"
    # Delivery settings were set (and events sent): one warning, with names, never values.
    output = proc.stdout + proc.stderr
    assert output.count(WARNING_PREFIX) == (1 if expected else 0), output
    assert WRITE_KEY not in output and "PASSWORD" not in output


# -- the same example against the real rudder-sdk-python ------------------------------------------------

COMPARED_FIELDS = (
    "type", "userId", "anonymousId", "event", "name", "category", "groupId", "previousId", "properties",
    "traits", "context", "integrations",
)  # fmt: skip


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """The fields both libraries must agree on, with the documented differences taken out.

    Not compared: ``messageId`` and ``timestamp`` unless the caller gave them (each library makes its
    own), ``context.library`` (each names itself), identify's top-level ``traits`` (rudder_fast adds
    them; both have ``context.traits``). Absent and empty ``properties``/``traits`` are the same (the
    SDK always sends ``{}``), and ``groupId``/``previousId`` are compared as text (the SDK sends a
    numeric one as a JSON number, rudder_fast as a string).
    """
    out = {k: event[k] for k in COMPARED_FIELDS if event.get(k) is not None}
    context = dict(out.get("context", {}))
    context.pop("library", None)
    if not context.get("traits"):
        context.pop("traits", None)
    out["context"] = context
    if out["type"] == "identify":
        out.pop("traits", None)
    for key in ("properties", "traits"):
        if out.get(key) == {}:
            del out[key]
    for key in ("groupId", "previousId"):
        if key in out:
            out[key] = str(out[key])
    return out


def caller_given(ours: dict[str, Any]) -> dict[str, Any]:
    """What rudder_fast's event shows the caller passed explicitly: a timestamp, a message id."""
    given: dict[str, Any] = {}
    if "timestamp" in ours:
        given["timestamp"] = instant(ours["timestamp"])
    if not GENERATED_MESSAGE_ID.match(ours["messageId"]):
        given["messageId"] = ours["messageId"]
    return given


def instant(text: str) -> dt.datetime:
    """A wire timestamp as an aware datetime, to the millisecond (rudder_fast's precision)."""
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


@contextlib.contextmanager
def devserver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real ``rudder-fast devserver`` on a free loopback port: (base URL, its --out file)."""
    out = tmp_path / "received.jsonl"
    proc = subprocess.Popen(
        [console_script("rudder-fast"), "devserver", "--port", "0", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20.0)
        assert ready, "the devserver printed nothing within 20 s"
        line = proc.stdout.readline().decode().strip()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        yield match.group(1), out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_sends_what_rudder_sdk_python_sends(example: Path, tmp_path: Path) -> None:
    original = tmp_path / f"sdk_{example.name}"
    original.write_text(example.read_text().replace(IMPORT_LINE, SDK_IMPORT_LINE))
    with devserver(tmp_path) as (url, out):
        sdk_proc = run_example(original, tmp_path, data_plane_url=url)
        assert sdk_proc.returncode == 0, sdk_proc.stderr
    sdk_events = [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []

    spool_dir = tmp_path / "spool"
    proc = run_example(example, tmp_path, spool_dir=spool_dir)
    assert proc.returncode == 0, proc.stderr
    ours = spooled(spool_dir)

    assert [comparable(e) for e in ours] == [comparable(e) for e in sdk_events]
    for mine, theirs in zip(ours, sdk_events, strict=True):
        given = caller_given(mine)
        if "timestamp" in given:
            assert instant(theirs["timestamp"]) == given["timestamp"], (mine, theirs)
        if "messageId" in given:
            assert theirs["messageId"] == given["messageId"]


# -- signatures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", CALLS)
def test_the_six_calls_have_the_sdk_parameters_order_and_defaults(call: str) -> None:
    # The SDK's module functions are ``f(*args, **kwargs)`` forwarding to the default Client's method,
    # so the parameters a caller can use are the method's (without ``self``).
    proxy = inspect.signature(getattr(rudderstack_analytics, call))
    assert [p.kind for p in proxy.parameters.values()] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]
    theirs = list(inspect.signature(getattr(Client, call)).parameters.values())[1:]
    ours = list(inspect.signature(getattr(compat, call)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs]


def test_module_level_names_match_the_sdk() -> None:
    for name in ("flush", "join", "shutdown"):
        assert not inspect.signature(getattr(rudderstack_analytics, name)).parameters
        assert not inspect.signature(getattr(compat, name)).parameters
        assert getattr(compat, name)() is None
    # Every setting the SDK's module has, with the SDK's default (its ``host`` default comes from the
    # environment and its ``dataPlaneUrl`` default is a stray ``property`` object: both None here).
    settings = [
        n for n in vars(Client.DefaultConfig) if not n.startswith("_") and hasattr(rudderstack_analytics, n)
    ]
    assert {"write_key", "host", "on_error", "debug", "send", "sync_mode", "gzip", "max_retries", "timeout",
            "max_queue_size", "upload_interval", "upload_size"} <= set(settings)  # fmt: skip
    for name in settings:
        assert name in compat.__all__
        if name != "host":
            assert getattr(compat, name) == getattr(Client.DefaultConfig, name), name
    assert hasattr(rudderstack_analytics, "dataPlaneUrl") and "dataPlaneUrl" in compat.__all__
    assert compat.host is None and compat.dataPlaneUrl is None


# -- positional calls, compared with the message the SDK builds -------------------------------------------


@pytest.fixture
def default_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process's default emitter (``rudder_fast.emit``, which the module uses) on a fresh spool."""
    spool = tmp_path / "spool"
    emitter = Emitter(spool)
    for name in ("_writer", "_append", "spool_dir"):
        monkeypatch.setattr(rudder_fast.emit, name, getattr(emitter, name), raising=False)
    monkeypatch.setattr(compat, "_warned", True)  # the warning has its own tests, in fresh processes
    yield spool
    emitter.close()


@pytest.fixture
def sdk_client() -> Client:
    """A real SDK client that builds and checks each message but sends nothing (no thread either)."""
    return Client(WRITE_KEY, send=False, sync_mode=True)


POSITIONAL: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("track", ("u1", "Signed Up", {"plan": "pro"}), {"event": "Signed Up", "properties": {"plan": "pro"}}),
    (
        "track",
        ("u1", "Signed Up", {"plan": "pro"}, {"ip": "1.2.3.4"}, TS, "anon-1", {"All": False}, "mid-track"),
        {"anonymousId": "anon-1", "context": {"ip": "1.2.3.4"}, "integrations": {"All": False}},
    ),
    ("track", (1234, "Numeric Ids", None, None, None, 5.5), {"userId": "1234", "anonymousId": "5.5"}),
    ("identify", ("u1", {"email": "a@example.com"}), {"context": {"traits": {"email": "a@example.com"}}}),
    ("identify", (42, {"n": 1}, {"locale": "en-US"}), {"userId": "42", "context": {"locale": "en-US"}}),
    (
        "page",
        ("u1", "Docs", "Install", {"url": "/install"}),
        {"category": "Docs", "name": "Install", "properties": {"url": "/install"}},
    ),
    (
        "page",
        ("u1", "Docs", "Install", {"url": "/i"}, {"ip": "x"}, TS, "anon-2", {"All": True}, "mid-page"),
        {"category": "Docs", "name": "Install", "anonymousId": "anon-2"},
    ),
    (
        "screen",
        ("u1", "Settings", "Brightness", {"from": "Settings Screen"}),
        {"category": "Settings", "name": "Brightness"},
    ),
    ("group", ("u1", "g-1", {"name": "Co"}), {"groupId": "g-1", "traits": {"name": "Co"}}),
    ("group", ("u1", 7, None, None, TS, "anon-3"), {"groupId": "7", "anonymousId": "anon-3"}),
    ("alias", ("old-id", "new-id"), {"previousId": "old-id", "userId": "new-id"}),
    (
        "alias",
        ("old-id", "new-id", {"ip": "x"}, TS, {"All": True}, "mid-alias"),
        {"previousId": "old-id", "userId": "new-id", "messageId": "mid-alias"},
    ),
]


def test_positional_calls_fill_the_same_fields_as_the_sdk(default_spool: Path, sdk_client: Client) -> None:
    sdk_messages = []
    for call, args, _ in POSITIONAL:
        assert getattr(compat, call)(*args) is None  # as the SDK's module functions
        ok, message = getattr(sdk_client, call)(*args)
        assert ok
        sdk_messages.append(message)
    events = spooled(default_spool)
    assert len(events) == len(POSITIONAL)
    for (call, args, fields), ours, theirs in zip(POSITIONAL, events, sdk_messages, strict=True):
        where = f"{call}{args!r}"
        assert ours["type"] == call, where
        for key, value in fields.items():
            if key == "context":
                assert {k: ours["context"].get(k) for k in value} == value, where
            else:
                assert ours[key] == value, where
        assert comparable(ours) == comparable(theirs), where
        given = caller_given(ours)
        if "timestamp" in given:
            assert instant(theirs["timestamp"]) == given["timestamp"], where
        if "messageId" in given:
            assert theirs["messageId"] == given["messageId"], where


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


# -- refused input -----------------------------------------------------------------------------------------

REFUSED_BY_BOTH: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("track", (), {"event": "e"}, "user_id"),
    ("track", ("u1",), {}, "event"),
    ("track", ("u1", 5), {}, "event"),
    ("track", ("u1", "e", ["not", "a", "dict"]), {}, "properties"),
    ("track", ("u1", "e"), {"context": ["x"]}, "context"),
    ("track", ("u1", "e"), {"integrations": ["x"]}, "integrations"),
    ("track", ("u1", "e"), {"timestamp": "yesterday"}, "timestamp"),
    ("identify", (), {"traits": {"a": 1}}, "user_id"),
    ("identify", ("u1", ["x"]), {}, "traits"),
    ("page", ("u1", 5), {}, "category"),
    ("screen", ("u1", None, 5), {}, "name"),
    ("group", ("u1",), {}, "group_id"),
    ("group", ("u1", "g", ["x"]), {}, "traits"),
    ("alias", (), {"user_id": "new"}, "previous_id"),
    ("alias", ("old",), {}, "user_id"),
]


@pytest.mark.parametrize(("call", "args", "kwargs", "field"), REFUSED_BY_BOTH)
def test_what_the_sdk_refuses_is_refused_with_invalid_event_error(
    default_spool: Path,
    sdk_client: Client,
    call: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(AssertionError):
        getattr(sdk_client, call)(*args, **kwargs)
    with pytest.raises(InvalidEventError) as refused:
        getattr(compat, call)(*args, **kwargs)
    assert isinstance(refused.value, ValueError) and not isinstance(refused.value, AssertionError)
    assert refused.value.field == field
    assert not default_spool.exists(), "a refused call wrote something"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("   ", "e"), "user_id"),  # the SDK sends it, and the gateway rejects the whole batch for it
        ((True, "e"), "user_id"),  # the SDK sends userId "True"
        (("u1", "e", {"wait": dt.timedelta(seconds=3)}), "properties.wait"),  # the SDK deletes it
    ],
)
def test_what_the_sdk_sends_broken_or_strips_is_refused(
    default_spool: Path, sdk_client: Client, args: tuple[Any, ...], field: str
) -> None:
    ok, message = sdk_client.track(*args)
    assert ok and "wait" not in message["properties"]
    with pytest.raises(InvalidEventError) as refused:
        compat.track(*args)
    assert refused.value.field == field
    assert not default_spool.exists()


VALID_ARGS: dict[str, tuple[Any, ...]] = {
    "track": ("u1", "Event"),
    "identify": ("u1", {"a": 1}),
    "page": ("u1", "Docs", "Install"),
    "screen": ("u1", "Settings", "Brightness"),
    "group": ("u1", "g-1"),
    "alias": ("old", "u1"),
}


def test_send_false_validates_and_writes_nothing(
    default_spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat, "send", False)
    for call, args in VALID_ARGS.items():
        assert getattr(compat, call)(*args) is None
    for call, args, kwargs, field in REFUSED_BY_BOTH:
        with pytest.raises(InvalidEventError) as refused:
            getattr(compat, call)(*args, **kwargs)
        assert refused.value.field == field
    assert not default_spool.exists()
    monkeypatch.setattr(compat, "send", True)
    compat.track("u1", "After")
    assert [e["event"] for e in spooled(default_spool)] == ["After"]


# -- the delivery-settings warning, in fresh processes -------------------------------------------------------

WARNING_SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    import rudder_fast.analytics as rudder_analytics

    KEY, URL = sys.argv[2], sys.argv[3]
    def mark(text):
        print("MARK", text, file=sys.stderr, flush=True)

    def on_error(error, items):
        pass

    scenario = sys.argv[1]
    if scenario == "defaults":
        rudder_analytics.write_key = None
        rudder_analytics.gzip = True
        rudder_analytics.timeout = 15
        for i in range(3):
            rudder_analytics.track("u1", "e", {"i": i})
    elif scenario == "all":
        rudder_analytics.write_key = KEY
        rudder_analytics.dataPlaneUrl = URL
        rudder_analytics.data_plane_url = URL
        rudder_analytics.host = URL
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
        rudder_analytics.screen("u1", "c", "n")
        rudder_analytics.group("u1", "g")
        rudder_analytics.alias("old", "u1")
        rudder_analytics.flush()
    elif scenario == "later":
        rudder_analytics.track("u1", "before")
        mark("first call done")
        rudder_analytics.write_key = KEY
        rudder_analytics.track("u1", "after")
        mark("second call done")
        rudder_analytics.gzip = False
        rudder_analytics.track("u1", "after again")
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
    elif scenario == "debug":
        rudder_analytics.debug = True
        rudder_analytics.track("u1", "e")
        mark("level " + str(logging.getLogger("rudder_fast").level))
        rudder_analytics.debug = False
        rudder_analytics.track("u1", "e")
        mark("level " + str(logging.getLogger("rudder_fast").level))
    """
)


def run_warning_scenario(scenario: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", WARNING_SCRIPT, scenario, WRITE_KEY, DATA_PLANE_URL],
        capture_output=True,
        text=True,
        env=env_with(RUDDER_FAST_SPOOL_DIR=str(tmp_path / "spool")),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return proc.stderr


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if WARNING_PREFIX in line]


def test_delivery_settings_log_one_warning_naming_them_without_values(tmp_path: Path) -> None:
    output = run_warning_scenario("all", tmp_path)
    (warning,) = warnings_in(output)
    assert warning.startswith("WARNING rudder_fast ")
    named = warning.split(WARNING_PREFIX, 1)[1].split(" in this process", 1)[0]
    assert named.split(", ") == list(compat._SENDER_SETTING_NAMES)
    for hint in ("rudder-fast-sender", "RUDDER_WRITE_KEY", "RUDDER_DATA_PLANE_URL", "on_error"):
        assert hint in warning
    assert str(tmp_path / "spool") in warning  # where the events are
    assert WRITE_KEY not in output and "PASSWORD" not in output and "dataplane.invalid" not in output


def test_no_warning_while_every_delivery_setting_has_its_default(tmp_path: Path) -> None:
    assert warnings_in(run_warning_scenario("defaults", tmp_path)) == []


def test_the_warning_comes_with_the_first_event_after_a_setting_and_only_once(tmp_path: Path) -> None:
    output = run_warning_scenario("later", tmp_path)
    lines = [line for line in output.splitlines() if WARNING_PREFIX in line or line.startswith("MARK")]
    assert len(lines) == 3, output
    assert lines[0] == "MARK first call done"
    assert WARNING_PREFIX + "write_key in this process" in lines[1]
    assert lines[2] == "MARK second call done"
    assert WRITE_KEY not in output


def test_one_warning_from_many_threads(tmp_path: Path) -> None:
    output = run_warning_scenario("threads", tmp_path)
    assert len(warnings_in(output)) == 1
    assert len(spooled(tmp_path / "spool")) == 16 * 50


def test_no_warning_when_nothing_is_sent(tmp_path: Path) -> None:
    assert warnings_in(run_warning_scenario("send_false", tmp_path)) == []
    assert not (tmp_path / "spool").exists()


def test_debug_sets_the_logger_to_debug_and_back(tmp_path: Path) -> None:
    output = run_warning_scenario("debug", tmp_path)
    marks = [line for line in output.splitlines() if line.startswith("MARK")]
    assert marks == ["MARK level 10", "MARK level 0"]
    debug_lines = [line for line in output.splitlines() if line.startswith("DEBUG rudder_fast track")]
    assert len(debug_lines) == 1 and "messageId" in debug_lines[0]


# -- import ---------------------------------------------------------------------------------------------

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
        assert seen["threads"] == 1 and seen["os_threads"] == 1, f"{step}: started a thread"
        assert seen["fds"] == start["fds"], f"{step}: left a file open"
    first = steps["first call"]
    assert any(p.startswith("state/spool/segments/") and p.endswith(".seg") for p in first["paths"])
    assert first["threads"] == 1 and first["os_threads"] == 1
    assert [e["event"] for e in spooled(tmp_path / "state" / "spool")] == ["First"]


def test_flush_and_shutdown_do_not_wait(default_spool: Path) -> None:
    compat.track("u1", "e")
    started = time.monotonic()
    for _ in range(1000):
        compat.flush()
        compat.shutdown()
    assert time.monotonic() - started < 0.5
    compat.track("u1", "after shutdown")  # still works: there was nothing to shut down
    assert [e["event"] for e in spooled(default_spool)] == ["e", "after shutdown"]
