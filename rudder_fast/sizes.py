"""One event's size, as stored and as the data plane will read it: an event that could never be sent is
refused at the call, naming its largest field. Pure.

The spool's frame limit is ``MAX_PAYLOAD`` (4,000,000 bytes of msgpack record); the data plane's is on
the request body, as JSON (4,096,000 bytes). A record well under the first can still exceed the second:
JSON escapes a control character in a raw string field as six bytes (``\\u0002``), and identify's traits
are sent twice (also in ``context.traits``). So a record above ``JSON_CHECK_ABOVE`` bytes has its JSON
measured too; below it, the JSON cannot be too large (8 x 490,000 + 1,000 bytes of fixed fields stays
under the limit), and no call pays for the measurement.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
import orjson

from . import __version__
from .errors import InvalidEventError
from .framing import MAX_PAYLOAD
from .schema import R_KIND, record_names
from .wire import WireMapper

JSON_CHECK_ABOVE: Final = 490_000
_FRAMING: Final = 64  # sentAt, a comma and the batch's brackets, beyond the event's own JSON


def check_record(record: list[Any]) -> None:
    """Raise InvalidEventError if a record cannot be packed or is too large to send (for calls that will
    not be written, so that bad input raises whatever the spool's state)."""
    try:
        payload = msgpack.packb(record)
    except (UnicodeEncodeError, TypeError, ValueError, OverflowError):
        raise refusal(record) from None
    if len(payload) > JSON_CHECK_ABOVE:
        check_size(record, len(payload))


def check_size(record: list[Any], packed: int) -> None:
    """A large record: refuse it if it, or the JSON the sender will make of it, is too large to send."""
    if packed > MAX_PAYLOAD:
        raise InvalidEventError(
            largest_field(record), f"the event is {packed:,} bytes encoded; the limit is {MAX_PAYLOAD:,}"
        )
    size = len(orjson.dumps(WireMapper(__version__).event(record, "0" * 16, 0))) + _FRAMING
    if size > MAX_PAYLOAD:
        raise InvalidEventError(
            largest_field(record),
            f"the event is {size:,} bytes as JSON (escaped characters grow); the limit is {MAX_PAYLOAD:,}",
        )


def refusal(record: list[Any]) -> InvalidEventError:
    """The error for a record msgpack could not pack: a str argument that is not valid UTF-8."""
    for name, value in zip(record_names(record[R_KIND]), record, strict=False):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return InvalidEventError(name, "string is not valid UTF-8 (lone surrogate)")
    return InvalidEventError("event", "cannot be encoded")


def largest_field(record: list[Any]) -> str:
    """The name of the biggest argument of an oversized record, for the error message."""
    names = record_names(record[R_KIND])
    sizes = [
        (len(v) if isinstance(v, (bytes, str)) else 0, names[i])
        for i, v in enumerate(record)
        if i < len(names)
    ]
    return max(sizes)[1]
