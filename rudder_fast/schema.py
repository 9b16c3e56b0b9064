"""The six calls, in one table: their fields, the names those take on the wire, and what each requires.

Everything that knows a call's fields reads them here: the validation and the spool record
(:mod:`rudder_fast.events`), the :class:`~rudder_fast.Emitter` methods (their signatures are checked
against this table by a test), the wire mapping (:mod:`rudder_fast.wire`), ``rudder-fast replay``, the
rudder-sdk-python drop-in and the README's field list (also checked by a test). Adding a field means
adding a row here, then a parameter to the method that a test will ask for. Pure.

A record is a msgpack list::

    [kind, call_ns, user_id, anonymous_id, message_id, timestamp, context, integrations, *fields]

the common part at fixed positions (``R_*``), then the call's own fields in the table's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# How a field is checked at the call and carried in the record:
#   id        a non-blank str (an int is turned into its str); both ids may not be blank together
#   required  a non-blank str, required (group_id and previous_id also take an int)
#   text      an optional str
#   json      an optional mapping, normalised and stored as JSON bytes
#   timestamp a datetime or an RFC 3339 string
#   message_id a non-blank str (or a UUID)
Check = Literal["id", "required", "text", "json", "timestamp", "message_id"]


@dataclass(frozen=True)
class Field:
    name: str  # the keyword argument
    wire: str  # the event's key on the wire (and in the docs' camelCase mapping form)
    check: Check


@dataclass(frozen=True)
class Call:
    name: str  # the method: emit.<name>(...)
    kind: int  # the record's first element
    fields: tuple[Field, ...]  # the call's own fields, in record order
    summary: str

    @property
    def keywords(self) -> frozenset[str]:
        return frozenset(f.name for f in COMMON + self.fields)


COMMON: Final = (
    Field("user_id", "userId", "id"),
    Field("anonymous_id", "anonymousId", "id"),
    Field("message_id", "messageId", "message_id"),
    Field("timestamp", "timestamp", "timestamp"),
    Field("context", "context", "json"),
    Field("integrations", "integrations", "json"),
)
# Record positions of the common part.
R_KIND, R_CALL_NS, R_USER_ID, R_ANON_ID, R_MESSAGE_ID, R_TIMESTAMP, R_CONTEXT, R_INTEGRATIONS = range(8)
R_FIELDS: Final = 8

_PAGE_FIELDS: Final = (
    Field("name", "name", "text"),
    Field("category", "category", "text"),
    Field("properties", "properties", "json"),
)

CALLS: Final = {
    call.name: call
    for call in (
        Call(
            "track", 1, (Field("event", "event", "required"), Field("properties", "properties", "json")),
            "Record that a user did something (``event``, with ``properties``).",
        ),
        Call("identify", 2, (Field("traits", "traits", "json"),), "Tie a user to their ``traits``."),
        Call("page", 3, _PAGE_FIELDS, "Record a page view."),
        Call("screen", 4, _PAGE_FIELDS, "Record a screen view (apps)."),
        Call(
            "group", 5, (Field("group_id", "groupId", "required"), Field("traits", "traits", "json")),
            "Associate a user with a group (``group_id``, with the group's ``traits``).",
        ),
        Call(
            "alias", 6, (Field("previous_id", "previousId", "required"),),
            "Merge a previous identity (``previous_id``) into ``user_id``.",
        ),
    )
}  # fmt: skip
BY_KIND: Final = {call.kind: call for call in CALLS.values()}

# identify's traits are also sent as context.traits, as the RudderStack SDKs do.
TRAITS_IN_CONTEXT: Final = frozenset(("identify",))

# The docs' mapping form: camelCase keys (userId, ...) to keyword arguments.
WIRE_TO_KEYWORD: Final = {f.wire: f.name for call in CALLS.values() for f in COMMON + call.fields}


def record_names(kind: int) -> tuple[str, ...]:
    """The argument name at each position of a record of this kind (the common part's first two are
    the call's name and time)."""
    call = BY_KIND.get(kind)
    head = ("type", "timestamp", *(f.name for f in COMMON))
    return head + tuple(f.name for f in call.fields) if call else head
