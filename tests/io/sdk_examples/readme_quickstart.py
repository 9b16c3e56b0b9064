"""rudder-sdk-python 2.1.9's README: "Initializing the RudderStack Client" and "Sending Events".

Changed for rudder_fast: the import line, nothing else. Filled in: the README's placeholders (the write
key and data plane URL from the environment, a failure callback, True/False choices). The README imports
the module as ``analytics`` but then calls ``rudder_analytics.track`` (a NameError as printed); the one
name ``rudder_analytics`` is used throughout, as the RudderStack docs do. ``flush()`` at the end, as the
docs' "Flush events" section asks of a short script.
"""

import os

import rudder_fast.analytics as rudder_analytics


def on_failure(error, items):
    print("upload of", len(items), "events failed:", error)


rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.on_error = on_failure
rudder_analytics.debug = False
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]

rudder_analytics.gzip = False

rudder_analytics.track("developer_user_id", "Simple Track Event", {"key1": "val1"})
rudder_analytics.track(
    "user_id",
    "Simple Track Event",
    anonymous_id="anonymousId",
    properties={"key1": "val1"},
    context={"key1": "val1"},
)

rudder_analytics.flush()
