"""The producer under hostile conditions: exceptions and re-entrant calls from signal and logging
handlers, odd inputs that must be refused cleanly, bad configuration, dropped emitters."""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rudder_fast import Emitter, InvalidEventError
from rudder_fast.framing import Frame
from rudder_fast.tail import SegmentTail, read_whole, writer_alive
from tests.support.spool import inspect_spool, segment_files

# Per-test timeout above the default: child interpreters with deadlines of up to 180 s.
pytestmark = pytest.mark.timeout(300)


def run_script(body: str, spool_dir: Path, timeout: float = 120) -> dict[str, Any]:
    """Run ``body`` in a fresh interpreter (signal timers stay out of the test runner); its last stdout
    line is a JSON object."""
    script = "import json, signal, sys\nfrom rudder_fast import Emitter\n" + textwrap.dedent(body)
    out = subprocess.run(
        [sys.executable, "-c", script, str(spool_dir)], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_an_exception_raised_by_a_signal_handler_mid_call_never_duplicates_or_loses(
    spool_dir: Path,
) -> None:
    """KeyboardInterrupt, Celery's soft time limit, alarm timeouts: raised between any two bytecodes of
    a call, including right after the write. Returned ids stay unique and every one is in the spool."""
    result = run_script(
        """
        class Interrupted(Exception):
            pass

        state = {"in_call": False}

        def raise_it(signum, frame):
            # Only while a call runs (so the test's own bookkeeping is never hit), once per call.
            if state["in_call"]:
                state["in_call"] = False
                raise Interrupted

        em = Emitter(sys.argv[1])
        returned, interrupted = [], 0
        signal.signal(signal.SIGALRM, raise_it)
        signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
        for i in range(40_000):
            try:
                state["in_call"] = True
                mid = em.track(user_id="u", event="e", properties={"i": i})
                state["in_call"] = False
                if mid is not None:
                    returned.append(mid)
            except Interrupted:
                interrupted += 1
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        em.close()
        print(json.dumps({"returned": returned, "interrupted": interrupted}))
        """,
        spool_dir,
    )
    assert result["interrupted"] > 50, "the timer never interrupted a call"
    events, _ = inspect_spool(spool_dir)
    ids = [e["messageId"] for e in events]
    assert len(ids) == len(set(ids)), "two events share a messageId"
    assert set(result["returned"]) <= set(ids), "a call returned an id that is not in the spool"


def test_a_call_from_a_signal_handler_inside_a_call_does_not_deadlock(spool_dir: Path) -> None:
    result = run_script(
        """
        em = Emitter(sys.argv[1])
        from_handler = []
        signal.signal(signal.SIGALRM, lambda s, f: from_handler.append(em.track(user_id="u", event="h")))
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        main = [em.track(user_id="u", event="main", properties={"i": i}) for i in range(20_000)]
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        em.close()
        print(json.dumps({"main": main, "handler": from_handler, "stats": em.stats()}))
        """,
        spool_dir,
        timeout=60,
    )
    handler = result["handler"]
    assert handler, "the handler never ran"
    assert handler.count(None) == result["stats"]["dropped"].get("reentrant", 0)
    events, _ = inspect_spool(spool_dir)
    assert {e["messageId"] for e in events} == {m for m in result["main"] + handler if m is not None}


def test_a_logging_handler_that_emits_on_a_drop_warning_does_not_deadlock(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    em = Emitter(blocked / "spool")  # unusable: every call drops, and the first drop logs a warning
    side = Emitter(tmp_path / "side")

    class EmittingHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            side.track(user_id="ops", event="rudder_fast warning")
            em.track(user_id="ops", event="into the broken spool too")

    handler = EmittingHandler()
    logger = logging.getLogger("rudder_fast")
    logger.addHandler(handler)
    try:
        assert [em.track(user_id="u", event="e") for _ in range(3)] == [None, None, None]
    finally:
        logger.removeHandler(handler)
        side.close()
    assert side.stats()["accepted"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user_id": 10**5000}, "user_id"),
        ({"user_id": "u", "properties": {"n": 10**5000}}, "properties.n"),
        ({"user_id": "u", "event": "\x01" * 800_000}, "event"),
    ],
    ids=["huge-int-id", "huge-int-value", "json-escapes-past-the-limit"],
)
def test_inputs_that_could_never_be_delivered_are_refused_at_the_call(
    spool_dir: Path, kwargs: dict[str, Any], field: str
) -> None:
    kwargs.setdefault("event", "e")
    with pytest.raises(InvalidEventError) as info:
        Emitter(spool_dir).track(**kwargs)
    assert info.value.field == field
    assert not segment_files(spool_dir)


class NoOffset(dt.tzinfo):
    def utcoffset(self, d: dt.datetime | None) -> None:
        return None

    def dst(self, d: dt.datetime | None) -> None:
        return None

    def tzname(self, d: dt.datetime | None) -> str:
        return "none"


def test_a_tzinfo_without_an_offset_is_taken_as_utc(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=NoOffset())
    mid = em.track(user_id="u", event="e", timestamp=when, properties={"when": when})
    (event,) = [e for e in inspect_spool(spool_dir)[0] if e["messageId"] == mid]
    assert event["timestamp"] == event["properties"]["when"] == "2026-01-02T03:04:05.678Z"


def test_a_bad_quota_in_the_environment_never_makes_calls_raise(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        from rudder_fast import emit
        print(emit.track(user_id="u", event="e") is not None)
        """
    )
    env = dict(os.environ, RUDDER_FAST_SPOOL_DIR=str(tmp_path / "spool"), RUDDER_FAST_QUOTA_BYTES="1.5G")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert "ignoring RUDDER_FAST_QUOTA_BYTES" in out.stderr


def test_an_emitter_dropped_without_close_releases_its_segment(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    em.track(user_id="u", event="e")
    (path,) = segment_files(spool_dir)
    del em
    gc.collect()
    tail = SegmentTail.open(path)
    assert tail is not None
    try:
        assert not writer_alive(tail.fd), "the segment is still locked by a forgotten emitter"
    finally:
        tail.close()
    _, items = read_whole(path)
    assert isinstance(items[-1], Frame)
    assert items[-1].type == 3


def test_drops_are_reported_even_when_no_event_was_ever_written(tmp_path: Path) -> None:
    """Over quota from the very first call (no sender, quota exceeded by other files): the drop counts
    still reach the spool, in a segment of their own."""
    spool = tmp_path / "spool"
    filler = Emitter(spool)
    for _ in range(50):
        filler.track(user_id="u", event="fill", properties={"pad": "x" * 2000})
    filler.close()
    em = Emitter(spool, quota_bytes=10_000)
    results = [em.track(user_id="u", event="e") for _ in range(20)]
    em.close()
    assert results == [None] * 20
    _, summary = inspect_spool(spool)
    assert "'quota': 20" in summary


def test_a_logging_handler_that_emits_cannot_deadlock_the_first_call(tmp_path: Path) -> None:
    """The default emitter's first call logs (an unusable RUDDER_FAST_QUOTA_BYTES) while setting itself
    up; a logging handler that itself calls ``emit.track`` must get through, not hang the thread."""
    script = textwrap.dedent(
        """
        import json, logging
        from rudder_fast import emit

        class Forward(logging.Handler):
            def emit(self, record):
                emit.track(user_id="ops", event="Log Record", properties={"msg": record.getMessage()})

        logging.getLogger("rudder_fast").addHandler(Forward())
        first = emit.track(user_id="u", event="first")
        print(json.dumps({"first": first, "stats": emit.stats()}))
        """
    )
    spool = tmp_path / "spool"
    env = dict(os.environ, RUDDER_FAST_SPOOL_DIR=str(spool), RUDDER_FAST_QUOTA_BYTES="512MB!")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["first"] is not None
    events, _ = inspect_spool(spool)
    logged = [e for e in events if e["event"] == "Log Record"]
    assert len(logged) == 1, events
    assert "ignoring RUDDER_FAST_QUOTA_BYTES" in logged[0]["properties"]["msg"], events
    assert result["stats"]["accepted"] == 2, result


MUTATION_SCRIPT = textwrap.dedent(
    """
    import collections.abc, decimal, enum, json, sys, threading, time
    import numpy
    from rudder_fast import Emitter

    class Color(enum.Enum):
        RED = "red"
        BLUE = decimal.Decimal("2.5")

    def values(kind, n):
        if kind == "decimal":
            return [decimal.Decimal(n) for _ in range(50)]
        if kind == "enum":
            return [Color.RED, Color.BLUE] * 25
        if kind == "set":
            return [{n, n + 1, "x"} for _ in range(20)]
        if kind == "numpy":
            return [numpy.float64(n), numpy.arange(3), numpy.array([object()], dtype=object)[:0]] * 10
        return [{"when": decimal.Decimal(n)} for _ in range(20)]

    em = Emitter(sys.argv[1])
    seconds = float(sys.argv[2])
    report = {}
    for kind in ("decimal", "enum", "set", "numpy", "nested"):
        shared = values(kind, 1)
        nested = {"a": decimal.Decimal(1)}
        stop = threading.Event()

        def mutate():  # another thread empties and refills the containers the calls are reading
            n = 0
            while not stop.is_set():
                n += 1
                shared.clear()
                shared.extend(values(kind, n))
                nested.clear()
                nested.update({f"k{i}": decimal.Decimal(n) for i in range(10)})

        thread = threading.Thread(target=mutate)
        thread.start()
        calls = 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                em.track(user_id="u", event="Race", properties={"cart": shared, "nested": nested})
                calls += 1
        finally:
            stop.set()
            thread.join()
        report[kind] = calls

    # The same thread changing a list while it is read: a Mapping whose __iter__ empties it.
    cart = []

    class Emptying(collections.abc.Mapping):
        def __getitem__(self, key):
            return 1
        def __len__(self):
            return 1
        def __iter__(self):
            cart.clear()
            return iter(["a"])

    for i in range(2000):
        cart[:] = [Emptying(), decimal.Decimal("1.5")] + [decimal.Decimal(j) for j in range(20)]
        em.track(user_id="u", event="Reentrant", properties={"cart": cart})
    report["same-thread"] = 2000
    em.close()
    print(json.dumps(report))
    """
)


def test_containers_changed_by_another_thread_during_a_call_never_crash_the_process(
    spool_dir: Path,
) -> None:
    """Another thread emptying and refilling the lists and dicts passed in ``properties`` (Decimals,
    Enums, sets, numpy values, nested dicts) while calls read them, and a Mapping that empties its own
    enclosing list: every call completes, the process never dies (it used to, with SIGSEGV)."""
    pytest.importorskip("numpy")
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", MUTATION_SCRIPT, str(spool_dir), "2.0"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, f"exit {out.returncode}:\n{out.stderr[-3000:]}"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(calls > 0 for calls in report.values()), report
    events, _ = inspect_spool(spool_dir)
    assert len(events) == sum(report.values())
