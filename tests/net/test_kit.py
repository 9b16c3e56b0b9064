"""Self-tests of the net kit: each fault is real, as a plain client on either side observes it."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from rudder_fast.devserver import DevServer, Faults
from tests.net import control, netns
from tests.net.conftest import REQUIRE_ENV, unavailable
from tests.net.netns import APP_ADDR, DATAPLANE_HOST, DP_ADDR, Topology, stop, wait_line
from tests.support.waiting import wait_for

pytestmark = pytest.mark.net


# -- in-process endpoints, on sockets made inside a namespace --------------------------------------------


@contextlib.contextmanager
def udp_echo(topo: Topology) -> Iterator[int]:
    """A UDP echo server on the dp side; yields its port."""
    sock = topo.socket_in("dp", socket.SOCK_DGRAM)
    sock.bind((DP_ADDR, 0))
    sock.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        sock.close()


@contextlib.contextmanager
def tcp_echo(topo: Topology) -> Iterator[int]:
    """A TCP echo server on the dp side (one thread per connection); yields its port."""
    listener = topo.socket_in("dp")
    listener.bind((DP_ADDR, 0))
    listener.listen(16)
    listener.settimeout(0.2)
    done = threading.Event()
    conns: list[socket.socket] = []

    def echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def round_trips(topo: Topology, port: int, count: int) -> list[float]:
    """Sequential UDP pings from the app side: each round trip time, in seconds."""
    with topo.socket_in("app", socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        times = []
        for i in range(count):
            start = time.monotonic()
            sock.sendto(b"ping %d" % i, (DP_ADDR, port))
            while sock.recv(2048) != b"ping %d" % i:
                pass
            times.append(time.monotonic() - start)
        return times


def echoed(topo: Topology, port: int, count: int) -> int:
    """Send ``count`` numbered datagrams, paced; how many distinct ones came back."""
    seen: set[int] = set()
    with topo.socket_in("app", socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setblocking(False)
        for i in range(count):
            sock.sendto(i.to_bytes(4, "big"), (DP_ADDR, port))
            if i % 20 == 19:
                time.sleep(0.004)  # ~5,000 packets/s: far below what the relay and buffers take
            with contextlib.suppress(BlockingIOError):
                while True:
                    seen.add(int.from_bytes(sock.recv(64), "big"))
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while True:
                seen.add(int.from_bytes(sock.recv(64), "big"))
    return len(seen)


# -- the IP relay ------------------------------------------------------------------------------------------


def test_the_wire_joins_the_namespaces_and_nothing_else(topology: Topology) -> None:
    with udp_echo(topology) as port:
        assert len(round_trips(topology, port, 3)) == 3
    counters = topology.relay_control()["forwarded"]
    assert counters["a_to_b"] >= 3
    assert counters["b_to_a"] >= 3
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert APP_ADDR not in out
    assert DP_ADDR not in out


def test_a_one_way_delay_of_100_ms_makes_a_200_ms_round_trip(topology: Topology) -> None:
    with udp_echo(topology) as port:
        direct = statistics.median(round_trips(topology, port, 5))
        topology.relay_control(delay_ms=100)
        delayed = statistics.median(round_trips(topology, port, 7))
    print(f"round trip: {direct * 1000:.1f} ms direct, {delayed * 1000:.1f} ms with 100 ms each way")
    assert direct < 0.05
    assert 0.195 <= delayed < 0.4


def test_one_percent_loss_each_way(topology: Topology) -> None:
    sent = 4000
    with udp_echo(topology) as port:
        assert echoed(topology, port, 500) == 500  # the measurement itself loses nothing
        topology.relay_control(loss=0.01)
        back = echoed(topology, port, sent)
    round_trip_loss = 1 - back / sent
    one_way = 1 - (1 - round_trip_loss) ** 0.5
    print(f"loss: {sent - back} of {sent} round trips, {one_way:.2%} each way")
    assert 0.004 <= one_way <= 0.02  # expected 1 %; ~10 sigma wide for 8,000 packet crossings


def test_a_blackhole_makes_connects_and_requests_time_out(topology: Topology) -> None:
    with tcp_echo(topology) as port, topology.socket_in("app") as old:
        old.settimeout(1.0)
        old.connect((DP_ADDR, port))
        old.sendall(b"hello")
        assert old.recv(16) == b"hello"
        topology.relay_control(blackhole=True)
        old.sendall(b"again")
        with pytest.raises(TimeoutError):
            old.recv(16)  # a request on an open connection: no answer, no error, only silence
        with topology.socket_in("app") as new:
            new.settimeout(1.0)
            with pytest.raises(TimeoutError):
                new.connect((DP_ADDR, port))  # the SYN vanishes: no refusal, a timeout
        assert sum(topology.relay_control()["dropped"].values()) > 0
        topology.relay_control(blackhole=False)
        old.settimeout(10.0)
        assert old.recv(16) == b"again"  # TCP retransmits it once the path is back
        with topology.socket_in("app") as new:
            new.settimeout(5.0)
            new.connect((DP_ADDR, port))


# -- the TCP fault relay: on loopback, no namespace needed ---------------------------------------------------


@pytest.fixture
def fault_relay(tmp_path: Path) -> Iterator[tuple[int, str, DevServer]]:
    """(relay port, control socket path, devserver) with the relay in front of an in-process devserver."""
    dev = DevServer("127.0.0.1", 0, ["k"], out=None, faults=Faults(), quiet=True)
    dev.start()
    sock_path = str(tmp_path / "tcpfault.sock")
    log = open(tmp_path / "tcpfault.log", "wb")  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "tests.net.tcpfault", "--listen", "127.0.0.1:0"]
    argv += ["--upstream", f"127.0.0.1:{dev.port}", "--control", sock_path]
    proc = subprocess.Popen(
        argv,
        cwd=netns.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        port = int(wait_line(proc, "ready", 15).split()[1])
        yield port, sock_path, dev
    finally:
        stop(proc)
        assert proc.stdout is not None
        proc.stdout.close()
        log.close()
        dev.close()


REQUEST = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic azo=\r\nContent-Length: %d\r\n\r\n%s"
BODY = orjson.dumps({"batch": [{"userId": "u", "type": "track", "event": "E", "messageId": "m"}]})
ANSWER = b"HTTP/1.1 200 OK"


def client(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(REQUEST % (len(BODY), BODY))
    return sock


def test_pass_forwards_the_whole_answer(fault_relay: tuple[int, str, DevServer]) -> None:
    port, _, dev = fault_relay
    with client(port) as sock:
        data = b""
        while not data.endswith(b"ok"):
            data += sock.recv(4096)
    assert data.startswith(ANSWER)
    assert dev.stats.events == 1


def test_reset_sends_part_of_the_answer_then_an_rst(fault_relay: tuple[int, str, DevServer]) -> None:
    port, path, dev = fault_relay
    control.request(path, {"mode": "reset", "reset_after": 9})
    with client(port) as sock:
        received: list[bytes] = []

        def read_until_reset() -> None:
            while chunk := sock.recv(4096):
                received.append(chunk)

        with pytest.raises(ConnectionResetError):
            read_until_reset()
    assert b"".join(received) == ANSWER[:9]
    assert dev.stats.events == 1  # the data plane stored the batch: a retry duplicates it
    assert control.request(path, {"since": 0})["exchanges"][0]["outcome"] == "reset"


def test_never_accepts_and_never_answers(fault_relay: tuple[int, str, DevServer]) -> None:
    port, path, dev = fault_relay
    control.request(path, {"mode": "never"})
    with client(port, timeout=1.0) as sock, pytest.raises(TimeoutError):
        sock.recv(4096)
    assert dev.stats.requests == 0  # not even forwarded

    def ended() -> dict[str, float] | None:
        exchange = control.request(path, {"since": 0})["exchanges"][0]
        return exchange if exchange["outcome"] == "client_closed" else None

    exchange = wait_for(ended, timeout=10)
    assert exchange["wait_s"] >= 0.9  # the client waited (about) its whole timeout


def test_trickle_sends_one_byte_at_a_time(fault_relay: tuple[int, str, DevServer]) -> None:
    port, path, _ = fault_relay
    control.request(path, {"mode": "trickle", "trickle_s": 0.2})
    arrivals = []
    with client(port) as sock:
        for _ in range(4):
            assert len(sock.recv(4096)) == 1
            arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.15
    wait_for(lambda: control.request(path, {"since": 0})["exchanges"][0]["outcome"] == "client_closed")


def test_drop_all_resets_idle_connections(fault_relay: tuple[int, str, DevServer]) -> None:
    port, path, _ = fault_relay
    with client(port) as sock:
        data = b""
        while not data.endswith(b"ok"):
            data += sock.recv(4096)
        control.request(path, {"drop_all": True})
        with pytest.raises(ConnectionResetError):
            sock.recv(4096)


# -- name resolution in the app namespace --------------------------------------------------------------------

RESOLVE = (
    "import socket,sys\ntry:\n print(socket.gethostbyname(sys.argv[1]))\nexcept OSError as e:\n print(e)"
)


def test_the_data_plane_name_resolves_then_fails_then_resolves(topology: Topology, tmp_path: Path) -> None:
    dns_sock = str(tmp_path / "dns.sock")
    responder = topology.spawn(
        "app",
        [sys.executable, "-m", "tests.net.dns", "--control", dns_sock, "--mode", "servfail"],
        "dns.log",
        stdout=subprocess.PIPE,
    )
    wait_line(responder, "ready", 15)

    def resolve() -> str:
        proc = topology.run("app", [sys.executable, "-c", RESOLVE, DATAPLANE_HOST])
        return proc.stdout.strip()

    assert resolve() == DP_ADDR
    assert control.request(dns_sock)["count"] == 0  # answered from hosts
    topology.set_hosts(resolvable=False)
    assert "Temporary failure in name resolution" in resolve()  # SERVFAIL
    assert {q["name"] for q in control.request(dns_sock)["queries"]} == {DATAPLANE_HOST}
    topology.set_hosts(resolvable=True)
    assert resolve() == DP_ADDR
    # Outside the namespace the name does not exist: the files are only bind-mounted there.
    with pytest.raises(socket.gaierror):
        socket.gethostbyname(DATAPLANE_HOST)


# -- set-up and tear-down ----------------------------------------------------------------------------------


def test_close_removes_namespaces_devices_files_and_processes(netns_ready: None, tmp_path: Path) -> None:
    topo = Topology(tmp_path)
    try:
        topo.start()
        sleeper = topo.spawn("app", ["sleep", "600"], "sleep.log")
        relay = topo.relay
        assert relay is not None
        assert (netns.NETNS_ETC / topo.app / "hosts").exists()
        assert "POINTOPOINT" in netns.ip("-n", topo.app, "-o", "link").stdout  # the relay's TUN device
    finally:
        topo.close()
    names = netns.ip("netns", "list").stdout
    assert topo.app not in names
    assert topo.dp not in names
    assert not (netns.NETNS_ETC / topo.app).exists()
    assert sleeper.returncode is not None
    assert relay.returncode is not None  # the devices went with it


CRASHING_RUN = """
import sys, time
from pathlib import Path
from tests.net.netns import Topology
topo = Topology(Path(sys.argv[1])).start()
sleeper = topo.spawn("app", ["sleep", "600"], "sleep.log")
print(topo.tag, topo.relay.pid, sleeper.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """The process has exited (a zombie that no one reaps counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def test_a_crashed_runs_leftovers_are_removed(topology: Topology, tmp_path: Path) -> None:
    """A run SIGKILLed mid-test leaves its namespaces, /etc/netns files and processes inside them; its
    relay follows it (PR_SET_PDEATHSIG); the next run removes the rest, and keeps live runs' own."""
    (tmp_path / "crashed").mkdir()
    crashed = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, str(tmp_path / "crashed")],
        cwd=netns.REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        tag, relay_pid, sleeper_pid = wait_line(crashed, netns.PREFIX, 30).split()
    finally:
        crashed.kill()
        crashed.wait()
        assert crashed.stdout is not None
        crashed.stdout.close()
    names = {f"{tag}-app", f"{tag}-dp"}
    try:
        wait_for(lambda: gone(int(relay_pid)), timeout=10)
        assert names <= set(netns.ip("netns", "list").stdout.split())
        assert names <= set(netns.remove_stale())
        assert not names & set(netns.ip("netns", "list").stdout.split())
        assert not (netns.NETNS_ETC / f"{tag}-app").exists()
        wait_for(lambda: gone(int(sleeper_pid)), timeout=10)
        assert topology.app in netns.ip("netns", "list").stdout  # a live run's namespaces are kept
    finally:
        for name in names:
            netns.ip("netns", "del", name, check=False)
            shutil.rmtree(netns.NETNS_ETC / name, ignore_errors=True)


# -- the skip that CI may not take -------------------------------------------------------------------------


def test_unavailable_namespaces_skip_or_fail_as_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no /dev/net/tun"):
        unavailable("no /dev/net/tun")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no /dev/net/tun"):
        unavailable("no /dev/net/tun")
