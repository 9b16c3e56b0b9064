"""How much does ``Emitter.track`` cost the caller? Compared, in one run, with the floor and with the peer.

Three ways to record the same realistic ``track`` call, timed call by call with ``perf_counter_ns``:

* **floor**: the least any durable per-call append can do: ``msgpack.packb`` of a plain record (the
  properties as a dict), a CRC-32 by the function the product uses (``framing.crc32``), one
  ``os.write`` to an ``O_APPEND`` file in the same directory (same filesystem) as the spool. No
  validation, no framing, no lock, no fork check.
* **rudder_fast**: ``Emitter(spool).track(...)``: validate, encode, frame, one ``os.write``.
* **rudder-sdk-python** 2.1.9: ``Client.track(...)`` (gzip on, its default), posting to a local sink
  (``_sinkserver.py``, in a subprocess) from its background thread. Only the call is timed; its thread
  is flushed after each of its blocks (untimed) so it never runs during another variant's block.

The variants run in interleaved blocks (the order rotates every round) so machine noise hits all of them
alike; median and p99 are over every timed call of every round. A second part forks 1, 2 and 4
processes that emit into the same spool at once (and, interleaved, into their own floor files) to show
that the per-call cost does not grow with the number of writers. Every figure includes the timer's own
overhead, which is printed. Finally, the events are counted back: in the spool and at the sink.

This is a report, not a test: it always exits 0 when it ran. ``--quick`` is the short version run by
``scripts/test``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import platform
import queue
import shutil
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EVENT, FAST, PROPERTIES, SDK  # sibling modules: bench/ is not a package
from _sinkserver import SinkServer

from rudder_fast import Emitter
from rudder_fast.events import KIND_TRACK
from rudder_fast.framing import FRAME_EVENT, FRAME_META, FRAME_PREFIX, SYNC, Frame, crc32
from rudder_fast.jsonvalue import _JSON_OPTIONS
from rudder_fast.layout import SpoolPaths
from rudder_fast.tail import list_segments, read_whole

TrackFn = Callable[..., object]

USER_ID: Final = "user-8c2f1e"

TARGET_VS_FLOOR: Final = 1.5  # rudder_fast median <= 1.5x the floor's
TARGET_VS_SDK: Final = 10.0  # rudder-sdk-python median >= 10x rudder_fast's
PROCESS_COUNTS: Final = (1, 2, 4)
BREAKDOWN_NUMBER: Final = 1_000

FLOOR: Final = "floor"
LABELS: Final = {
    FLOOR: "floor: packb + crc32 + os.write",
    FAST: "rudder_fast Emitter.track",
    SDK: "rudder-sdk-python Client.track",
}


@dataclass(frozen=True)
class Plan:
    name: str
    warmup: int  # untimed calls per variant before the first round
    rounds: int
    block: int  # timed calls per variant per round
    mp_warmup: int
    mp_rounds: int
    mp_block: int
    breakdown_repeat: int  # timeit repeats of BREAKDOWN_NUMBER operations, for the breakdown


QUICK: Final = Plan(
    "quick",
    warmup=2_000,
    rounds=5,
    block=2_000,
    mp_warmup=1_000,
    mp_rounds=3,
    mp_block=2_000,
    breakdown_repeat=30,
)
FULL: Final = Plan(
    "full",
    warmup=5_000,
    rounds=20,
    block=5_000,
    mp_warmup=5_000,
    mp_rounds=8,
    mp_block=10_000,
    breakdown_repeat=100,
)


# -- the variants ----------------------------------------------------------------------------------


class FloorWriter:
    """The floor: a plain record, packed, checksummed and appended with one write. Nothing else."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def track(self, *, user_id: str, event: str, properties: dict[str, Any]) -> int:
        payload = msgpack.packb([1, time.time_ns(), user_id, None, None, None, None, None, event, properties])
        crc32(payload)
        return os.write(self.fd, payload)

    def close(self) -> None:
        os.close(self.fd)


def _noop_track(*, user_id: str, event: str, properties: dict[str, Any]) -> None:
    return None


def timed_block(track: TrackFn, n: int, out: list[int]) -> None:
    """``n`` calls of ``track`` with the benchmark event, each timed on its own into ``out`` (ns).

    The same loop for every variant: only the call differs, so the timer's cost is the same for all.
    """
    pc = time.perf_counter_ns
    append = out.append
    user_id, event, properties = USER_ID, EVENT, PROPERTIES
    for _ in range(n):
        t0 = pc()
        track(user_id=user_id, event=event, properties=properties)
        append(pc() - t0)


def untimed(track: TrackFn, n: int) -> None:
    user_id, event, properties = USER_ID, EVENT, PROPERTIES
    for _ in range(n):
        track(user_id=user_id, event=event, properties=properties)


def rotated(names: Sequence[str], k: int) -> list[str]:
    k %= len(names)
    return [*names[k:], *names[:k]]


# -- statistics ------------------------------------------------------------------------------------


def percentile(sorted_ns: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted sample."""
    if not sorted_ns:
        return 0
    rank = max(1, math.ceil(q * len(sorted_ns)))
    return sorted_ns[min(rank, len(sorted_ns)) - 1]


@dataclass
class Summary:
    calls: int
    median_ns: float  # nearest-rank percentiles of the per-call times
    p90_ns: float
    p99_ns: float

    @classmethod
    def of(cls, samples: list[int]) -> Summary:
        samples.sort()
        n = len(samples)
        return cls(
            calls=n,
            median_ns=float(percentile(samples, 0.5)),
            p90_ns=float(percentile(samples, 0.90)),
            p99_ns=float(percentile(samples, 0.99)),
        )


QUANTILE_GRID: Final = (
    *(i / 1000 for i in range(1, 1000)),
    *(0.999 + i / 10_000 for i in range(1, 10)),
    *(0.9999 + i / 100_000 for i in range(1, 10)),
    1.0,
)


def quantiles(sorted_ns: Sequence[int]) -> list[tuple[float, int]]:
    """(q, nearest-rank percentile) over a fixed grid, finer in the tail: enough to draw the CDF."""
    return [(q, percentile(sorted_ns, q)) for q in QUANTILE_GRID]


def us(ns: float) -> str:
    return f"{ns / 1000:.2f}"


# -- part 1: one process, three variants -----------------------------------------------------------


class SdkCounter(logging.Handler):
    """Counts what rudder-sdk-python logs at WARNING and above (queue full, upload errors)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = record.getMessage()[:200]


@dataclass
class SingleResult:
    summaries: dict[str, Summary]
    timer_ns: float
    sdk_calls: int
    sdk_upload_errors: int
    sdk_log_problems: int
    sdk_first_problem: str | None
    sdk_delivered: int
    sdk_flush_s: float
    fast_calls: int
    frame_bytes: int
    quantiles_ns: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # for --json


def run_single(plan: Plan, emitter: Emitter, floor: FloorWriter, sink: SinkServer) -> SingleResult:
    from rudderstack.analytics.client import Client

    counter = SdkCounter()
    sdk_log = logging.getLogger("rudderstack")
    sdk_log.addHandler(counter)
    sdk_errors: list[Exception] = []
    client = Client(
        write_key="bench-write-key",
        host=sink.url,
        on_error=lambda exc, batch: sdk_errors.append(exc),
    )
    sdk_calls = 0
    flush_ns = 0
    tracks: dict[str, TrackFn] = {FLOOR: floor.track, FAST: emitter.track, SDK: client.track}
    samples: dict[str, list[int]] = {name: [] for name in tracks}
    try:
        # Warm up every variant (first segment opened, code paths and caches hot, SDK connection open).
        for track in tracks.values():
            untimed(track, plan.warmup)
        sdk_calls += plan.warmup
        client.flush()
        noop: list[int] = []
        for _ in range(plan.rounds):
            timed_block(_noop_track, plan.block, noop)
        for r in range(plan.rounds):
            for name in rotated(list(tracks), r):
                gc.collect()
                before = len(samples[name])
                timed_block(tracks[name], plan.block, samples[name])
                if name == SDK:
                    sdk_calls += plan.block
                    t0 = time.perf_counter_ns()
                    client.flush()  # untimed: its thread must not run during the next block
                    flush_ns += time.perf_counter_ns() - t0
                assert len(samples[name]) == before + plan.block
    finally:
        t0 = time.perf_counter_ns()
        client.shutdown()  # flush the queue, then stop and join the consumer thread
        flush_ns += time.perf_counter_ns() - t0
        sdk_log.removeHandler(counter)
    delivered = sink.stats()["events"]
    record = [KIND_TRACK, time.time_ns(), USER_ID, None, None, None, None, None, EVENT,
              orjson.dumps(PROPERTIES, option=_JSON_OPTIONS)]  # fmt: skip
    summaries = {name: Summary.of(s) for name, s in samples.items()}  # sorts each sample in place
    return SingleResult(
        summaries=summaries,
        timer_ns=Summary.of(noop).median_ns,
        sdk_calls=sdk_calls,
        sdk_upload_errors=len(sdk_errors),
        sdk_log_problems=counter.count,
        sdk_first_problem=counter.first,
        sdk_delivered=delivered,
        sdk_flush_s=flush_ns / 1e9,
        fast_calls=plan.warmup + plan.rounds * plan.block,
        frame_bytes=FRAME_META.size + FRAME_PREFIX.size + len(msgpack.packb(record)),
        quantiles_ns={name: quantiles(s) for name, s in samples.items()},
    )


# -- part 2: N processes at once -------------------------------------------------------------------


@dataclass
class WorkerResult:
    index: int
    summaries: dict[str, Summary]
    spans: dict[str, list[tuple[int, int]]]  # per block: (start, end) in CLOCK_MONOTONIC ns
    error: str | None = None


def mp_worker(
    index: int,
    emitter: Emitter,
    *,
    floor_dir: Path,
    plan: Plan,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue[WorkerResult],
) -> None:
    """One forked producer: the inherited Emitter (it opens its own segment) and its own floor file."""
    summaries: dict[str, Summary] = {}
    spans: dict[str, list[tuple[int, int]]] = {FLOOR: [], FAST: []}
    try:
        floor = FloorWriter(floor_dir / f"floor-{os.getpid()}.bin")
        tracks: dict[str, TrackFn] = {FLOOR: floor.track, FAST: emitter.track}
        samples: dict[str, list[int]] = {name: [] for name in tracks}
        for track in tracks.values():
            untimed(track, plan.mp_warmup)
        for r in range(plan.mp_rounds):
            for name in rotated(list(tracks), r):
                gc.collect()
                barrier.wait(timeout=120)  # every process starts each block together
                start = time.monotonic_ns()
                timed_block(tracks[name], plan.mp_block, samples[name])
                spans[name].append((start, time.monotonic_ns()))
        floor.close()
        emitter.close()
        summaries = {name: Summary.of(s) for name, s in samples.items()}
        results.put(WorkerResult(index, summaries, spans))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints it
        barrier.abort()
        results.put(WorkerResult(index, summaries, spans, error=f"{type(exc).__name__}: {exc}"))


@dataclass
class MultiRow:
    processes: int
    median_ns: dict[str, float]  # per-process median, averaged over the processes
    p99_ns: dict[str, float]
    calls_per_s: dict[str, float]  # aggregate, over the wall time of the blocks
    calls: int  # rudder_fast calls per process (timed + warm-up)
    errors: list[str] = field(default_factory=list)


def collect_results(
    procs: Sequence[multiprocessing.process.BaseProcess],
    results: multiprocessing.queues.Queue[WorkerResult],
    *,
    deadline: float,
) -> list[WorkerResult]:
    """The workers' results, until each has reported, all have exited, or the deadline."""
    got: list[WorkerResult] = []
    while len(got) < len(procs) and time.monotonic() < deadline:
        try:
            got.append(results.get(timeout=1))
        except queue.Empty:  # check whether the workers are still alive
            if all(p.exitcode is not None for p in procs) and results.empty():
                break
    return got


def run_multi(plan: Plan, emitter: Emitter, floor_dir: Path, processes: int) -> MultiRow:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes)
    results: multiprocessing.queues.Queue[WorkerResult] = ctx.Queue()
    procs = [
        ctx.Process(
            target=mp_worker,
            args=(i, emitter),
            kwargs={"floor_dir": floor_dir, "plan": plan, "barrier": barrier, "results": results},
            daemon=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    got = collect_results(procs, results, deadline=time.monotonic() + 300)
    errors: list[str] = []
    for p in procs:
        p.join(timeout=30)
        if p.exitcode not in (0, None):
            errors.append(f"worker pid {p.pid} exited with {p.exitcode}")
    errors += [f"worker {w.index}: {w.error}" for w in got if w.error]
    if len(got) < processes:
        errors.append(f"only {len(got)} of {processes} workers reported")
    ok = [w for w in got if not w.error]
    median: dict[str, float] = {}
    p99: dict[str, float] = {}
    rate: dict[str, float] = {}
    for name in (FLOOR, FAST):
        if not ok:
            break
        median[name] = sum(w.summaries[name].median_ns for w in ok) / len(ok)
        p99[name] = sum(w.summaries[name].p99_ns for w in ok) / len(ok)
        wall_ns = 0
        for b in range(plan.mp_rounds):
            wall_ns += max(w.spans[name][b][1] for w in ok) - min(w.spans[name][b][0] for w in ok)
        rate[name] = len(ok) * plan.mp_rounds * plan.mp_block / (wall_ns / 1e9) if wall_ns else 0.0
    return MultiRow(processes, median, p99, rate, plan.mp_warmup + plan.mp_rounds * plan.mp_block, errors)


# -- part 3: where rudder_fast's time goes ---------------------------------------------------------


class _NullWriter:
    """Stands in for the SegmentWriter to time everything track() does before the append."""

    id_prefix = "0123456789abcdef-"

    def append(self, record: list[Any], now_ns: int) -> str:
        return self.id_prefix + "0"


def per_op_ns(stmt: str, env: dict[str, Any], repeat: int) -> float:
    """The best of many short timeit runs, per operation (timeit's loop overhead included, ~10-20 ns).

    Each run is short (a few ms at most), so on a shared machine some runs fit in a time slice that no
    other process interrupts: the minimum is what the code costs, not what the neighbours cost.
    """
    runs = timeit.repeat(stmt, globals=env, number=BREAKDOWN_NUMBER, repeat=repeat)
    return min(runs) / BREAKDOWN_NUMBER * 1e9


def run_breakdown(plan: Plan, spool_dir: Path, scratch: Path) -> tuple[list[tuple[str, float]], int]:
    """The rows, and how many events the breakdown itself wrote to the spool."""
    import rudder_fast.spool as spool_mod

    emitter = Emitter(spool_dir)
    bare = Emitter(spool_dir)
    null_writer = _NullWriter()
    bare._writer = null_writer  # type: ignore[assignment]
    bare._append = null_writer.append
    writer = emitter._writer
    assert writer is not None
    props_json = orjson.dumps(PROPERTIES, option=_JSON_OPTIONS)
    record = [KIND_TRACK, time.time_ns(), USER_ID, None, None, None, None, None, EVENT, props_json]
    plain = [KIND_TRACK, time.time_ns(), USER_ID, None, None, None, None, None, EVENT, PROPERTIES]
    packer = msgpack.Packer()
    payload = packer.pack(record)
    body = FRAME_META.pack(len(payload), FRAME_EVENT, 1) + payload
    frame = FRAME_PREFIX.pack(SYNC, crc32(body)) + body
    fd = os.open(scratch / "breakdown.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    emitter.track(user_id=USER_ID, event=EVENT, properties=PROPERTIES)  # opens the segment
    env: dict[str, Any] = {
        "emitter": emitter, "bare": bare, "writer": writer, "record": record, "plain": plain,
        "packer": packer, "payload": payload, "body": body, "frame": frame, "fd": fd, "os": os,
        "time": time, "crc32": crc32, "msgpack": msgpack, "orjson": orjson, "P": PROPERTIES,
        "U": USER_ID, "E": EVENT, "O": _JSON_OPTIONS, "lock": threading.Lock(),
        "meta": FRAME_META.pack, "prefix": FRAME_PREFIX.pack, "SYNC": SYNC, "T": FRAME_EVENT,
        "getpid": spool_mod._getpid, "NOW": time.time_ns(),
    }  # fmt: skip
    rows = [
        ("Emitter.track, whole call", "emitter.track(user_id=U, event=E, properties=P)"),
        ("  track() minus the append (writer stubbed)", "bare.track(user_id=U, event=E, properties=P)"),
        ("    of which orjson.dumps(properties)", "orjson.dumps(P, option=O)"),
        ("  SegmentWriter.append(record)", "writer.append(record, NOW)"),
        ("    of which os.getpid() fork check", "getpid()"),
        ("    of which threading.Lock acquire+release", "with lock: pass"),
        ("    of which Packer.pack(record, properties as JSON bytes)", "packer.pack(record)"),
        ("    of which frame: 2 struct packs + crc32 + 2 concats",
         "b = meta(len(payload), T, 1) + payload; prefix(SYNC, crc32(b)) + b"),
        ("    of which os.write(frame) to an O_APPEND file", "os.write(fd, frame)"),
        ("floor parts: msgpack.packb(record, properties as dict)", "msgpack.packb(plain)"),
        ("floor parts: crc32(payload)", "crc32(payload)"),
    ]  # fmt: skip
    try:
        result = [(label, per_op_ns(stmt, env, plan.breakdown_repeat)) for label, stmt in rows]
        writes = 1 + sum(
            plan.breakdown_repeat * BREAKDOWN_NUMBER
            for _, stmt in rows
            if stmt.startswith(("emitter.", "writer."))
        )
        return result, writes
    finally:
        os.close(fd)
        emitter.close()


# -- checks and report -----------------------------------------------------------------------------


def count_spool_events(spool_dir: Path) -> tuple[int, int]:
    """(event frames, skipped bytes) over every segment in the spool."""
    events = skipped = 0
    for path in list_segments(SpoolPaths(spool_dir).segments):
        tail, items = read_whole(path)
        if tail is None:
            continue
        try:
            for item in items:
                if isinstance(item, Frame):
                    events += item.type == FRAME_EVENT
                else:
                    skipped += item.length
        finally:
            tail.close()
    return events, skipped


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path``, from /proc/mounts (Linux), else "unknown"."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
                    if inside and len(mount) > len(best):
                        best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def print_single(res: SingleResult, plan: Plan) -> tuple[bool, bool]:
    s = res.summaries
    print()
    print(
        f"One process: {plan.rounds} rounds x {plan.block:,} calls per variant, interleaved "
        f"(after {plan.warmup:,} warm-up calls each)"
    )
    print(f"  {'variant':<36}{'median us':>11}{'p90 us':>10}{'p99 us':>10}{'calls':>10}")
    for name in (FLOOR, FAST, SDK):
        x = s[name]
        print(f"  {LABELS[name]:<36}{us(x.median_ns):>11}{us(x.p90_ns):>10}{us(x.p99_ns):>10}{x.calls:>10,}")
    print(
        f"  (every figure includes {res.timer_ns:.0f} ns of timer + call overhead: the median of an empty "
        f"call timed the same way)"
    )
    vs_floor = s[FAST].median_ns / s[FLOOR].median_ns
    vs_sdk = s[SDK].median_ns / s[FAST].median_ns
    print()
    print(
        f"  rudder_fast / floor              median {vs_floor:5.2f}x   p99 "
        f"{s[FAST].p99_ns / s[FLOOR].p99_ns:5.2f}x"
    )
    print(
        f"  rudder-sdk-python / rudder_fast  median {vs_sdk:5.2f}x   p99 "
        f"{s[SDK].p99_ns / s[FAST].p99_ns:5.2f}x"
    )
    met_floor = vs_floor <= TARGET_VS_FLOOR
    met_sdk = vs_sdk >= TARGET_VS_SDK
    print(f"  target: rudder_fast median <= {TARGET_VS_FLOOR}x floor: {verdict(met_floor)} ({vs_floor:.2f}x)")
    print(
        f"  target: >= {TARGET_VS_SDK:.0f}x faster than rudder-sdk-python: {verdict(met_sdk)} ({vs_sdk:.1f}x)"
    )
    return met_floor, met_sdk


def print_multi(rows: list[MultiRow], plan: Plan, cpus: int) -> bool:
    print()
    print(
        f"N processes at once (fork; each does {plan.mp_rounds} rounds x {plan.mp_block:,} calls per "
        f"variant, blocks started together; rudder_fast into the SAME spool, floor into one file per process)"
    )
    print(
        f"  {'procs':>5} | {'rudder_fast median':>18}{'p99':>8}{'calls/s':>12} | "
        f"{'floor median':>12}{'p99':>8}{'calls/s':>12} | {'fast/floor':>10}{'vs 1 proc':>10}"
    )
    base = rows[0].median_ns.get(FAST) if rows and not rows[0].errors else None
    flat = True
    for row in rows:
        if row.errors or not row.median_ns:
            print(f"  {row.processes:>5} | FAILED: {'; '.join(row.errors)}")
            flat = False
            continue
        m, p, r = row.median_ns, row.p99_ns, row.calls_per_s
        growth = m[FAST] / base if base else float("nan")
        flat = flat and growth <= 1.25
        note = "  (more processes than CPUs)" if row.processes > cpus else ""
        print(
            f"  {row.processes:>5} | {us(m[FAST]):>18}{us(p[FAST]):>8}{r[FAST]:>12,.0f} | "
            f"{us(m[FLOOR]):>12}{us(p[FLOOR]):>8}{r[FLOOR]:>12,.0f} | "
            f"{m[FAST] / m[FLOOR]:>9.2f}x{growth:>9.2f}x{note}"
        )
    print(
        f"  (median and p99: each process's own, averaged over the processes; calls/s: all processes "
        f"together; {cpus} CPU(s) here, so calls/s can only scale up to {cpus} processes)"
    )
    print(f"  per-call median with {PROCESS_COUNTS[-1]} processes within 1.25x of 1 process: {verdict(flat)}")
    return flat


def json_report(
    plan: Plan, cpus: int, single: SingleResult, multi: list[MultiRow], breakdown: list[tuple[str, float]]
) -> dict[str, Any]:
    """The figures behind the printed tables, for ``--json`` (times in ns, rates in calls/s)."""
    s = single.summaries
    return {
        "bench": "emit",
        "plan": plan.name,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": cpus,
        "load_average": list(os.getloadavg()),
        "labels": LABELS,
        "timer_ns": single.timer_ns,
        "frame_bytes": single.frame_bytes,
        "single": {
            name: {
                "calls": x.calls,
                "median_ns": x.median_ns,
                "p90_ns": x.p90_ns,
                "p99_ns": x.p99_ns,
                "quantiles_ns": single.quantiles_ns.get(name, []),
            }
            for name, x in s.items()
        },
        "ratios": {
            "fast_vs_floor_median": s[FAST].median_ns / s[FLOOR].median_ns,
            "fast_vs_floor_p99": s[FAST].p99_ns / s[FLOOR].p99_ns,
            "sdk_vs_fast_median": s[SDK].median_ns / s[FAST].median_ns,
            "sdk_vs_fast_p99": s[SDK].p99_ns / s[FAST].p99_ns,
        },
        "targets": {"fast_vs_floor_max": TARGET_VS_FLOOR, "sdk_vs_fast_min": TARGET_VS_SDK},
        "sdk": {
            "calls": single.sdk_calls,
            "delivered": single.sdk_delivered,
            "upload_errors": single.sdk_upload_errors,
            "warnings": single.sdk_log_problems,
            "flush_s": single.sdk_flush_s,
        },
        "multi": [
            {
                "processes": n,
                "median_ns": row.median_ns,
                "p99_ns": row.p99_ns,
                "calls_per_s": row.calls_per_s,
                "errors": row.errors,
            }
            for n, row in zip(PROCESS_COUNTS, multi, strict=True)
        ],
        "breakdown_ns": [[label, ns] for label, ns in breakdown],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (< 20 s) for CI")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to make the temporary spool and floor files (default: the system temp dir)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the measured figures here as JSON"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    base = Path(tempfile.mkdtemp(prefix="rudder-fast-bench-", dir=args.dir))
    spool_dir = base / "spool"
    floor_dir = base / "floor"
    floor_dir.mkdir()
    try:
        print(
            f"rudder_fast emit benchmark ({plan.name}): Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}, {cpus} CPU(s), "
            f"spool and floor files on {filesystem_of(base)} ({base})"
        )
        emitter = Emitter(spool_dir)
        floor = FloorWriter(floor_dir / "floor-main.bin")
        with SinkServer() as sink:
            single = run_single(plan, emitter, floor, sink)
        floor.close()
        print(
            f"event: track({EVENT!r}) with {len(PROPERTIES)} properties (a nested dict, a list); "
            f"rudder_fast frame {single.frame_bytes} B"
        )
        met_floor, met_sdk = print_single(single, plan)

        # The SDK's thread is joined by now: the forks below copy a single-threaded process.
        multi = [run_multi(plan, emitter, floor_dir, n) for n in PROCESS_COUNTS]
        met_flat = print_multi(multi, plan, cpus)

        breakdown, breakdown_events = run_breakdown(plan, spool_dir, floor_dir)
        print()
        print(
            f"Where rudder_fast's time goes (ns per operation, best of {plan.breakdown_repeat} timeit runs "
            f"of {BREAKDOWN_NUMBER:,}; the parts are nested, and the interpreter's work between them is "
            "not listed, so they sum to less than the whole)"
        )
        for label, ns in breakdown:
            print(f"  {label:<62}{ns:>8.0f} ns")

        emitter.close()
        expected_spool = single.fast_calls + sum(
            n * row.calls for n, row in zip(PROCESS_COUNTS, multi, strict=True)
        )
        expected_spool += breakdown_events
        in_spool, skipped = count_spool_events(spool_dir)
        print()
        print("Checks")
        print(
            f"  spool holds {in_spool:,} events, expected {expected_spool:,}; skipped bytes {skipped}: "
            f"{'OK' if in_spool == expected_spool and not skipped else 'MISMATCH'}"
        )
        sdk_ok = (
            single.sdk_delivered == single.sdk_calls
            and not single.sdk_upload_errors
            and not single.sdk_log_problems
        )
        print(
            f"  rudder-sdk-python: {single.sdk_calls:,} calls, {single.sdk_delivered:,} events at the sink, "
            f"{single.sdk_upload_errors} upload errors, {single.sdk_log_problems} warnings logged; "
            f"its thread took {single.sdk_flush_s:.1f} s (untimed) to flush: "
            f"{'OK' if sdk_ok else 'MISMATCH'}"
        )
        if single.sdk_first_problem:
            print(f"    first warning: {single.sdk_first_problem}")
        print()
        print(
            f"Summary: rudder_fast/floor {verdict(met_floor)}, vs rudder-sdk-python {verdict(met_sdk)}; "
            f"took {time.perf_counter() - started:.1f} s"
        )
        if args.json is not None:
            doc = json_report(plan, cpus, single, multi, breakdown)
            doc["checks"] = {
                "spool_events": in_spool,
                "spool_expected": expected_spool,
                "spool_skipped_bytes": skipped,
                "spool_ok": in_spool == expected_spool and not skipped,
                "sdk_ok": sdk_ok,
            }
            doc["verdicts"] = {"vs_floor": met_floor, "vs_sdk": met_sdk, "flat_across_processes": met_flat}
            doc["seconds"] = time.perf_counter() - started
            args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
