"""Prometheus metrics: the exposition format parsed back, a real scrape endpoint, the textfile.

The format is checked with a strict parser written here from the 0.0.4 specification and, when
``prometheus_client`` is installed (test-only), with its parser as an independent reader. Every
server is started on loopback with port 0 and closed by the ``serve`` helper; an autouse fixture
checks that no server or connection thread outlives its test.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import stat
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rudder_fast.metrics import (
    CONTENT_TYPE,
    DEFAULT_HOST,
    KNOWN_DROP_REASONS,
    SENDER_STATES,
    DataPlane,
    MetricsServer,
    MetricsSnapshot,
    MetricsUnavailable,
    render,
    write_textfile,
)

# -- a strict parser for the text exposition format 0.0.4 ----------------------------------------------

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: dict[Labels, str] = field(default_factory=dict)  # labels -> the value exactly as written


class FormatError(AssertionError):
    pass


def _is_name(text: str, label: bool = False) -> bool:
    if not text or text[0].isdigit():
        return False
    extra = "_" if label else "_:"
    return all((c.isascii() and c.isalnum()) or c in extra for c in text)


def _unescape(text: str, escapes: dict[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in escapes:
                raise FormatError(f"bad escape in {text!r}")
            out.append(escapes[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_labels(text: str) -> tuple[Labels, str]:
    """``{a="x",b="y"} rest`` -> the labels and ``rest``."""
    assert text[0] == "{"
    labels: list[tuple[str, str]] = []
    i = 1
    while text[i] != "}":
        eq = text.index("=", i)
        name = text[i:eq]
        if not _is_name(name, label=True) or text[eq + 1] != '"':
            raise FormatError(f"bad label in {text!r}")
        j = eq + 2
        raw: list[str] = []
        while text[j] != '"':
            if text[j] == "\\":
                raw.append(text[j : j + 2])
                j += 2
            else:
                raw.append(text[j])
                j += 1
        labels.append((name, _unescape("".join(raw), {"\\": "\\", '"': '"', "n": "\n"})))
        i = j + 1
        if text[i] == ",":
            i += 1
        elif text[i] != "}":
            raise FormatError(f"expected , or }} in {text!r}")
    names = [n for n, _ in labels]
    if len(set(names)) != len(names):
        raise FormatError(f"repeated label in {text!r}")
    return tuple(labels), text[i + 1 :]


_KINDS = ("counter", "gauge", "histogram", "summary", "untyped")


def _parse_comment(line: str, helps: dict[str, str], families: dict[str, Family]) -> Family | None:
    """A ``# HELP`` line (recorded in ``helps``) or a ``# TYPE`` line (the family it opens)."""
    if line.startswith("# HELP "):
        name, _, doc = line[len("# HELP ") :].partition(" ")
        if name in helps or name in families:
            raise FormatError(f"HELP for {name} repeated or after its TYPE")
        helps[name] = _unescape(doc, {"\\": "\\", "n": "\n"})
        return None
    if line.startswith("# TYPE "):
        name, _, kind = line[len("# TYPE ") :].partition(" ")
        if name in families:
            raise FormatError(f"TYPE for {name} repeated")
        if kind not in _KINDS:
            raise FormatError(f"unknown type {kind!r}")
        families[name] = Family(name, kind, helps.get(name, ""))
        return families[name]
    raise FormatError(f"unexpected comment {line!r}")


def _parse_sample(line: str, current: Family | None) -> None:
    """One sample line, added to ``current``, the family its TYPE opened."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and brace < space:
        name = line[:brace]
        labels, rest = _parse_labels(line[brace:])
        rest = rest.removeprefix(" ")
    else:
        name, rest = line[:space], line[space + 1 :]
        labels = ()
    if not _is_name(name):
        raise FormatError(f"bad metric name {name!r}")
    if current is None or name != current.name:
        raise FormatError(f"sample {name} outside its family (TYPE must come first)")
    if " " in rest:
        raise FormatError(f"unexpected timestamp or text in {line!r}")
    float(rest)  # +Inf, -Inf and NaN included
    if labels in current.samples:
        raise FormatError(f"duplicate sample {line!r}")
    current.samples[labels] = rest


def parse(data: bytes) -> dict[str, Family]:
    text = data.decode("utf-8")
    if not text.endswith("\n"):
        raise FormatError("the exposition must end with a newline")
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        if not line:
            raise FormatError("blank line")
        if line.startswith("#"):
            current = _parse_comment(line, helps, families) or current
        else:
            _parse_sample(line, current)
    for name in helps:
        if name not in families:
            raise FormatError(f"HELP without TYPE for {name}")
    return families


def value(families: dict[str, Family], name: str, **labels: str) -> str:
    return families[name].samples[tuple(labels.items())]


# -- the exposition -------------------------------------------------------------------------------------


def full_snapshot(**overrides: object) -> MetricsSnapshot:
    values: dict[str, object] = {
        "version": "0.1.0",
        "state": "backoff",
        "events_sent": 1234,
        "request_retries": 7,
        "events_rejected": 2,
        "skipped_bytes": 99,
        "dropped": {"quota": 5, "disk_error": 1},
        "requests_in_flight": 3,
        "delivery_rate": 1520.25,
        "backlog_events": 4000,
        "backlog_bytes": 1_048_576,
        "backlog_segments": 6,
        "oldest_event_age_s": 12.5,
        "live_producers": 4,
        "oldest_request_age_s": 4.5,
        "data_planes": (
            DataPlane("https://a.example/v1/batch", "backoff", in_use=False),
            DataPlane("https://b.example/v1/batch", "ok", in_use=True),
        ),
    }
    values.update(overrides)
    return MetricsSnapshot(**values)  # type: ignore[arg-type]


EXPECTED_TYPES = {
    "rudder_fast_events_sent_total": "counter",
    "rudder_fast_request_retries_total": "counter",
    "rudder_fast_events_rejected_total": "counter",
    "rudder_fast_events_dropped_total": "counter",
    "rudder_fast_skipped_bytes_total": "counter",
    "rudder_fast_backlog_events": "gauge",
    "rudder_fast_backlog_bytes": "gauge",
    "rudder_fast_backlog_segments": "gauge",
    "rudder_fast_oldest_event_age_seconds": "gauge",
    "rudder_fast_live_producers": "gauge",
    "rudder_fast_requests_in_flight": "gauge",
    "rudder_fast_oldest_request_age_seconds": "gauge",
    "rudder_fast_data_plane_in_use": "gauge",
    "rudder_fast_data_plane_up": "gauge",
    "rudder_fast_sender_up": "gauge",
    "rudder_fast_sender_state": "gauge",
    "rudder_fast_delivery_rate_events_per_second": "gauge",
    "rudder_fast_build_info": "gauge",
}
OPTIONAL = {
    "rudder_fast_backlog_events",
    "rudder_fast_backlog_bytes",
    "rudder_fast_backlog_segments",
    "rudder_fast_oldest_event_age_seconds",
    "rudder_fast_live_producers",
    "rudder_fast_data_plane_in_use",
    "rudder_fast_data_plane_up",
}


def test_every_family_with_its_type_help_and_value() -> None:
    data = render(full_snapshot())
    families = parse(data)
    assert {name: f.type for name, f in families.items()} == EXPECTED_TYPES
    assert all(f.help for f in families.values())
    expected = {
        "rudder_fast_events_sent_total": "1234",
        "rudder_fast_request_retries_total": "7",
        "rudder_fast_events_rejected_total": "2",
        "rudder_fast_skipped_bytes_total": "99",
        "rudder_fast_backlog_events": "4000",
        "rudder_fast_backlog_bytes": "1048576",
        "rudder_fast_backlog_segments": "6",
        "rudder_fast_oldest_event_age_seconds": "12.5",
        "rudder_fast_live_producers": "4",
        "rudder_fast_requests_in_flight": "3",
        "rudder_fast_oldest_request_age_seconds": "4.5",
        "rudder_fast_sender_up": "1",
        "rudder_fast_delivery_rate_events_per_second": "1520.25",
    }
    for name, want in expected.items():
        assert families[name].samples == {(): want}, name
    assert families["rudder_fast_events_dropped_total"].samples == {
        (("reason", "disk_error"),): "1",
        (("reason", "oldest"),): "0",
        (("reason", "quota"),): "5",
        (("reason", "reentrant"),): "0",
        (("reason", "rejected_not_kept"),): "0",
        (("reason", "spool_unusable"),): "0",
        (("reason", "too_large"),): "0",
    }
    assert families["rudder_fast_build_info"].samples == {(("version", "0.1.0"),): "1"}
    assert families["rudder_fast_data_plane_in_use"].samples == {
        (("url", "https://a.example/v1/batch"),): "0",
        (("url", "https://b.example/v1/batch"),): "1",
    }
    assert families["rudder_fast_data_plane_up"].samples == {
        (("url", "https://a.example/v1/batch"),): "0",
        (("url", "https://b.example/v1/batch"),): "1",
    }
    assert families["rudder_fast_sender_state"].samples == {
        (("state", s),): "1" if s == "backoff" else "0" for s in SENDER_STATES
    }
    assert render(full_snapshot()) == data  # deterministic


def test_counters_are_named_total_and_gauges_are_not() -> None:
    for name, f in parse(render(full_snapshot())).items():
        assert name.startswith("rudder_fast_")
        assert name.endswith("_total") == (f.type == "counter"), name


def test_unknown_values_are_left_out_whole() -> None:
    snapshot = MetricsSnapshot(version="0.1.0", state="starting")
    data = render(snapshot)
    families = parse(data)
    assert set(families) == set(EXPECTED_TYPES) - OPTIONAL
    for name in OPTIONAL:
        assert name.encode() not in data
    assert value(families, "rudder_fast_events_sent_total") == "0"
    assert value(families, "rudder_fast_delivery_rate_events_per_second") == "0.0"


def test_each_optional_value_alone() -> None:
    families = parse(
        render(MetricsSnapshot(version="1", state="ok", backlog_bytes=0, oldest_event_age_s=0.0))
    )
    assert value(families, "rudder_fast_backlog_bytes") == "0"  # zero is a value, not "unknown"
    assert value(families, "rudder_fast_oldest_event_age_seconds") == "0.0"
    assert "rudder_fast_backlog_events" not in families


@pytest.mark.parametrize("state", SENDER_STATES)
def test_sender_state_is_one_hot(state: str) -> None:
    samples = parse(render(full_snapshot(state=state)))["rudder_fast_sender_state"].samples
    assert samples == {(("state", s),): "1" if s == state else "0" for s in SENDER_STATES}


def test_an_unknown_state_is_refused() -> None:
    with pytest.raises(ValueError, match="state must be one of"):
        MetricsSnapshot(version="0.1.0", state="stopped")


def test_up_zero_for_a_last_textfile() -> None:
    assert value(parse(render(full_snapshot(up=False))), "rudder_fast_sender_up") == "0"


def test_known_drop_reasons_are_exported_as_zero_from_the_start() -> None:
    families = parse(render(MetricsSnapshot(version="0.1.0", state="ok")))
    samples = families["rudder_fast_events_dropped_total"].samples
    assert samples == {(("reason", r),): "0" for r in sorted(KNOWN_DROP_REASONS)}
    # Every reason anything counts, by producers or by the sender (the one vocabulary: rudder_fast.counts).
    assert set(KNOWN_DROP_REASONS) == {
        "disk_error",
        "oldest",
        "quota",
        "spool_unusable",
        "reentrant",
        "too_large",
        "rejected_not_kept",
    }


def test_label_values_are_escaped() -> None:
    reason = 'back\\slash "quoted"\nnew line é'
    data = render(full_snapshot(dropped={reason: 3}, version='1.0"\\\n'))
    text = data.decode()
    assert 'rudder_fast_events_dropped_total{reason="back\\\\slash \\"quoted\\"\\nnew line é"} 3\n' in text
    assert 'rudder_fast_build_info{version="1.0\\"\\\\\\n"} 1\n' in text
    families = parse(data)
    assert value(families, "rudder_fast_events_dropped_total", reason=reason) == "3"
    assert value(families, "rudder_fast_build_info", version='1.0"\\\n') == "1"


def test_numbers_are_written_exactly() -> None:
    big = 2**64 + 1  # past float precision: a counter must not be rounded
    families = parse(
        render(
            full_snapshot(
                events_sent=big, delivery_rate=0.1, oldest_event_age_s=float("inf"), backlog_events=0
            )
        )
    )
    assert value(families, "rudder_fast_events_sent_total") == str(big)
    assert value(families, "rudder_fast_delivery_rate_events_per_second") == "0.1"
    assert value(families, "rudder_fast_oldest_event_age_seconds") == "+Inf"
    nan = parse(render(full_snapshot(oldest_event_age_s=float("nan"))))
    assert value(nan, "rudder_fast_oldest_event_age_seconds") == "NaN"


def test_the_snapshot_copies_the_drop_counts() -> None:
    live = {"quota": 1}
    snapshot = full_snapshot(dropped=live)
    live["quota"] = 1000
    live["disk_error"] = 5
    assert dict(snapshot.dropped) == {"quota": 1}
    with pytest.raises(TypeError):
        snapshot.dropped["quota"] = 2  # type: ignore[index]
    assert snapshot == full_snapshot(dropped={"quota": 1})


reasons = st.dictionaries(st.text(max_size=20), st.integers(min_value=0, max_value=2**64), max_size=5)


@settings(max_examples=200, deadline=None)
@given(reasons, st.text(max_size=20))
def test_any_label_value_round_trips(dropped: dict[str, int], version: str) -> None:
    families = parse(render(full_snapshot(dropped=dropped, version=version)))
    want = dict.fromkeys(KNOWN_DROP_REASONS, 0) | dropped
    got = families["rudder_fast_events_dropped_total"].samples
    assert got == {(("reason", r),): str(n) for r, n in want.items()}
    assert families["rudder_fast_build_info"].samples == {(("version", version),): "1"}


def test_prometheus_client_reads_the_same() -> None:
    """An independent reader: the official Python client's parser (a test-only tool)."""
    parser = pytest.importorskip("prometheus_client.parser")
    reason = 'odd "reason"\\\nline two'
    data = render(full_snapshot(dropped={reason: 4}))
    ours = parse(data)
    theirs = {f.name: f for f in parser.text_string_to_metric_families(data.decode())}
    seen = 0
    for name, family in ours.items():
        # The client names a counter family without its _total suffix; its samples keep it.
        key = name.removesuffix("_total") if family.type == "counter" else name
        assert theirs[key].type == family.type
        assert theirs[key].documentation == family.help
        samples = {tuple(sorted(s.labels.items())): s.value for s in theirs[key].samples}
        assert {s.name for s in theirs[key].samples} == {name}
        assert samples == {tuple(sorted(labels)): float(v) for labels, v in family.samples.items()}
        seen += 1
    assert seen == len(theirs) == len(EXPECTED_TYPES)
    dropped = {s.labels["reason"]: s.value for s in theirs["rudder_fast_events_dropped"].samples}
    assert dropped[reason] == 4


# -- the scrape endpoint --------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1


def _metrics_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rudder-fast-metrics")]


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    assert not _metrics_threads()
    yield
    deadline = time.monotonic() + 5
    while _metrics_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _metrics_threads(), "a metrics server or connection thread outlived its test"


@contextlib.contextmanager
def serve(provider: Callable[[], bytes], host: str = DEFAULT_HOST) -> Iterator[MetricsServer]:
    server = MetricsServer(host, 0, provider)
    try:
        server.start()
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def connect(server: MetricsServer) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def get(conn: http.client.HTTPConnection, path: str = "/metrics", method: str = "GET") -> tuple[int, bytes]:
    conn.request(method, path)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.getheader("Content-Length") == str(len(body)) or method == "HEAD"
    return resp.status, body


def test_scrape_over_http() -> None:
    body = render(full_snapshot())
    with serve(lambda: body) as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        with _OPENER.open(server.url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            assert resp.headers["Content-Length"] == str(len(body))
            got = resp.read()
    assert got == body
    assert parse(got)["rudder_fast_events_sent_total"].samples == {(): "1234"}


def test_two_scrapes_on_one_keep_alive_connection() -> None:
    calls: list[int] = []

    def provider() -> bytes:
        calls.append(1)
        return render(full_snapshot(events_sent=len(calls)))

    with serve(provider) as server, connect(server) as conn:
        conn.request("GET", "/metrics")
        first = conn.getresponse()
        assert first.version == 11
        assert not first.will_close
        assert first.getheader("Content-Type") == CONTENT_TYPE
        assert value(parse(first.read()), "rudder_fast_events_sent_total") == "1"
        sock = conn.sock
        local = sock.getsockname() if sock else None
        status, body = get(conn)
        assert conn.sock is sock
        assert sock is not None
        assert sock.getsockname() == local
        assert status == 200
        assert value(parse(body), "rudder_fast_events_sent_total") == "2"


def test_other_paths_are_404_and_the_connection_stays_open() -> None:
    with serve(lambda: b"x 1\n") as server, connect(server) as conn:
        assert get(conn, "/") == (404, b"not found: metrics are at /metrics\n")
        sock = conn.sock
        assert get(conn, "/metricsfoo")[0] == 404
        assert get(conn, "/metrics?format=text") == (200, b"x 1\n")  # a query string is ignored
        assert conn.sock is sock


def test_head_has_the_headers_and_no_body() -> None:
    with serve(lambda: b"x 1\n") as server, connect(server) as conn:
        conn.request("HEAD", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == "4"
        assert resp.getheader("Content-Type") == CONTENT_TYPE
        assert resp.read() == b""
        assert get(conn) == (200, b"x 1\n")


def test_a_failing_provider_is_a_500_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    answers: list[object] = [RuntimeError("boom"), "not bytes", b"ok 1\n", b"ok 2\n"]

    def provider() -> bytes:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    with serve(provider) as server:
        with connect(server) as conn:
            assert get(conn) == (500, b"metrics unavailable: RuntimeError\n")
            assert get(conn) == (500, b"metrics unavailable: TypeError\n")
            assert get(conn) == (200, b"ok 1\n")  # same connection, still served
        with _OPENER.open(server.url, timeout=10) as resp:  # and new connections too
            assert resp.status == 200
    assert "metrics provider failed" in caplog.text


def test_not_ready_is_a_503_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    ready: list[bytes] = []

    def provider() -> bytes:
        if not ready:
            raise MetricsUnavailable("the ledger is not loaded yet")
        return ready[0]

    with serve(provider) as server, connect(server) as conn:
        assert get(conn) == (503, b"metrics not ready: the ledger is not loaded yet\n")
        ready.append(b"x 1\n")
        assert get(conn) == (200, b"x 1\n")
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


def test_concurrent_scrapes() -> None:
    body = render(full_snapshot())
    results: list[bytes] = []
    with serve(lambda: body) as server:

        def scrape() -> None:
            with _OPENER.open(server.url, timeout=10) as resp:
                results.append(resp.read())

        threads = [threading.Thread(target=scrape) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert results == [body] * 16


def test_close_ends_idle_keep_alive_connections_and_stops_listening() -> None:
    with serve(lambda: b"x 1\n") as server, connect(server) as conn:
        assert get(conn) == (200, b"x 1\n")
        port = server.port
        assert len(_metrics_threads()) == 2  # the accept loop and this connection
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 2
        assert not _metrics_threads()
        assert conn.sock is not None
        conn.sock.settimeout(5)
        assert conn.sock.recv(1) == b""  # the server closed its end
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        server.close()  # idempotent
        with pytest.raises(RuntimeError):
            server.start()


def test_a_server_never_started_closes() -> None:
    server = MetricsServer(DEFAULT_HOST, 0, lambda: b"")
    assert server.port > 0
    server.close()
    assert "closed" in repr(server)


def test_a_port_in_use_fails_at_construction() -> None:
    with serve(lambda: b"") as server, pytest.raises(OSError, match="Address already in use"):
        MetricsServer(DEFAULT_HOST, server.port, lambda: b"")


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match="port must be between 0 and 65535"):
        MetricsServer(DEFAULT_HOST, 65536, lambda: b"")


def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with serve(lambda: b"x 1\n", host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        with _OPENER.open(server.url, timeout=10) as resp:
            assert resp.read() == b"x 1\n"


# -- the textfile ---------------------------------------------------------------------------------------


def test_textfile_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "rudder_fast.prom"
    old = render(full_snapshot(events_sent=1))
    new = render(full_snapshot(events_sent=2))
    previous = os.umask(0o077)
    try:
        write_textfile(path, old)
    finally:
        os.umask(previous)
    assert path.read_bytes() == old
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by node-exporter whatever the umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rudder_fast.prom"]
    with path.open("rb") as reader:  # a reader holding the old file keeps seeing it whole
        inode = os.fstat(reader.fileno()).st_ino
        write_textfile(path, new)
        assert reader.read() == old
    assert path.read_bytes() == new
    assert path.stat().st_ino != inode  # renamed over, never rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rudder_fast.prom"]


def test_a_failed_textfile_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "is_a_dir.prom"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        write_textfile(target, b"x 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["is_a_dir.prom"]
    with pytest.raises(FileNotFoundError):
        write_textfile(tmp_path / "missing" / "m.prom", b"x 1\n")
