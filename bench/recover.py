"""How fast does delivery recover after an outage, and what does the outage cost the data plane?
rudder_fast and rudder-sdk-python side by side, in one run, measured for real.

Each library faces each outage alone, against its own loopback data plane (``rudder-fast devserver
--out``): the devserver answers 503 to every batch for ``--outage`` seconds (``fail_status``), or closes
its port for as long (``down_for``: connections refused). While it lasts a producer process makes
``--events`` track calls spread evenly over it (rudder_fast: an ``Emitter`` on a spool that a real
``rudder-fast-sender`` with its defaults delivers; the SDK: a ``Client`` with its defaults in the
producer). Then the data plane is healthy again, and the run ends when every accepted event has arrived,
or when nothing new has arrived for twice the outage's length (at least 10 s; the SDK drops what it
cannot queue, backs off exponentially, and gives a batch up after ten tries).

Figures, per library and outage:

* **requests in the outage**: the attempts that failed (every attempt fails while the data plane is
  down). rudder_fast's own count (``retried`` in ``rudder-fast status``); the SDK's, counted in its
  producer around the SDK's HTTP session. For 503 the devserver's count of 503 answers is also shown.
* **resumed**: the first event's arrival after the outage's end, minus that end.
* **recovery**: the last event's arrival minus the outage's end, and **beyond the backlog**: that minus
  the time the backlog (the events that arrived after the end) needs at the library's full speed, which
  a baseline run measures first (a backlog of ``--events`` delivered with the data plane healthy).
* **not delivered**: calls that accepted an event minus events delivered by the end of the run (an SDK
  batch still in its backoff then counts here); **refused at the call**: calls that returned without
  accepting the event (the SDK's queue was full).

This is a report, not a test: it exits 0 when it ran. ``--quick`` plays a 3 s outage with 4,000 events.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the helpers shared with the tests
from _common import FAST, SDK  # a sibling module: bench/ is not a package
from faults import Child, SenderDaemon, listening, make_tracker, say, track_many

from tests.support.devserver import DevServer
from tests.support.spool import read_status

LIBS: Final = (FAST, SDK)
OUTAGES: Final = ("503", "port closed")
WINDOW_S: Final = 120.0  # the longest a run waits after the outage
POLL_S: Final = 0.1
SCRIPT: Final = Path(__file__).resolve()


# -- the producer, in its own process (``recover.py --child SPEC``) -----------------------------------


def count_sdk_requests() -> list[tuple[float, bool]]:
    """Every request the SDK makes from now on, as (when it ended, whether it failed): its HTTP session's
    ``post`` wrapped, the request itself unchanged."""
    from rudderstack.analytics import request as sdk_request

    made: list[tuple[float, bool]] = []
    post = sdk_request._session.post

    def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            res = post(*args, **kwargs)
        except Exception:
            made.append((time.time(), True))
            raise
        made.append((time.time(), res.status_code >= 300))
        return res

    sdk_request._session.post = counted
    return made


def child_main(spec: dict[str, Any]) -> int:
    lib, tag, n = spec["lib"], spec["tag"], spec["events"]
    track = make_tracker(lib, spec["target"])
    made = count_sdk_requests() if lib == SDK else []
    say(event="ready")
    sys.stdin.readline()  # "go"
    say(event="tracked", calls=n, tracked=track_many(track, tag, n, spread_s=spec["spread_s"]))
    sys.stdin.readline()  # the run is over
    say(event="requests", made=made)
    sys.stdout.flush()
    os._exit(0)  # no atexit: the SDK's join() could wait out a long backoff


# -- one run -------------------------------------------------------------------------------------------


@dataclass
class Result:
    lib: str
    outage: str
    outage_s: float
    calls: int
    tracked: int
    delivered: int
    duplicates: int
    failed_requests: int
    answered_503: int | None
    resumed_s: float | None
    recovery_s: float | None
    backlog_events: int
    beyond_backlog_s: float | None

    @property
    def lost(self) -> int:
        return self.tracked - self.delivered


def arrivals(server: DevServer, tag: str) -> tuple[dict[int, float], int]:
    """Event number -> its first arrival (epoch seconds, the devserver's ``receivedAt``); copies beyond
    the first."""
    assert server.out is not None
    try:
        data = server.out.read_bytes()
    except FileNotFoundError:
        return {}, 0
    first: dict[int, float] = {}
    copies = 0
    needle = tag.encode()
    for line in data.split(b"\n")[:-1]:
        if needle not in line:
            continue
        event = orjson.loads(line)
        props = event.get("properties") or {}
        if props.get("bench_tag") != tag:
            continue
        copies += 1
        at = dt.datetime.fromisoformat(event["receivedAt"].replace("Z", "+00:00")).timestamp()
        i = int(props["i"])
        first[i] = min(at, first.get(i, at))
    return first, copies - len(first)


def settle(server: DevServer, tag: str, wanted: int, since: float, quiet_s: float) -> dict[int, float]:
    """Wait until ``wanted`` events of ``tag`` arrived, or nothing new for ``quiet_s`` after ``since``
    (within WINDOW_S): what has not arrived by then never will."""
    count, changed = -1, time.monotonic()
    deadline = time.monotonic() + WINDOW_S + max(0.0, since - time.time())
    while time.monotonic() < deadline:
        got, _ = arrivals(server, tag)
        if len(got) >= wanted:
            return got
        if len(got) != count:
            count, changed = len(got), time.monotonic()
        elif time.monotonic() - changed > quiet_s and time.time() > since:
            return got
        time.sleep(POLL_S)
    return arrivals(server, tag)[0]


class Setup:
    """One library's side of a run: a devserver, and for rudder_fast a spool and its sender."""

    def __init__(self, lib: str, base: Path, log: IO[bytes]) -> None:
        self.lib = lib
        base.mkdir(parents=True)
        self.spool = base / "spool"
        self.server = DevServer.start(out=base / "received.jsonl", stderr=log)
        self.sender: SenderDaemon | None = None
        self.log = log

    def start_sender(self) -> None:
        self.sender = SenderDaemon(self.spool, self.server.url, self.log)

    def target(self) -> str:
        return str(self.spool) if self.lib == FAST else self.server.url

    def failed_requests(self) -> int:
        """rudder_fast's own count of failed attempts, once its status has caught up (published every
        second)."""
        time.sleep(1.5)
        status = read_status(self.spool)
        return 0 if status is None else int(status["counters"]["retried"])

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        self.server.stop()


def full_speed(lib: str, events: int, base: Path, log: IO[bytes]) -> float:
    """Events per second delivering a backlog of ``events`` with the data plane healthy: rudder_fast's
    sender started on a spool that already holds them; the SDK given them as fast as it takes them."""
    setup = Setup(lib, base, log)
    tag = f"{lib}-baseline"
    try:
        if lib == SDK:
            events = min(events, 10_000)  # the SDK's queue: more would be dropped, not delivered
        child = Child(
            {"lib": lib, "target": setup.target(), "tag": tag, "events": events, "spread_s": 0},
            log,
            script=SCRIPT,
        )
        try:
            child.wait_for("ready")
            child.send("go")
            tracked = child.wait_for("tracked")
            assert tracked is not None, "the producer did not finish"
            if lib == FAST:
                setup.start_sender()
            got = settle(setup.server, tag, int(tracked["tracked"]), time.time(), quiet_s=6.0)
            child.send("done")
        finally:
            child.stop()
    finally:
        setup.close()
    times = sorted(got.values())
    return (len(times) - 1) / max(1e-3, times[-1] - times[0]) if len(times) > 1 else 0.0


def run_outage(
    lib: str, outage: str, *, events: int, outage_s: float, rate: float, base: Path, log: IO[bytes]
) -> Result:
    setup = Setup(lib, base, log)
    tag = f"{lib}-{outage}"
    try:
        if lib == FAST:
            setup.start_sender()
        spec = {"lib": lib, "target": setup.target(), "tag": tag, "events": events, "spread_s": outage_s}
        child = Child(spec, log, script=SCRIPT)
        try:
            child.wait_for("ready")
            start = time.time()
            if outage == "503":
                setup.server.control({"fail_status": 503, "fail_for": outage_s})
            else:
                setup.server.control({"down_for": outage_s})
            child.send("go")
            tracked = child.wait_for("tracked", timeout_s=outage_s + 60)
            assert tracked is not None, "the producer did not finish"
            end = start + outage_s
            while outage != "503" and not listening(setup.server):
                time.sleep(0.01)
            end = max(end, time.time()) if outage != "503" else end
            got = settle(setup.server, tag, int(tracked["tracked"]), end, quiet_s=max(10.0, 2 * outage_s))
            child.send("done")
            made = child.wait_for("requests")
        finally:
            child.stop()
        _, duplicates = arrivals(setup.server, tag)
        if lib == FAST:
            failed = setup.failed_requests()
        else:
            failed = sum(1 for _, bad in (made or {}).get("made", []) if bad)
        answered_503 = int(setup.server.stats()["by_status"].get("503", 0)) if outage == "503" else None
    finally:
        setup.close()
    after = sorted(at for at in got.values() if at >= end)
    last = max(got.values(), default=None)
    recovery = None if last is None else max(0.0, last - end)
    backlog_s = len(after) / rate if rate > 0 else 0.0
    return Result(
        lib=lib, outage=outage, outage_s=outage_s, calls=int(tracked["calls"]),
        tracked=int(tracked["tracked"]), delivered=len(got), duplicates=duplicates, failed_requests=failed,
        answered_503=answered_503,
        resumed_s=after[0] - end if after else None, recovery_s=recovery, backlog_events=len(after),
        beyond_backlog_s=None if recovery is None else recovery - backlog_s,
    )  # fmt: skip


# -- the report ----------------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def print_table(results: list[Result], rates: dict[str, float], events: int) -> None:
    print(f"\n{events:,} events arriving during each outage; full speed with a backlog: "
          + ", ".join(f"{lib} {rate:,.0f} events/s" for lib, rate in rates.items()))  # fmt: skip
    head = ("outage", "library", "requests in the outage", "resumed after", "last event after",
            "beyond the backlog", "not delivered", "refused at the call", "duplicates")  # fmt: skip
    rows = [head]
    for r in results:
        requests = f"{r.failed_requests}" + (
            f" ({r.answered_503} answered 503)" if r.answered_503 is not None else ""
        )
        rows.append((
            f"{r.outage_s:g} s {r.outage}", r.lib, requests, seconds(r.resumed_s), seconds(r.recovery_s),
            seconds(r.beyond_backlog_s), f"{r.lost:,}", f"{r.calls - r.tracked:,}", f"{r.duplicates:,}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--outage", type=float, default=10.0, help="seconds")
    p.add_argument("--quick", action="store_true", help="3 s outages, 4,000 events")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(orjson.loads(args.child))
    events, outage_s = (4_000, 3.0) if args.quick else (args.events, args.outage)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="rf-recover-") as tmp:
        base = Path(tmp)
        with open(base / "processes.log", "wb") as log:
            rates = {lib: full_speed(lib, events, base / f"baseline-{lib}", log) for lib in LIBS}
            for outage in OUTAGES:
                for lib in LIBS:
                    where = base / f"{outage.replace(' ', '-')}-{lib}"
                    results.append(
                        run_outage(
                            lib,
                            outage,
                            events=events,
                            outage_s=outage_s,
                            rate=rates[lib],
                            base=where,
                            log=log,
                        )
                    )
                    print(f"{outage}, {lib}: done", file=sys.stderr, flush=True)
    print_table(results, rates, events)
    print(f"\n({platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs)")
    if args.json:
        doc = {"rates": rates, "results": [asdict(r) | {"lost": r.lost} for r in results]}
        args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
