"""``rudder-fast demo``: the whole pipeline on this machine, with a live progress line and a summary.

A devserver (the local data plane), one ``rudder-fast-sender`` and several producer processes that call
``Emitter.track`` as fast as they can, each remembering the messageIds it was given. At the end every
messageId is looked up in what the devserver received: lost must read 0. ``--outage`` makes the data
plane fail (503, then connection refused) for a while in the middle, to show that nothing is lost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from .devserver import DevServer, Faults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--producers", type=int, default=4, help="producer processes (default 4)")
    p.add_argument("--events", type=int, default=25_000, help="events per producer (default 25000)")
    p.add_argument("--outage", type=float, default=0.0, help="seconds of data-plane outage mid-run")
    p.add_argument("--keep", action="store_true", help="keep the demo's directory afterwards")


def _produce(spool: str, index: int, count: int, ids_path: str, emitted: Any) -> None:
    from rudder_fast import Emitter

    emitter = Emitter(spool)
    ids = []
    props = {"plan": "pro", "revenue": 19.95, "cart": {"items": 3}, "tags": ["a", "b"]}
    for i in range(count):
        mid = emitter.track(user_id=f"user-{index}-{i % 1000}", event="Demo Event", properties=props)
        if mid is not None:
            ids.append(mid)
        if i % 1000 == 999:
            with emitted.get_lock():
                emitted.value += 1000
    with emitted.get_lock():
        emitted.value += count % 1000
    Path(ids_path).write_text("\n".join(ids))
    emitter.close()


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="rudder-fast-demo-"))
    spool = base / "spool"
    out = base / "received.jsonl"
    server = DevServer("127.0.0.1", 0, [], out=out, faults=Faults(), quiet=True)
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    print(f"devserver on {url}; spool {spool}")
    env = dict(os.environ, RUDDER_WRITE_KEY="demo-key", RUDDER_DATA_PLANE_URL=url)
    sender = subprocess.Popen(  # noqa: S603 - this interpreter, the demo's own arguments
        [sys.executable, "-m", "rudder_fast.sender", "--spool-dir", str(spool), "--log-level", "WARNING"],
        env=env,
    )
    ctx = multiprocessing.get_context("fork")
    emitted = ctx.Value("q", 0)
    total = args.producers * args.events
    procs = [
        ctx.Process(target=_produce, args=(str(spool), i, args.events, str(base / f"ids-{i}.txt"), emitted))
        for i in range(args.producers)
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    try:
        code = _watch(server, procs, emitted, start, args.outage)
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            p.join(timeout=30)
        sender.send_signal(signal.SIGTERM)
        try:
            sender.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sender.kill()
            sender.wait()
        server.close()
    print()
    lost = _summary(base, out, args, total, elapsed)
    if args.keep:
        print(f"kept {base}")
    else:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 1 if lost or code else 0


def _watch(server: DevServer, procs: list[Any], emitted: Any, start: float, outage: float) -> int:
    """The live progress line, the outage in the middle; 0 once every event arrived, 1 after 300 s."""
    outage_at = start + 0.5 if outage > 0 else None
    while True:
        now = time.monotonic()
        if outage_at is not None and now >= outage_at:
            half = outage / 2
            server.control(orjson.dumps({"fail_status": 503, "fail_for": half}))
            server.schedule_down(after=half, seconds=half)
            print(f"\n-- data plane outage: 503 for {half:.1f} s, then down for {half:.1f} s --")
            outage_at = None
        delivered = server.stats.events
        done = emitted.value
        elapsed = max(now - start, 1e-3)
        print(
            f"\remitted {done:>9,}  pending {max(done - delivered, 0):>9,}  delivered {delivered:>9,}"
            f"  {delivered / elapsed:>9,.0f} events/s   ",
            end="",
            flush=True,
        )
        if all(not p.is_alive() for p in procs) and delivered >= done:
            return 0
        if now - start > 300:
            print("\ngave up waiting after 300 s")
            return 1
        time.sleep(0.2)


def _summary(base: Path, out: Path, args: argparse.Namespace, total: int, elapsed: float) -> int:
    """Every messageId the producers were given, looked up in what the devserver received: lost."""
    emitted_ids: set[str] = set()
    for i in range(args.producers):
        path = base / f"ids-{i}.txt"
        if path.exists():
            emitted_ids.update(x for x in path.read_text().split("\n") if x)
    received: list[str] = []
    if out.exists():
        with open(out, "rb") as f:
            for line in f:
                received.append(orjson.loads(line)["messageId"])
    unique = set(received)
    lost = len(emitted_ids - unique)
    print(f"producers        {args.producers} processes x {args.events:,} events = {total:,}")
    print(f"accepted         {len(emitted_ids):,}")
    print(f"delivered        {len(unique):,} unique ({len(received):,} requests' events)")
    print(f"lost             {lost:,}")
    print(f"duplicates       {len(received) - len(unique):,}")
    print(f"throughput       {len(unique) / elapsed:,.0f} events/s end to end ({elapsed:.1f} s)")
    return lost
