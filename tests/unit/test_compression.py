"""Request-body gzip (``rudder_fast.compression``): standard gzip, whichever deflate writes it. Pure."""

from __future__ import annotations

import gzip
import importlib.util
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rudder_fast import compression
from rudder_fast.transport import GZIP_LEVEL, gzip_bytes

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=20_000) | st.text(max_size=5_000).map(str.encode), st.integers(0, 9))
def test_one_standard_gzip_member_that_decompresses_to_the_input(data: bytes, level: int) -> None:
    packed = compression.gzip(data, level)
    assert packed[:3] == b"\x1f\x8b\x08"  # gzip magic, deflate
    assert gzip.decompress(packed) == data
    # Exactly one member, read as the data plane does (a reader that stops after the first member
    # would miss anything after it).
    d = zlib.decompressobj(compression.GZIP_WBITS)
    assert d.decompress(packed) == data
    assert d.eof
    assert d.unused_data == b""


@PROPERTY
@given(st.lists(st.binary(max_size=3_000), max_size=8), st.integers(0, 9))
def test_pieces_make_one_gzip_member_of_their_concatenation(pieces: list[bytes], level: int) -> None:
    """The sender gzips a body in pieces (batching.body_pieces): the same one member as the whole."""
    packed = compression.gzip(iter(pieces), level)
    d = zlib.decompressobj(compression.GZIP_WBITS)
    assert d.decompress(packed) == b"".join(pieces)
    assert d.eof
    assert d.unused_data == b""


def test_isal_is_used_where_it_is_installed() -> None:
    """The dependency is declared: the fast deflate must be the one in use, not the fallback."""
    expected = "isal" if importlib.util.find_spec("isal") else "zlib"
    assert expected == compression.IMPLEMENTATION


def test_a_request_body_round_trips_through_the_transports_gzip() -> None:
    body = orjson.dumps({"batch": [{"type": "track", "event": "e", "messageId": str(i)} for i in range(500)]})
    assert gzip.decompress(gzip_bytes(body)) == body
    assert len(gzip_bytes(body, GZIP_LEVEL)) < len(body) // 4


def test_the_devservers_reader_is_isals_where_it_is_installed() -> None:
    """The devserver inflates with ISA-L too: zlib's inflate was a sixth of its time per event."""
    reader = compression.gzip_reader()
    expected = "isal" if importlib.util.find_spec("isal") else "zlib"
    assert expected == ("isal" if "isal" in type(reader).__module__ else "zlib")
    packed = compression.gzip(b"abc" * 1000, 1) + b"next"
    assert reader.decompress(packed) == b"abc" * 1000
    assert reader.eof
    assert reader.unused_data == b"next"


def test_gunzip_reads_concatenated_members_and_refuses_anything_else() -> None:
    """Go's gzip.Reader, as the gateway reads a body: every member, an empty body as empty, and a
    zlib.error for what is not gzip (ISA-L's own errors included)."""
    assert compression.gunzip(gzip.compress(b"ab") + gzip.compress(b"cd")) == b"abcd"
    assert compression.gunzip(b"") == b""
    for broken in (zlib.compress(b"ab"), gzip.compress(b"ab")[:-4], gzip.compress(b"ab") + b"x"):
        with pytest.raises(zlib.error):
            compression.gunzip(broken)
