"""Batch assembly and request bodies. Pure.

An event is encoded once, by orjson, into a *stub*: its JSON object without the closing brace. A
request body is then one ``join`` per attempt, which adds every event's ``sentAt`` (refreshed on each
retry, as the server's clock-skew correction needs) and its closing brace::

    {"batch":[<stub>,"sentAt":"<t>"},<stub>,"sentAt":"<t>"}]}

so a retry never re-encodes an event, and the body's exact size is known before it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# The data plane refuses a decompressed body above this many bytes (WIRE.md: maxReqSizeInKB = 4000).
SERVER_MAX_BODY: Final = 4_096_000

# Default batch bound, in bytes of the body before compression. A quarter of the server's limit: large
# enough that the per-request cost (a round trip, a ledger commit) is spread over thousands of events,
# small enough that K requests in flight hold little memory, a retried batch resends little, and a
# batch never comes near the server's 10 s read deadline on a slow link.
DEFAULT_MAX_BATCH_BYTES: Final = 1_000_000
DEFAULT_MAX_BATCH_EVENTS: Final = 10_000
# How long the first event of a partial batch may wait for company before the batch is sent anyway.
DEFAULT_LINGER_S: Final = 0.2

_OPEN: Final = b'{"batch":['
_SENT_AT_KEY: Final = b',"sentAt":"'
_ISO_LEN: Final = len("2026-11-26T10:01:02.345Z")
# Bytes each event adds to the body beyond its stub: ,"sentAt":"<24>"} plus the comma between events.
PER_EVENT_OVERHEAD: Final = len(_SENT_AT_KEY) + _ISO_LEN + len(b'"}') + 1
BODY_OVERHEAD: Final = len(_OPEN) + len(b"]}") - 1


def body_size(stub_bytes: int, count: int) -> int:
    """Exact size of the body holding ``count`` events whose stubs total ``stub_bytes``."""
    if count == 0:
        return len(_OPEN) + len(b"]}")
    return stub_bytes + count * PER_EVENT_OVERHEAD + BODY_OVERHEAD


def build_body(stubs: Sequence[bytes], sent_at: str) -> bytes:
    """The request body for these events, each stamped with ``sent_at``."""
    if not stubs:
        return _OPEN + b"]}"
    close = _SENT_AT_KEY + sent_at.encode("ascii") + b'"}'
    return _OPEN + (close + b",").join(stubs) + close + b"]}"


def stub_of(event_json: bytes) -> bytes:
    """An encoded event object without its closing brace (orjson output always ends with ``}``)."""
    return event_json[:-1]


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_events: int = DEFAULT_MAX_BATCH_EVENTS
    linger_s: float = DEFAULT_LINGER_S

    def __post_init__(self) -> None:
        if not 1024 <= self.max_bytes <= SERVER_MAX_BODY:
            raise ValueError(f"max batch bytes must be between 1024 and {SERVER_MAX_BODY}")
        if self.max_events < 1:
            raise ValueError("max batch events must be at least 1")
        if self.linger_s < 0:
            raise ValueError("linger must be >= 0")


def fits_alone(stub: bytes, limits: BatchLimits) -> bool:
    """Whether one event can ever be sent under these limits."""
    return body_size(len(stub), 1) <= limits.max_bytes


def halves(count: int) -> tuple[range, range]:
    """The two halves of a batch of ``count`` events (for a 413 split or a 400 bisection)."""
    mid = count // 2
    return range(0, mid), range(mid, count)
