"""``rudder-fast doctor`` against real setups: healthy, and each thing a first deployment gets wrong.

Each test builds the setup for real (a devserver, a sender, a spool), runs the command as a user would,
and checks its verdict, the line that names the problem, the fix it suggests, and its exit code. No
event is ever sent by the doctor: the devserver's counters prove it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from rudder_fast import Emitter
from tests.support.devserver import DevServer
from tests.support.processes import clean_env, console_script, free_port
from tests.support.sender import Senders, sender_env, wait_sender_ready
from tests.support.spool import status_json
from tests.support.tls import make_certs
from tests.support.waiting import wait_for

KEY = "doctor-key"


def doctor(spool: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("rudder-fast"), "doctor", "--spool-dir", str(spool), *args],
        capture_output=True, text=True, timeout=60, env=clean_env(**env), stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip


def verdict_line(out: str, check: str) -> str:
    """The first line of ``check`` that is not an ``info`` one."""
    lines = [line for line in out.splitlines() if line[6:].startswith(check) and not line.startswith("info")]
    assert lines, f"no {check!r} verdict in:\n{out}"
    return lines[0]


def line_of(out: str, check: str) -> str:
    lines = [line for line in out.splitlines() if line[6:].startswith(check)]
    assert lines, f"no {check!r} line in:\n{out}"
    return lines[0]


def running_sender(spool: Path, dev: DevServer, senders: Senders) -> None:
    """A sender that has delivered the spool's one event (so the data plane's counts stand still)."""
    Emitter(spool).track(user_id="u", event="e")
    sender = senders.start([], sender_env(spool, dev.url, write_key=KEY))
    wait_sender_ready(spool, sender)
    wait_for(lambda: status_json(spool)["counters"]["sent"] == 1, timeout=30)


def test_a_healthy_setup_exits_0_and_sends_nothing(
    tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    dev = start_devserver(write_keys=[KEY])
    spool = tmp_path / "spool"
    running_sender(spool, dev, senders)
    events_before = dev.stats()["events"]
    proc = doctor(spool, RUDDER_WRITE_KEY=KEY, RUDDER_DATA_PLANE_URL=dev.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("rudder-fast doctor: healthy: nothing to fix"), proc.stdout
    for check in ("permissions", "free space", "sender", "write key", "data plane URL", "reachable"):
        assert line_of(proc.stdout, check).startswith("ok"), proc.stdout
    assert "answered 400 'empty batch payload'" in line_of(proc.stdout, "reachable")
    assert dev.stats()["events"] == events_before


def test_without_url_or_key_in_its_environment_it_checks_the_running_senders(
    tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    dev = start_devserver(write_keys=[KEY])
    spool = tmp_path / "spool"
    running_sender(spool, dev, senders)
    proc = doctor(spool)
    assert proc.returncode == 0, proc.stdout
    assert "as the running sender reports it" in line_of(proc.stdout, "data plane URL")
    assert line_of(proc.stdout, "write key").startswith("info")
    assert "no write key here to check" in line_of(proc.stdout, "reachable")


def test_no_spool_no_sender_and_an_unreachable_data_plane_are_each_named_with_their_fix(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")
    spool = tmp_path / "a-file" / "spool"  # cannot be created: every call is dropped
    proc = doctor(spool, RUDDER_WRITE_KEY=KEY, RUDDER_DATA_PLANE_URL="http://127.0.0.1:9")
    assert proc.returncode == 1
    out = proc.stdout
    said = f"FAIL  spool           {spool} does not exist and cannot be created: {spool.parent} is not a"
    assert said in out, out
    assert "every call returns None (dropped as spool_unusable)" in out
    assert "sudo install -d" in out
    assert f"no rudder-fast-sender runs on {spool}" in out
    assert f"fix: start it: `rudder-fast-sender --spool-dir {spool}`" in out
    assert "cannot connect to 127.0.0.1:9" in line_of(out, "reachable")
    assert out.rstrip().endswith("3 problem(s) to fix"), out


def test_a_spool_not_yet_created_is_a_warning_as_the_first_call_creates_it(tmp_path: Path) -> None:
    spool = tmp_path / "not-yet" / "spool"
    out = doctor(spool, "--no-network").stdout
    assert (
        f"warn  spool           {spool} does not exist yet: the first call, or the sender, creates it" in out
    )
    assert Emitter(spool).track(user_id="u", event="e") is not None  # as the doctor said
    assert "warn  spool" not in doctor(spool, "--no-network").stdout


def test_a_spool_path_that_is_a_symlink_fails_naming_the_real_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    link = tmp_path / "link-spool"
    link.symlink_to(spool)
    proc = doctor(link, "--no-network")
    assert proc.returncode == 1
    assert (
        f"FAIL  spool           {link} is a symbolic link, which producers and the sender refuse"
        in proc.stdout
    )
    assert f"fix: give the directory itself, on both sides: RUDDER_FAST_SPOOL_DIR={spool}" in proc.stdout


def test_wait_checks_again_until_the_sender_and_data_plane_started_just_before_are_up(
    tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    """The quick start starts a devserver and a sender in the background and runs the doctor at once:
    without --wait it failed while they came up. With it, the doctor waits for them, and says healthy."""
    spool = tmp_path / "spool"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    waiting = subprocess.Popen(
        [console_script("rudder-fast"), "doctor", "--spool-dir", str(spool), "--wait", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env=clean_env(RUDDER_WRITE_KEY=KEY, RUDDER_DATA_PLANE_URL=url),
    )  # fmt: skip
    try:
        assert (
            doctor(spool, RUDDER_WRITE_KEY=KEY, RUDDER_DATA_PLANE_URL=url).returncode == 1
        )  # nothing up yet
        dev = start_devserver(write_keys=[KEY], extra_args=["--port", str(port)])
        running_sender(spool, dev, senders)
        out, err = waiting.communicate(timeout=90)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, out + err
    assert out.rstrip().endswith("rudder-fast doctor: healthy: nothing to fix"), out
    assert out.count("rudder-fast doctor:") == 1, out  # one report: the last check's


def test_wait_gives_up_with_the_last_report(tmp_path: Path) -> None:
    proc = doctor(
        tmp_path / "spool", "--wait", "1", RUDDER_WRITE_KEY=KEY, RUDDER_DATA_PLANE_URL="http://127.0.0.1:9"
    )
    assert proc.returncode == 1
    assert proc.stdout.count("rudder-fast doctor:") == 1, proc.stdout
    assert "cannot connect to 127.0.0.1:9" in line_of(proc.stdout, "reachable")


def test_a_wrong_key_and_a_wrong_path_are_told_apart(
    tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    dev = start_devserver(write_keys=[KEY])
    spool = tmp_path / "spool"
    running_sender(spool, dev, senders)
    wrong_key = doctor(spool, RUDDER_WRITE_KEY="not-the-key", RUDDER_DATA_PLANE_URL=dev.url)
    assert wrong_key.returncode == 1
    assert "the write key is refused" in line_of(wrong_key.stdout, "reachable")
    assert "differs from the running sender's" in line_of(wrong_key.stdout, "write key")
    wrong_path = doctor(spool, RUDDER_WRITE_KEY=KEY, RUDDER_DATA_PLANE_URL=dev.url + "/v1/track")
    assert wrong_path.returncode == 1
    assert "ends in an endpoint's path" in line_of(wrong_path.stdout, "data plane URL")
    assert "a wrong path or a disabled source" in line_of(wrong_path.stdout, "reachable")


def test_an_unknown_certificate_authority_is_said_plainly_and_ca_bundle_fixes_it(
    tmp_path: Path, senders: Senders
) -> None:
    certs = make_certs(tmp_path / "tls")
    spool = tmp_path / "spool"
    with DevServer.start(out=None, stderr=tmp_path / "dev.log", tls=certs.server) as dev:
        env = {"RUDDER_WRITE_KEY": KEY, "RUDDER_DATA_PLANE_URL": dev.url}
        proc = doctor(spool, "--timeout", "5", **env)
        reach = line_of(proc.stdout, "reachable")
        assert reach.startswith("FAIL"), reach
        assert "signed by a CA this host does not trust" in reach, reach
        proc = doctor(spool, **env, RUDDER_FAST_CA_BUNDLE=str(certs.ca))
        assert line_of(proc.stdout, "reachable").startswith("ok"), proc.stdout


def test_events_waiting_in_another_spool_are_found(tmp_path: Path) -> None:
    """The app wrote to the directory in $RUDDER_FAST_SPOOL_DIR; the doctor is asked about another."""
    app_spool, other = tmp_path / "app-spool", tmp_path / "sender-spool"
    Emitter(app_spool).track(user_id="u", event="e")
    Emitter(other).track(user_id="u", event="e")
    proc = doctor(other, "--no-network", RUDDER_FAST_SPOOL_DIR=str(app_spool))
    assert proc.returncode == 1
    line = line_of(proc.stdout, "other spool")
    assert f"wait in {app_spool}, which no sender reads" in line, line


NOBODY = 65534


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another user")


def test_root_checking_the_app_users_spool_is_told_to_check_as_that_user_not_to_chmod(tmp_path: Path) -> None:
    """The README's setup: the spool owned by the app's user, 0700. Root running the doctor used to get
    a FAIL and `chmod 700` (the mode already was), inviting a chown to root that breaks the app."""
    needs_root()
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    for path in (spool, *spool.iterdir()):
        os.chown(path, NOBODY, NOBODY)
    line = line_of(doctor(spool, "--no-network").stdout, "permissions")
    assert line.startswith("warn"), line
    assert f"owned by uid {NOBODY}, mode 0700: the app and the sender must run as uid {NOBODY}" in line, line
    out = doctor(spool, "--no-network").stdout
    assert f"fix: check as that user: `sudo -u '#{NOBODY}' rudder-fast doctor`" in out, out
    assert "chmod" not in out, out

    # What would make the app's own calls refuse it is still found, as that user would find it.
    spool.chmod(0o777)
    line = line_of(doctor(spool, "--no-network").stdout, "permissions")
    assert line.startswith("FAIL"), line
    assert f"spool directory {spool} is writable by others (mode 0777)" in line, line


def test_a_parent_directory_of_another_user_is_checked_as_producers_and_the_sender_check_it(
    tmp_path: Path,
) -> None:
    needs_root()
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, NOBODY, NOBODY)
    spool = other / "spool"
    # Not made yet: root's own calls would refuse it there, that user's would make it. Root is told so.
    line = verdict_line(doctor(spool, "--no-network").stdout, "spool")
    assert line.startswith("warn"), line
    assert f"its parent belongs to uid {NOBODY}: the app and the sender must run as that user" in line, line
    assert f"fix: check as that user: `sudo -u '#{NOBODY}' rudder-fast doctor`" in doctor(spool).stdout

    assert Emitter(spool).track(user_id="u", event="e") is None  # root's calls refuse it (spool_unusable)
    spool.mkdir(mode=0o700)  # made by root by hand: the doctor names the parent, not the spool's mode
    out = doctor(spool, "--no-network").stdout
    line = line_of(out, "permissions")
    assert line.startswith("FAIL"), out
    assert f"parent directory {other} is owned by uid {NOBODY}" in line, out
    assert "fix: put the spool in a directory owned by root or by the app's user" in out, out


def test_a_quota_without_its_suffix_is_said_by_the_sender_and_the_doctor(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    """`--quota-bytes 512` for 512M: producers then drop nearly every call while the data plane is fine."""
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    proc = senders.run(["--drain", "--quota-bytes", "512"], sender_env(spool, devserver.url))
    assert proc.returncode == 0, proc.stderr
    said = "WARNING the quota is 512 bytes: producers drop new events as soon as that much waits undelivered"
    assert said in proc.stderr, proc.stderr
    started = [line for line in proc.stderr.splitlines() if "sender started: " in line]
    assert len(started) == 1, proc.stderr
    assert started[0].endswith(", quota 512 bytes"), proc.stderr
    line = line_of(doctor(spool, "--no-network").stdout, "free space")
    assert line.startswith("warn"), line
    assert "the quota is 512 bytes" in line, line

    proc = senders.run(["--drain", "--quota-bytes", "512M"], sender_env(spool, devserver.url))
    assert "the quota is" not in proc.stderr, proc.stderr
    assert "quota 536,870,912 bytes" in proc.stderr, proc.stderr


def test_a_dangling_symlink_on_the_way_is_named_not_promised_to_be_created(tmp_path: Path) -> None:
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    spool = tmp_path / "gone" / "spool"
    assert Emitter(spool).track(user_id="u", event="e") is None  # the app's calls are dropped
    line = verdict_line(doctor(spool, "--no-network").stdout, "spool")
    assert line.startswith("FAIL"), line
    assert f"{tmp_path / 'gone'} is a symbolic link to nothing" in line, line


def test_a_sender_that_has_just_taken_the_lock_is_starting_and_wait_waits_for_it(tmp_path: Path) -> None:
    """Between a sender's lock and its first status the doctor read an age from 0 ("its status is 1.8e9
    s old: is it stuck?"), a warning that let --wait stop at once and call the setup healthy."""
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    fd = os.open(spool / "sender.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a sender that has not written its status yet
        proc = doctor(spool, "--no-network", "--wait", "1")
    finally:
        os.close(fd)
    assert proc.returncode == 1, proc.stdout
    line = line_of(proc.stdout, "sender")
    assert line.startswith("FAIL"), line
    assert "holds the spool's lock but has not written its status yet: it is starting" in line, line
    assert "s old" not in proc.stdout, proc.stdout
