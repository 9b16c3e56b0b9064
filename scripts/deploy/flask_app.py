"""A tiny Flask app that emits one event per request with rudder_fast.

The call appends the event to the spool (about 3 µs, no thread, no socket) and returns its messageId;
the sender delivers it. Analytics never fails the page: an event the library refuses (a blank user id,
say) is logged and the visitor still gets the page. Run it under gunicorn from this directory
(``gunicorn -c gunicorn.conf.py --preload flask_app:app``) or ``flask --app flask_app run``, with
RUDDER_FAST_SPOOL_DIR set (gunicorn.conf.py sets it).
"""

from __future__ import annotations

from flask import Flask, request

from rudder_fast import InvalidEventError, emit

app = Flask(__name__)


@app.get("/items/<item_id>")
def view_item(item_id: str) -> tuple[dict[str, object], int]:
    user_id = request.headers.get("X-User-Id")
    message_id = None
    try:
        message_id = emit.track(
            user_id=user_id,
            anonymous_id=None if user_id else request.headers.get("X-Anonymous-Id", "anonymous"),
            event="Item Viewed",
            properties={"item_id": item_id, "path": request.path},
        )
    except InvalidEventError as exc:  # e.g. a blank X-User-Id: logged, never the visitor's problem
        app.logger.warning("analytics event not recorded: %s", exc)
    # None: refused above, or the spool is over its quota (dropped and counted); the page still works.
    return {"item_id": item_id, "messageId": message_id}, 200
