"""The RudderStack docs' Python SDK page: initialization, then identify, track, page, screen, group and
alias in the positional form the docs use, then flush().

Changed for rudder_fast: the import line, nothing else. The write key and data plane URL come from the
environment. Note rudder-sdk-python's positional order: ``page``/``screen`` take ``category`` before
``name``, and ``alias`` takes ``previous_id`` before ``user_id``.
"""

import os

import rudder_fast.analytics as rudder_analytics

rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]

rudder_analytics.identify("1hKOmRA4GRlm", {"email": "alex@example.com", "name": "Alex Keener", "friends": 16})

rudder_analytics.track(
    "1hKOmRA4GRlm",
    "Order Completed",
    {"checkout_id": "C324532", "order_id": "T1230", "revenue": 16.98, "currency": "USD"},
)

rudder_analytics.page(
    "1hKOmRA4GRlm", "Cart", "Cart Viewed", {"path": "/cart", "url": "https://example.com/cart"}
)

rudder_analytics.screen("1hKOmRA4GRlm", "Settings", "Brightness", {"from": "Settings Screen"})

rudder_analytics.group(
    "1hKOmRA4GRlm", "12345", {"name": "MyGroup", "industry": "IT", "employees": 450, "plan": "basic"}
)

rudder_analytics.alias("anon-7f3c", "1hKOmRA4GRlm")

rudder_analytics.flush()
