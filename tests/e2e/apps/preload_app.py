"""A WSGI app for the gunicorn / uWSGI fault tests (tests/e2e/test_fault_gunicorn.py).

At import it records one event: under ``gunicorn --preload`` (and uWSGI without ``--lazy-apps``) the
import runs in the master, so the default emitter and its open segment exist *before* the workers are
forked: the case where an in-process SDK loses every event. Each request records one more event and
answers ``<messageId> <pid> <hooks>``: ``hooks`` is 1 if Python's at-fork hooks ran in this worker
(gunicorn forks with ``os.fork``), 0 if they were skipped (uWSGI forks in C without
``py-call-osafterfork``).

``GET /preload`` answers the import-time event the same way without recording anything.
``?sleep_ms=N`` holds the request for N ms after recording (keeps a sync worker busy, so concurrent
requests reach the other workers). ``?n=K`` is copied into the event's properties.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from rudder_fast import emit

PRELOAD_PID = os.getpid()
PRELOAD_ID = emit.track(
    user_id="preload-master", event="Preload", properties={"pid": PRELOAD_PID, "phase": "import"}
)

_hooks_ran = [False]


def _mark_hooks() -> None:
    _hooks_ran[0] = True


os.register_at_fork(after_in_child=_mark_hooks)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO") or "/"
    query = parse_qs(environ.get("QUERY_STRING") or "")
    if path == "/preload":
        body = f"{PRELOAD_ID} {PRELOAD_PID} 0"
    else:
        n = int(query.get("n", ["-1"])[0])
        pid = os.getpid()
        mid = emit.track(
            user_id=f"client-{n % 97}",
            event="Request",
            properties={"pid": pid, "path": path, "n": n, "master": PRELOAD_PID},
        )
        sleep_ms = int(query.get("sleep_ms", ["0"])[0])
        if sleep_ms > 0:
            time.sleep(sleep_ms / 1000)
        body = f"{mid} {pid} {int(_hooks_ran[0])}"
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


app = application
