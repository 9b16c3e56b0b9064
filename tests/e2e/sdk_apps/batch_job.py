"""A nightly import job: historical orders from a CSV export, each an identify and a track carrying the
order's own time and a messageId derived from the order (so that a rerun deduplicates), ``sync_mode``
on as scripts often set it, and flush() at the end. One timestamp is naive, as CSV exports often are.

Written for rudder_fast.analytics; the migration test runs it as it is and with rudder-sdk-python's
import line.
"""

import csv
import datetime as dt
import io
import os
from decimal import Decimal

import rudder_fast.analytics as rudder_analytics

rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]
rudder_analytics.sync_mode = True

EXPORT = """order_id,customer,email,placed_at,total,items,coupon
1001,cust-1,a@example.com,2024-03-01T09:15:00.123456+00:00,19.95,2,
1002,cust-2,b@example.com,2024-03-01 10:20:30,5.00,1,SPRING
1003,cust-3,c@example.com,2024-03-02T23:59:59.999000-05:00,120.50,7,
"""

imported = 0
for row in csv.DictReader(io.StringIO(EXPORT)):
    placed = dt.datetime.fromisoformat(row["placed_at"])
    rudder_analytics.identify(
        row["customer"],
        {"email": row["email"], "first_order_on": placed.date(), "source": "csv-import"},
        timestamp=placed,
    )
    rudder_analytics.track(
        row["customer"],
        "Order Completed",
        {
            "order_id": int(row["order_id"]),
            "total": Decimal(row["total"]),
            "items": int(row["items"]),
            "currency": "USD",
            "coupon": row["coupon"] or None,
        },
        timestamp=placed,
        integrations={"All": True, "Salesforce": False},
        message_id=f"order-{row['order_id']}",
    )
    imported += 1

rudder_analytics.flush()
print(imported, "orders imported")
