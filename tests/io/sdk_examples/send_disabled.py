"""The docs' ``send`` option: "The SDK does not send the data to the RudderStack backend if set to
False." The calls are still made (and validated); nothing leaves the process.

Changed for rudder_fast: the import line, nothing else.
"""

import os

import rudder_fast.analytics as rudder_analytics

rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]
rudder_analytics.send = False

rudder_analytics.identify("u-7", {"email": "u7@example.com"})
rudder_analytics.track("u-7", "Opted Out", {"reason": "privacy"})

rudder_analytics.flush()
