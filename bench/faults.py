"""What is lost when things go wrong? rudder_fast and rudder-sdk-python side by side, measured for real.

Each fault is played by real processes against a loopback data plane (``rudder-fast devserver --out``,
one per library, so the two never share a port or a count). For rudder_fast a real
``rudder-fast-sender`` runs the whole time, as it would on a host; for rudder-sdk-python 2.1.9 each
producer has its own ``Client`` with the SDK's defaults (gzip, batches of 100 every 0.5 s, a queue of
10,000, 10 retries). Every event carries a run tag and its number, so the data plane's ``--out`` file tells
exactly which events arrived (and whether any arrived twice). Both libraries face the same fault at the
same time, each in its own producer process:

1. **SIGKILL**: a producer makes N ``track`` calls, says so, and is killed at once with SIGKILL by this
   script (the OOM killer, ``kill -9``, a container stopped without grace).
2. **fork after create** (gunicorn ``--preload``): the client is created in the parent, which tracks one
   event and then forks; the child tracks N events and exits normally without a flush, with ``sys.exit``
   (a gunicorn worker: atexit handlers run) in 2a and with ``os._exit`` (what ``multiprocessing`` does
   after the target returns) in 2b.
3. **exit without flush**: a producer tracks N events and returns from its main; the interpreter exits
   normally (the SDK's atexit handler runs).
4. **data-plane outage**: the devservers close their port (``POST /_control {"down_for": s}``); during
   the outage each producer tracks N events, spread over the first half of it; then the data plane comes
   back, the producers stay alive, and whatever arrives within a generous window counts.

"tracked" is the number of calls that said they accepted the event (rudder_fast: a messageId; the SDK:
``(True, msg)``); "lost" is tracked minus delivered. rudder-sdk-python's count is final once the process
that held its queue has exited (nothing else can send those events); rudder_fast's once every event has
arrived, or after a settle time. This is a report, not a test: it exits 0 when it ran. ``--quick`` fits
in about a minute (a 5 s outage instead of 10 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the helpers shared with the tests
from _common import EVENT, FAST, PROPERTIES, SDK, WRITE_KEY  # a sibling module: bench/ is not a package

from tests.support.devserver import DevServer
from tests.support.processes import HOST, console_script

LIBS: Final = (FAST, SDK)

SIGKILL: Final = "sigkill"
FORK_SYS_EXIT: Final = "fork_sys_exit"
FORK_OS_EXIT: Final = "fork_os_exit"
EXIT_NO_FLUSH: Final = "exit_no_flush"
OUTAGE: Final = "outage"

POLL_S: Final = 0.05
CHILD_TIMEOUT_S: Final = 60.0  # a producer that says nothing for this long is hung: killed, noted
SDK_GRACE_S: Final = 1.0  # after the SDK's holder process is gone, for a last answer in flight


@dataclass(frozen=True)
class Plan:
    name: str
    events: int  # N: track calls per producer per run
    runs: int  # each fault played this many times
    outage_s: float
    window_s: float  # after an outage: how long delivery may take once the data plane is back
    settle_s: float  # after the other faults: how long rudder_fast's sender may take to deliver


QUICK: Final = Plan("quick", events=1_000, runs=2, outage_s=5.0, window_s=25.0, settle_s=20.0)
FULL: Final = Plan("full", events=1_000, runs=5, outage_s=10.0, window_s=60.0, settle_s=60.0)


@dataclass(frozen=True)
class Fault:
    key: str
    title: str
    short: str  # for chart labels


FAULTS: Final = (
    Fault(SIGKILL, "1. SIGKILL right after the calls", "SIGKILL\nright after the calls"),
    Fault(
        FORK_SYS_EXIT,
        "2a. fork after create (--preload), child sys.exit",
        "fork after create,\nchild sys.exit",
    ),
    Fault(
        FORK_OS_EXIT,
        "2b. fork after create, child os._exit (multiprocessing)",
        "fork after create,\nchild os._exit",
    ),
    Fault(EXIT_NO_FLUSH, "3. exit without flush", "exit\nwithout flush"),
    Fault(OUTAGE, "4. data-plane outage", "data-plane outage,\nproducer alive"),
)


# -- the producer, in its own process (``faults.py --child SPEC``) ---------------------------------


def say(**msg: Any) -> None:
    """One JSON line on stdout, written at once (no buffer a fork or ``os._exit`` could copy or lose)."""
    os.write(1, orjson.dumps(msg) + b"\n")


def make_tracker(lib: str, target: str) -> Callable[[str, int], bool]:
    """A function tracking event number ``i`` of run ``tag``: True if the library accepted it."""
    if lib == FAST:
        from rudder_fast import Emitter

        emitter = Emitter(target)

        def track_fast(tag: str, i: int) -> bool:
            props = {**PROPERTIES, "bench_tag": tag, "i": i}
            return emitter.track(user_id=f"user-{i % 100}", event=EVENT, properties=props) is not None

        return track_fast

    from rudderstack.analytics.client import Client

    client = Client(WRITE_KEY, host=target)  # the SDK's defaults

    def track_sdk(tag: str, i: int) -> bool:
        props = {**PROPERTIES, "bench_tag": tag, "i": i}
        ok, _ = client.track(user_id=f"user-{i % 100}", event=EVENT, properties=props)
        return bool(ok)

    return track_sdk


def track_many(track: Callable[[str, int], bool], tag: str, n: int, spread_s: float = 0.0) -> int:
    accepted = 0
    start = time.monotonic()
    for i in range(n):
        if spread_s:
            delay = start + spread_s * i / n - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        accepted += track(tag, i)
    return accepted


def child_main(spec: dict[str, Any]) -> int:
    fault: str = spec["fault"]
    lib: str = spec["lib"]
    tag: str = spec["tag"]
    n: int = spec["events"]
    track = make_tracker(lib, spec["target"])  # "at import": before anything else happens
    if fault in (SIGKILL, EXIT_NO_FLUSH):
        say(event="tracked", calls=n, tracked=track_many(track, tag, n))
        if fault == SIGKILL:
            sys.stdin.readline()  # killed while waiting here
        return 0  # EXIT_NO_FLUSH: return from main, no flush, no shutdown
    if fault in (FORK_SYS_EXIT, FORK_OS_EXIT):
        track(f"{tag}-parent", -1)  # the parent emits once before it forks (not counted)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            say(event="tracked", calls=n, tracked=track_many(track, tag, n), pid=os.getpid())
            if fault == FORK_OS_EXIT:
                os._exit(0)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        say(event="child_exited", code=os.waitstatus_to_exitcode(status))
        sys.stdin.readline()  # the master lives on until told
        return 0
    if fault == OUTAGE:
        say(event="ready")
        sys.stdin.readline()  # "go": the data plane is down
        say(event="tracked", calls=n, tracked=track_many(track, tag, n, spread_s=spec["spread_s"]))
        sys.stdin.readline()  # the window is over
        sys.stdout.flush()
        os._exit(0)  # no atexit: the SDK's join() could wait out a long backoff
    raise ValueError(f"unknown fault {fault!r}")


# -- processes driven by the harness ---------------------------------------------------------------


class Child:
    """A producer process (``script --child SPEC``, this one by default): its JSON lines read by a thread
    into a queue; ``kill_on``: SIGKILL it from that thread the moment it reports that event."""

    def __init__(
        self, spec: dict[str, Any], stderr: IO[bytes], kill_on: str | None = None, script: Path | None = None
    ) -> None:
        self.spec = spec
        self.kill_on = kill_on
        self.killed_at: float | None = None
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: dict[str, dict[str, Any]] = {}
        sys.stdout.flush()
        self.proc = subprocess.Popen(
            [sys.executable, str(script or Path(__file__).resolve()), "--child", orjson.dumps(spec).decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg: dict[str, Any] = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if self.kill_on is not None and msg.get("event") == self.kill_on:
                self.proc.send_signal(signal.SIGKILL)
                self.killed_at = time.monotonic()
            self.events.put(msg)

    def wait_for(self, event: str, timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while event not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty() and not self._reader.is_alive():
                    return None
                continue
            self.seen[str(msg.get("event"))] = msg
        return self.seen[event]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def exited(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def listening(server: DevServer) -> bool:
    """Whether the devserver's port accepts connections (it is closed during ``down_for``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((HOST, server.port)) == 0


def delivered_of(server: DevServer, tag: str) -> tuple[int, int]:
    """(distinct events of run ``tag`` in the devserver's --out file, copies beyond the first)."""
    assert server.out is not None
    try:
        data = server.out.read_bytes()
    except FileNotFoundError:
        return 0, 0
    seen: set[int] = set()
    copies = 0
    needle = tag.encode()
    for line in data.split(b"\n")[:-1]:  # complete lines only
        if needle not in line:
            continue
        try:
            props = orjson.loads(line).get("properties") or {}
        except orjson.JSONDecodeError:
            continue
        if props.get("bench_tag") == tag:
            copies += 1
            seen.add(int(props["i"]))
    return len(seen), copies - len(seen)


class SenderDaemon:
    """``rudder-fast-sender`` (not ``--drain``: the daemon, running throughout) on one spool."""

    def __init__(self, spool: Path, url: str, log: IO[bytes]) -> None:
        cmd = [
            console_script("rudder-fast-sender"),
            "--spool-dir", str(spool),
            "--write-key", WRITE_KEY,
            "--data-plane-url", url,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        status = spool / "status"
        deadline = time.monotonic() + 20
        while not status.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the sender did not start (exit {self.proc.poll()})")
            time.sleep(0.01)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- one run of one fault --------------------------------------------------------------------------


@dataclass
class LibRun:
    calls: int = 0
    tracked: int = 0
    delivered: int = 0
    duplicates: int = 0
    complete_s: float | None = None  # from the fault (outage: from recovery) to the last event arriving
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.tracked - self.delivered


@dataclass
class Stage:
    """Everything one run starts, stopped in reverse order by ``close``."""

    base: Path
    log: IO[bytes]
    servers: dict[str, DevServer] = field(default_factory=dict)
    children: dict[str, Child] = field(default_factory=dict)
    sender: SenderDaemon | None = None

    def __enter__(self) -> Stage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in self.children.values():
            child.stop()
        if self.sender is not None:
            self.sender.close()
        for server in self.servers.values():
            server.stop()


def tracked_of(child: Child, out: LibRun, timeout_s: float = CHILD_TIMEOUT_S) -> bool:
    msg = child.wait_for("tracked", timeout_s)
    if msg is None:
        out.notes.append(f"the producer never reported its calls (exit {child.proc.poll()})")
        return False
    out.calls, out.tracked = int(msg["calls"]), int(msg["tracked"])
    return True


def holder_gone(fault: str, child: Child) -> bool:
    """Whether the process that held the SDK's queue for the counted events has exited."""
    if fault in (SIGKILL, EXIT_NO_FLUSH):
        return child.proc.poll() is not None
    if fault in (FORK_SYS_EXIT, FORK_OS_EXIT):
        return "child_exited" in child.seen  # run_fault waited for it
    return False  # OUTAGE: the producer lives on


def await_delivery(
    stage: Stage, *, fault: str, tag: str, runs: dict[str, LibRun], start: dict[str, float], limit_s: float
) -> None:
    """Poll the data planes until each library has delivered all it tracked, or can deliver no more."""
    pending = {lib for lib in LIBS if runs[lib].tracked}
    gone_at: dict[str, float] = {}
    while pending:
        now = time.monotonic()
        for lib in sorted(pending):
            run = runs[lib]
            run.delivered, run.duplicates = delivered_of(stage.servers[lib], tag)
            if run.delivered >= run.tracked:
                run.complete_s = now - start[lib]
                pending.discard(lib)
                continue
            if lib == SDK and holder_gone(fault, stage.children[lib]):
                gone_at.setdefault(lib, now)
                if now - gone_at[lib] >= SDK_GRACE_S:
                    pending.discard(lib)
                    continue
            if now - start[lib] > limit_s:
                run.notes.append(f"{run.tracked - run.delivered} not delivered within {limit_s:.0f} s")
                pending.discard(lib)
        time.sleep(POLL_S)


def fault_played(fault: str, child: Child, run: LibRun) -> float:
    """Wait until the fault has happened to this producer (not the outage); when it did, which starts
    the delivery clock."""
    if fault == SIGKILL:
        child.exited(10)
        return child.killed_at or time.monotonic()
    if fault == EXIT_NO_FLUSH:
        code = child.exited(CHILD_TIMEOUT_S)
        if code is None:
            run.notes.append(f"did not exit within {CHILD_TIMEOUT_S:.0f} s (hung at exit)")
        elif code != 0:
            run.notes.append(f"exit code {code}")
        return time.monotonic()
    msg = child.wait_for("child_exited", CHILD_TIMEOUT_S)
    if msg is None:
        run.notes.append(f"forked child did not exit within {CHILD_TIMEOUT_S:.0f} s")
    elif msg["code"] != 0:
        run.notes.append(f"forked child exit code {msg['code']}")
    return time.monotonic()


def run_fault(fault: str, plan: Plan, index: int, base: Path, log: IO[bytes]) -> dict[str, LibRun]:
    tag = f"{fault}-{index}-{os.getpid()}-{time.monotonic_ns()}"
    work = Path(tempfile.mkdtemp(prefix=f"{fault}-", dir=base))
    runs = {lib: LibRun() for lib in LIBS}
    with Stage(work, log) as stage:
        for lib in LIBS:
            stage.servers[lib] = DevServer.start(out=work / f"{lib}.jsonl", stderr=log)
        spool = work / "spool"
        stage.sender = SenderDaemon(spool, stage.servers[FAST].url, log)
        targets = {FAST: str(spool), SDK: stage.servers[SDK].url}
        spread_s = plan.outage_s / 2
        for lib in LIBS:
            spec = {"fault": fault, "lib": lib, "tag": tag, "events": plan.events, "target": targets[lib]}
            spec["spread_s"] = spread_s
            stage.children[lib] = Child(spec, log, kill_on="tracked" if fault == SIGKILL else None)
        start: dict[str, float] = {}
        if fault == OUTAGE:
            limit_s = play_outage(stage, plan, runs, start)
        else:
            limit_s = plan.settle_s
            for lib, child in stage.children.items():
                if tracked_of(child, runs[lib]):
                    start[lib] = fault_played(fault, child, runs[lib])
        for lib in LIBS:
            start.setdefault(lib, time.monotonic())
        await_delivery(stage, fault=fault, tag=tag, runs=runs, start=start, limit_s=limit_s)
    shutil.rmtree(work, ignore_errors=True)
    return runs


def ports_become(stage: Stage, *, listening_now: bool, within_s: float) -> bool:
    """Wait until every devserver's port is open (or every one closed); False at the deadline."""
    deadline = time.monotonic() + within_s
    while any(listening(s) != listening_now for s in stage.servers.values()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def play_outage(stage: Stage, plan: Plan, runs: dict[str, LibRun], start: dict[str, float]) -> float:
    """Down, track during it, back up: ``start`` set to the recovery; returns the delivery window."""
    for lib, child in stage.children.items():
        if child.wait_for("ready") is None:
            runs[lib].notes.append("the producer did not start")
    for server in stage.servers.values():
        server.control({"down_for": plan.outage_s})  # its answer may be cut off
    down_at = time.monotonic()
    if not ports_become(stage, listening_now=False, within_s=5):
        raise RuntimeError("the devservers did not close their port")
    for child in stage.children.values():
        child.send("go")
    for lib, child in stage.children.items():
        tracked_of(child, runs[lib], plan.outage_s + CHILD_TIMEOUT_S)
    time.sleep(max(0.0, down_at + plan.outage_s - time.monotonic()))
    ports_become(stage, listening_now=True, within_s=30)
    up_at = time.monotonic()
    for lib in LIBS:
        start[lib] = up_at
        delivered, _ = delivered_of(stage.servers[lib], str(stage.children[lib].spec["tag"]))
        if delivered:
            runs[lib].notes.append(f"{delivered} delivered while the data plane was down?")
    return plan.window_s


# -- report ----------------------------------------------------------------------------------------


@dataclass
class Totals:
    calls: int = 0
    tracked: int = 0
    delivered: int = 0
    duplicates: int = 0
    complete_s: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.tracked - self.delivered

    def add(self, run: LibRun) -> None:
        self.calls += run.calls
        self.tracked += run.tracked
        self.delivered += run.delivered
        self.duplicates += run.duplicates
        self.complete_s.append(run.complete_s)
        self.notes += run.notes


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def print_table(plan: Plan, totals: dict[str, dict[str, Totals]]) -> None:
    print()
    head = f"{'tracked':>9}{'delivered':>11}{'lost':>7}{'lost %':>8}"
    print(f"  {'':<58}| {FAST:<36}| {SDK}")
    print(f"  {'fault':<58}| {head:<36}| {head}")
    for f in FAULTS:
        cells = []
        for lib in LIBS:
            t = totals[f.key][lib]
            cells.append(f"{t.tracked:>9,}{t.delivered:>11,}{t.lost:>7,}{pct(t.lost, t.tracked):>8}")
        print(f"  {f.title:<58}| {cells[0]:<36}| {cells[1]}")
    print(
        f"  ({plan.runs} run(s) of {plan.events:,} track calls per library per fault, totals shown; outage: "
        f"{plan.outage_s:.0f} s, then {plan.window_s:.0f} s allowed for delivery)"
    )
    notes = [
        (f.title, lib, note)
        for f in FAULTS
        for lib in LIBS
        for note in dict.fromkeys(totals[f.key][lib].notes)
    ]
    dups = [(f.title, lib, totals[f.key][lib].duplicates) for f in FAULTS for lib in LIBS]
    if any(n for _, _, n in dups) or notes:
        print("  Notes")
        for title, lib, n in dups:
            if n:
                print(f"    {title}, {lib}: {n} duplicate deliveries (counted once above)")
        for title, lib, note in notes:
            print(f"    {title}, {lib}: {note}")
    print()
    print("  Time from the fault (outage: from the data plane's return) to the last event delivered, s")
    for f in FAULTS:
        cells = []
        for lib in LIBS:
            times = [x for x in totals[f.key][lib].complete_s if x is not None]
            cells.append(", ".join(f"{x:.2f}" for x in times) if times else "never complete")
        print(f"  {f.title:<58}| {cells[0]:<36}| {cells[1]}")


def run_all(plan: Plan, base: Path, log: IO[bytes]) -> dict[str, Any]:
    started = time.perf_counter()
    print(
        f"rudder_fast faults benchmark ({plan.name}): Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s), load average "
        + "/".join(f"{x:.1f}" for x in os.getloadavg()),
        flush=True,
    )
    totals: dict[str, dict[str, Totals]] = {f.key: {lib: Totals() for lib in LIBS} for f in FAULTS}
    per_run: dict[str, list[dict[str, Any]]] = {f.key: [] for f in FAULTS}
    for r in range(plan.runs):
        for f in FAULTS:
            t0 = time.perf_counter()
            runs = run_fault(f.key, plan, r, base, log)
            for lib, run in runs.items():
                totals[f.key][lib].add(run)
            per_run[f.key].append({lib: {**asdict(run), "lost": run.lost} for lib, run in runs.items()})
            print(
                f"  run {r + 1}, {f.title}: "
                + "; ".join(
                    f"{lib} {run.delivered:,} of {run.tracked:,} delivered" for lib, run in runs.items()
                )
                + f" ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    print_table(plan, totals)
    seconds = time.perf_counter() - started
    print()
    print(f"took {seconds:.1f} s; load average " + "/".join(f"{x:.1f}" for x in os.getloadavg()))
    return {
        "bench": "faults",
        "plan": plan.name,
        "events": plan.events,
        "runs": plan.runs,
        "outage_s": plan.outage_s,
        "window_s": plan.window_s,
        "settle_s": plan.settle_s,
        "faults": [
            {
                "key": f.key,
                "title": f.title,
                "short": f.short,
                "results": {
                    lib: {**asdict(totals[f.key][lib]), "lost": totals[f.key][lib].lost} for lib in LIBS
                },
                "runs": per_run[f.key],
            }
            for f in FAULTS
        ],
        "seconds": seconds,
    }


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind, so that every subprocess and temp dir is cleaned up

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (about a minute, a 5 s outage)")
    parser.add_argument("--events", type=int, default=None, help="track calls per producer (default 1000)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to make the temporary spools (default: system temp)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the measured figures here as JSON"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a producer: internal
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(orjson.loads(args.child))
    plan = QUICK if args.quick else FULL
    if args.events is not None:
        plan = Plan(plan.name, args.events, plan.runs, plan.outage_s, plan.window_s, plan.settle_s)
    base = Path(tempfile.mkdtemp(prefix="rudder-fast-bench-faults-", dir=args.dir))
    try:
        with sigterm_unwinds(), open(base / "subprocesses.log", "wb") as log:
            figures = run_all(plan, base, log)
        if args.json is not None:
            args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
