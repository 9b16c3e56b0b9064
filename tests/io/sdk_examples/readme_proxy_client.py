"""rudder-sdk-python 2.1.9's README, "Proxy configuration": a ``Client`` created with ``proxies``.

Changed for rudder_fast: the import line, nothing else (rudder-sdk-python's is
``from rudderstack.analytics.client import Client``). Filled in: the README's placeholders (the write
key, the data plane URL and the proxy's address from the environment), then one track call and
``flush()``, without which the README's client sends nothing.
"""

import os

from rudder_fast.analytics import Client

client = Client(
    os.environ["RUDDER_WRITE_KEY"],
    host=os.environ["RUDDER_DATA_PLANE_URL"],
    proxies={
        "http": os.environ["EXAMPLE_PROXY_URL"],
        "https": os.environ["EXAMPLE_PROXY_URL"],
    },
)

client.track("proxied-user", "Checkout Started", {"cart_id": "c-77", "items": 3})
client.flush()
