"""A Celery app whose task emits an event with rudder_fast.

Prefork workers are forked processes like any other: nothing is needed but RUDDER_FAST_SPOOL_DIR in
the worker's environment (and the sender running on the same host, as the same user). From the
directory that holds this file:

    cd scripts/deploy
    RUDDER_FAST_SPOOL_DIR=/var/spool/rudder-fast celery -A celery_app worker --pool prefork -c 4

Settings (the broker above all) come from the module named by CELERY_CONFIG_MODULE, if set; Celery itself
reads CELERY_BROKER_URL, which wins.
"""

from __future__ import annotations

from celery import Celery

from rudder_fast import emit

app = Celery("celery_app")
app.config_from_envvar("CELERY_CONFIG_MODULE", silent=True)


@app.task
def order_completed(user_id: str, order_id: str, revenue: float) -> str | None:
    """Business work would go here; the event is on disk when ``emit.track`` returns."""
    return emit.track(
        user_id=user_id,
        event="Order Completed",
        properties={"order_id": order_id, "revenue": revenue},
    )
