"""A real one-line migration from rudder-sdk-python 2.1.9, shown by running it: the same scripts, against
both libraries, compared event by event.

Each script (the SDK's documented examples in ``tests/io/sdk_examples/`` and the realistic programs in
``sdk_apps/``: a Flask app, a batch import job, a prefork task pool, code that catches AssertionError,
a Client with on_error) is written for ``rudder_fast.analytics``. It runs twice:

- with rudder-sdk-python's import line instead, posting to a real ``rudder-fast devserver`` (through a
  real forward proxy on 127.0.0.1 where the script configures ``proxies``);
- as it is, writing to a spool, which a real ``rudder-fast-sender --drain`` then delivers to a second
  devserver.

The two devservers must have received the same events, field by field, but for the differences the
README documents (:func:`tests.sdk_migration.assert_same_events`), and scripts that print what their
calls returned or raised must print the same. Then: with a sender running, the delivery-settings
message compares the app's write key and URL with the sender's, and says plainly when they differ.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import http.server
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.devserver import DevServer
from tests.support.processes import env_with
from tests.support.sdk_migration import as_sdk_script, assert_same_events
from tests.support.sender import Senders, sender_env
from tests.support.spool import read_status
from tests.support.waiting import wait_for

# Per-test timeout above the default: a script under both libraries (RUN_TIMEOUT_S each), a drain.
pytestmark = pytest.mark.timeout(420)

EXAMPLES_DIR = Path(__file__).parents[1] / "io" / "sdk_examples"
APPS_DIR = Path(__file__).parent / "sdk_apps"
WRITE_KEY = "migration-write-key-4e1b"
RUN_TIMEOUT_S = 120.0
MESSAGE_START = "rudder_fast.analytics: events from this process are appended to the spool"


@dataclass(frozen=True)
class Script:
    path: Path
    kept: frozenset[str] = frozenset()  # values the SDK deletes and rudder_fast keeps (documented)
    same_stdout: bool = False  # the script prints what its calls returned: must match
    proxied: bool = False  # the script sends through EXAMPLE_PROXY_URL with the SDK

    @property
    def id(self) -> str:
        return self.path.name


SCRIPTS = [
    *(Script(p, proxied=p.name == "readme_proxy_client.py") for p in sorted(EXAMPLES_DIR.glob("*.py"))),
    Script(APPS_DIR / "flask_handler.py", kept=frozenset({"properties.request_id"}), same_stdout=True),
    Script(APPS_DIR / "batch_job.py", same_stdout=True),
    Script(APPS_DIR / "prefork_tasks.py", same_stdout=True),
    Script(APPS_DIR / "catches_assertion.py", same_stdout=True),
    Script(APPS_DIR / "client_on_error.py", same_stdout=True),
]


@dataclass
class ForwardProxy:
    """A minimal HTTP forward proxy on 127.0.0.1 (absolute-form requests), counting what it relays."""

    server: http.server.ThreadingHTTPServer
    relayed: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@contextlib.contextmanager
def forward_proxy() -> Iterator[ForwardProxy]:
    relayed: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            target = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hop_by_hop = {"connection", "proxy-connection", "keep-alive", "host", "proxy-authorization"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
            conn = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=30)
            try:
                conn.request("POST", target.path or "/", body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read()
            finally:
                conn.close()
            relayed.append(self.path)
            self.send_response(response.status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ForwardProxy(server, relayed)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_script(script: Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = env_with(RUDDER_WRITE_KEY=WRITE_KEY, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.id)
def test_script_sends_what_rudder_sdk_python_sends(
    script: Script, tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    sdk_plane, our_plane = start_devserver(), start_devserver()
    sdk_version = tmp_path / f"sdk_{script.id}"
    sdk_version.write_text(as_sdk_script(script.path.read_text()))
    spool = tmp_path / "spool"
    start = dt.datetime.now(dt.timezone.utc)
    with forward_proxy() as proxy:
        theirs = run_script(
            sdk_version, tmp_path, RUDDER_DATA_PLANE_URL=sdk_plane.url, EXAMPLE_PROXY_URL=proxy.url
        )
        assert theirs.returncode == 0, theirs.stderr
        # The app's own data plane URL is the SDK's: rudder_fast's sender gets the second one.
        ours = run_script(
            script.path,
            tmp_path,
            RUDDER_DATA_PLANE_URL=sdk_plane.url,
            EXAMPLE_PROXY_URL=proxy.url,
            RUDDER_FAST_SPOOL_DIR=str(spool),
        )
        assert ours.returncode == 0, ours.stderr
        assert bool(proxy.relayed) is script.proxied, proxy.relayed
    end = dt.datetime.now(dt.timezone.utc)
    drained = senders.run(
        ["--drain", "--drain-timeout", "60"], sender_env(spool, our_plane.url, write_key=WRITE_KEY)
    )
    assert drained.returncode == 0, drained.stderr

    assert_same_events(our_plane.received(), sdk_plane.received(), kept=script.kept, window=(start, end))
    if script.same_stdout:
        assert ours.stdout == theirs.stdout
    # Delivery settings were given (and events sent): a message (one per process), never the key.
    assert (MESSAGE_START in ours.stderr) is (script.id != "send_disabled.py"), ours.stderr
    assert WRITE_KEY not in ours.stdout + ours.stderr


# -- the settings message, next to a running sender ------------------------------------------------------

SETTINGS_APP = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
import rudder_fast.analytics as rudder_analytics
rudder_analytics.write_key = os.environ["APP_WRITE_KEY"]
rudder_analytics.dataPlaneUrl = os.environ["APP_DATA_PLANE_URL"]
rudder_analytics.track("settings-user", "Checked Settings")
"""


def test_the_settings_message_compares_key_and_url_with_the_running_sender(
    tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    plane = start_devserver()
    spool = tmp_path / "spool"
    running = senders.start([], sender_env(spool, plane.url, write_key=WRITE_KEY))
    status = wait_for(lambda: (read_status(spool) or {}).get("write_key_fingerprint") and read_status(spool))
    assert WRITE_KEY not in (spool / "status").read_text()
    sender_url = f"{plane.url}/v1/batch"
    assert status["data_plane_url"] == sender_url
    app = tmp_path / "app.py"
    app.write_text(SETTINGS_APP)

    def message(key: str, url: str) -> str:
        proc = run_script(
            app, tmp_path, RUDDER_FAST_SPOOL_DIR=str(spool), APP_WRITE_KEY=key, APP_DATA_PLANE_URL=url
        )
        assert proc.returncode == 0, proc.stderr
        assert key not in proc.stderr
        (first,) = [i for i, line in enumerate(proc.stderr.splitlines()) if MESSAGE_START in line]
        return "\n".join(proc.stderr.splitlines()[first : first + 3])

    same = message(WRITE_KEY, plane.url + "/")
    assert same.startswith("INFO rudder_fast ")
    assert f"write_key: the same as the running sender's (pid {running.pid})" in same
    assert f"dataPlaneUrl: the same as the running sender's ({sender_url})" in same

    other_key = message("another-source-key-77", plane.url)
    assert other_key.startswith("WARNING rudder_fast ")
    assert f"write_key: the running sender (pid {running.pid}) uses a DIFFERENT write key" in other_key

    other_url = message(WRITE_KEY, "https://eu.dataplane.invalid")
    assert other_url.startswith("WARNING rudder_fast ")
    assert (
        f"dataPlaneUrl: the running sender (pid {running.pid}) posts to {sender_url}, "
        "not to https://eu.dataplane.invalid/v1/batch" in other_url
    )
    # Whatever the app set, the running sender delivered its three events.
    wait_for(lambda: len(plane.received()) == 3, timeout=60)
    running.proc.terminate()
    assert running.wait(15) == 0
    assert all(e["userId"] == "settings-user" for e in plane.received())
    assert os.path.exists(spool)
