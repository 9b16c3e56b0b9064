"""A damaged spool and a hostile local user: what replaces the spool's own files, and what may not.

* The ``control`` file truncated, emptied, overwritten or replaced while producers write: no producer
  dies (producers read it with ``pread``, never through a mapping that a truncation turns into SIGBUS).
* FIFOs and directories in place of ``sender.lock``, ``control``, ``ledger`` and ``status``: a
  producer's first call still returns promptly; the sender refuses to start (exit 2) naming the file;
  ``rudder-fast status`` says what is wrong instead of hanging.
* Symlinks planted in every name the sender writes (``status``/``status.tmp``, ``ledger``/``ledger.tmp``,
  ``rejected/rejected-<day>.jsonl``, the metrics textfile's ``.tmp``): nothing is ever written through
  them. A spool made writable by others after the sender started: it stops, exit 2, saying why.

Each process is the real console script or a real forked producer, stopped by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rudder_fast import Emitter
from rudder_fast.layout import ensure_spool
from tests.support.devserver import DevServer
from tests.support.processes import closed_port, console_script, stop_process
from tests.support.sender import Senders, sender_env, wait_sender_ready
from tests.support.spool import inspect_spool
from tests.support.waiting import wait_for

FIRST_CALL_DEADLINE_S = 15.0  # a producer's first call: it used to block for ever on a FIFO
REFUSAL_DEADLINE_S = 30.0  # the sender's start-up refusal (it used to hang, or exit 1 with a traceback)


PRODUCE_FOR = """
import json, sys, time
from rudder_fast import Emitter
emitter = Emitter(sys.argv[1])
accepted = []
deadline = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < deadline:
    mid = emitter.track(user_id="user-damaged", event="Fault Event", properties={"n": n})
    if mid is not None:
        accepted.append(mid)
    n += 1
emitter.close()
print(json.dumps(accepted))
"""


def python_c(script: str, *args: str) -> list[str]:
    """A fresh interpreter running ``script``. Run it from a directory other than the checkout (as the
    tests here do, from tmp_path), so that the package imported is the installed one."""
    return [sys.executable, "-c", script, *args]


def _damage_control(path: Path, step: int, valid: bytes) -> None:
    """One of the ways a control file gets damaged, in turn (a regular file is put back first)."""
    kind = step % 6
    if kind == 0:
        _remove(path)
        path.write_bytes(valid)
        os.truncate(path, 0)
    elif kind == 1:
        path.write_bytes(valid)
        os.truncate(path, 10)
    elif kind == 2:
        path.write_bytes(valid[:8] + os.urandom(56))
    elif kind == 3:
        _remove(path)
        os.mkfifo(path, 0o600)
    elif kind == 4:
        _remove(path)
        path.mkdir(mode=0o700)
    else:
        _remove(path)
        path.symlink_to("/dev/zero")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def test_a_damaged_control_file_never_kills_or_blocks_a_producer(
    senders: Senders, spool_dir: Path, tmp_path: Path
) -> None:
    """While a sender runs and a producer writes flat out: the control file truncated, emptied and
    overwritten in place, then replaced by a FIFO, a directory, a symlink. The producer used to die of
    SIGBUS (exit 135) at the first truncation."""
    env = sender_env(spool_dir, f"http://127.0.0.1:{closed_port()}")
    sender = senders.start(["--quota-bytes", "512M"], env)
    wait_sender_ready(spool_dir, sender)
    control = spool_dir / "control"
    valid = control.read_bytes()
    producer = subprocess.Popen(
        python_c(PRODUCE_FOR, str(spool_dir), "4"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(list((spool_dir / "segments").glob("*.seg"))) > 0, timeout=30)
        step = 0
        while producer.poll() is None and step < 600:
            if step < 300:  # in place: the inode a producer may hold stays the same
                with open(control, "r+b") as f:
                    f.truncate((0, 10, 64)[step % 3])
                    if step % 3 == 2:
                        f.write(valid[:8] + os.urandom(56))
            else:
                _damage_control(control, step, valid)
            step += 1
            time.sleep(0.002)
        out, err = producer.communicate(timeout=60)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == 0, f"the producer died: exit code {producer.returncode}\n{err[-2000:]}"
    accepted = json.loads(out)
    assert accepted, "no call was accepted"
    stop_process(sender.proc)
    pending, _ = inspect_spool(spool_dir)
    assert {e["messageId"] for e in pending} >= set(accepted)


def _make(path: Path, kind: str) -> None:
    _remove(path)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)


FIRST_CALL = """
import json, sys, time
from rudder_fast import Emitter
t0 = time.monotonic()
mid = Emitter(sys.argv[1]).track(user_id="u", event="First")
print(json.dumps({"id": mid, "took": time.monotonic() - t0}))
"""


@pytest.mark.parametrize("name", ["sender.lock", "control", "ledger"])
def test_a_fifo_in_place_of_a_spool_file_does_not_block_the_first_call(tmp_path: Path, name: str) -> None:
    spool = tmp_path / "spool"
    ensure_spool(spool)
    os.mkfifo(spool / name, 0o600)
    proc = subprocess.run(
        python_c(FIRST_CALL, str(spool)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=FIRST_CALL_DEADLINE_S,
        env={**os.environ, "RUDDER_FAST_QUOTA_BYTES": "1G"},  # producers then read the ledger too
    )
    assert proc.returncode == 0, proc.stderr
    assert '"id": null' not in proc.stdout, proc.stdout


@pytest.mark.parametrize("kind", ["fifo", "directory"])
@pytest.mark.parametrize("name", ["sender.lock", "control", "ledger", "status"])
def test_the_sender_refuses_a_spool_file_that_is_not_a_regular_file(
    senders: Senders, spool_dir: Path, name: str, kind: str
) -> None:
    ensure_spool(spool_dir)
    _make(spool_dir / name, kind)
    env = sender_env(spool_dir, f"http://127.0.0.1:{closed_port()}")
    proc = senders.run(["--drain", "--drain-timeout", "5"], env, timeout=REFUSAL_DEADLINE_S)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert name in proc.stderr, proc.stderr
    assert "FIFO" in proc.stderr or "directory" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["ledger", "status"])
def test_status_and_inspect_say_what_is_wrong_instead_of_hanging(spool_dir: Path, name: str) -> None:
    ensure_spool(spool_dir)
    os.mkfifo(spool_dir / name, 0o600)
    for command in (["status"], ["status", "--json"], ["inspect"]):
        if name == "status" and command == ["inspect"]:
            continue  # inspect does not read the sender's status
        proc = subprocess.run(
            [console_script("rudder-fast"), *command, "--spool-dir", str(spool_dir)],
            capture_output=True,
            text=True,
            timeout=REFUSAL_DEADLINE_S,
        )
        assert proc.returncode == 2, (command, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "FIFO" in proc.stderr, proc.stderr


# -- symlinks and a spool made public --------------------------------------------------------------------


@pytest.fixture
def precious(tmp_path: Path) -> Iterator[Path]:
    """A file outside the spool that links will point at: it must keep its content."""
    target = tmp_path / "outside" / "precious"
    target.parent.mkdir()
    target.write_bytes(b"precious\n")
    yield target
    assert target.read_bytes() == b"precious\n", "the sender wrote through a planted symlink"


def _plant(link: Path, target: Path) -> None:
    """Put a symlink to ``target`` at ``link``, replacing whatever the sender just wrote there (a rename
    over the name: atomic, so it cannot race with the sender creating the file)."""
    staged = link.with_name(link.name + ".planted")
    staged.unlink(missing_ok=True)
    staged.symlink_to(target)
    os.replace(staged, link)


def test_nothing_is_written_through_symlinks_planted_in_the_spool(
    start_devserver: Callable[..., DevServer],
    senders: Senders,
    spool_dir: Path,
    tmp_path: Path,
    precious: Path,
) -> None:
    """Links in every name the sender writes, planted while it runs, renewed as it replaces them: the
    file they point at keeps its content, and delivery goes on."""
    server = start_devserver()
    server.control({"poison_user_id": "user-poison"})  # refused events are written to rejected/
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    textfile = metrics_dir / "rudder_fast.prom"
    env = sender_env(spool_dir, server.url)
    sender = senders.start(["--metrics-textfile", str(textfile)], env)
    wait_sender_ready(spool_dir, sender)
    emitter = Emitter(spool_dir)
    day = time.strftime("%Y%m%d", time.gmtime())
    links = [
        spool_dir / "status.tmp",
        spool_dir / "ledger.tmp",
        spool_dir / "rejected" / f"rejected-{day}.jsonl",
        metrics_dir / "rudder_fast.prom.tmp",
    ]
    try:
        accepted = []
        deadline = time.monotonic() + 4.0
        n = 0
        while time.monotonic() < deadline:
            for link in links:
                if not link.is_symlink():
                    _plant(link, precious)
            accepted.append(emitter.track(user_id="user-ok", event="Fault Event", properties={"n": n}))
            emitter.track(user_id="user-poison", event="Fault Event", properties={"n": n})
            n += 1
            time.sleep(0.02)
    finally:
        emitter.close()
    wait_for(lambda: {e["messageId"] for e in server.received()} >= set(accepted), timeout=60)
    assert sender.proc.poll() is None, sender.stderr()
    assert stop_process(sender.proc) == 0, sender.stderr()
    for name in ("status", "ledger"):
        assert not (spool_dir / name).is_symlink()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can reach (the tests' own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rudder-fast-public-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_spool_made_writable_by_others_after_start_stops_the_sender(
    senders: Senders, public_dir: Path, precious: Path
) -> None:
    """``chmod 777`` on the spool of a running sender, then (as another user, where the test can
    switch users) a link planted where the sender writes: the sender stops within seconds, exit 2,
    saying why, and never writes through the link."""
    spool_dir = public_dir / "spool"
    env = sender_env(spool_dir, f"http://127.0.0.1:{closed_port()}")
    sender = senders.start([], env)
    wait_sender_ready(spool_dir, sender)
    os.chmod(spool_dir, 0o777)  # noqa: S103 - the fault under test: a spool made public
    plant = ["ln", "-sf", str(precious), str(spool_dir / "status.tmp")]
    if os.geteuid() == 0:
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *plant], check=True)
    else:
        subprocess.run(plant, check=True)
    code = sender.wait(20)
    assert code == 2, sender.stderr()
    assert "writable by others" in sender.stderr()
    assert str(spool_dir) in sender.stderr()
    assert stat.S_IMODE(os.lstat(spool_dir).st_mode) == 0o777  # left as it was: the operator's to fix


def test_a_spool_whose_parent_belongs_to_another_user_is_refused(tmp_path: Path, senders: Senders) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the parent directory to another user")
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, 65534, 65534)
    env = sender_env(parent / "spool", f"http://127.0.0.1:{closed_port()}")
    proc = senders.run(["--drain", "--drain-timeout", "5"], env, timeout=REFUSAL_DEADLINE_S)
    assert proc.returncode == 2, proc.stderr
    assert "parent directory" in proc.stderr, proc.stderr
    assert "65534" in proc.stderr, proc.stderr
