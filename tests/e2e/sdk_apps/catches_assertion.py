"""Code written against rudder-sdk-python that relies on its AssertionError for bad input: a helper
that tracks events from untrusted rows and skips, and reports, those the SDK refuses. It prints which
rows were sent, which must be the same with both libraries.

Written for rudder_fast.analytics; the migration test runs it as it is and with rudder-sdk-python's
import line.
"""

import datetime as dt
import json
import os
from typing import Any

import rudder_fast.analytics as rudder_analytics

rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]


def safe_track(user_id: Any, event: Any, properties: Any = None) -> bool:
    try:
        rudder_analytics.track(user_id, event, properties)
    except AssertionError:
        return False
    return True


ROWS = [
    ("u-1", "Signup", {"plan": "pro", "row": 1}),
    (None, "Signup", {"plan": "pro", "row": 2}),  # no user: refused by both
    ("u-3", None, {"row": 3}),  # no event
    ("u-4", "Signup", ["plan", "pro"]),  # properties that are not a dict
    ("u-5", 42, {"row": 5}),  # an event name that is not a str
    ("u-6", "Signup", {"trial": dt.timedelta(days=14), "row": 6}),  # a value both delete: sent without it
    (1007, "Signup", {"plan": "team", "row": 7}),  # a numeric user id: sent as "1007"
    ("u-8", "Signup", {"nested": {"at": dt.time(9, 30), "ok": 1}, "row": 8}),  # deleted inside
]

print(json.dumps([safe_track(*row) for row in ROWS]))
rudder_analytics.flush()
