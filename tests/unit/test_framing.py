"""Properties of the spool's byte format (``rudder_fast.framing``): pure, no I/O, no clock.

The decoder is driven the way the sender drives it: bytes arrive in arbitrary chunks, ``next()`` is
drained after each one, and ``finish()`` is called once the writer is known to be gone.
"""

from __future__ import annotations

import importlib.util
import itertools
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rudder_fast import framing
from rudder_fast.framing import (
    FRAME_DROPS,
    FRAME_EVENT,
    FRAME_HEAD,
    FRAME_HEAD_SIZE,
    FRAME_META,
    FRAME_PREFIX,
    FRAME_SEAL,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    NEED_DATA,
    NONCE_LEN,
    SYNC,
    SYNC_BYTES,
    VERSION,
    Frame,
    FrameDecoder,
    NeedData,
    SegmentHeader,
    Skip,
    decode_header,
    encode_frame,
    encode_header,
)
from tests.support.native import both_ways

# The tests of take_events (marked `usefixtures("way")`) run twice: with its loop in C, and in Python.
way = both_ways(framing, "native_take_events")

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN_TYPES = (FRAME_EVENT, FRAME_DROPS, FRAME_SEAL)
U64 = 2**64 - 1


# -- helpers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    type: int
    seq: int
    payload: bytes

    def encode(self) -> bytes:
        return encode_frame(self.type, self.seq, self.payload)


def key(item: Frame | Skip) -> tuple[object, ...]:
    """A frame as (type, seq, payload); a skip as itself, which never equals a written frame's key."""
    if isinstance(item, Skip):
        return ("skip", item.offset, item.length, item.reason)
    return (item.type, item.seq, item.payload)


def stream_of(frames: list[Written]) -> tuple[bytes, list[tuple[int, int]]]:
    """The encoded stream and each frame's [start, end) in it."""
    out = bytearray()
    spans = []
    for f in frames:
        start = len(out)
        out += f.encode()
        spans.append((start, len(out)))
    return bytes(out), spans


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in chunks at the given cut points (taken modulo its length, deduplicated)."""
    if not data:
        return []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def drain(decoder: FrameDecoder, into: list[Frame | Skip], limit: int) -> None:
    """Call next() until NEED_DATA; every other item must consume at least one byte."""
    for _ in range(limit + 2):
        before = decoder.offset
        item = decoder.next()
        if item is NEED_DATA:
            return
        assert isinstance(item, (Frame, Skip)), item
        assert decoder.offset > before, f"{item} consumed nothing"
        into.append(item)
    raise AssertionError("the decoder did not reach NEED_DATA: it loops")


def decode(
    data: bytes, chunks: list[bytes] | None = None, *, start: int = 0, finish: bool = True
) -> tuple[list[Frame | Skip], FrameDecoder]:
    decoder = FrameDecoder(start)
    items: list[Frame | Skip] = []
    for chunk in [data] if chunks is None else chunks:
        decoder.feed(chunk)
        drain(decoder, items, len(data))
    if finish:
        decoder.finish()
        drain(decoder, items, len(data))
        assert decoder.next() is NEED_DATA  # and it stays that way
    return items, decoder


def frames_of(items: list[Frame | Skip]) -> list[Frame]:
    return [i for i in items if isinstance(i, Frame)]


def skips_of(items: list[Frame | Skip]) -> list[Skip]:
    return [i for i in items if isinstance(i, Skip)]


def check_accounting(items: list[Frame | Skip], decoder: FrameDecoder, start: int) -> None:
    """Items tile the consumed bytes exactly: contiguous, no gap, no overlap, nothing empty."""
    pos = start
    for item in items:
        assert item.offset == pos, (item, pos)
        if isinstance(item, Frame):
            assert item.end == item.offset + FRAME_HEAD_SIZE + len(item.payload)
            pos = item.end
        else:
            assert item.length > 0, item
            assert item.reason in ("corrupt", "torn"), item
            pos += item.length
    assert decoder.offset == pos
    consumed = sum((i.end - i.offset) if isinstance(i, Frame) else i.length for i in items)
    assert consumed == decoder.offset - start
    assert decoder.skipped_bytes == sum(s.length for s in skips_of(items))


def check_frames_are_real(items: list[Frame | Skip], data: bytes, start: int) -> None:
    """Every returned frame is exactly the bytes found at its position in the decoded stream."""
    for f in frames_of(items):
        assert data[f.offset - start : f.end - start] == encode_frame(f.type, f.seq, f.payload)


def is_subsequence(got: list[tuple[object, ...]], written: list[tuple[object, ...]]) -> bool:
    it = iter(written)
    return all(any(g == w for w in it) for g in got)


def check_waits_only_on_plausible_tail(decoder: FrameDecoder, data: bytes, start: int) -> None:
    """Before finish(), unconsumed bytes are only kept if they can still become a frame."""
    tail = data[decoder.offset - start :]
    assert decoder.buffered == len(tail)
    if not tail:
        return
    if len(tail) < FRAME_HEAD_SIZE:
        assert SYNC_BYTES.startswith(tail[:4]), tail
        return
    sync, _crc, n, frame_type, _seq = FRAME_HEAD.unpack_from(tail)
    assert sync == SYNC
    assert n <= MAX_PAYLOAD, "a length above MAX_PAYLOAD must be skipped, not waited on"
    assert frame_type in KNOWN_TYPES
    assert FRAME_HEAD_SIZE + n > len(tail), "a whole frame in the buffer must be decided, not waited on"


# -- strategies --------------------------------------------------------------------------------------

payloads = st.binary(max_size=64)
written_frames = st.builds(
    Written,
    type=st.sampled_from(KNOWN_TYPES),
    seq=st.integers(0, U64),
    payload=payloads,
)
frame_lists = st.lists(written_frames, max_size=12)
cut_points = st.lists(st.integers(0, 10**6), max_size=20)
starts = st.one_of(st.just(0), st.just(HEADER_SIZE), st.integers(0, 2**48))


@st.composite
def corruptions(draw: st.DrawFn) -> list[tuple[str, int, Any]]:
    """A list of damage operations; positions are taken modulo the current stream length."""
    pos = st.integers(0, 10**6)
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("overwrite"), pos, st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("insert_sync"), pos, st.binary(max_size=30)),
        st.tuples(st.just("zero"), pos, st.integers(1, 200)),
        st.tuples(st.just("delete"), pos, st.integers(1, 60)),
    )
    return draw(st.lists(op, min_size=1, max_size=5))


def apply_corruption(data: bytes, ops: list[tuple[str, int, Any]]) -> tuple[bytes, list[int]]:
    """The damaged stream and, for each byte, its index in ``data`` (or -1 if garbage or altered)."""
    buf = bytearray(data)
    origin = list(range(len(data)))
    for name, p, arg in ops:
        p %= len(buf) + 1
        if name == "flip":
            if p < len(buf):
                buf[p] ^= arg
                origin[p] = -1
        elif name == "overwrite":
            end = min(len(buf), p + len(arg))
            buf[p:end] = arg[: end - p]
            origin[p:end] = [-1] * (end - p)
        elif name in ("insert", "insert_sync"):
            junk = (SYNC_BYTES + arg) if name == "insert_sync" else arg
            buf[p:p] = junk
            origin[p:p] = [-1] * len(junk)
        elif name == "zero":
            end = min(len(buf), p + arg)
            buf[p:end] = bytes(end - p)
            origin[p:end] = [-1] * (end - p)
        elif name == "delete":
            del buf[p : p + arg]
            del origin[p : p + arg]
    return bytes(buf), origin


def intact_positions(origin: list[int], spans: list[tuple[int, int]]) -> dict[int, int]:
    """Frame index -> its new position, for every frame whose bytes survived contiguous and unaltered."""
    where = {o: i for i, o in enumerate(origin) if o >= 0}
    found = {}
    for k, (a, b) in enumerate(spans):
        j = where.get(a)
        if j is not None and origin[j : j + (b - a)] == list(range(a, b)):
            found[k] = j
    return found


# -- segment header ----------------------------------------------------------------------------------

nonces = st.text(alphabet=st.characters(max_codepoint=127), min_size=NONCE_LEN, max_size=NONCE_LEN)
headers = st.builds(
    SegmentHeader,
    pid=st.integers(0, 2**32 - 1),
    index=st.integers(0, 2**32 - 1),
    created_ns=st.integers(0, U64),
    nonce=nonces,
)


@PROPERTY
@given(headers)
def test_header_round_trip(header: SegmentHeader) -> None:
    data = encode_header(header)
    assert len(data) == HEADER_SIZE == 48
    assert data.startswith(MAGIC)
    assert decode_header(data) == header
    assert decode_header(data + b"trailing frames") == header


@PROPERTY
@given(headers, st.data())
def test_header_any_altered_byte_is_refused(header: SegmentHeader, data: st.DataObject) -> None:
    raw = bytearray(encode_header(header))
    i = data.draw(st.integers(0, HEADER_SIZE - 1), label="index")
    raw[i] ^= data.draw(st.integers(1, 255), label="mask")
    assert decode_header(bytes(raw)) is None


@PROPERTY
@given(headers, st.integers(0, HEADER_SIZE - 1))
def test_header_short_is_none(header: SegmentHeader, n: int) -> None:
    assert decode_header(encode_header(header)[:n]) is None


@PROPERTY
@given(st.binary(max_size=100))
def test_header_random_bytes_never_raise(data: bytes) -> None:
    assume(not data.startswith(MAGIC))
    assert decode_header(data) is None


def _header_with_valid_crc(magic: bytes, version: int, nonce: bytes) -> bytes:
    body = HEADER.pack(magic, version, 0, 1, 2, 3, nonce, 0)[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_header_foreign_magic_version_or_nonce_is_none_even_with_a_valid_crc() -> None:
    nonce = b"0123456789abcdef"
    assert decode_header(_header_with_valid_crc(MAGIC, VERSION, nonce)) == SegmentHeader(
        1, 2, 3, nonce.decode()
    )
    assert decode_header(_header_with_valid_crc(b"NOTSPOOL", VERSION, nonce)) is None
    assert decode_header(_header_with_valid_crc(MAGIC, VERSION + 1, nonce)) is None
    assert decode_header(_header_with_valid_crc(MAGIC, VERSION, b"\xff" * NONCE_LEN)) is None


@pytest.mark.parametrize("nonce", ["short", "0123456789abcdef0", "0123456789abcde\u00e9"])
def test_encode_header_refuses_a_bad_nonce(nonce: str) -> None:
    # A non-ASCII one raises UnicodeEncodeError (a ValueError) from the encoder itself.
    with pytest.raises(ValueError, match=r"nonce must be 16 ASCII characters|'ascii' codec"):
        encode_header(SegmentHeader(pid=1, index=0, created_ns=0, nonce=nonce))


# -- frames: examples --------------------------------------------------------------------------------


def test_frame_layout() -> None:
    frame = encode_frame(FRAME_EVENT, 7, b"abc")
    assert len(frame) == FRAME_HEAD_SIZE + 3 == 27
    sync, crc, n, frame_type, seq = FRAME_HEAD.unpack_from(frame)
    assert (sync, n, frame_type, seq) == (SYNC, 3, FRAME_EVENT, 7)
    assert frame[:4] == SYNC_BYTES
    assert crc == zlib.crc32(frame[8:])  # covers len, type, reserved, seq and payload
    assert frame[FRAME_HEAD_SIZE:] == b"abc"


def test_zlib_ng_computes_the_checksums_where_it_is_installed() -> None:
    """The dependency is declared: the fast CRC-32 must be the one in use, not the fallback."""
    expected = "zlib-ng" if importlib.util.find_spec("zlib_ng") else "zlib"
    assert expected == framing.CRC32_IMPLEMENTATION
    assert (framing.crc32 is zlib.crc32) == (expected == "zlib")


@PROPERTY
@given(st.binary(max_size=5_000))
def test_the_checksum_is_zlibs_crc32(data: bytes) -> None:
    """Whichever library computes it, the checksum is the one zlib gives: a spool written with either
    reads with the other."""
    assert framing.crc32(data) == zlib.crc32(data)


@pytest.mark.usefixtures("way")
def test_frames_and_header_checked_by_zlib_decode() -> None:
    """A segment whose checksums zlib computed (as every version before zlib-ng did) still reads."""
    body = FRAME_META.pack(5, FRAME_EVENT, 9) + b"hello"
    frame = FRAME_PREFIX.pack(SYNC, zlib.crc32(body)) + body
    header = HEADER.pack(MAGIC, VERSION, 0, 42, 3, 7, b"n" * NONCE_LEN, 0)[:-4]
    header += struct.pack("<I", zlib.crc32(header))
    assert decode_header(header) == SegmentHeader(pid=42, index=3, created_ns=7, nonce="n" * NONCE_LEN)
    decoder = FrameDecoder(HEADER_SIZE)
    decoder.feed(frame * 2)
    assert list(decoder.take_events(1)) == [(9, b"hello", HEADER_SIZE + len(frame))]
    assert decoder.next() == Frame(
        FRAME_EVENT, 9, b"hello", HEADER_SIZE + len(frame), HEADER_SIZE + 2 * len(frame)
    )


def test_decode_single_frame_with_file_offsets() -> None:
    items, decoder = decode(encode_frame(FRAME_EVENT, 3, b"hello"), start=HEADER_SIZE, finish=False)
    assert items == [Frame(type=FRAME_EVENT, seq=3, payload=b"hello", offset=48, end=48 + 24 + 5)]
    assert decoder.offset == 48 + 29
    assert decoder.buffered == 0
    assert repr(NEED_DATA) == "NEED_DATA"
    assert isinstance(NEED_DATA, NeedData)


def test_empty_decoder_needs_data() -> None:
    decoder = FrameDecoder(10)
    assert decoder.next() is NEED_DATA
    decoder.finish()
    assert decoder.next() is NEED_DATA
    assert decoder.offset == 10


def test_byte_at_a_time() -> None:
    frames = [Written(FRAME_EVENT, i, bytes([i]) * i) for i in range(5)] + [Written(FRAME_SEAL, 5, b"")]
    data, _ = stream_of(frames)
    items, _ = decode(data, [data[i : i + 1] for i in range(len(data))])
    assert [key(f) for f in items] == [(f.type, f.seq, f.payload) for f in frames]


def test_payload_containing_the_sync_word_is_not_split() -> None:
    payload = SYNC_BYTES * 10 + encode_frame(FRAME_EVENT, 1, b"inner")[:20]
    data = encode_frame(FRAME_EVENT, 0, payload) + encode_frame(FRAME_EVENT, 1, b"x")
    items, _ = decode(data, split(data, list(range(0, len(data), 3))))
    assert [key(f) for f in items] == [(FRAME_EVENT, 0, payload), (FRAME_EVENT, 1, b"x")]


def test_oversized_length_is_skipped_not_waited_on() -> None:
    """(f) A length above MAX_PAYLOAD is corruption at once: the frames after it still come, no finish()."""
    bad = bytearray(encode_frame(FRAME_EVENT, 0, b"payload"))
    struct.pack_into("<I", bad, 8, MAX_PAYLOAD + 1)
    good = encode_frame(FRAME_EVENT, 1, b"next")
    items, decoder = decode(bytes(bad) + good, start=100, finish=False)
    assert items == [
        Skip(offset=100, length=len(bad), reason="corrupt"),
        Frame(
            type=FRAME_EVENT, seq=1, payload=b"next", offset=100 + len(bad), end=100 + len(bad) + len(good)
        ),
    ]
    assert decoder.buffered == 0
    assert decoder.skipped_bytes == len(bad)


def test_oversized_length_alone_is_skipped_without_finish() -> None:
    head = FRAME_HEAD.pack(SYNC, 0, 2**32 - 1, FRAME_EVENT, 0)
    items, decoder = decode(head, finish=False)
    assert items == [Skip(offset=0, length=len(head), reason="corrupt")]
    assert decoder.buffered == 0


def test_unknown_type_is_skipped_not_waited_on() -> None:
    head = FRAME_HEAD.pack(SYNC, 0, 1000, 9, 0)
    good = encode_frame(FRAME_DROPS, 2, b"\x80")
    items, _ = decode(head + good, finish=False)
    assert items == [
        Skip(offset=0, length=len(head), reason="corrupt"),
        Frame(type=FRAME_DROPS, seq=2, payload=b"\x80", offset=len(head), end=len(head) + len(good)),
    ]


def test_bad_crc_is_corrupt_and_the_next_frame_is_recovered() -> None:
    """(g) frames after a corrupt region are still recovered."""
    first = bytearray(encode_frame(FRAME_EVENT, 0, b"abcdef"))
    first[-1] ^= 0xFF
    second = encode_frame(FRAME_EVENT, 1, b"ok")
    garbage = b"\x00" * 37 + b"\xf5\x2e" + b"garbage"
    data = garbage + bytes(first) + second
    items, _ = decode(data, finish=False)
    assert [key(f) for f in frames_of(items)] == [(FRAME_EVENT, 1, b"ok")]
    assert {s.reason for s in skips_of(items)} == {"corrupt"}
    assert sum(s.length for s in skips_of(items)) == len(garbage) + len(first)


def test_torn_tail_is_waited_on_then_skipped_after_finish() -> None:
    whole = encode_frame(FRAME_EVENT, 0, b"first")
    torn = encode_frame(FRAME_EVENT, 1, b"second frame")[:-3]
    items, decoder = decode(whole + torn, start=48, finish=False)
    assert [key(f) for f in items] == [(FRAME_EVENT, 0, b"first")]
    assert decoder.buffered == len(torn)
    decoder.finish()
    assert decoder.next() == Skip(offset=48 + len(whole), length=len(torn), reason="torn")
    assert decoder.next() is NEED_DATA
    assert decoder.buffered == 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_partial_sync_word_is_kept_until_more_bytes_come(n: int) -> None:
    decoder = FrameDecoder(0)
    frame = encode_frame(FRAME_EVENT, 4, b"z")
    decoder.feed(b"junk junk" + frame[:n])
    first = decoder.next()
    assert first == Skip(offset=0, length=9, reason="corrupt")
    assert decoder.next() is NEED_DATA
    decoder.feed(frame[n:])
    assert decoder.next() == Frame(type=FRAME_EVENT, seq=4, payload=b"z", offset=9, end=9 + len(frame))


def test_skip_rest() -> None:
    decoder = FrameDecoder(5)
    assert decoder.skip_rest("corrupt") is None
    decoder.feed(b"not a segment at all")
    assert decoder.skip_rest("corrupt") == Skip(offset=5, length=20, reason="corrupt")
    assert decoder.buffered == 0
    assert decoder.offset == 25
    assert decoder.skipped_bytes == 20
    assert decoder.next() is NEED_DATA


def test_max_payload_frame_is_accepted() -> None:
    payload = b"\x01" * MAX_PAYLOAD
    data = encode_frame(FRAME_EVENT, 0, payload)
    items, _ = decode(data, split(data, [1, 30, 70_000, 1_000_000]), finish=False)
    assert len(items) == 1
    assert isinstance(items[0], Frame)
    assert items[0].payload == payload


# -- frames: properties ------------------------------------------------------------------------------


@PROPERTY
@given(frame_lists, cut_points, starts)
def test_round_trip_in_any_chunking(frames: list[Written], cuts: list[int], start: int) -> None:
    """(a) encode then decode, fed in any chunks, gives exactly the written frames."""
    data, spans = stream_of(frames)
    items, decoder = decode(data, split(data, cuts), start=start, finish=False)
    assert [key(i) for i in items] == [(f.type, f.seq, f.payload) for f in frames]
    assert [(i.offset, i.end) for i in frames_of(items)] == [(start + a, start + b) for a, b in spans]
    assert decoder.buffered == 0
    check_accounting(items, decoder, start)
    decoder.finish()
    assert decoder.next() is NEED_DATA


@PROPERTY
@given(frame_lists.filter(bool), cut_points, starts, st.data())
def test_truncation_gives_a_prefix_then_a_torn_skip(
    frames: list[Written], cuts: list[int], start: int, data: st.DataObject
) -> None:
    """(b) any truncation: the whole frames before the cut, NEED_DATA; after finish() a torn tail."""
    stream, spans = stream_of(frames)
    cut = data.draw(st.integers(0, len(stream)), label="cut")
    truncated = stream[:cut]
    items, decoder = decode(truncated, split(truncated, cuts), start=start, finish=False)
    whole = [f for f, (_, b) in zip(frames, spans, strict=True) if b <= cut]
    assert [key(i) for i in items] == [(f.type, f.seq, f.payload) for f in whole]
    assert all(isinstance(i, Frame) for i in items)
    done = spans[len(whole) - 1][1] if whole else 0
    assert decoder.buffered == cut - done
    check_accounting(items, decoder, start)
    check_waits_only_on_plausible_tail(decoder, truncated, start)

    decoder.finish()
    rest: list[Frame | Skip] = []
    drain(decoder, rest, len(stream))
    assert not frames_of(rest)
    assert sum(s.length for s in skips_of(rest)) == cut - done
    if rest:
        assert skips_of(rest)[0].reason == "torn"
        if SYNC_BYTES not in truncated[done + 1 :]:
            assert rest == [Skip(offset=start + done, length=cut - done, reason="torn")]
    check_accounting(items + rest, decoder, start)
    assert decoder.offset == start + cut


@PROPERTY
@given(frame_lists, corruptions(), cut_points, starts)
def test_corruption_yields_only_written_frames_and_recovers_intact_ones(
    frames: list[Written], ops: list[tuple[str, int, Any]], cuts: list[int], start: int
) -> None:
    """(c)(d)(g) any damage: an in-order subsequence of the written frames plus counted skips, every
    undamaged frame recovered, every byte accounted for, never an exception."""
    clean, spans = stream_of(frames)
    data, origin = apply_corruption(clean, ops)
    items, decoder = decode(data, split(data, cuts), start=start, finish=False)
    check_accounting(items, decoder, start)
    check_waits_only_on_plausible_tail(decoder, data, start)

    decoder.finish()
    drain(decoder, items, len(data))
    check_accounting(items, decoder, start)
    assert decoder.offset == start + len(data)
    assert decoder.buffered == 0
    check_frames_are_real(items, data, start)

    got = [key(f) for f in frames_of(items)]
    assert is_subsequence(got, [(f.type, f.seq, f.payload) for f in frames])
    decoded_at = {f.offset - start: key(f) for f in frames_of(items)}
    for k, pos in intact_positions(origin, spans).items():
        f = frames[k]
        assert decoded_at.get(pos) == (f.type, f.seq, f.payload), f"undamaged frame {k} at {pos} lost"

    # The same damaged bytes fed in one piece give the same frames: chunking changes nothing.
    whole_items, _ = decode(data, start=start)
    assert [(f.offset, key(f)) for f in frames_of(whole_items)] == [
        (f.offset, key(f)) for f in frames_of(items)
    ]


@PROPERTY
@given(st.binary(max_size=600), cut_points, starts)
def test_random_bytes_never_raise_and_are_all_accounted(data: bytes, cuts: list[int], start: int) -> None:
    """(e) arbitrary bytes: no exception, no frame, every byte skipped and counted."""
    items, decoder = decode(data, split(data, cuts), start=start)
    check_accounting(items, decoder, start)
    assert not frames_of(items)
    assert decoder.skipped_bytes == len(data)
    assert decoder.offset == start + len(data)


@st.composite
def sync_laced_garbage(draw: st.DrawFn) -> bytes:
    """Random bytes with sync words and plausible-looking heads, to reach the header checks."""
    parts = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.just(SYNC_BYTES),
                st.builds(
                    lambda crc, n, t, seq: FRAME_HEAD.pack(SYNC, crc, n, t, seq),
                    st.integers(0, 2**32 - 1),
                    st.one_of(st.integers(0, 64), st.integers(MAX_PAYLOAD - 1, 2**32 - 1)),
                    st.one_of(st.sampled_from(KNOWN_TYPES), st.integers(0, 255)),
                    st.integers(0, U64),
                ),
            ),
            max_size=20,
        )
    )
    return b"".join(parts)


@PROPERTY
@given(sync_laced_garbage(), cut_points, starts)
def test_garbage_with_sync_words_never_raises(data: bytes, cuts: list[int], start: int) -> None:
    items, decoder = decode(data, split(data, cuts), start=start, finish=False)
    check_accounting(items, decoder, start)
    check_waits_only_on_plausible_tail(decoder, data, start)
    decoder.finish()
    drain(decoder, items, len(data))
    check_accounting(items, decoder, start)
    assert decoder.offset == start + len(data)
    check_frames_are_real(items, data, start)
    assert not frames_of(items)  # a forged CRC has probability 2**-32 per head


@PROPERTY
@given(
    frame_lists,
    st.integers(0, 11),
    # The length field must not itself read as a sync word: a sync word followed by fewer bytes than a
    # frame head is, rightly, waited on (it may be the start of a frame still being written).
    st.integers(MAX_PAYLOAD + 1, 2**32 - 1).filter(lambda n: n != SYNC),
    cut_points,
)
def test_oversized_length_anywhere_is_skipped_and_the_rest_recovered(
    frames: list[Written], which: int, bad_len: int, cuts: list[int]
) -> None:
    """(f)(g) a length field above MAX_PAYLOAD never makes the decoder wait: without finish(), every
    other frame is returned."""
    assume(frames)
    which %= len(frames)
    data, spans = stream_of(frames)
    buf = bytearray(data)
    struct.pack_into("<I", buf, spans[which][0] + 8, bad_len)
    items, decoder = decode(bytes(buf), split(bytes(buf), cuts), finish=False)
    assert [key(f) for f in frames_of(items)] == [
        (f.type, f.seq, f.payload) for k, f in enumerate(frames) if k != which
    ]
    # What is held back is only a plausible frame start inside the bad frame (a sync word in its seq or
    # payload with too few bytes after it to decide), never anything beyond the bad frame.
    check_waits_only_on_plausible_tail(decoder, bytes(buf), 0)
    a, b = spans[which]
    assert sum(s.length for s in skips_of(items)) + decoder.buffered == b - a
    assert all(s.reason == "corrupt" for s in skips_of(items))
    check_accounting(items, decoder, 0)


def test_a_sync_word_in_the_seq_of_an_oversized_frame_is_waited_on_not_lost() -> None:
    """The case hypothesis found: the bad frame is the last one and its ``seq`` reads as a sync word. The
    decoder resynchronises inside the seq field and, rightly, waits on the 8 bytes from there (they could
    be the start of a frame still being written); finish() then skips them as torn."""
    frames = [Written(FRAME_EVENT, 1, b"first"), Written(FRAME_EVENT, SYNC, b"")]
    data, spans = stream_of(frames)
    buf = bytearray(data)
    struct.pack_into("<I", buf, spans[1][0] + 8, MAX_PAYLOAD + 1)
    items, decoder = decode(bytes(buf), finish=False)
    assert [key(f) for f in frames_of(items)] == [(FRAME_EVENT, 1, b"first")]
    assert decoder.buffered == 8
    check_waits_only_on_plausible_tail(decoder, bytes(buf), 0)
    decoder.finish()
    drain(decoder, items, len(buf))
    assert decoder.buffered == 0
    assert sum(s.length for s in skips_of(items)) == spans[1][1] - spans[1][0]


@PROPERTY
@given(frame_lists, cut_points)
def test_feeding_after_partial_draining_matches_whole(frames: list[Written], cuts: list[int]) -> None:
    """Feeding several chunks before draining once gives the same items as draining after each one."""
    data, _ = stream_of(frames)
    decoder = FrameDecoder(0)
    for chunk in split(data, cuts):
        decoder.feed(chunk)
    items: list[Frame | Skip] = []
    drain(decoder, items, len(data))
    assert [key(f) for f in items] == [(f.type, f.seq, f.payload) for f in frames]


# -- the event-run fast path: take_events agrees with next() -----------------------------------------


def decode_with_runs(
    data: bytes, chunks: list[bytes], limits: list[int], *, start: int, finish: bool
) -> tuple[list[tuple[object, ...]], FrameDecoder]:
    """Decode as the sender does: ``take_events`` first, ``next()`` for whatever it stops before; each
    item as (offset, end, key)."""
    decoder = FrameDecoder(start)
    out: list[tuple[object, ...]] = []
    turns = itertools.cycle(limits or [1])

    def drain_runs() -> None:
        for _ in range(2 * len(data) + 4):
            before = decoder.offset
            for seq, payload, end in decoder.take_events(next(turns)):
                out.append((before, end, (FRAME_EVENT, seq, payload)))
                before = end
            assert decoder.offset == before
            item = decoder.next()
            if item is NEED_DATA:
                return
            assert isinstance(item, (Frame, Skip))
            out.append(
                (item.offset, item.end if isinstance(item, Frame) else item.offset + item.length, key(item))
            )
        raise AssertionError("the decoder did not reach NEED_DATA: it loops")

    for chunk in chunks:
        decoder.feed(chunk)
        drain_runs()
    if finish:
        decoder.finish()
        drain_runs()
    return out, decoder


def reference(
    data: bytes, chunks: list[bytes], *, start: int, finish: bool
) -> tuple[list[tuple[object, ...]], FrameDecoder]:
    """``next()`` alone, fed the same chunks."""
    items, decoder = decode(data, chunks, start=start, finish=finish)
    return [
        (i.offset, i.end if isinstance(i, Frame) else i.offset + i.length, key(i)) for i in items
    ], decoder


# Payloads and seqs that hold sync words: no boundary may be found inside a frame.
laced_payloads = st.lists(st.one_of(st.binary(max_size=24), st.just(SYNC_BYTES)), max_size=4).map(b"".join)
laced_seqs = st.one_of(st.integers(0, U64), st.just(SYNC), st.just(SYNC << 32), st.just(SYNC << 16))
event_heavy_frames = st.lists(
    st.one_of(
        st.builds(
            Written,
            type=st.sampled_from((FRAME_EVENT, FRAME_EVENT, FRAME_EVENT, FRAME_DROPS, FRAME_SEAL)),
            seq=st.integers(0, U64),
            payload=payloads,
        ),
        st.builds(Written, type=st.just(FRAME_EVENT), seq=laced_seqs, payload=laced_payloads | payloads),
    ),
    max_size=16,
)
run_limits = st.lists(st.integers(0, 20), max_size=6)


@pytest.mark.usefixtures("way")
@PROPERTY
@given(event_heavy_frames, corruptions() | st.just([]), cut_points, starts, run_limits, st.data())
def test_take_events_then_next_gives_exactly_what_next_alone_gives(
    frames: list[Written],
    ops: list[tuple[str, int, Any]],
    cuts: list[int],
    start: int,
    limits: list[int],
    data: st.DataObject,
) -> None:
    """The fast path returns the same frames at the same offsets, and the same skips, whatever the
    damage, the truncation, the chunking and the run lengths asked for."""
    clean, _ = stream_of(frames)
    damaged, _ = apply_corruption(clean, ops) if ops and clean else (clean, [])
    cut = data.draw(st.integers(0, len(damaged)), label="cut")
    stream = damaged[:cut]
    for finish in (False, True):
        chunks = split(stream, cuts)
        got, decoder = decode_with_runs(stream, chunks, limits, start=start, finish=finish)
        want, ref = reference(stream, chunks, start=start, finish=finish)
        assert got == want
        assert (decoder.offset, decoder.buffered, decoder.skipped_bytes) == (
            ref.offset,
            ref.buffered,
            ref.skipped_bytes,
        )


@pytest.mark.usefixtures("way")
def test_take_events_stops_before_other_frames_and_respects_its_limit() -> None:
    data = b"".join(
        encode_frame(t, s, p)
        for t, s, p in [
            (FRAME_EVENT, 1, b"a"),
            (FRAME_EVENT, 2, b"b"),
            (FRAME_DROPS, 3, b""),
            (FRAME_EVENT, 4, b"c"),
        ]
    )
    decoder = FrameDecoder(100)
    decoder.feed(data)
    first = decoder.take_events(1)
    assert [(s, p) for s, p, _ in first] == [(1, b"a")]
    assert first.ends[0] == decoder.offset == 100 + FRAME_HEAD_SIZE + 1
    assert [(s, p) for s, p, _ in decoder.take_events(10)] == [(2, b"b")]
    assert len(decoder.take_events(10)) == 0
    item = decoder.next()
    assert isinstance(item, Frame)
    assert item.type == FRAME_DROPS
    assert [(s, p) for s, p, _ in decoder.take_events(10)] == [(4, b"c")]
    assert decoder.next() is NEED_DATA


@pytest.mark.usefixtures("way")
def test_a_sync_word_inside_a_frame_is_found_and_the_frame_still_taken() -> None:
    inner = SYNC_BYTES + b"x" * 30
    data = b"".join(
        encode_frame(FRAME_EVENT, seq, payload)
        for seq, payload in [(1, b"a"), (SYNC, inner), (3, inner + SYNC_BYTES), (4, b"b")]
    )
    decoder = FrameDecoder(0)
    decoder.feed(data)
    got = []
    while run := decoder.take_events(256):
        got += list(run)
    assert [(s, p) for s, p, _ in got] == [(1, b"a"), (SYNC, inner), (3, inner + SYNC_BYTES), (4, b"b")]
    assert decoder.offset == len(data)


@pytest.mark.usefixtures("way")
def test_unread_returns_the_frames_again_and_refuses_what_is_no_longer_buffered() -> None:
    data = b"".join(encode_frame(FRAME_EVENT, s, bytes([s]) * s) for s in range(1, 6))
    decoder = FrameDecoder(10)
    decoder.feed(data)
    run = decoder.take_events(5)
    third_start = run.ends[1]
    decoder.unread(third_start)
    assert decoder.offset == third_start
    assert [s for s, _, _ in decoder.take_events(5)] == [3, 4, 5]
    with pytest.raises(ValueError, match="cannot step back"):
        decoder.unread(9)
    decoder.feed(encode_frame(FRAME_EVENT, 6, b"x"))
    with pytest.raises(ValueError, match="cannot step back"):
        decoder.unread(third_start)  # the bytes before the feed are gone
