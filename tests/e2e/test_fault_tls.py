"""A data plane whose TLS certificate the sender must refuse: expired, for another host name, or signed by
a CA this host does not trust. Real certificates (trustme) served by the devserver's TLS mode.

For each, the real ``rudder-fast-sender`` holds a spool of events and must: say which problem it is in
one log line, keep every event, not hammer the data plane (a refused certificate needs a person, so the
next attempt is half a minute away), and show the reason in ``rudder-fast status`` (text and ``--json``);
``rudder-fast doctor`` must name the same problem. A sender pointed at a working data plane then
delivers every event exactly once.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.delivery import assert_exactly_once
from tests.support.devserver import DevServer
from tests.support.processes import clean_env, console_script
from tests.support.producers import fill_spool
from tests.support.sender import Senders, sender_env
from tests.support.spool import status_json
from tests.support.tls import Certs, make_certs
from tests.support.waiting import wait_for

KEY = "tls-key"
EVENTS = 40
VERIFY_FAILED = "TLS certificate verify failed"


@dataclass(frozen=True)
class Case:
    said: str  # what the sender, status and doctor say
    host: str  # the host name in the data plane URL
    trusted: bool  # whether the sender is given the CA (--ca-bundle)
    make: Callable[[Path], Certs]


def _expired(directory: Path) -> Certs:
    now = dt.datetime.now(dt.timezone.utc)
    return make_certs(directory, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))


CASES = {
    "expired": Case("the data plane's TLS certificate has expired", "127.0.0.1", True, _expired),
    "wrong host": Case(
        "the data plane's TLS certificate is not for this host name",
        "localhost",
        True,
        lambda d: make_certs(d, ("dataplane.example.com",)),
    ),
    "unknown CA": Case(
        "the data plane's TLS certificate is signed by a CA this host does not trust",
        "127.0.0.1",
        False,
        make_certs,
    ),
}


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("rudder-fast"), *args],
        capture_output=True, text=True, timeout=60, env=clean_env(**env), stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_a_refused_certificate_is_said_plainly_kept_and_retried_slowly(
    name: str, tmp_path: Path, senders: Senders, devserver: DevServer
) -> None:
    case = CASES[name]
    certs = case.make(tmp_path / "tls")
    spool = tmp_path / "spool"
    produced = fill_spool(spool, 1, EVENTS)
    trust = {"RUDDER_FAST_CA_BUNDLE": str(certs.ca)} if case.trusted else {}
    with DevServer.start(out=None, stderr=tmp_path / "dev.log", tls=certs.server) as bad:
        url = f"https://{case.host}:{bad.port}"
        sender = senders.start([], sender_env(spool, url, write_key=KEY, **trust))
        doc = wait_for(
            lambda: (d := status_json(spool)).get("last_error") and d,
            timeout=30,
            interval=0.1,
        )
        assert doc["last_error"].startswith(VERIFY_FAILED), doc["last_error"]
        assert case.said in doc["last_error"], doc["last_error"]
        assert doc["sender"]["state"] == "backoff", doc["sender"]
        attempts = doc["counters"]["retried"]
        assert attempts >= 1, doc["counters"]  # counted as it failed, not once the batch is delivered

        text = run_cli("status", "--spool-dir", str(spool)).stdout
        assert case.said in text, text
        checked = run_cli(
            "doctor", "--spool-dir", str(spool), "--timeout", "5",
            RUDDER_WRITE_KEY=KEY, RUDDER_DATA_PLANE_URL=url, **trust,
        )  # fmt: skip
        reachable = [line for line in checked.stdout.splitlines() if line[6:].startswith("reachable")]
        assert reachable, checked.stdout
        assert reachable[0].startswith("FAIL"), checked.stdout
        assert case.said in reachable[0], checked.stdout
        assert checked.returncode == 1, checked.stdout

        # The doctor's run took seconds; the sender tried no more in that time (its next attempt is 30 s
        # after the first failure), and said so once.
        doc = status_json(spool)
        assert doc["counters"]["retried"] == attempts, doc["counters"]
        assert doc["counters"]["sent"] == 0
        assert doc["backlog"]["events"] == EVENTS, doc["backlog"]
        log = sender.stderr()
        told = [line for line in log.splitlines() if VERIFY_FAILED in line]
        assert len(told) == 1, log
        assert case.said in told[0], told[0]
        assert "Events are kept; retrying every 30 s" in told[0], told[0]
        sender.proc.terminate()
        assert sender.wait(30) == 0, sender.stderr()[-3000:]

    drained = senders.run(["--drain", "--drain-timeout", "30"], sender_env(spool, devserver.url), timeout=60)
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert_exactly_once(devserver.received(), produced)
