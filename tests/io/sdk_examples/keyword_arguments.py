"""The keyword form, as in rudder-sdk-python's repository example: ``host`` set and then overridden by
``dataPlaneUrl``, ``debug`` on, shared ``properties``/``traits``/``context`` dicts, both ids; plus the
optional arguments every call has (``timestamp``, ``integrations``, ``message_id``), then shutdown().

Changed for rudder_fast: the import line, nothing else.
"""

import datetime
import os

import rudder_fast.analytics as rudder_analytics

rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.host = "https://unused.example.com"  # dataPlaneUrl wins
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]
rudder_analytics.debug = True

properties = {"library": {"application": "Rudder Desktop", "version": "1.1.0", "platform": "osx"}}
traits = {"firstname": "First", "lastname": "Last", "Role": "Jedi", "age": 25}
context = {"screen": {"width": 852, "height": 393, "density": 3}, "os": {"name": "macOS", "version": "11"}}
user_id = "123456"
anonymous_id = "uid"

rudder_analytics.track(user_id=user_id, event="Test Track", anonymous_id=anonymous_id, properties=properties)
rudder_analytics.screen(user_id=user_id, name="Test Screen", anonymous_id=anonymous_id, properties=properties)
rudder_analytics.identify(user_id="654321", traits=traits, context=context)
rudder_analytics.group(user_id=user_id, group_id="uid", anonymous_id=anonymous_id, traits=traits)
rudder_analytics.alias(user_id=user_id, previous_id="654321")
rudder_analytics.page(
    user_id=user_id, category="Docs", name="Test Page", anonymous_id=anonymous_id, properties=properties
)
rudder_analytics.track(
    user_id=user_id,
    event="Imported Order",
    properties={"order_id": "T1230"},
    context={"ip": "14.5.67.21"},
    timestamp=datetime.datetime(2024, 5, 17, 9, 30, 15, 250000, tzinfo=datetime.timezone.utc),
    integrations={"All": False, "Amplitude": True},
    message_id="imported-order-T1230",
)

rudder_analytics.shutdown()
