"""The optional C extension (``rudder_fast/_speedups.c``) against its Python twins, on any input.

Each C loop must give exactly what the Python code gives, or stop where the Python code takes over:
``take_events`` what ``FrameDecoder.take_events_in_python`` takes from the same bytes; ``plain_track_stubs``
either None (the run goes the Python way) or the very stubs the Python way writes. Garbage of every kind
must never crash it. (The tests of take_events and of the stub encoder in test_framing.py and
test_wire.py also run both ways.) Where the
extension is not built these tests skip, or fail under ``RUDDER_FAST_REQUIRE_SPEEDUPS=1``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rudder_fast import framing, wire
from rudder_fast.framing import FRAME_DROPS, FRAME_EVENT, FRAME_SEAL, EventRun, FrameDecoder, encode_frame
from rudder_fast.jsonvalue import encode_json_field
from rudder_fast.wire import KIND_TRACK, StubEncoder, WireMapper
from tests.support.native import speedups

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NONCE = "0123456789abcdef"
CALL_NS = 1_764_151_262_345_678_901


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return speedups()


@pytest.fixture
def python_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package as without the extension, for a reference computed beside the C result."""
    monkeypatch.setattr(wire, "native_plain_track_stubs", None)
    monkeypatch.setattr(framing, "native_take_events", None)


def test_the_package_uses_the_extension_where_it_is_built(native: ModuleType) -> None:
    assert framing.native_take_events is native.take_events
    assert wire.native_plain_track_stubs is native.plain_track_stubs


def test_the_c_frame_layout_is_framings(native: ModuleType) -> None:
    assert native.SYNC == framing.SYNC
    assert native.FRAME_HEAD_SIZE == framing.FRAME_HEAD_SIZE
    assert native.FRAME_EVENT == framing.FRAME_EVENT
    assert native.MAX_PAYLOAD == framing.MAX_PAYLOAD


@PROPERTY
@given(st.binary(max_size=3_000), st.integers(0, 7))
def test_the_c_checksum_is_zlibs_crc32(data: bytes, skip: int) -> None:
    module = speedups()
    assert module.crc32(data) == zlib.crc32(data)
    assert module.crc32(memoryview(data)[skip:]) == zlib.crc32(data[skip:])  # any alignment


# -- take_events ---------------------------------------------------------------------------------------

frames = st.builds(
    encode_frame,
    st.sampled_from([FRAME_EVENT, FRAME_EVENT, FRAME_EVENT, FRAME_DROPS, FRAME_SEAL]),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=300),
)


@st.composite
def spool_bytes(draw: st.DrawFn) -> bytes:
    """Frames, some damaged (a flipped byte, a cut, a length beyond the buffer), between stray bytes."""
    pieces = []
    for frame in draw(st.lists(frames, max_size=12)):
        damage = draw(st.sampled_from(["none", "none", "none", "flip", "cut", "garbage", "huge"]))
        if damage == "flip":
            at = draw(st.integers(0, len(frame) - 1))
            frame = frame[:at] + bytes([frame[at] ^ draw(st.integers(1, 255))]) + frame[at + 1 :]
        elif damage == "cut":
            frame = frame[: draw(st.integers(0, len(frame) - 1))]
        elif damage == "garbage":
            frame = draw(st.binary(max_size=40)) + frame
        elif damage == "huge":
            frame = (
                frame[:8]
                + struct.pack("<I", draw(st.integers(framing.MAX_PAYLOAD - 2, 2**32 - 1)))
                + frame[12:]
            )
        pieces.append(frame)
    return b"".join(pieces)


def python_take(buf: bytes, pos: int, limit: int, base: int) -> tuple[list[int], list[bytes], list[int], int]:
    decoder = FrameDecoder(base + pos)
    decoder.feed(buf[pos:])
    run = decoder.take_events_in_python(limit)
    return list(run.seqs), list(run.payloads), list(run.ends), decoder.offset - base


@PROPERTY
@given(spool_bytes(), st.data(), st.integers(0, 20), st.integers(0, 2**40))
def test_c_take_events_takes_what_the_python_loop_takes(
    buf: bytes, data: st.DataObject, limit: int, base: int
) -> None:
    module = speedups()
    pos = data.draw(st.integers(0, len(buf)))
    assert module.take_events(buf, pos, limit, base, framing.crc32) == python_take(buf, pos, limit, base)


@PROPERTY
@given(st.binary(max_size=500), st.integers(0, 5))
def test_c_take_events_on_random_bytes(buf: bytes, limit: int) -> None:
    module = speedups()
    laced = buf.replace(b"\x00", framing.SYNC_BYTES)  # sync words where the zeros were
    for data in (buf, laced):
        assert module.take_events(data, 0, limit, 0, framing.crc32) == python_take(data, 0, limit, 0)


def test_c_take_events_refuses_what_it_cannot_read(native: ModuleType) -> None:
    frame = encode_frame(FRAME_EVENT, 1, b"x")
    crc = framing.crc32
    with pytest.raises(ValueError, match="outside the buffer"):
        native.take_events(frame, len(frame) + 1, 1, 0, crc)
    with pytest.raises(ValueError, match="outside the buffer"):
        native.take_events(frame, -1, 1, 0, crc)
    with pytest.raises(ValueError, match="cannot be negative"):
        native.take_events(frame, 0, 1, -1, crc)
    with pytest.raises(TypeError, match="take_events"):
        native.take_events(bytearray(frame), 0, 1, 0, crc)
    with pytest.raises(TypeError, match="take_events"):
        native.take_events(frame, 0, 1, 0)
    with pytest.raises(TypeError):
        native.take_events(frame, "0", 1, 0, crc)
    assert native.take_events(frame, 0, 0, 0, crc) == ([], [], [], 0)
    assert native.take_events(frame, 0, 5, 100, crc) == ([1], [b"x"], [100 + len(frame)], len(frame))
    assert native.take_events(frame, 0, 2**80, 0, crc)[3] == len(frame)  # any int is a limit
    top = 2**63 - 1  # the largest position: the end is beyond it, and still exact
    assert native.take_events(frame, 0, 1, top, crc)[2] == [top + len(frame)]


@pytest.mark.parametrize("size", [0, 511, 512, 513, 70_000, framing.MAX_PAYLOAD])
def test_c_take_events_checks_payloads_of_any_size(native: ModuleType, size: int) -> None:
    """Below 512 bytes the C code computes the whole CRC; from there on it hands the payload to the
    crc32 it is given (zlib-ng's), continuing from the head's. Either way a damaged byte is refused,
    and a length beyond MAX_PAYLOAD is never trusted."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = encode_frame(FRAME_EVENT, 9, payload)
    assert native.take_events(frame, 0, 1, 0, framing.crc32) == python_take(frame, 0, 1, 0)
    assert native.take_events(frame, 0, 1, 0, framing.crc32)[1] == [payload]
    damaged = frame[:-1] + bytes([frame[-1] ^ 1]) if size else frame[:12] + b"\x02" + frame[13:]
    assert native.take_events(damaged, 0, 1, 0, framing.crc32) == ([], [], [], 0)
    oversized = frame[:8] + struct.pack("<I", framing.MAX_PAYLOAD + 1) + frame[12:]
    assert native.take_events(oversized, 0, 1, 0, framing.crc32) == ([], [], [], 0)


def test_c_take_events_passes_on_what_crc32_raises(native: ModuleType) -> None:
    frame = encode_frame(FRAME_EVENT, 9, bytes(600))

    def failing(data: bytes, value: int = 0) -> int:
        raise OSError("no checksum today")

    with pytest.raises(OSError, match="no checksum today"):
        native.take_events(frame, 0, 1, 0, failing)
    # A checksum function that disagrees: the frame is refused, as a damaged one.
    assert native.take_events(frame, 0, 1, 0, lambda data, value=0: 0) == ([], [], [], 0)
    small = encode_frame(FRAME_EVENT, 9, bytes(10))
    assert native.take_events(small, 0, 1, 0, failing)[0] == [9]  # not called below 512 bytes


@PROPERTY
@given(st.binary(max_size=2_000), st.integers(0, 2**32 - 1))
def test_the_c_checksum_continues_like_zlibs(data: bytes, value: int) -> None:
    assert speedups().crc32(data, value) == zlib.crc32(data, value)


# -- plain_track_stubs ---------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec="ascii", exclude_characters='"\\', min_codepoint=0x20), max_size=20),
    st.sampled_from(["u-1", "Order Completed", "é", "\u2028", "😀", 'q"', "a\\b", "\x1f", "\x7f"]),
)


def plain_track(uid: Any, aid: Any, event: Any, props: Any, call_ns: Any) -> list[Any]:
    return [KIND_TRACK, call_ns, uid, aid, None, None, None, None, event, props]


plain_tracks = st.builds(
    plain_track,
    st.one_of(st.none(), texts),
    st.one_of(st.none(), texts),
    texts,
    st.one_of(
        st.none(),
        st.just(b"{}"),
        st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1)).map(
            lambda d: encode_json_field("properties", d)
        ),
    ),
    st.one_of(st.integers(0, 2**64 - 1), st.integers(CALL_NS, CALL_NS + 5_000_000)),
)
other_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def odd_tracks(draw: st.DrawFn) -> Any:
    """A plain track with one field changed to anything, or cut, or lengthened."""
    record = draw(plain_tracks)
    change = draw(st.sampled_from(["field", "cut", "longer"]))
    if change == "field":
        record[draw(st.integers(0, len(record) - 1))] = draw(other_values)
    elif change == "cut":
        record = record[: draw(st.integers(0, len(record) - 1))]
    else:
        record.append(draw(other_values))
    return record


def int_encodings(value: int) -> list[bytes]:
    """Every msgpack encoding of a non-negative integer that fits: a producer's msgpack picks the
    shortest; another writer may not."""
    out = []
    if value <= 0x7F:
        out.append(bytes([value]))
    for unsigned, signed, size in ((0xCC, 0xD0, 1), (0xCD, 0xD1, 2), (0xCE, 0xD2, 4), (0xCF, 0xD3, 8)):
        if value < 2 ** (8 * size):
            out.append(bytes([unsigned]) + value.to_bytes(size, "big"))
        if value < 2 ** (8 * size - 1):
            out.append(bytes([signed]) + value.to_bytes(size, "big"))
    return out


def raw_encodings(data: bytes, kind: str) -> list[bytes]:
    """Every msgpack encoding of a str ("s") or bin ("b") of ``data`` that fits."""
    n = len(data)
    heads = []
    if kind == "s" and n < 32:
        heads.append(bytes([0xA0 | n]))
    for str_type, bin_type, size in ((0xD9, 0xC4, 1), (0xDA, 0xC5, 2), (0xDB, 0xC6, 4)):
        if n < 2 ** (8 * size):
            heads.append(bytes([str_type if kind == "s" else bin_type]) + n.to_bytes(size, "big"))
    return [head + data for head in heads]


def python_stubs(payloads: list[bytes], seqs: list[int]) -> list[bytes | None]:
    saved = wire.native_plain_track_stubs
    wire.native_plain_track_stubs = None
    try:
        return StubEncoder(WireMapper("9.8.7")).stubs(EventRun(seqs, payloads, [0] * len(seqs)), NONCE)
    finally:
        wire.native_plain_track_stubs = saved


def c_stubs(payloads: list[bytes], seqs: list[int]) -> list[bytes] | None:
    encoder = StubEncoder(WireMapper("9.8.7"))
    return encoder._native_plain_tracks(
        EventRun(seqs, payloads, [0] * len(seqs)), orjson.dumps(NONCE + "-")[:-1]
    )


def needs_no_escape(value: Any) -> bool:
    return not isinstance(value, str) or orjson.dumps(value) == b'"' + value.encode() + b'"'


@PROPERTY
@given(st.lists(plain_tracks, min_size=1, max_size=40), st.integers(0, 2**64 - 50))
def test_c_stubs_of_plain_tracks_are_the_python_ways(records: list[Any], first_seq: int) -> None:
    """The C writer writes a run of plain tracks byte for byte as the Python way does, and refuses a
    run only for a string whose JSON it would have to escape (orjson then writes it)."""
    speedups()
    payloads = [msgpack.packb(r) for r in records]
    seqs = list(range(first_seq, first_seq + len(records)))
    got = c_stubs(payloads, seqs)
    plain_strings = all(needs_no_escape(v) for r in records for v in (r[2], r[3], r[8]))
    if plain_strings:
        assert got is not None
    if got is not None:
        assert got == python_stubs(payloads, seqs)


@PROPERTY
@given(st.lists(st.one_of(plain_tracks, odd_tracks()), min_size=1, max_size=6), st.integers(0, 2**32))
def test_c_stubs_are_the_python_ways_or_none_for_any_record(records: list[Any], first_seq: int) -> None:
    speedups()
    payloads, packed = [], []
    for r in records:
        try:
            payloads.append(msgpack.packb(r))
        except (TypeError, ValueError, OverflowError):
            continue
        packed.append(r)
    seqs = list(range(first_seq, first_seq + len(payloads)))
    got = c_stubs(payloads, seqs)
    if got is not None:
        assert got == python_stubs(payloads, seqs)
    if any(len(r) != 10 or r[0] != KIND_TRACK or r[4:8] != [None] * 4 for r in packed):
        assert got is None


@PROPERTY
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=4))
def test_c_stubs_of_garbage_never_crash(payloads: list[bytes]) -> None:
    speedups()
    prefix = b"\x9a" + bytes([KIND_TRACK])  # a plain track's opening, so that it reads on a while
    for run in (payloads, [prefix + p for p in payloads]):
        seqs = list(range(len(run)))
        got = c_stubs(run, seqs)
        if got is not None:
            assert got == python_stubs(run, seqs)


@pytest.mark.parametrize("seq", [0, 1, 2**63, 2**64 - 1])
def test_c_stubs_read_every_integer_and_string_encoding(native: ModuleType, seq: int) -> None:
    """Each encoding of the call's time, the ids, the event's name and the properties that msgpack
    reads gives the same stub."""
    record = plain_track("user-é", "anon", "Order Completed", b'{"a":1}', CALL_NS)
    want = python_stubs([msgpack.packb(record)], [seq])
    assert want[0] is not None
    for call_ns in int_encodings(CALL_NS):
        for uid in raw_encodings("user-é".encode(), "s"):
            for event in raw_encodings(b"Order Completed", "s"):
                for props in raw_encodings(b'{"a":1}', "b"):
                    payload = (
                        b"\x9a"
                        + bytes([KIND_TRACK])
                        + call_ns
                        + uid
                        + b"\xa4anon"
                        + b"\xc0" * 4
                        + event
                        + props
                    )
                    assert msgpack.unpackb(payload) == record
                    assert c_stubs([payload], [seq]) == want


def test_c_stubs_refuse_what_the_python_way_must_tell_apart(native: ModuleType) -> None:
    good = msgpack.packb(plain_track("u", None, "E", b"{}", CALL_NS))
    assert c_stubs([good], [1]) is not None
    refused = {
        "negative time": msgpack.packb(plain_track("u", None, "E", b"{}", -5)),
        "invalid UTF-8": good.replace(b"\xa1u", b"\xa1\xff"),
        "a surrogate": good.replace(b"\xa1u", b"\xa3\xed\xa0\x80"),
        "an overlong": good.replace(b"\xa1u", b"\xa2\xc0\x80"),
        "beyond U+10FFFF": good.replace(b"\xa1u", b"\xa4\xf4\x90\x80\x80"),
        "a cut sequence": good.replace(b"\xa1u", b"\xa2\xe2\x82"),
        "a user id as bin": good.replace(b"\xa1u", b"\xc4\x01u"),
        "an event name as bin": good.replace(b"\xa1E", b"\xc4\x01E"),
        "a control character": msgpack.packb(plain_track("u\n", None, "E", b"{}", CALL_NS)),
        "a quote": msgpack.packb(plain_track("u", None, 'E"', b"{}", CALL_NS)),
        "a messageId": msgpack.packb([KIND_TRACK, CALL_NS, "u", None, "m-1", None, None, None, "E", b"{}"]),
        "properties as str": msgpack.packb(plain_track("u", None, "E", "{}", CALL_NS)),
        "trailing bytes": good + b"\xc0",
        "cut": good[:-1],
        "another kind": msgpack.packb([KIND_TRACK + 1, *plain_track("u", None, "E", b"{}", CALL_NS)[1:]]),
    }
    for why, payload in refused.items():
        assert payload != good, why
        assert c_stubs([good, payload], [1, 2]) is None, why
        assert python_stubs([good, payload], [1, 2])[0] is not None, why  # the Python way tells them apart


def test_c_stubs_pass_on_what_the_tail_raises(native: ModuleType) -> None:
    good = msgpack.packb(plain_track("u", None, "E", b"{}", CALL_NS))
    head, keys = wire._TRACK_HEAD, wire._MEMBER_KEYS

    def failing(ms: int) -> bytes:
        raise OverflowError(ms)

    with pytest.raises(OverflowError):
        native.plain_track_stubs([good], [1], KIND_TRACK, head, keys, failing)
    with pytest.raises(TypeError, match="bytes"):
        native.plain_track_stubs([good], [1], KIND_TRACK, head, keys, lambda ms: "text")
    with pytest.raises(ValueError, match="differ in length"):
        native.plain_track_stubs([good], [1, 2], KIND_TRACK, head, keys, lambda ms: b"")
    with pytest.raises(TypeError, match="plain_track_stubs"):
        native.plain_track_stubs([good], [1], KIND_TRACK, head, keys[:3], lambda ms: b"")
    # In the encoder, any exception of the C writer sends the run the Python way, which tells it apart.
    encoder = StubEncoder(WireMapper("9.8.7"))
    encoder._tail_of = failing  # type: ignore[method-assign]
    assert encoder._native_plain_tracks(EventRun([1], [good], [0]), b'"x-') is None
    assert encoder.stubs(EventRun([1], [good], [0]), NONCE) == python_stubs([good], [1])


def test_c_stubs_read_a_snapshot_of_the_run(native: ModuleType) -> None:
    """tail_of runs Python code: a tail that empties the caller's lists meanwhile changes nothing of what
    is read (the C writer holds its own tuple of them), and cannot make it read freed memory."""
    payloads = [
        msgpack.packb(plain_track(f"u{i}", None, "E", b"{}", CALL_NS + i * 2_000_000)) for i in range(50)
    ]
    seqs = list(range(50))
    want = python_stubs(list(payloads), list(seqs))
    encoder = StubEncoder(WireMapper("9.8.7"))

    def emptying(ms: int) -> bytes:
        payloads.clear()
        seqs.clear()
        return encoder._tail_of(ms)

    got = native.plain_track_stubs(
        payloads,
        seqs,
        KIND_TRACK,
        wire._TRACK_HEAD + orjson.dumps(NONCE + "-")[:-1],
        wire._MEMBER_KEYS,
        emptying,
    )
    assert got == want


def test_the_built_extension_is_not_older_than_its_source(native: ModuleType) -> None:
    """In a checkout (an editable install), the compiled module sits beside its source: a source changed
    since the build would leave the tests checking the old code. (An installed wheel has no source.)"""
    assert native.__file__ is not None
    built = Path(native.__file__)
    source = built.with_name("_speedups.c")
    if source.exists():
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than _speedups.c: rebuild it (./scripts/bootstrap test, or "
            "pip install -e . again)"
        )
