"""The devserver answers as the real gateway does (rudder-server v1.83), on a real loopback socket.

Each case cites the gateway code it follows: ``gateway/handle_http_auth.go`` (``writeKeyAuth``, which
calls Go's ``Request.BasicAuth``), ``middleware/uncompress.go`` (gzip bodies) and ``gateway/handle.go``
(``getJobDataFromRequest``: the checks and their order).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import socket
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from rudder_fast.devserver import DevServer, Faults

KEY = "gw-key"
EVENT = {"type": "track", "event": "E", "userId": "u1", "messageId": "m1"}


@pytest.fixture
def server() -> Iterator[DevServer]:
    dev = DevServer("127.0.0.1", 0, [KEY], out=None, faults=Faults(), quiet=True)
    dev.start()
    try:
        yield dev
    finally:
        dev.close()


def token(key: str = KEY) -> str:
    return base64.b64encode(f"{key}:".encode()).decode()


def post(
    dev: DevServer,
    body: bytes,
    *,
    auth: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=10)
    try:
        all_headers = {"Authorization": auth if auth is not None else f"Basic {token()}"}
        all_headers.update(headers or {})
        conn.request("POST", "/v1/batch", body=body, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def batch(*events: Any) -> bytes:
    return orjson.dumps({"batch": list(events)})


# -- Authorization: Go's parseBasicAuth ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_the_basic_scheme_is_matched_in_any_letter_case(server: DevServer, scheme: str) -> None:
    assert post(server, batch(EVENT), auth=f"{scheme} {token()}") == (200, b"ok")


def test_a_wrong_key_in_a_lowercase_scheme_is_an_invalid_key(server: DevServer) -> None:
    assert post(server, batch(EVENT), auth=f"basic {token('other')}") == (401, b"invalid write key\n")


@pytest.mark.parametrize(
    "auth",
    [
        "",
        "Bearer " + token(),
        "Basic",
        "Basic  " + token(),  # the rest after "Basic " is decoded as is: a second space is not base64
        "Basic " + token().rstrip("="),  # padding is required (base64.StdEncoding)
        "Basic " + base64.b64encode(KEY.encode()).decode(),  # no colon
        "Basic " + base64.b64encode(b":").decode(),  # an empty key
    ],
)
def test_what_parse_basic_auth_refuses_is_a_missing_key(server: DevServer, auth: str) -> None:
    assert post(server, batch(EVENT), auth=auth) == (401, b"failed to read writekey from header\n")


# -- gzip bodies: middleware/uncompress.go ------------------------------------------------------------


def test_an_empty_gzip_body_is_invalid_json_not_a_server_error(server: DevServer) -> None:
    # Go's gzip.NewReader returns io.EOF on an empty stream, which io.ReadAll takes as the end: the
    # payload is empty, and gjson.ValidBytes refuses it.
    assert post(server, b"", headers={"Content-Encoding": "gzip"}) == (400, b"invalid json\n")


def test_concatenated_gzip_members_are_one_body(server: DevServer) -> None:
    body = batch(EVENT)
    raw = gzip.compress(body[:10]) + gzip.compress(body[10:])
    assert post(server, raw, headers={"Content-Encoding": "gzip"}) == (200, b"ok")


@pytest.mark.parametrize(
    "raw",
    [
        zlib.compress(b'{"batch": []}'),  # a zlib stream is not a gzip member
        gzip.compress(b'{"batch": []}') + b"trailing",  # bytes after a member must be another member
        gzip.compress(b'{"batch": []}')[:-4],  # truncated trailer
        b"\x1f\x8b\x08",  # a header cut short
        gzip.compress(b'{"batch": []}')[:-8] + b"\0\0\0\0" + gzip.compress(b'{"batch": []}')[-4:],  # bad CRC
    ],
    ids=["zlib", "trailing-bytes", "truncated", "short-header", "bad-crc"],
)
def test_a_broken_gzip_stream_is_a_read_failure(server: DevServer, raw: bytes) -> None:
    assert post(server, raw, headers={"Content-Encoding": "gzip"}) == (
        500,
        b"failed to read body from request\n",
    )


def test_reserved_flag_bits_in_a_gzip_header_are_ignored(server: DevServer) -> None:
    """Go's gzip.Reader reads the flags it knows and ignores the reserved ones (zlib refuses them)."""
    raw = bytearray(gzip.compress(batch(EVENT)))
    raw[3] |= 0xE0  # FLG bits 5-7: reserved
    assert post(server, bytes(raw), headers={"Content-Encoding": "gzip"}) == (200, b"ok")


@pytest.mark.parametrize("sent", [0, 10])
@pytest.mark.parametrize("encoding", ["gzip", None])
def test_a_body_cut_short_is_a_read_failure(server: DevServer, sent: int, encoding: str | None) -> None:
    """The client goes away before ``Content-Length`` bytes (a sender killed mid-request): Go's body
    reader fails with io.ErrUnexpectedEOF, so even an empty gzip body is a 500 here, not a 400."""
    body = gzip.compress(batch(EVENT)) if encoding else batch(EVENT)
    head = f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token()}\r\n"
    head += f"Content-Length: {len(body)}\r\n" + (f"Content-Encoding: {encoding}\r\n" if encoding else "")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body[:sent])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert answer.endswith(b"\r\n\r\nfailed to read body from request\n")


def test_only_the_exact_gzip_encoding_is_decompressed(server: DevServer) -> None:
    raw = gzip.compress(batch(EVENT))
    assert post(server, raw, headers={"Content-Encoding": "GZIP"}) == (400, b"invalid json\n")


# -- the batch: gjson.GetBytes(body, "batch").Array() --------------------------------------------------


def test_a_batch_that_is_a_json_string_is_not_a_rudder_event(server: DevServer) -> None:
    body = orjson.dumps({"batch": orjson.dumps([EVENT]).decode()})
    assert post(server, body) == (400, b"event is not a valid rudder event\n")


@pytest.mark.parametrize("value", [0, True, "", "x"])
def test_a_batch_that_is_a_scalar_is_one_event_that_is_not_an_object(server: DevServer, value: Any) -> None:
    assert post(server, orjson.dumps({"batch": value})) == (400, b"event is not a valid rudder event\n")


def test_a_batch_that_is_an_object_is_one_event(server: DevServer) -> None:
    assert post(server, orjson.dumps({"batch": EVENT})) == (200, b"ok")
    assert server.stats.events == 1


@pytest.mark.parametrize("body", [b'{"batch": null}', b"{}", b'{"batch": []}', b"[]", b'"batch"'])
def test_no_events_is_an_empty_batch(server: DevServer, body: bytes) -> None:
    assert post(server, body) == (400, b"empty batch payload\n")


def test_events_are_checked_one_by_one_in_order(server: DevServer) -> None:
    anonymous: dict[str, Any] = {"type": "track", "event": "E"}
    assert post(server, batch(anonymous, "x")) == (400, b"request neither has anonymousId nor userId\n")
    assert post(server, batch("x", anonymous)) == (400, b"event is not a valid rudder event\n")


def test_the_size_limit_comes_before_the_empty_batch() -> None:
    dev = DevServer("127.0.0.1", 0, [KEY], out=None, faults=Faults(max_body=1000), quiet=True)
    dev.start()
    try:
        assert post(dev, orjson.dumps({"batch": [], "pad": "x" * 1000})) == (
            413,
            b"request size exceeds max limit\n",
        )
        assert post(dev, orjson.dumps({"batch": [{"pad": "x" * 1000}]})) == (
            400,
            b"request neither has anonymousId nor userId\n",
        )
    finally:
        dev.close()


# -- ids: TrimSpace(sanitize.Unicode(stringify.Any(id))) -----------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    ["\u3164", "\u2800", "\x00", "\ue000", " \u200b\t", "\u00a0", "\u115f\u1160", None],
    ids=["hangul-filler", "braille-blank", "nul", "private-use", "spaces", "nbsp", "fillers", "null"],
)
def test_ids_the_gateway_sanitizes_to_nothing_are_missing(server: DevServer, user_id: Any) -> None:
    event = {"type": "track", "event": "E", "userId": user_id}
    assert post(server, batch(event)) == (400, b"request neither has anonymousId nor userId\n")


@pytest.mark.parametrize("user_id", [" a ", "\u200ba", 0, False, [], {}], ids=repr)
def test_ids_with_something_left_are_present(server: DevServer, user_id: Any) -> None:
    assert post(server, batch({"type": "track", "event": "E", "userId": user_id})) == (200, b"ok")


@pytest.mark.parametrize("event_type", ["extract", "record"])
def test_extract_and_record_events_need_no_id(server: DevServer, event_type: str) -> None:
    assert post(server, batch({"type": event_type})) == (200, b"ok")
