"""End-to-end fixtures: the real ``rudder-fast devserver``, the real ``rudder-fast-sender`` and real
producer processes, all on this machine and on 127.0.0.1 only.

Every process started here is stopped here: the devserver and every ``Popen`` sender by fixture
finalizers (terminate, then kill), producers by :func:`fill_spool` itself (killed at its deadline).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import multiprocessing
import os
import select
import signal
import ssl
import subprocess
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from tests.support import console_script

HOST = "127.0.0.1"
DEVSERVER_START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
PRODUCER_TIMEOUT_S = 120.0

# Never through a proxy: the devserver is on the loopback interface.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- time helpers ---------------------------------------------------------------------------------------


def iso_ms(value: str) -> int:
    """Epoch milliseconds of a wire timestamp (``2026-11-26T10:01:02.345Z``); asserts the format."""
    assert isinstance(value, str), value
    assert value.endswith("Z") and len(value) == 24 and value[19] == ".", value
    parsed = dt.datetime.fromisoformat(value[:-1] + "+00:00")
    return int(parsed.timestamp() * 1000 + 0.5)


# -- the devserver ----------------------------------------------------------------------------------------


@dataclass
class DevServer:
    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    log: Path
    cafile: Path | None = None  # HTTPS (its certificate), or plain HTTP

    @property
    def url(self) -> str:
        """The data plane's base URL (without ``/v1/batch``)."""
        return f"{'https' if self.cafile else 'http'}://{HOST}:{self.port}"

    def _request(self, path: str, data: bytes | None = None, timeout: float = 5.0) -> bytes:
        req = urllib.request.Request(f"{self.url}{path}", data=data, method="GET")
        if data is not None:
            req.method = "POST"
            req.add_header("Content-Type", "application/json")
        opener = _OPENER
        if self.cafile is not None:
            tls = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(self.cafile)))
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), tls)
        with opener.open(req, timeout=timeout) as resp:
            body: bytes = resp.read()
            assert resp.status == 200, (resp.status, body)
            return body

    def control(self, cmd: dict[str, Any]) -> None:
        """Set fault switches (``POST /_control``).

        ``down_for`` closes the port, possibly before the answer to this very request is written: then
        the request counts as done if the port is closed right after.
        """
        try:
            self._request("/_control", json.dumps(cmd).encode())
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError):
            if "down_for" not in cmd:
                raise

    def stats(self) -> dict[str, Any]:
        """``GET /_stats``: requests, events, by_status, gzip_requests, plain_requests."""
        result: dict[str, Any] = json.loads(self._request("/_stats"))
        return result

    def try_stats(self) -> dict[str, Any] | None:
        """Like :meth:`stats`, but None while the port is closed (``down_for``)."""
        try:
            return self.stats()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def received(self) -> list[dict[str, Any]]:
        """Every accepted event so far, in order (complete lines of ``--out`` only)."""
        if not self.out.exists():
            return []
        data = self.out.read_bytes()
        end = data.rfind(b"\n")
        return [orjson.loads(line) for line in data[: end + 1].splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, then SIGKILL: the process is reaped whatever happens. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


def _read_first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"devserver printed no first line within {timeout} s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"devserver exited before listening (rc={proc.wait(5)}, out={buf!r})")
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


@pytest.fixture
def start_devserver(tmp_path: Path) -> Iterator[Callable[..., DevServer]]:
    """Factory: ``start_devserver(write_keys=(), extra_args=())`` starts a real devserver."""
    started: list[DevServer] = []
    logs: list[IO[bytes]] = []

    def start(
        write_keys: Sequence[str] = (), extra_args: Sequence[str] = (), tls: tuple[Path, Path] | None = None
    ) -> DevServer:
        n = len(started)
        out = tmp_path / f"out{n or ''}.jsonl"
        log_path = tmp_path / f"devserver{n or ''}.log"
        cmd = [console_script("rudder-fast"), "devserver", "--port", "0", "--out", str(out), "--quiet"]
        for key in write_keys:
            cmd += ["--write-key", key]
        cmd += list(extra_args)
        if tls is not None:
            cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        log = open(log_path, "wb")  # noqa: SIM115 - closed by the finalizer
        logs.append(log)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        try:
            line = _read_first_line(proc, DEVSERVER_START_TIMEOUT_S)
            prefix = f"listening on {'https' if tls else 'http'}://{HOST}:"
            assert line.startswith(prefix), line
            port = int(line[len(prefix) :])
        except BaseException:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
            raise
        server = DevServer(proc, port, out, log_path, tls[0] if tls else None)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
        for log in logs:
            log.close()


@pytest.fixture
def devserver(start_devserver: Callable[..., DevServer]) -> DevServer:
    """A devserver accepting any non-empty write key."""
    return start_devserver()


# -- the sender -------------------------------------------------------------------------------------------


def sender_env(
    spool_dir: Path, url: str | None, write_key: str | None = "e2e-key", **extra: str
) -> dict[str, str]:
    """The sender's environment: no RUDDER_* variable of the caller's leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
    env["RUDDER_FAST_SPOOL_DIR"] = str(spool_dir)
    if url is not None:
        env["RUDDER_DATA_PLANE_URL"] = url
    if write_key is not None:
        env["RUDDER_WRITE_KEY"] = write_key
    env.update(extra)
    return env


@dataclass
class RunningSender:
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code; kills the sender and fails the test at the deadline."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"sender {self.pid} still running after {timeout} s:\n{self.stderr()[-4000:]}"
            ) from None


class Senders:
    """Runs the real ``rudder-fast-sender`` console script, to completion or in the background."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.exe = console_script("rudder-fast-sender")
        self.running: list[RunningSender] = []
        self._files: list[IO[bytes]] = []

    def run(
        self, args: Sequence[str], env: dict[str, str], timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (killed, and the test failed, after ``timeout``)."""
        return subprocess.run(
            [self.exe, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, args: Sequence[str], env: dict[str, str]) -> RunningSender:
        """Start in the background; stdout and stderr go to a log file. Stopped at teardown."""
        log_path = self.tmp_path / f"sender-{len(self.running)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
        self._files.append(log)
        proc = subprocess.Popen([self.exe, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        running = RunningSender(proc, log_path)
        self.running.append(running)
        return running

    def close(self) -> None:
        for running in self.running:
            if running.proc.poll() is None:
                running.proc.kill()
            running.proc.wait()
        for f in self._files:
            f.close()


@pytest.fixture
def senders(tmp_path: Path) -> Iterator[Senders]:
    s = Senders(tmp_path)
    try:
        yield s
    finally:
        s.close()


# -- producers --------------------------------------------------------------------------------------------

Identity = Callable[[int, int], tuple[str | None, str | None]]


def default_identity(producer: int, j: int) -> tuple[str | None, str | None]:
    """(user_id, anonymous_id): mostly users, every 7th event anonymous only."""
    if j % 7 == 3:
        return None, f"anon-{producer}-{j}"
    return f"user-{producer}-{j}", None


@dataclass
class Produced:
    """What the producers reported: every messageId their calls returned, with the call's time window."""

    ids: list[str] = field(default_factory=list)
    user_of: dict[str, str | None] = field(default_factory=dict)
    window_ms: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (before, after) in ms

    @property
    def id_set(self) -> set[str]:
        return set(self.ids)


def _produce(
    spool_dir: str, index: int, count: int, identity: Identity, report: str, close: bool, payload: int
) -> None:
    """Child body: ``count`` track calls, then the messageIds and the time window to ``report``."""
    from rudder_fast import Emitter

    em = Emitter(spool_dir)
    rows = []
    padding = "x" * payload
    t0 = time.time_ns()
    for j in range(count):
        user_id, anonymous_id = identity(index, j)
        mid = em.track(
            user_id=user_id,
            anonymous_id=anonymous_id,
            event="E2E Event",
            properties={"producer": index, "n": j, "pad": padding},
        )
        rows.append([mid, user_id])
    t1 = time.time_ns()
    if close:
        em.close()  # half the producers seal their segment, the others just exit
    tmp = report + ".tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"t0": t0, "t1": t1, "rows": rows}))
    os.replace(tmp, report)


def _child(*args: Any) -> None:
    try:
        _produce(*args)
    except BaseException:
        traceback.print_exc()
        os._exit(70)


def fill_spool(
    spool_dir: Path,
    processes: int,
    per_process: int,
    *,
    identity: Identity = default_identity,
    payload: int = 0,
    timeout: float = PRODUCER_TIMEOUT_S,
) -> Produced:
    """Fork ``processes`` producers, each making ``per_process`` track calls on ``spool_dir``; wait."""
    ctx = multiprocessing.get_context("fork")
    report_dir = spool_dir.parent / f"produced-{time.time_ns()}"
    report_dir.mkdir(parents=True)
    procs = []
    try:
        for i in range(processes):
            report = str(report_dir / f"{i}.json")
            p = ctx.Process(
                target=_child,
                args=(str(spool_dir), i, per_process, identity, report, i % 2 == 0, payload),
                daemon=True,
            )
            p.start()
            procs.append((p, report))
        deadline = time.monotonic() + timeout
        for p, _ in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            assert p.exitcode == 0, f"producer {p.pid} exit code {p.exitcode}"
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.kill()
                p.join()
            p.close()
    produced = Produced()
    for _, report in procs:
        doc = orjson.loads(Path(report).read_bytes())
        window = (doc["t0"] // 1_000_000, doc["t1"] // 1_000_000)
        for mid, user_id in doc["rows"]:
            assert mid is not None, "a producer's event was dropped"
            produced.ids.append(mid)
            produced.user_of[mid] = user_id
            produced.window_ms[mid] = window
    assert len(produced.id_set) == len(produced.ids) == processes * per_process
    return produced


# -- checks shared by the tests ---------------------------------------------------------------------------


def read_rejected(spool_dir: Path) -> list[dict[str, Any]]:
    rejected = spool_dir / "rejected"
    lines: list[dict[str, Any]] = []
    for path in sorted(rejected.glob("*.jsonl")) if rejected.exists() else []:
        lines += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return lines


def read_status(spool_dir: Path) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = orjson.loads((spool_dir / "status").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return result


def tail(text: str, n: int = 3000) -> str:
    return text[-n:]
