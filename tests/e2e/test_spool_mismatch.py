"""An app and a sender on different spool directories: the commonest first-deployment mistake, and one
that must never be silent. The app writes where ``RUDDER_FAST_SPOOL_DIR`` points; the sender (or the
operator's ``status``) is pointed elsewhere. Each side says so:

* ``status`` and ``inspect`` note when no sender runs on the spool they look at, and name another
  well-known spool where a producer writes and no sender reads;
* the sender warns at start about such a spool, naming both directories;
* (the producer's own warning after a minute without a sender: tests/io/test_no_sender_warning.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from rudder_fast import Emitter
from tests.support.devserver import DevServer
from tests.support.processes import NOBODY, as_nobody, clean_env, console_script
from tests.support.producers import ProducerChild
from tests.support.sender import Senders, sender_env, wait_sender_ready
from tests.support.spool import status_json
from tests.support.waiting import wait_for


@pytest.fixture
def app_producer(tmp_path: Path) -> Iterator[tuple[Path, ProducerChild]]:
    """A live producer process writing to the app's spool (its segment stays open: it is live)."""
    app_spool = tmp_path / "app-spool"
    child = ProducerChild(app_spool)
    try:
        assert all(child.emit("mismatch", 5))
        yield app_spool, child
    finally:
        child.stop()


def toolbox(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("rudder-fast"), *args], capture_output=True, text=True, timeout=60,
        env=clean_env(**env), stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def test_status_and_inspect_say_no_sender_runs_and_where_the_producers_write(
    tmp_path: Path, app_producer: tuple[Path, ProducerChild]
) -> None:
    app_spool, _ = app_producer
    ops_spool = tmp_path / "ops-spool"
    ops_spool.mkdir(mode=0o700)
    (ops_spool / "segments").mkdir(mode=0o700)
    env = {"RUDDER_FAST_SPOOL_DIR": str(app_spool)}  # the app's setting, in the operator's shell

    proc = toolbox("status", "--json", "--spool-dir", str(ops_spool), **env)
    assert proc.returncode == 0, proc.stderr
    notes = orjson.loads(proc.stdout)["notes"]
    assert any(f"no sender is running on {ops_spool}" in note for note in notes), notes
    assert any(f"1 live producer(s) write to {app_spool}, which no sender reads" in n for n in notes), notes

    text = toolbox("status", "--spool-dir", str(ops_spool), **env).stdout
    assert f"note       1 live producer(s) write to {app_spool}" in text, text
    summary = toolbox("inspect", "--spool-dir", str(ops_spool), **env).stderr
    assert f"note: 1 live producer(s) write to {app_spool}" in summary, summary

    # Looking at the app's own spool: the only note is that no sender reads it.
    doc = orjson.loads(toolbox("status", "--json", "--spool-dir", str(app_spool), **env).stdout)
    assert doc["notes"] == [
        f"no sender is running on {app_spool}: its events wait there until one starts "
        f"(`rudder-fast-sender --spool-dir {app_spool}`)"
    ]


def test_a_sender_started_on_another_directory_warns_naming_both(
    tmp_path: Path, app_producer: tuple[Path, ProducerChild], devserver: DevServer, senders: Senders
) -> None:
    app_spool, _ = app_producer
    sender_spool = tmp_path / "sender-spool"
    env = sender_env(sender_spool, devserver.url, RUDDER_FAST_SPOOL_DIR=str(app_spool))
    sender = senders.start(["--spool-dir", str(sender_spool)], env)
    wait_sender_ready(sender_spool, sender)
    expected = (
        f"1 live producer(s) write to {app_spool}, which no sender reads: run the sender on that "
        f"directory, or point the app here (this sender reads {sender_spool})"
    )
    wait_for(lambda: expected in sender.stderr(), timeout=10)


def test_with_a_sender_on_the_apps_spool_nothing_is_noted(
    tmp_path: Path, app_producer: tuple[Path, ProducerChild], devserver: DevServer, senders: Senders
) -> None:
    app_spool, _ = app_producer
    sender = senders.start([], sender_env(app_spool, devserver.url))
    wait_sender_ready(app_spool, sender)
    doc = orjson.loads(toolbox("status", "--json", "--spool-dir", str(app_spool)).stdout)
    assert doc["notes"] == []
    assert "no sender reads" not in sender.stderr()


def test_a_drain_of_a_spool_that_does_not_exist_says_so_and_creates_nothing(
    tmp_path: Path, app_producer: tuple[Path, ProducerChild], devserver: DevServer, senders: Senders
) -> None:
    """A drain told a mistyped or relative spool: it used to create an empty one and log "drain
    complete" while the app's events waited elsewhere. Now it creates nothing, says there is no spool
    there, names the one where events wait, and exits 0 (there was nothing to deliver where it looked)."""
    app_spool, _ = app_producer
    typo = tmp_path / "app-spoo"
    env = sender_env(typo, devserver.url, RUDDER_FAST_SPOOL_DIR=str(app_spool))
    proc = senders.run(["--drain", "--spool-dir", str(typo)], env)
    assert proc.returncode == 0, proc.stderr
    assert not typo.exists()
    assert f"WARNING no spool at {typo}: nothing to drain" in proc.stderr, proc.stderr
    assert f"1 live producer(s) write to {app_spool}, which no sender reads" in proc.stderr, proc.stderr
    assert "drain complete" not in proc.stderr
    assert devserver.stats()["events"] == 0

    # A relative path is shown as the absolute one it means here.
    proc = senders.run(["--drain", "--spool-dir", "relative-spool"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"no spool at {tmp_path / 'relative-spool'}: nothing to drain" in proc.stderr, proc.stderr
    assert not (tmp_path / "relative-spool").exists()


def test_a_sender_run_as_root_that_creates_the_spool_says_another_users_app_cannot_use_it(
    tmp_path: Path, app_producer: tuple[Path, ProducerChild], devserver: DevServer, senders: Senders
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the warning is about a spool created by root")
    created = tmp_path / "new-spool"
    sender = senders.start([], sender_env(created, devserver.url))
    wait_sender_ready(created, sender)
    said = f"WARNING created the spool {created} as root, private to root: an app running as another user"
    assert said in sender.stderr(), sender.stderr()

    app_spool, _ = app_producer  # made by the app: nothing to say
    sender = senders.start([], sender_env(app_spool, devserver.url))
    wait_sender_ready(app_spool, sender)
    wait_for(lambda: status_json(app_spool)["counters"]["sent"] == 5, timeout=30)
    assert "created the spool" not in sender.stderr(), sender.stderr()


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own are private to root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rf-shared-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_a_shared_spool_this_user_cannot_look_into_is_named_with_its_owner(reachable_dir: Path) -> None:
    """The app writes to a shared spool (here $RUDDER_FAST_SPOOL_DIR's) as its own user; a sender, status
    or doctor run as another user without the variable looks at that user's default spool, and could
    not see into the app's (0700): all looked healthy. Now the other spool is named, with its owner."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a spool of another user")
    app_spool = reachable_dir / "app-spool"
    assert Emitter(app_spool).track(user_id="u", event="e")  # root's, 0700
    own = reachable_dir / "nobody-spool"
    for path in (own, own / "segments"):
        path.mkdir(mode=0o700)
        os.chown(path, NOBODY, NOBODY)
    env = clean_env(RUDDER_FAST_SPOOL_DIR=str(app_spool))
    said = f"{app_spool} is a spool of uid 0, which this user cannot look into: if the app writes there"
    status = subprocess.run(
        as_nobody([console_script("rudder-fast"), "status", "--json", "--spool-dir", str(own)]),
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert any(said in note for note in orjson.loads(status.stdout)["notes"]), status.stdout
    doctor = subprocess.run(
        as_nobody([console_script("rudder-fast"), "doctor", "--no-network", "--spool-dir", str(own)]),
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert f"warn  other spool     {said}" in doctor.stdout, doctor.stdout
    assert (
        f"fix: look as its owner: `sudo -u '#0' rudder-fast status --spool-dir {app_spool}`" in doctor.stdout
    )

    # Root sees into it: no such note (the spool is read as any other).
    status = toolbox("status", "--json", "--spool-dir", str(own), RUDDER_FAST_SPOOL_DIR=str(app_spool))
    assert not any("cannot look into" in note for note in orjson.loads(status.stdout)["notes"]), status.stdout
