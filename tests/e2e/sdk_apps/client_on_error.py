"""An app that makes its own Client (as rudder-sdk-python's README does for proxies) with an on_error
callback counting failed uploads, checks what each call returns, and flushes and shuts the client down
at exit. It prints the returned flags and fields and the failures, which must be the same with both
libraries (no failure: the data plane accepts everything).

Written for rudder_fast.analytics; the migration test runs it as it is and with rudder-sdk-python's
import line.
"""

import json
import os
from typing import Any

from rudder_fast.analytics import Client

failures: list[tuple[str, int]] = []


def on_error(error: Exception, items: list[Any]) -> None:
    failures.append((repr(error), len(items)))


client = Client(
    os.environ["RUDDER_WRITE_KEY"],
    host=os.environ["RUDDER_DATA_PLANE_URL"],
    on_error=on_error,
    max_retries=3,
    upload_size=10,
    upload_interval=0.2,
)

CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("identify", ("c-1", {"email": "c1@example.com", "seats": 3})),
    ("track", ("c-1", "Report Exported", {"format": "csv", "rows": 1200})),
    ("page", ("c-1", "Reports", "Exports", {"path": "/reports/exports"})),
    ("screen", ("c-1", "Mobile", "Dashboard")),
    ("group", ("c-1", "acme", {"name": "Acme", "tier": 2})),
    ("alias", ("anon-c1", "c-1")),
]

returned = []
for call, args in CALLS:
    ok, message = getattr(client, call)(*args)
    returned.append([call, ok, message["type"], message["userId"], message.get("event")])

client.flush()
client.shutdown()
print(json.dumps({"returned": returned, "failures": failures}))
