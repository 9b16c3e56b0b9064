"""Fork in every form a web server does it, end to end: app servers -> spool -> sender -> devserver.

- Real ``gunicorn --preload`` (sync workers, and gthread workers with 4 threads each): the app module
  records an event at import, in the master, so the default emitter and its open segment exist before
  the workers are forked (the case where rudder-sdk-python loses 100% of the workers' events). Each
  request records one event and answers its messageId. After 2,000 requests gunicorn is stopped and
  ``rudder-fast-sender --drain`` must deliver all 2,000 plus the import-time event exactly once, from at
  least two distinct worker pids. Without the fork handling the workers would share the master's file
  and nonce: colliding messageIds, interleaved writes, lost events.
- Forks that skip Python's at-fork hooks, where only the emitter's pid check on every call helps: real
  uWSGI (``--master --processes 2``, no ``--enable-threads``, no ``py-call-osafterfork``) when it is
  installed (``pip install uwsgi`` builds it from source; it is not a project dependency), and always a
  ``fork()`` called through ctypes.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.devserver import DevServer, OutTail
from tests.support.http_load import Reply, http_load, wait_http
from tests.support.processes import BIN, REPO_ROOT, ProcGroup, free_port, read_line
from tests.support.producers import APPS_DIR, producer_env
from tests.support.programs import program_command
from tests.support.sender import Senders, drain
from tests.support.spool import segment_files, segment_pids

# Per-test timeout above the default: a 120 s HTTP load on the app server, then a drain.
pytestmark = pytest.mark.timeout(360)

REQUESTS = 2_000
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def parse_reply(body: bytes) -> tuple[str, int]:
    mid, pid, _hooks = body.decode().split()
    return mid, int(pid)


def check_delivery(
    out: OutTail, replies: list[Reply], preload_id: str, master_pid: int
) -> collections.Counter[int]:
    """Every request's event and the import-time event delivered exactly once, each from the process
    that said it recorded it. Returns events per worker pid."""
    out.poll()
    expected = {r.message_id for r in replies} | {preload_id}
    assert len(expected) == len(replies) + 1, "two requests got the same messageId"
    missing = expected - out.ids
    unexpected = out.ids - expected
    dups = {mid: n for mid, n in out.counts.items() if n > 1}
    assert not missing, f"{len(missing)} of {len(expected)} events lost, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"{len(unexpected)} events nobody recorded, e.g. {sorted(unexpected)[:5]}"
    assert not dups, f"{len(dups)} events delivered twice, e.g. {list(dups.items())[:5]}"
    assert out.total == len(replies) + 1

    preload = out.events[preload_id]
    assert preload["event"] == "Preload", preload
    assert preload["properties"]["pid"] == master_pid, preload
    per_pid: collections.Counter[int] = collections.Counter()
    for r in replies:
        event = out.events[r.message_id]
        assert event["event"] == "Request", event
        assert event["properties"]["pid"] == r.pid, (event, r)
        assert event["properties"]["n"] == r.n, (event, r)
        assert event["properties"]["master"] == master_pid, event
        per_pid[r.pid] += 1
    assert master_pid not in per_pid, "the master served requests?"
    return per_pid


@pytest.mark.parametrize(
    "worker_args",
    [
        pytest.param(["-k", "sync"], id="sync"),
        pytest.param(["-k", "gthread", "--threads", "4"], id="gthread-4-threads"),
    ],
)
def test_gunicorn_preload_delivers_every_event_once(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders, worker_args: list[str]
) -> None:
    port = free_port()
    cmd = [
        str(BIN / "gunicorn"),
        "--preload",
        "-w",
        "3",
        *worker_args,
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(APPS_DIR),
        "--pythonpath",
        f"{APPS_DIR},{REPO_ROOT}",
        "--no-control-socket",
        "--graceful-timeout",
        "10",
        "--timeout",
        "60",
        "--log-level",
        "warning",
        "preload_app:app",
    ]
    with ProcGroup(tmp_path) as procs:
        proc = procs.start("gunicorn", cmd, env=producer_env(spool_dir))
        master_pid = proc.pid
        preload_id, preload_pid = parse_reply(
            wait_http(port, proc, "/preload", START_TIMEOUT_S, lambda: procs.log("gunicorn"))
        )
        assert preload_id != "None", (preload_id, preload_pid, master_pid)
        assert preload_pid == master_pid, (preload_id, preload_pid, master_pid)

        t0 = time.monotonic()
        replies = http_load(port, REQUESTS, threads=4, timeout=120)
        elapsed = time.monotonic() - t0
        assert all(r.message_id != "None" for r in replies), "the app saw a dropped event"
        assert all(r.hooks == 1 for r in replies), "gunicorn forks with os.fork: the at-fork hooks run"

        code = procs.stop("gunicorn", signal.SIGTERM, STOP_TIMEOUT_S)
        assert code == 0, f"gunicorn exit code {code}:\n{procs.log('gunicorn')}"
        assert not procs.leftovers("gunicorn"), "gunicorn workers outlived the master"

    writers = set(segment_pids(spool_dir).values())
    drain(senders, spool_dir, devserver, timeout=90)
    per_pid = check_delivery(OutTail(devserver.out_path), replies, preload_id, master_pid)
    print(f"\n{REQUESTS} requests in {elapsed:.1f} s; events per worker pid: {dict(per_pid)}")
    assert len(per_pid) >= 2, f"only one worker produced events: {dict(per_pid)}"
    # Each worker wrote its own segment (named <nonce>-<pid>-<n>.seg), and the master its own.
    assert set(per_pid) | {master_pid} <= writers, (set(per_pid), master_pid, writers)
    assert segment_files(spool_dir) == [], "segments left after the drain"


def _uwsgi_exe() -> str | None:
    local = BIN / "uwsgi"
    return str(local) if local.exists() else shutil.which("uwsgi")


def test_uwsgi_without_fork_hooks_delivers_both_workers(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    """uWSGI forks its workers in C and, without ``py-call-osafterfork``, never runs Python's at-fork
    hooks: the emitter created in the master at import must notice the new pid on the first call."""
    exe = _uwsgi_exe()
    if exe is None:
        pytest.skip(
            "uWSGI is not installed (`pip install uwsgi` compiles it; not a project dependency); "
            "the hook-less fork is still covered by test_c_level_fork_skipping_hooks_is_delivered"
        )
    port = free_port()
    cmd = [
        exe,
        "--master",
        "--processes",
        "2",
        "--http-socket",
        f"127.0.0.1:{port}",
        "--wsgi-file",
        str(APPS_DIR / "preload_app.py"),
        "--callable",
        "app",
        "--home",
        sys.prefix,
        "--die-on-term",
        "--need-app",
        "--disable-logging",
        "--listen",
        "64",
    ]
    with ProcGroup(tmp_path) as procs:
        proc = procs.start("uwsgi", cmd, env=producer_env(spool_dir))
        master_pid = proc.pid
        preload_id, preload_pid = parse_reply(
            wait_http(port, proc, "/preload", START_TIMEOUT_S, lambda: procs.log("uwsgi"))
        )
        assert preload_pid == master_pid, (preload_id, preload_pid)
        assert preload_id != "None", (preload_id, preload_pid)
        # Each request holds its worker for a few ms: with 4 concurrent clients both workers serve.
        # uWSGI's plain --http-socket closes every connection (without saying so): one per request.
        replies = http_load(
            port, 400, threads=4, timeout=90, reconnect_every=1, query=lambda n: "&sleep_ms=3"
        )
        assert all(r.message_id != "None" for r in replies)
        assert all(r.hooks == 0 for r in replies), "expected uWSGI to skip Python's at-fork hooks"
        code = procs.stop("uwsgi", signal.SIGTERM, STOP_TIMEOUT_S)
        assert code == 0, f"uwsgi exit code {code} on SIGTERM (--die-on-term):\n{procs.log('uwsgi')}"
        assert not procs.leftovers("uwsgi"), "uWSGI workers outlived the master"

    writers = set(segment_pids(spool_dir).values())
    drain(senders, spool_dir, devserver, timeout=90)
    per_pid = check_delivery(OutTail(devserver.out_path), replies, preload_id, master_pid)
    print(f"\nuWSGI events per worker pid: {dict(per_pid)}")
    assert len(per_pid) == 2, f"expected events from both uWSGI workers: {dict(per_pid)}"
    assert set(per_pid) | {master_pid} <= writers, (set(per_pid), master_pid, writers)
    assert segment_files(spool_dir) == []


def _writer_lock_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_c_level_fork_skipping_hooks_is_delivered(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    """``fork()`` through ctypes after the parent opened its segment: no at-fork hook runs in the child.
    The child's events must go to a new segment under its own pid and nonce, the parent's lock must
    survive the child (closing its inherited descriptor must not unlock), and everything is delivered."""
    n = 500
    report = tmp_path / "cfork"
    report.mkdir()
    with ProcGroup(tmp_path) as procs:
        proc = procs.start(
            "cfork",
            program_command("cfork", report, n),
            env=producer_env(spool_dir),
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        line = read_line(proc.stdout, 60)
        assert line == b"ready\n", f"{line!r}\n{procs.log('cfork')}"
        parent = json.loads((report / "parent.json").read_text())
        child = json.loads((report / "child.json").read_text())
        assert os.WIFEXITED(parent["child_status"]), procs.log("cfork")
        assert os.WEXITSTATUS(parent["child_status"]) == 0, procs.log("cfork")
        assert child["hooks_ran"] is False, "ctypes fork ran Python's at-fork hooks: the test proves nothing"
        assert parent["segment_before"] == parent["segment_after"], "the parent had to reopen its segment"
        parent_seg = Path(parent["segment_before"])
        child_seg = Path(child["segment"])
        assert child_seg != parent_seg
        assert f"-{child['pid']}-" in child_seg.name
        assert f"-{parent['pid']}-" in parent_seg.name
        # The child has exited; its close of the inherited descriptor must not have released the lock.
        assert _writer_lock_held(parent_seg), "the child's exit released the parent's segment lock"
        assert not _writer_lock_held(child_seg)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        last = json.loads(read_line(proc.stdout, 30))["last"]
        proc.stdout.close()
        assert proc.wait(30) == 0, procs.log("cfork")

    before, after, child_ids = parent["before"], parent["after"], child["ids"]
    expected = [*before, *after, last, *child_ids]
    assert None not in expected
    assert len(set(expected)) == len(expected) == 3 * n + 1, "messageIds collide between parent and child"
    nonces = {mid.rsplit("-", 1)[0] for mid in child_ids}
    parent_nonces = {mid.rsplit("-", 1)[0] for mid in [*before, *after, last]}
    assert len(nonces) == 1
    assert len(parent_nonces) == 1
    assert nonces != parent_nonces
    assert {int(mid.rsplit("-", 1)[1]) for mid in child_ids} == set(range(n)), "the child's seq restarts at 0"

    drain(senders, spool_dir, devserver, timeout=90)
    out = OutTail(devserver.out_path)
    out.poll()
    assert out.ids == set(expected), (len(out.ids), len(expected))
    assert out.duplicates == 0
    for mid in child_ids:
        props = out.events[mid]["properties"]
        assert props["phase"] == "child", props
        assert props["pid"] == child["pid"], props
    for mid in before + after:
        assert out.events[mid]["properties"]["pid"] == parent["pid"]
    assert segment_files(spool_dir) == []
