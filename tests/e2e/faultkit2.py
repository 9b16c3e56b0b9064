"""Helpers for the fault tests (test_fault_gunicorn, test_fault_torn, test_fault_soak).

Everything here runs real processes on this machine and talks to 127.0.0.1 only. The fixtures of
``conftest.py`` (devserver, senders) are reused; this module adds what they lack:

- :class:`ProcGroup`: starts processes in their own session and stops every one of them (SIGTERM, wait,
  then SIGKILL to the whole process group: a killed gunicorn master must not leave workers behind);
- :func:`http_load`: a bounded keep-alive HTTP client (a few threads of ``http.client``);
- :class:`OutTail`: reads the devserver's ``--out`` file incrementally (counts duplicates);
- :func:`scan_spool`: an independent reader of segment files (not the library's decoder), which counts
  complete frames and the torn tail bytes the sender should skip;
- :class:`RssSampler` and :class:`Flapper` for the soak;
- producer programs, run as ``python -m tests.e2e.faultkit2 <command> ...`` from the repository root.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from tests.e2e.conftest import DevServer, Senders

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = Path(__file__).resolve().parent / "apps"
BIN = Path(sys.executable).parent


# -- processes ------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the usual small race is acceptable on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcGroup:
    """Starts processes (each the leader of its own process group) and stops them all on close.

    ``stop`` sends one signal to the leader and waits; whatever is left of its group at the deadline
    (or after the leader exited: orphaned workers) is SIGKILLed by process group id.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def __enter__(self) -> ProcGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str],
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        assert name not in self.procs, name
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self._files.append(log)
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str, n: int = 4000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the leader, wait up to ``timeout``; then SIGKILL the group. The leader's exit code,
        or None if it had to be killed."""
        proc = self.procs[name]
        code: int | None = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = proc.returncode
        self._kill_group(proc)
        return code

    def leftovers(self, name: str) -> bool:
        """True if members of the process's group outlived its leader (orphaned children)."""
        return _group_alive(self.procs[name].pid)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # orphans are reaped by init: wait for them to go

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            self._kill_group(proc)
        for f in self._files:
            f.close()
        self._files = []


def producer_env(spool_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an app/producer process: the spool from RUDDER_FAST_SPOOL_DIR, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
    env["RUDDER_FAST_SPOOL_DIR"] = str(spool_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(APPS_DIR)])
    env.update(extra)
    return env


def kit_command(*args: object) -> list[str]:
    """Run one of this module's producer programs (cwd must be REPO_ROOT or PYTHONPATH set)."""
    return [sys.executable, "-m", "tests.e2e.faultkit2", *(str(a) for a in args)]


def wait_http(
    port: int, proc: subprocess.Popen[bytes], path: str, timeout: float, log: Callable[[], str]
) -> bytes:
    """GET ``path`` until it answers 200 (the server is up); fail early if the server exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before serving:\n{log()}")
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                return body
            last = f"HTTP {resp.status}"
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"server on port {port} not ready within {timeout} s ({last}):\n{log()}")
        time.sleep(0.05)


@dataclass
class Reply:
    n: int
    message_id: str
    pid: int
    hooks: int


def http_load(
    port: int,
    total: int,
    *,
    threads: int = 4,
    timeout: float = 90.0,
    reconnect_every: int = 25,
    query: Callable[[int], str] = lambda n: "",
) -> list[Reply]:
    """Send ``total`` GET requests from ``threads`` keep-alive clients (a new connection every
    ``reconnect_every`` requests, so the load spreads over the workers). Never retries a request (a
    retry could record an event twice); any error or the deadline fails the test."""
    lock = threading.Lock()
    next_n = [0]
    replies: list[Reply] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        on_conn = 0
        try:
            while not errors:
                with lock:
                    n = next_n[0]
                    if n >= total:
                        return
                    next_n[0] = n + 1
                if time.monotonic() > deadline:
                    errors.append(f"deadline of {timeout} s reached at request {n}")
                    return
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, port, timeout=15)
                    on_conn = 0
                conn.request("GET", f"/track?n={n}{query(n)}")
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    errors.append(f"request {n}: HTTP {resp.status} {body[:200]}")
                    return
                mid, pid, hooks = body.split()
                with lock:
                    replies.append(Reply(n, mid, int(pid), int(hooks)))
                on_conn += 1
                if resp.will_close or on_conn >= reconnect_every:
                    conn.close()
                    conn = None
        except Exception as exc:
            errors.append(f"client error: {exc!r}")
        finally:
            if conn is not None:
                conn.close()

    workers = [threading.Thread(target=client, name=f"http-load-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(max(0.0, deadline - time.monotonic()) + 20)
    assert not any(t.is_alive() for t in workers), "HTTP clients still running after the deadline"
    assert not errors, errors[:5]
    assert len(replies) == total, (len(replies), total)
    return replies


# -- what the devserver received ------------------------------------------------------------------------


class OutTail:
    """Reads the devserver's ``--out`` JSON lines incrementally: only complete lines, each once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: dict[str, dict[str, Any]] = {}
        self.total = 0

    def poll(self) -> int:
        """Read what was appended since the last call; the number of new events."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        self.offset += end + 1
        new = 0
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            event = orjson.loads(line)
            mid = event["messageId"]
            self.counts[mid] += 1
            self.events.setdefault(mid, event)
            new += 1
        self.total += new
        return new

    @property
    def ids(self) -> set[str]:
        return set(self.counts)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first of each messageId."""
        return self.total - len(self.counts)


def drain(senders: Senders, spool_dir: Path, devserver: DevServer, timeout: float = 90.0) -> str:
    """Run ``rudder-fast-sender --drain`` to the devserver; assert it exits 0. Its stderr."""
    from tests.e2e.conftest import sender_env

    proc = senders.run(
        ["--drain", "--drain-timeout", str(timeout)],
        sender_env(spool_dir, devserver.url),
        timeout=timeout + 30,
    )
    assert proc.returncode == 0, f"drain failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stderr


def status_json(spool_dir: Path) -> dict[str, Any]:
    """``rudder-fast status --json`` for real."""
    from tests.support import console_script

    proc = subprocess.run(
        [console_script("rudder-fast"), "status", "--json", "--spool-dir", str(spool_dir)],
        capture_output=True,
        timeout=60,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def segment_pids(spool_dir: Path) -> dict[str, int]:
    """``{segment name: writer pid}`` from names of the form ``<nonce>-<pid>-<n>.seg``."""
    out = {}
    seg_dir = spool_dir / "segments"
    for path in sorted(seg_dir.glob("*.seg")) if seg_dir.exists() else []:
        nonce, pid, index = path.name[: -len(".seg")].split("-")
        assert len(nonce) == 16 and index.isdigit(), path.name
        out[path.name] = int(pid)
    return out


# -- an independent reader of the spool format (DESIGN.md), not the library's decoder -------------------

_HEADER_SIZE = 48
_MAGIC = b"RFSPOOL\x00"
_SYNC = 0x1CA92EF5
_HEAD = struct.Struct("<IIIB3xQ")  # sync, crc32 (of everything after it), len, type, seq
_MAX_PAYLOAD = 4_000_000


@dataclass
class SegmentScan:
    name: str
    frames: int = 0
    events: int = 0
    torn_bytes: int = 0  # bytes after the last complete frame
    corrupt: list[str] = field(default_factory=list)


def scan_segment(path: Path) -> SegmentScan:
    data = path.read_bytes()
    scan = SegmentScan(path.name)
    if len(data) < _HEADER_SIZE or data[:8] != _MAGIC:
        scan.corrupt.append(f"bad header ({len(data)} bytes)")
        return scan
    pos = _HEADER_SIZE
    while pos < len(data):
        left = len(data) - pos
        if left < _HEAD.size:
            scan.torn_bytes = left
            break
        sync, crc, length, kind, _seq = _HEAD.unpack_from(data, pos)
        if sync != _SYNC or length > _MAX_PAYLOAD:
            scan.corrupt.append(f"no frame at offset {pos}")
            break
        end = pos + _HEAD.size + length
        if end > len(data):
            scan.torn_bytes = left
            break
        if zlib.crc32(data[pos + 8 : end]) != crc:
            # A complete-looking frame with a bad CRC: only acceptable as the very last bytes (a
            # short write the kernel finished with zeros is not expected; report it).
            scan.corrupt.append(f"bad crc at offset {pos} (last frame: {end == len(data)})")
            break
        scan.frames += 1
        scan.events += kind == 1
        pos = end
    return scan


def scan_spool(spool_dir: Path) -> list[SegmentScan]:
    seg_dir = spool_dir / "segments"
    return [scan_segment(p) for p in sorted(seg_dir.glob("*.seg"))] if seg_dir.exists() else []


# -- the soak's instruments -----------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples a process's RSS (psutil) every ``interval`` seconds until stopped or the process ends."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(name=f"rss-{pid}", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.error: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            t0 = time.monotonic()
            while True:
                try:
                    self.samples.append((time.monotonic() - t0, proc.memory_info().rss))
                except psutil.NoSuchProcess:
                    return
                if self._stop_event.wait(self.interval):
                    return
        except Exception as exc:
            self.error = repr(exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


class Flapper(threading.Thread):
    """Makes the devserver flap until stopped: 503 for ~1 s, down (connection refused) for ~1 s,
    200 ms latency for ~1 s, healthy for ~2 s, and again. Leaves it healthy."""

    def __init__(self, devserver: DevServer, phase_s: float = 1.0, healthy_s: float = 2.0) -> None:
        super().__init__(name="flapper", daemon=True)
        self.dev = devserver
        self.phase_s = phase_s
        self.healthy_s = healthy_s
        self.cycles = 0
        self.down_seen = 0
        self.error: str | None = None
        self._stop_event = threading.Event()

    def _control(self, cmd: dict[str, Any], timeout: float = 10.0) -> None:
        """Send a fault switch, retrying while the port is closed (after a ``down_for``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.dev.control(cmd)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                self._control({"fail_status": 503, "fail_for": self.phase_s})
                if self._stop_event.wait(self.phase_s):
                    break
                self._control({"down_for": self.phase_s})
                t_down = time.monotonic()
                while time.monotonic() - t_down < self.phase_s / 2:
                    if self.dev.try_stats() is None:  # the port really is closed
                        self.down_seen += 1
                        break
                    time.sleep(0.02)
                if self._stop_event.wait(max(0.0, self.phase_s - (time.monotonic() - t_down))):
                    break
                self._control({"latency_ms": 200})  # retried until the port is open again
                if self._stop_event.wait(self.phase_s):
                    break
                self._control({"latency_ms": 0})
                self.cycles += 1
                if self._stop_event.wait(self.healthy_s):
                    break
        except Exception as exc:
            self.error = f"{exc!r}\n{traceback.format_exc()}"

    def stop(self) -> None:
        """Stop flapping and make the devserver healthy (waits for its port to be open again)."""
        self._stop_event.set()
        self.join(30)
        self._control({"fail_status": None, "latency_ms": 0}, timeout=30)


def read_id_report(path: Path) -> list[str]:
    """The ids a producer reported, one per complete line (a torn last line is ignored)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n")
    return [line.decode() for line in data[: end + 1].splitlines() if line]


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a child's stdout pipe, or b"" at EOF; fails the test at the deadline."""
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line within {timeout} s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        byte = os.read(fd, 1)
        if not byte:
            return buf
        buf += byte
    return buf


# -- producer programs (child processes) ----------------------------------------------------------------

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_/"
TORN_SIZES = (24,) * 12 + (300,) * 4 + (3_000, 12_000)  # mostly small; some frames span pages


def torn_payload(rng: random.Random, blob: str) -> dict[str, Any]:
    size = rng.choice(TORN_SIZES)
    start = rng.randrange(0, len(blob) - size)
    pad = blob[start : start + size]
    return {"len": size, "crc": zlib.crc32(pad.encode()), "pad": pad}


def _torn(report: str, index: str, seed: str, go: str) -> None:
    """Announce readiness (``report`` + ``.ready``), wait for the file ``go``, then a tight loop: one
    track call, then its messageId appended to ``report`` (one write each), until SIGKILLed."""
    from rudder_fast import emit

    rng = random.Random(int(seed))
    blob = "".join(rng.choice(_ALPHABET) for _ in range(16_384))
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    Path(report + ".ready").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 60 s")
        time.sleep(0.002)
    i = 0
    while True:
        props = torn_payload(rng, blob)
        props["i"] = i
        mid = emit.track(user_id=f"torn-{index}", event="Torn", properties=props)
        os.write(fd, f"{mid}\n".encode())
        i += 1


def _paced(report: str, index: str, rate: str, seconds: str) -> None:
    """``rate`` events a second for ``seconds``, each messageId appended to ``report`` after return."""
    from rudder_fast import emit

    per_s = float(rate)
    with open(report, "a", buffering=1) as f:
        start = time.monotonic()
        i = 0
        while True:
            now = time.monotonic()
            if now - start >= float(seconds):
                break
            due = start + i / per_s
            if due > now:
                time.sleep(due - now)
            mid = emit.track(
                user_id=f"soak-{index}", event="Soak", properties={"i": i, "pad": "s" * (i % 512)}
            )
            f.write(f"{mid}\n")
            i += 1
    if int(index) % 2 == 0:
        emit.close()  # half seal their segment, the others just exit


def _cfork(report_dir: str, count: str) -> None:
    """fork() called through ctypes: Python's at-fork hooks do not run in the child (as under uWSGI
    without py-call-osafterfork). The parent records events before and after; the child in between."""
    import ctypes

    from rudder_fast import emit

    n = int(count)
    out = Path(report_dir)

    def track(phase: str, j: int) -> str | None:
        return emit.track(
            user_id=f"cfork-{phase}", event="CFork", properties={"phase": phase, "j": j, "pid": os.getpid()}
        )

    before = [track("before", j) for j in range(n)]
    segment_before = emit.stats()["segment"]
    hooks: list[int] = []
    os.register_at_fork(after_in_child=lambda: hooks.append(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = libc.fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork() failed")
    if pid == 0:
        code = 0
        try:
            ids = [track("child", j) for j in range(n)]
            segment = emit.stats()["segment"]
            doc = {"pid": os.getpid(), "hooks_ran": bool(hooks), "ids": ids, "segment": segment}
            (out / "child.json").write_text(json.dumps(doc))
        except BaseException:
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    after = [track("after", j) for j in range(n)]
    doc = {
        "pid": os.getpid(),
        "child_pid": pid,
        "child_status": status,
        "before": before,
        "after": after,
        "segment_before": segment_before,
        "segment_after": emit.stats()["segment"],
    }
    (out / "parent.json").write_text(json.dumps(doc))
    print("ready", flush=True)
    sys.stdin.readline()  # the test probes our segment's lock meanwhile
    last = track("last", 0)
    print(json.dumps({"last": last}), flush=True)


_COMMANDS: dict[str, Callable[..., None]] = {"torn": _torn, "paced": _paced, "cfork": _cfork}


def main(argv: Sequence[str]) -> None:
    try:
        _COMMANDS[argv[0]](*argv[1:])
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(70)


if __name__ == "__main__":
    main(sys.argv[1:])
