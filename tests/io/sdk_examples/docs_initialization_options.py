"""Every option of the docs' "Initialization options" table set, then events, then flush().

Changed for rudder_fast: the import line, nothing else. (Not ``join()`` or ``shutdown()`` here:
with ``sync_mode = True`` rudder-sdk-python 2.1.9 raises TypeError from both, its consumer list being None.)
"""

import os

import rudder_fast.analytics as rudder_analytics


def on_error(error, items):
    print("upload failed:", error)


rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]
rudder_analytics.on_error = on_error
rudder_analytics.debug = False
rudder_analytics.send = True
rudder_analytics.sync_mode = True
rudder_analytics.max_queue_size = 5000
rudder_analytics.gzip = True
rudder_analytics.timeout = 5
rudder_analytics.max_retries = 3
rudder_analytics.upload_interval = 1.0
rudder_analytics.upload_size = 50

rudder_analytics.identify("u-42", {"email": "u42@example.com"})
rudder_analytics.track("u-42", "Settings Saved", {"theme": "dark"})

rudder_analytics.flush()
