"""Gzip of request bodies: ISA-L's deflate (the ``isal`` package) when it is installed, else zlib's.
Pure. The devserver reads bodies with the same library (:func:`gunzip`).

Both write one standard gzip member (RFC 1952), which the data plane's ``gzip.Reader`` reads, so the
choice changes speed only. It matters: at level 1, zlib takes about 1 µs per benchmark event (~440
bytes of JSON), as much as everything else the sender does per event, where ISA-L takes about 0.07 µs
and compresses no worse (README: Performance). Where ``isal`` cannot be imported the standard library's
zlib is used, unchanged. Reading, the two differ in one way: ISA-L, like Go's ``gzip.Reader``, ignores
the reserved flag bits of a member's header, which zlib refuses.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from types import ModuleType
from typing import Final, Protocol


def _deflate_module() -> ModuleType:
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - a dependency; zlib where its wheel cannot be installed
        return zlib
    return isal_zlib


_deflate: Final = _deflate_module()  # isal_zlib mirrors zlib's interface
GZIP_WBITS: Final = 31  # a gzip container: header, deflate stream, CRC-32 and size trailer
IMPLEMENTATION: Final = "isal" if _deflate is not zlib else "zlib"
# What a reader from gzip_reader() raises for a stream that is not a valid gzip member: ISA-L has its own.
_READ_ERRORS: Final[tuple[type[Exception], ...]] = (
    (zlib.error, _deflate.error) if _deflate is not zlib else (zlib.error,)
)


def gzip(data: bytes | Iterable[bytes], level: int) -> bytes:
    """``data`` (bytes, or consecutive pieces of them) as one gzip member. ``level`` is zlib's 0-9;
    ISA-L has 0-3, so above 3 it uses 3."""
    if _deflate is not zlib:
        level = min(level, 3)
    comp = _deflate.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    if isinstance(data, bytes):
        packed: bytes = comp.compress(data) + comp.flush()
        return packed
    out = [comp.compress(piece) for piece in data]
    out.append(comp.flush())
    return b"".join(out)


class GzipReader(Protocol):
    """What :func:`gzip_reader` returns: the part of zlib's ``decompressobj`` interface in use."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, /) -> bytes: ...


def gzip_reader() -> GzipReader:
    """A decompressor of one gzip member: ISA-L's inflate is about ten times as fast as zlib's. It
    raises zlib's error, or ISA-L's, for a stream that is not a gzip member."""
    reader: GzipReader = _deflate.decompressobj(GZIP_WBITS)
    return reader


def gunzip(raw: bytes) -> bytes:
    """The body as the gateway's ``middleware/uncompress.go`` reads it: Go's ``gzip.Reader``, which
    reads every concatenated gzip member, takes an empty body for an empty stream (its header read
    returns io.EOF, which ``io.ReadAll`` treats as the end) and refuses anything else that is not a
    gzip member — a zlib stream, trailing bytes — with an error the gateway answers with 500.

    Raises ``zlib.error`` where the gateway answers 500 ``failed to read body from request``. Inflated
    by ISA-L where it is installed (:func:`gzip_reader`): 0.07 µs per benchmark event where zlib's
    took 0.7, on the two cores the devserver shares with the sender in the benchmarks. Like Go's reader
    and unlike zlib, ISA-L ignores the header's reserved flag bits.
    """
    out = []
    rest = raw
    while rest:
        d = gzip_reader()  # a gzip member only
        try:
            out.append(d.decompress(rest))
        except _READ_ERRORS as exc:
            raise zlib.error(str(exc)) from None
        if not d.eof:
            raise zlib.error("truncated gzip member")
        rest = d.unused_data
    return b"".join(out)
