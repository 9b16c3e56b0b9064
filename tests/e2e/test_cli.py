"""The command line a user expects, run as a user runs it: the console scripts and ``python -m``.

Versions and help texts; one clear line and exit code 2 (never a traceback) for a missing spool, a spool
this user may not read and a reader that goes away (``| head``); ``status --watch`` without terminal
codes in a pipe; the rate over the time actually measured; the sender's own process figures.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rudder_fast import Emitter, __version__
from tests.support.devserver import DevServer
from tests.support.processes import as_nobody, clean_env, console_script
from tests.support.sender import Senders, sender_env, wait_sender_ready
from tests.support.spool import status_json
from tests.support.waiting import wait_for

COMMANDS = ("status", "inspect", "doctor", "replay", "devserver", "demo")


def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=env or clean_env(),
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit code 2 and said why in one line, without a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rudder-fast: "), lines[0]
    return lines[0]


def test_both_commands_and_python_m_say_their_version() -> None:
    for argv in (
        [console_script("rudder-fast"), "--version"],
        [console_script("rudder-fast-sender"), "--version"],
        [sys.executable, "-m", "rudder_fast", "--version"],
    ):
        proc = run(*argv)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"rudder-fast {__version__}", argv


def test_python_m_rudder_fast_is_the_toolbox(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    proc = run(sys.executable, "-m", "rudder_fast", "inspect", "--spool-dir", str(spool))
    assert proc.returncode == 0, proc.stderr
    assert '"event":"e"' in proc.stdout


def test_the_help_lists_every_command_in_plain_text_and_each_command_its_defaults() -> None:
    text = run(console_script("rudder-fast"), "--help").stdout
    for command in COMMANDS:
        assert re.search(rf"^  {command}\s", text, re.M), f"{command} missing from --help:\n{text}"
    assert "``" not in text, text
    assert "RUDDER_FAST_SPOOL_DIR" in text
    for command in COMMANDS:
        sub = run(console_script("rudder-fast"), command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "``" not in sub.stdout, sub.stdout
    status_help = run(console_script("rudder-fast"), "status", "--help").stdout
    assert "(default: 2.0)" in status_help, status_help
    assert "$RUDDER_FAST_SPOOL_DIR" in status_help, status_help


@pytest.mark.parametrize("command", ["status", "inspect", "replay"])
def test_a_missing_spool_is_one_line_and_exit_2_for_every_command(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "no-such-spool"
    argv = [console_script("rudder-fast"), command, "--spool-dir", str(missing)]
    if command == "replay":
        (tmp_path / "events.jsonl").write_text('{"type": "track", "userId": "u", "event": "e"}\n')
        argv.append(str(tmp_path / "events.jsonl"))
    line = one_clear_line(run(*argv))
    assert f"no spool at {missing}" in line
    assert not missing.exists(), "a typo must not create a spool"


@pytest.mark.parametrize("command", ["status", "inspect"])
def test_a_spool_path_that_is_a_symlink_is_refused_as_producers_refuse_it(
    tmp_path: Path, command: str
) -> None:
    """Producers given a symlink drop every call (spool_unusable); read through the link, the spool
    looked healthy. The commands refuse it too, naming the directory to use instead."""
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    link = tmp_path / "link-spool"
    link.symlink_to(spool)
    assert Emitter(link).track(user_id="u", event="e") is None  # what the app sees
    line = one_clear_line(run(console_script("rudder-fast"), command, "--spool-dir", str(link)))
    assert f"spool path {link} (--spool-dir) is a symbolic link" in line, line
    assert f"every call made with it is dropped. Use the directory itself: {spool}" in line, line


def test_a_spool_this_user_may_not_read_is_one_line_and_exit_2(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")  # a private spool (0700), owned by root
    for command in ("status", "inspect"):
        proc = run(*as_nobody([console_script("rudder-fast"), command, "--spool-dir", str(spool)]))
        line = one_clear_line(proc)
        assert f"permission denied reading {spool} as uid 65534" in line, line


def test_inspect_into_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    emitter = Emitter(spool)
    for i in range(20_000):
        emitter.track(user_id="u", event="e", properties={"i": i, "pad": "x" * 50})
    emitter.close()
    # `rudder-fast inspect --spool-dir S | head -1`, as a shell runs it.
    shell = f"{console_script('rudder-fast')} inspect --spool-dir {spool} 2>{tmp_path / 'err'} | head -1"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, (proc.returncode, (tmp_path / "err").read_text())
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in (tmp_path / "err").read_text()


def test_status_watch_into_a_pipe_prints_plain_reports(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    proc = subprocess.Popen(
        [console_script("rudder-fast"), "status", "--watch", "--interval", "0.2", "--spool-dir", str(spool)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        reports = 0
        seen = b""
        deadline = time.monotonic() + 30
        while reports < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            reports += line.startswith(b"spool ")
        assert reports == 2, seen
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"\x1b" not in seen + out, "terminal control codes written into a pipe"
    assert re.search(rb"^-- \d{4}-\d\d-\d\d \d\d:\d\d:\d\d --$", seen, re.M), seen


def test_status_gives_the_rate_over_the_time_measured_and_the_senders_process_figures(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    spool = tmp_path / "spool"
    emitter = Emitter(spool)
    for _ in range(7):
        emitter.track(user_id="u", event="e")
    emitter.close()
    sender = senders.start([], sender_env(spool, devserver.url))
    wait_sender_ready(spool, sender)
    # The 7 go at once (their writer has closed its file), maybe before the sender has run 50 ms, when
    # its rate has no window yet; the status is refreshed every second.
    doc = wait_for(
        lambda: (d := status_json(spool))["counters"]["sent"] == 7 and d["sender"]["rate_window_s"] > 0 and d,
        timeout=30,
    )
    window = doc["sender"]["rate_window_s"]
    assert 0 < window < 60, "a sender running for seconds measured its rate over seconds"
    text = run(console_script("rudder-fast"), "status", "--spool-dir", str(spool)).stdout
    assert re.search(r"events/s over the last \d+ s", text), text
    assert "over the last minute" not in text
    process = doc["sender"]["process"]
    assert process["cpu_s"] > 0, process
    assert process["rss_bytes"] > 10 * 2**20, process
    assert process["open_files"] > 3, process
    assert re.search(r"^process    cpu [\d.]+ s, rss [\d.,]+ MiB, \d+ open files$", text, re.M), text


def test_a_wrong_log_level_is_refused_naming_the_choices(tmp_path: Path) -> None:
    env = sender_env(tmp_path / "spool", "http://127.0.0.1:1", RUDDER_FAST_LOG_LEVEL="verbose")
    proc = run(console_script("rudder-fast-sender"), env=env)
    assert proc.returncode == 2
    assert "--log-level must be one of DEBUG, INFO, WARNING, ERROR, not 'verbose'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_url_with_an_endpoints_path_is_warned_about_and_its_404_named_with_the_full_url(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    sender = senders.start([], sender_env(spool, devserver.url + "/v1/track"))
    full = devserver.url + "/v1/track/v1/batch"
    wait_for(lambda: "404" in (status_json(spool).get("last_error") or ""), timeout=30)
    assert "404: a wrong path or a disabled source" in status_json(spool)["last_error"]
    wait_for(lambda: f"POST {full} answered" in sender.stderr(), timeout=10)
    log = sender.stderr()
    assert f"ends in an endpoint's path (/v1/track): batches would go to {full}" in log, log
    assert f"Give its base URL instead: {devserver.url}" in log
    assert "wrong path" in log
