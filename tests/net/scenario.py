"""The scenario runner: the product, as a black box, across the topology, while faults come and go.

:class:`NetRun` starts, on a :class:`~tests.net.netns.Topology`:

- ``rudder-fast devserver --host 0.0.0.0`` in the dp namespace, appending what it accepts to ``--out``;
- the TCP fault relay (:mod:`tests.net.tcpfault`) in front of it, in the dp namespace;
- the DNS responder (:mod:`tests.net.dns`, SERVFAIL) on the app namespace's loopback;
- ``rudder-fast-sender`` in the app namespace, posting to ``http://dataplane.rf.test:<relay port>``
  with short ``--connect-timeout`` / ``--read-timeout``;
- a producer (:mod:`tests.net.produce`) in the root namespace, writing to the shared spool directory;
- with ``backup=True``, a second devserver on the app namespace's loopback, appending to the same
  ``--out`` file, given to the sender as its second ``--data-plane-url``: no fault between namespaces
  reaches it.

A scenario (:data:`SCENARIOS`) is a function that injects one fault while events flow and returns when
the fault is over, with the traffic to run it under; :meth:`NetRun.run` runs one and returns a
:class:`ScenarioResult`: events produced,
delivered (by ``messageId`` in the devserver's ``--out``), lost, duplicated, the longest stall (the
longest time without a new event reaching the data plane) and the longest any request waited on the
data plane side (the TCP relay's log). A benchmark can reuse all of it: for each entry of
:data:`SCENARIOS`, ``scenario.start(topology, tmp).run(name, scenario.inject)``.
"""

from __future__ import annotations

import collections
import datetime as dt
import http.client
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from rudder_fast.transport import BATCH_PATH
from tests.net import control
from tests.net.netns import DATAPLANE_HOST, Topology, stop, wait_line
from tests.support.processes import console_script
from tests.support.spool import read_status, status_json
from tests.support.waiting import wait_for

WRITE_KEY = "net-key"
START_TIMEOUT_S = 20.0
FLOWING_EVENTS = 100  # delivered before a fault is injected: the pipeline is warm
DELIVERY_TIMEOUT_S = 60.0  # after the fault: everything delivered by then, or the scenario fails
FAULT_S = 3.0  # how long each fault lasts


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 1.0
    read_s: float = 2.0


@dataclass
class ScenarioResult:
    name: str
    produced: int
    delivered: int  # distinct produced events the data plane received
    lost: int
    duplicates: int  # deliveries beyond the first, of any event
    longest_stall_s: float
    longest_request_s: float  # the longest a request waited for its answer, as the TCP relay saw it
    requests: int
    retried: int  # the sender's retry counter (`rudder-fast status`)
    fault_s: float
    recovered_s: float  # from the end of the fault to the last event delivered
    timeouts: Timeouts = field(default_factory=Timeouts)
    states: list[str] = field(default_factory=list)  # the sender's states in its status file, in turn

    def line(self) -> str:
        return f"{self._figures()}, states {' > '.join(self.states) or '?'}"

    def _figures(self) -> str:
        return (
            f"{self.name}: delivered {self.delivered}/{self.produced}, lost {self.lost}, "
            f"duplicates {self.duplicates}, longest stall {self.longest_stall_s:.2f} s, "
            f"longest request {self.longest_request_s:.2f} s (timeouts {self.timeouts.connect_s:g}+"
            f"{self.timeouts.read_s:g} s), {self.requests} requests, {self.retried} retried, "
            f"fault {self.fault_s:.1f} s, all delivered {self.recovered_s:.1f} s after it"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Deliveries:
    """Reads the devserver's ``--out`` file as it grows: counts per messageId, and when new ones came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.progress: list[float] = []  # receivedAt of each request that brought a new messageId

    def poll(self) -> int:
        """Read what was appended; the number of distinct messageIds so far."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1
        self.offset += end
        last_received = None
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            event = orjson.loads(line)
            mid = event["messageId"]
            self.counts[mid] += 1
            if self.counts[mid] == 1 and event["receivedAt"] != last_received:
                last_received = event["receivedAt"]
                self.progress.append(_epoch(last_received))
        return len(self.counts)

    def longest_stall(self) -> float:
        times = sorted(self.progress)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class StateWatch:
    """The sender's state as its status file says it, read every 0.05 s by a thread: each change kept."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.states: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-watch", daemon=True)

    def __enter__(self) -> StateWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()  # the state at the end

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        doc = read_status(self.spool)
        state = None if doc is None else doc.get("state")
        if isinstance(state, str) and (not self.states or self.states[-1] != state):
            self.states.append(state)


class NetRun:
    """One pipeline (devserver, TCP relay, DNS responder, sender, producer) across a topology."""

    def __init__(
        self,
        topo: Topology,
        tmp: Path,
        *,
        timeouts: Timeouts = Timeouts(),
        rate: float = 200.0,
        pad_bytes: int = 0,
        concurrency: int = 4,
        dns_mode: str = "servfail",
        backup: bool = False,
    ) -> None:
        self.topo = topo
        self.tmp = tmp
        self.timeouts = timeouts
        self.rate = rate
        self.pad_bytes = pad_bytes
        self.concurrency = concurrency
        self.dns_mode = dns_mode
        self.spool = tmp / "spool"
        self.out = tmp / "received.jsonl"
        self.ids_file = tmp / "produced.ids"
        self.tcp_socket = str(tmp / "tcpfault.sock")
        self.dns_socket = str(tmp / "dns.sock")
        self.deliveries = Deliveries(self.out)
        self.devserver_port = 0
        self.relay_port = 0
        self.backup = backup
        self.backup_port = 0
        self.sender: subprocess.Popen[bytes] | None = None
        self.producer: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<NetRun {self.topo.tag} delivered={len(self.deliveries.counts)}>"

    # -- the pipeline ----------------------------------------------------------------------------------

    def start(self) -> NetRun:
        # All interfaces of the dp namespace, which only the relay reaches.
        argv = [console_script("rudder-fast"), "devserver", "--host", "0.0.0.0", "--port", "0"]  # noqa: S104
        argv += ["--out", str(self.out), "--write-key", WRITE_KEY, "--quiet"]
        devserver = self.topo.spawn("dp", argv, "devserver.log", stdout=subprocess.PIPE)
        line = wait_line(devserver, "listening on", START_TIMEOUT_S)
        self.devserver_port = int(line.rsplit(":", 1)[1])
        argv = [sys.executable, "-m", "tests.net.tcpfault", "--listen", "0.0.0.0:0"]
        argv += ["--upstream", f"127.0.0.1:{self.devserver_port}", "--control", self.tcp_socket]
        tcp = self.topo.spawn("dp", argv, "tcpfault.log", stdout=subprocess.PIPE)
        self.relay_port = int(wait_line(tcp, "ready", START_TIMEOUT_S).split()[1])
        argv = [sys.executable, "-m", "tests.net.dns", "--listen", "127.0.0.1:53"]
        argv += ["--control", self.dns_socket, "--mode", self.dns_mode]
        dns = self.topo.spawn("app", argv, "dns.log", stdout=subprocess.PIPE)
        wait_line(dns, "ready", START_TIMEOUT_S)
        if self.backup:
            argv = [console_script("rudder-fast"), "devserver", "--port", "0"]
            argv += ["--out", str(self.out), "--write-key", WRITE_KEY, "--quiet"]
            backup = self.topo.spawn("app", argv, "backup-devserver.log", stdout=subprocess.PIPE)
            self.backup_port = int(wait_line(backup, "listening on", START_TIMEOUT_S).rsplit(":", 1)[1])
        self.start_sender()
        self.start_producer()
        return self

    @property
    def url(self) -> str:
        return f"http://{DATAPLANE_HOST}:{self.relay_port}"

    @property
    def backup_url(self) -> str:
        return f"http://127.0.0.1:{self.backup_port}"

    def in_use(self) -> str | None:
        """The base URL of the data plane the sender uses, as ``rudder-fast status --json`` says."""
        planes: list[dict[str, Any]] = self.status()["sender"]["data_planes"]
        return next((p["url"].removesuffix(BATCH_PATH) for p in planes if p["in_use"]), None)

    def start_sender(self, *extra: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
        urls = f"{self.url},{self.backup_url}" if self.backup else self.url
        env.update(RUDDER_WRITE_KEY=WRITE_KEY, RUDDER_DATA_PLANE_URL=urls)
        argv = [console_script("rudder-fast-sender"), "--spool-dir", str(self.spool)]
        t = self.timeouts
        argv += ["--connect-timeout", str(t.connect_s), "--read-timeout", str(t.read_s)]
        argv += ["--concurrency", str(self.concurrency), *extra]
        self.sender = self.topo.spawn("app", argv, "sender.log", env=env)
        return self.sender

    def start_producer(self) -> None:
        argv = [sys.executable, "-m", "tests.net.produce", "--spool", str(self.spool)]
        argv += ["--rate", str(self.rate), "--pad", str(self.pad_bytes), "--ids", str(self.ids_file)]
        self.producer = self.topo.spawn("root", argv, "producer.log", stdout=subprocess.PIPE)
        wait_line(self.producer, "ready", START_TIMEOUT_S)

    def stop_producing(self) -> list[str]:
        """Stop the producer; every messageId it made (it is asked to stop, so the file is complete)."""
        assert self.producer is not None
        assert stop(self.producer) == 0, self.log("producer.log")
        ids = self.ids_file.read_text().split()
        assert "DROPPED" not in ids, "the producer had events dropped"
        return ids

    # -- observing -------------------------------------------------------------------------------------

    def delivered(self) -> int:
        self._check_alive()
        return self.deliveries.poll()

    def wait_flowing(self, events: int = FLOWING_EVENTS) -> None:
        before = self.delivered()
        wait_for(lambda: self.delivered() >= before + events, timeout=START_TIMEOUT_S, interval=0.05)

    def tcp(self, **cmd: Any) -> dict[str, Any]:
        """Command the TCP fault relay (``mode``, ``drop_all``, ``since``); its state."""
        return control.request(self.tcp_socket, cmd)

    def dns(self, **cmd: Any) -> dict[str, Any]:
        return control.request(self.dns_socket, cmd)

    def devserver_control(self, cmd: dict[str, Any]) -> None:
        """``POST /_control`` on the devserver, from inside the dp namespace."""
        sock = self.topo.socket_in("dp")
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.devserver_port))
        conn = http.client.HTTPConnection("127.0.0.1", self.devserver_port)
        conn.sock = sock
        try:
            conn.request("POST", "/_control", body=json.dumps(cmd))
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        """``rudder-fast status --json`` for real."""
        return status_json(self.spool)

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _check_alive(self) -> None:
        if self.sender is not None and self.sender.poll() is not None:
            raise AssertionError(f"the sender exited ({self.sender.returncode}):\n{self.log('sender.log')}")

    # -- one scenario ----------------------------------------------------------------------------------

    def run(self, name: str, inject: Inject) -> ScenarioResult:
        """Wait for events to flow, inject the fault, stop producing, wait until every event is in."""
        self.wait_flowing()
        with StateWatch(self.spool) as watch:
            fault_start, fault_end = inject(self)
            produced = self.stop_producing()
            wanted = set(produced)
            self._wait_all_in(name, wanted)
            # The sender publishes its counters once a second: wait until they include every event
            # (the state published with them is the one after the last acknowledgement).
            status = wait_for(
                lambda: (doc := self.status())["counters"]["sent"] >= len(wanted) and doc,
                timeout=30,
                interval=0.2,
            )
        last = max(self.deliveries.progress)
        exchanges = self.tcp(since=0)["exchanges"]
        now = time.time()
        waits = [(ex["t_end"] or now) - ex["t_request"] for ex in exchanges]
        counts = self.deliveries.counts
        result = ScenarioResult(
            name=name,
            produced=len(wanted),
            delivered=sum(1 for mid in wanted if counts[mid]),
            lost=sum(1 for mid in wanted if not counts[mid]),
            duplicates=sum(n - 1 for n in counts.values() if n > 1),
            longest_stall_s=self.deliveries.longest_stall(),
            longest_request_s=max(waits, default=0.0),
            requests=len(exchanges),
            retried=int(status["counters"]["retried"]),
            fault_s=fault_end - fault_start,
            recovered_s=max(0.0, last - fault_end),
            timeouts=self.timeouts,
            states=watch.states,
        )
        (self.tmp / "result.json").write_bytes(orjson.dumps(result.to_json()))
        return result

    def _wait_all_in(self, name: str, wanted: set[str]) -> None:
        def all_in() -> bool:
            self.delivered()
            return wanted.issubset(self.deliveries.counts)

        try:
            wait_for(all_in, timeout=DELIVERY_TIMEOUT_S, interval=0.05)
        except AssertionError:
            missing = len(wanted - set(self.deliveries.counts))
            raise AssertionError(
                f"{name}: {missing} of {len(wanted)} events not delivered within {DELIVERY_TIMEOUT_S} s\n"
                f"status: {self.status()}\nsender log:\n{self.log('sender.log')}"
            ) from None


# -- the scenarios ---------------------------------------------------------------------------------------

Inject = Callable[[NetRun], tuple[float, float]]  # injects a fault, returns when it started and ended


@dataclass(frozen=True)
class Scenario:
    """A fault, and the traffic to run it under."""

    inject: Inject
    rate: float = 200.0  # events per second
    pad_bytes: int = 0  # random payload per event: more packets on the wire

    def start(self, topo: Topology, tmp: Path, **options: Any) -> NetRun:
        return NetRun(topo, tmp, rate=self.rate, pad_bytes=self.pad_bytes, **options).start()


def hold(seconds: float = FAULT_S) -> None:
    """Keep the fault in place (the scenario's own duration, not a wait for a condition)."""
    time.sleep(seconds)


def blackhole_mid_request(run: NetRun) -> tuple[float, float]:
    """Every packet dropped while a request waits for its answer (which the data plane has stored): the
    TCP relay turns the blackhole on itself, the moment it has handed the next request to the data
    plane and before it reads the answer, which is then lost on the way back."""
    blackhole = {"socket": run.topo.relay_socket, "command": {"blackhole": True}}
    run.tcp(after_request=blackhole)
    start = wait_for(lambda: run.tcp()["fired"], timeout=10, interval=0.01)
    hold(max(0.0, start + FAULT_S - time.time()))
    run.topo.relay_control(blackhole=False)
    return start, time.time()


def blackhole_between_requests(run: NetRun) -> tuple[float, float]:
    """Every packet dropped from a moment no request is in flight: the next one goes into the void."""
    wait_for(lambda: run.tcp()["open"] == 0, timeout=10, interval=0.005)
    run.topo.relay_control(blackhole=True)
    start = time.time()
    hold()
    run.topo.relay_control(blackhole=False)
    return start, time.time()


def slow_lossy_link(run: NetRun) -> tuple[float, float]:
    """200 ms round trip with 1 % packet loss each way."""
    run.topo.relay_control(delay_ms=100, loss=0.01)
    start = time.time()
    hold(2 * FAULT_S)
    run.topo.relay_control(reset=True)
    return start, time.time()


def tcp_mode(mode: str) -> Inject:
    def scenario(run: NetRun) -> tuple[float, float]:
        run.tcp(mode=mode)
        start = time.time()
        hold()
        run.tcp(mode="pass")
        return start, time.time()

    scenario.__doc__ = f"The TCP relay in mode {mode!r} for {FAULT_S:g} s."
    return scenario


def dns_failure(run: NetRun) -> tuple[float, float]:
    """The name stops resolving (gone from hosts, the nameserver answers SERVFAIL) and every open
    connection is reset, so each new attempt needs the name."""
    run.topo.set_hosts(resolvable=False)
    run.tcp(drop_all=True)
    start = time.time()
    hold()
    run.topo.set_hosts(resolvable=True)
    return start, time.time()


SCENARIOS: dict[str, Scenario] = {
    "blackhole mid-request": Scenario(blackhole_mid_request),
    "blackhole between requests": Scenario(blackhole_between_requests),
    # ~2,500 packets cross the lossy link: about 25 are lost (none at all: a chance below 1e-10)
    "200 ms RTT, 1% loss": Scenario(slow_lossy_link, rate=400, pad_bytes=2000),
    "reset mid-response": Scenario(tcp_mode("reset")),
    "accept, never answer": Scenario(tcp_mode("never")),
    "trickle 1 byte/s": Scenario(tcp_mode("trickle")),
    "DNS fails to resolve": Scenario(dns_failure),
}
