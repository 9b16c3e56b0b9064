"""The sender behind a forward proxy, as on a corporate network: a real tinyproxy (Debian's package) on
127.0.0.1, the real devserver behind it (plain HTTP, or HTTPS with a CA made for the test), the real
``rudder-fast-sender``.

* ``HTTPS_PROXY`` (an https data plane): a CONNECT tunnel through the proxy, TLS verified end to end.
* ``http_proxy`` (lower case, an http data plane): the request itself goes to the proxy.
* ``NO_PROXY`` naming the data plane: no proxy at all, even with ``HTTPS_PROXY`` set.
* A proxy that refuses (it wants credentials): nothing is lost, the sender says why in ``status``;
  with the credentials in ``--proxy``'s URL everything arrives, exactly once, and the password is in
  no log and no status file.

tinyproxy is installed by ``./scripts/bootstrap test`` as root; elsewhere these tests skip with the
reason, unless ``RUDDER_FAST_REQUIRE_TINYPROXY=1`` (set by ``./scripts/test`` as root) makes that a
failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rudder_fast import Emitter
from tests.support.delivery import assert_delivered_exactly
from tests.support.devserver import DevServer
from tests.support.processes import free_port, stop_process
from tests.support.sender import Senders, sender_env
from tests.support.spool import status_json
from tests.support.tls import make_certs
from tests.support.waiting import wait_for

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")
USER, PASSWORD = "alice", "s3cret-Pa55"
EVENTS = 300


class Tinyproxy:
    """A tinyproxy in the foreground on a free port of 127.0.0.1; what it was asked, from its log."""

    def __init__(self, tmp_path: Path, *, auth: bool = False) -> None:
        self.port = free_port()
        self.log = tmp_path / f"tinyproxy-{self.port}.log"
        conf = tmp_path / f"tinyproxy-{self.port}.conf"
        lines = [
            f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", "LogLevel Info", "MaxClients 50",
            "Allow 127.0.0.1", "DisableViaHeader Yes",
        ]  # fmt: skip
        if auth:
            lines.append(f"BasicAuth {USER} {PASSWORD}")
        conf.write_text("\n".join(lines) + "\n")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["tinyproxy", "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for(lambda: "Accepting connections" in self.log.read_text(errors="replace"), timeout=20)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """Each request line the proxy received (``CONNECT host:port HTTP/1.1``, ``POST http://...``)."""
        text = self.log.read_text(errors="replace")
        return re.findall(r"Request \(file descriptor \d+\): (.+)", text)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[list[Tinyproxy]]:
    if shutil.which("tinyproxy") is None:
        reason = "tinyproxy is not installed (apt-get install tinyproxy)"
        if os.environ.get("RUDDER_FAST_REQUIRE_TINYPROXY") == "1":
            pytest.fail(f"RUDDER_FAST_REQUIRE_TINYPROXY is set but {reason}", pytrace=False)
        pytest.skip(reason)
    started: list[Tinyproxy] = []
    try:
        yield started
    finally:
        for proxy in started:
            proxy.stop()


def emit_events(spool_dir: Path, n: int = EVENTS) -> list[str]:
    emitter = Emitter(spool_dir)
    ids = [emitter.track(user_id=f"u{i}", event="Proxied", properties={"i": i}) for i in range(n)]
    emitter.close()
    assert all(ids)
    return [i for i in ids if i is not None]


def env_for(spool_dir: Path, url: str, **proxy: str) -> dict[str, str]:
    env = sender_env(spool_dir, url)
    for name in PROXY_VARIABLES:
        env.pop(name, None)
    env.update(proxy)
    return env


def drain(senders: Senders, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = senders.run(["--drain", "--drain-timeout", "60", *args], env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_an_https_data_plane_is_reached_through_https_proxy_by_a_connect_tunnel(
    tmp_path: Path, spool_dir: Path, proxies: list[Tinyproxy], senders: Senders
) -> None:
    certs = make_certs(tmp_path / "tls")
    proxy = Tinyproxy(tmp_path)
    proxies.append(proxy)
    ids = emit_events(spool_dir)
    with DevServer.start(out=tmp_path / "out.jsonl", stderr=tmp_path / "dev.log", tls=certs.server) as dev:
        assert dev.url.startswith("https://")
        env = env_for(spool_dir, dev.url, HTTPS_PROXY=proxy.url, RUDDER_FAST_CA_BUNDLE=str(certs.ca))
        result = drain(senders, env)
        assert_delivered_exactly(dev.received(), ids)
    assert f"through the proxy {proxy.url}" in result.stderr
    requests = proxy.requests()
    assert requests, "the proxy saw no request"
    assert all(r.startswith(f"CONNECT 127.0.0.1:{dev.port} ") for r in requests), requests


def test_an_http_data_plane_is_reached_through_a_lower_case_http_proxy(
    tmp_path: Path, spool_dir: Path, proxies: list[Tinyproxy], senders: Senders, devserver: DevServer
) -> None:
    proxy = Tinyproxy(tmp_path)
    proxies.append(proxy)
    ids = emit_events(spool_dir)
    drain(senders, env_for(spool_dir, devserver.url, http_proxy=proxy.url))
    assert_delivered_exactly(devserver.received(), ids)
    requests = proxy.requests()
    assert requests, "the proxy saw no request"
    assert all(r.startswith(f"POST {devserver.url}/v1/batch ") for r in requests), requests


def test_no_proxy_naming_the_data_plane_bypasses_the_proxy(
    tmp_path: Path, spool_dir: Path, proxies: list[Tinyproxy], senders: Senders, devserver: DevServer
) -> None:
    proxy = Tinyproxy(tmp_path)
    proxies.append(proxy)
    ids = emit_events(spool_dir)
    env = env_for(spool_dir, devserver.url, HTTP_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1")
    result = drain(senders, env)
    assert_delivered_exactly(devserver.received(), ids)
    assert proxy.requests() == []
    assert "through the proxy" not in result.stderr


def test_a_proxy_that_refuses_loses_nothing_and_says_why_then_credentials_in_the_url_get_through(
    tmp_path: Path, spool_dir: Path, proxies: list[Tinyproxy], senders: Senders
) -> None:
    certs = make_certs(tmp_path / "tls")
    proxy = Tinyproxy(tmp_path, auth=True)
    proxies.append(proxy)
    ids = emit_events(spool_dir)
    with DevServer.start(out=tmp_path / "out.jsonl", stderr=tmp_path / "dev.log", tls=certs.server) as dev:
        # Without credentials: every CONNECT is refused (407). The events stay; status says why.
        env = env_for(spool_dir, dev.url, HTTPS_PROXY=proxy.url, RUDDER_FAST_CA_BUNDLE=str(certs.ca))
        sender = senders.start([], env)

        def refused() -> str | None:
            doc = status_json(spool_dir)
            error = doc.get("last_error") or ""
            return error if "407" in error else None

        error = wait_for(refused, timeout=30)
        assert "proxy" in error, error
        assert dev.received() == []
        assert status_json(spool_dir)["backlog"]["events"] == EVENTS
        sender.proc.send_signal(signal.SIGTERM)
        assert sender.wait(30) == 0
        # With the credentials in --proxy's URL (which wins over HTTPS_PROXY): all of them, once.
        secret_url = f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"
        result = drain(senders, env, "--proxy", secret_url)
        assert_delivered_exactly(dev.received(), ids)
    assert any(r.startswith("CONNECT ") for r in proxy.requests())
    for text in (result.stderr, sender.stderr(), (spool_dir / "status").read_text()):
        assert PASSWORD not in text
