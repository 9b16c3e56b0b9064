"""A Celery-style worker pool: tasks run in forked worker processes, as Celery's prefork pool runs them,
and each tracks an event; the parent never touches analytics before forking. With rudder-sdk-python a
task must flush() before it returns, or its events may never leave the worker: the tasks here do, as
that SDK's users learn to (with rudder_fast the flush() is a no-op: each event is on disk already).

Written for rudder_fast.analytics; the migration test runs it as it is and with rudder-sdk-python's
import line.
"""

import functools
import json
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import rudder_fast.analytics as rudder_analytics

rudder_analytics.write_key = os.environ["RUDDER_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["RUDDER_DATA_PLANE_URL"]


def task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for ``@app.task``: flush after every task, as SDK users do in a task_postrun hook."""

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            rudder_analytics.flush()

    return run


@task
def send_welcome_email(user_id: str, n: int) -> int:
    rudder_analytics.track(user_id, "Email Sent", {"template": "welcome", "n": n, "worker": "prefork"})
    return n


@task
def close_account(user_id: str, n: int) -> int:
    rudder_analytics.identify(user_id, {"closed": True, "n": n})
    rudder_analytics.alias(f"legacy-{n}", user_id)
    return n


if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=3) as pool:
        sent = pool.starmap(send_welcome_email, [(f"user-{n}", n) for n in range(8)])
        closed = pool.starmap(close_account, [(f"user-{n}", n) for n in range(3)])
    print(json.dumps([sent, closed]))
