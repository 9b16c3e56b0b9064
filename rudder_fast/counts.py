"""The one vocabulary of drop reasons, the delivery counters, and the one place counts are merged. Pure.

Every drop is counted under one of these reasons, wherever it happens: a producer whose call returned
None writes it to the spool in a drop-marker frame; the sender counts what it deleted or could not
keep; ``status`` and the metrics show all of them by these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

# Counted by producers: the call returned None, the event was never accepted.
DROP_QUOTA: Final = "quota"  # the spool was over its quota
DROP_DISK: Final = "disk_error"  # a write failed: disk full, file-size limit, I/O error
DROP_SPOOL: Final = "spool_unusable"  # the spool directory is missing, refused or unwritable
DROP_REENTRANT: Final = "reentrant"  # a call from a signal or logging handler inside a call
# Counted by the sender, for events producers had accepted.
DROP_OLDEST: Final = "oldest"  # deleted unsent under --on-full drop_oldest
DROP_TOO_LARGE: Final = "too_large"  # over the data plane's size limit, and could not be kept either
DROP_NOT_KEPT: Final = "rejected_not_kept"  # refused by the data plane while rejected/ was full

PRODUCER_DROPS: Final = (DROP_QUOTA, DROP_DISK, DROP_SPOOL, DROP_REENTRANT)
# Drops of events a producer had accepted (its call returned a messageId).
LOST_AFTER_ACCEPTANCE: Final = (DROP_OLDEST, DROP_TOO_LARGE)
DROP_REASONS: Final = (*PRODUCER_DROPS, DROP_OLDEST, DROP_TOO_LARGE, DROP_NOT_KEPT)


def add(into: dict[str, int], counts: Mapping[str, int] | None) -> None:
    """Add ``counts`` (reason -> events) into ``into``: the one way counts are merged."""
    if counts:
        for reason, n in counts.items():
            into[reason] = into.get(reason, 0) + n


@dataclass
class Counters:
    """Delivery counters, persisted with the ledger's offsets (they move together)."""

    sent: int = 0
    retried: int = 0
    rejected: int = 0  # refused by the data plane: kept in rejected/, or counted as rejected_not_kept
    skipped_bytes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def add_drops(self, drops: Mapping[str, int] | None) -> None:
        add(self.dropped, drops)

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "retried": self.retried,
            "rejected": self.rejected,
            "skipped_bytes": self.skipped_bytes,
            "dropped": dict(self.dropped),
        }

    @classmethod
    def from_json(cls, data: Any) -> Counters:
        if not isinstance(data, dict):
            return cls()
        dropped = data.get("dropped")
        return cls(
            sent=int(data.get("sent", 0)),
            retried=int(data.get("retried", 0)),
            rejected=int(data.get("rejected", 0)),
            skipped_bytes=int(data.get("skipped_bytes", 0)),
            dropped={str(k): int(v) for k, v in dropped.items()} if isinstance(dropped, dict) else {},
        )


def accepted(counters: Counters, pending: int) -> int:
    """Events producers accepted: delivered, refused by the data plane (kept in rejected/ or not),
    still pending, or lost after acceptance."""
    lost = sum(counters.dropped.get(reason, 0) for reason in LOST_AFTER_ACCEPTANCE)
    return counters.sent + counters.rejected + pending + lost


def with_total(*parts: Mapping[str, int] | None) -> dict[str, int]:
    """Drop counts as ``status`` shows them: the parts merged, and a ``total``."""
    out: dict[str, int] = {}
    for part in parts:
        add(out, part)
    out["total"] = sum(out.values())
    return out
