"""A Flask app instrumented the way rudder-sdk-python's users do it: the settings at start-up, identify
at login, track, group and page in handlers, a request without a user answered 400 by catching the
SDK's AssertionError, and flush() before exit. Driven by Flask's test client (real WSGI requests).

Written for rudder_fast.analytics; the migration test runs it as it is and with rudder-sdk-python's
import line. It prints the status of every response, which must be the same with both.
"""

import datetime as dt
import json
import os
import uuid
from decimal import Decimal

from flask import Flask, request

import rudder_fast.analytics as rudder_analytics

rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]

app = Flask(__name__)


@app.post("/login")
def login() -> dict[str, object]:
    user_id = request.form["user_id"]
    rudder_analytics.identify(
        user_id,
        {"email": request.form["email"], "plan": "pro", "logins": 3},
        context={"ip": request.remote_addr, "userAgent": request.user_agent.string},
    )
    return {"ok": True}


@app.get("/items/<int:item_id>")
def view_item(item_id: int) -> tuple[dict[str, object], int]:
    try:
        rudder_analytics.track(
            request.headers.get("X-User-Id"),
            "Item Viewed",
            {
                "item_id": item_id,
                "price": Decimal("19.95"),
                "viewed_at": dt.datetime(2026, 11, 26, 10, 1, 2, 345678, tzinfo=dt.timezone.utc),
                "request_id": uuid.UUID(request.headers["X-Request-Id"]),
                "dwell": dt.timedelta(seconds=3),
                "tags": ("new", "sale"),
            },
            context={"page": {"path": request.path}},
            anonymous_id=request.headers.get("X-Anonymous-Id"),
        )
    except AssertionError as exc:  # no user and no anonymous id: the caller's mistake
        return {"error": str(exc)}, 400
    return {"item_id": item_id}, 200


@app.post("/teams/<int:team_id>/join")
def join_team(team_id: int) -> dict[str, object]:
    user_id = request.headers["X-User-Id"]
    rudder_analytics.group(user_id, team_id, {"name": f"Team {team_id}", "seats": 5})
    rudder_analytics.page(user_id, "Teams", "Team Joined", {"path": request.path})
    return {"ok": True}


if __name__ == "__main__":
    http = app.test_client()
    statuses = [
        http.post("/login", data={"user_id": "u-100", "email": "u100@example.com"}).status_code,
        http.get(
            "/items/7", headers={"X-User-Id": "u-100", "X-Request-Id": str(uuid.UUID(int=1))}
        ).status_code,
        http.get(
            "/items/8", headers={"X-Anonymous-Id": "anon-55", "X-Request-Id": str(uuid.UUID(int=2))}
        ).status_code,
        http.get("/items/9", headers={"X-Request-Id": str(uuid.UUID(int=3))}).status_code,
        http.post("/teams/42/join", headers={"X-User-Id": "u-100"}).status_code,
    ]
    print(json.dumps(statuses))
    rudder_analytics.flush()
