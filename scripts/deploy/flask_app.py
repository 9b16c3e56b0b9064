"""A tiny Flask app that emits one event per request with rudder_fast.

The call appends the event to the spool (about 3 µs, no thread, no socket) and returns its messageId;
the sender delivers it. Run it under gunicorn (``gunicorn -c gunicorn.conf.py --preload flask_app:app``)
or ``flask --app flask_app run``, with RUDDER_FAST_SPOOL_DIR set (gunicorn.conf.py sets it).
"""

from __future__ import annotations

from flask import Flask, request

from rudder_fast import InvalidEventError, emit

app = Flask(__name__)


@app.get("/items/<item_id>")
def view_item(item_id: str) -> tuple[dict[str, object], int]:
    user_id = request.headers.get("X-User-Id")
    try:
        message_id = emit.track(
            user_id=user_id,
            anonymous_id=None if user_id else request.headers.get("X-Anonymous-Id", "anonymous"),
            event="Item Viewed",
            properties={"item_id": item_id, "path": request.path},
        )
    except InvalidEventError as exc:  # e.g. a blank X-User-Id: the caller's mistake, never a crash
        return {"error": str(exc), "field": exc.field}, 400
    # None: the spool is over its quota and the event was dropped (counted); the page still works.
    return {"item_id": item_id, "messageId": message_id}, 200
