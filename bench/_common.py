"""What the benchmarks share: the event they all send and the names of the two libraries compared."""

from __future__ import annotations

from typing import Any, Final

# A realistic track event: six properties, a nested dict, a list.
EVENT: Final = "Order Completed"
PROPERTIES: Final[dict[str, Any]] = {
    "revenue": 19.95,
    "shippingMethod": "Premium",
    "sku": "ABC-123",
    "quantity": 3,
    "coupon": None,
    "cart": {"id": "c-9", "items": 2},
    "tags": ["a", "b", "c"],
}
WRITE_KEY: Final = "bench-write-key"

FAST: Final = "rudder_fast"
SDK: Final = "rudder-sdk-python"
