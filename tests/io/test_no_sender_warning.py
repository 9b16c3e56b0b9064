"""A producer whose spool no sender reads says so on the ``rudder_fast`` logger, naming the directory
and how to point a sender at it: the commonest first-deployment mistake (the app and the sender on
different directories) must not stay silent. Real processes; the one-minute wait is shortened in the
child so that the test takes seconds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from rudder_fast import config, Emitter
    config.NO_SENDER_WARNING_NS = 300_000_000  # 0.3 s instead of a minute
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings = []
    class Keep(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())
    logging.getLogger("rudder_fast").addHandler(Keep())
    em = Emitter(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline and not (warnings and sys.argv[3] == "stop-at-first"):
        assert em.track(user_id="u", event="e") is not None
        time.sleep(0.02)
    em.close()
    print(len(warnings))
    """
)


def run_producer(spool_dir: Path, seconds: float, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(spool_dir), str(seconds), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_producer_writing_with_no_sender_warns_once_naming_the_directory(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    # Writes for 3 s with a 0.3 s wait: the refresh runs once a second, so the warning comes within
    # about 1.3 s, and the ten-minute repeat keeps it to one.
    out = run_producer(spool_dir, 3.0, "run-on")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1", out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("WARNING rudder_fast: no rudder-fast-sender has read the spool "), line
    assert f"rudder-fast-sender --spool-dir {spool_dir}" in line
    assert "rudder_fast:" not in line.split(": ", 1)[1]  # one prefix per line: the logger's


def test_a_producer_that_sees_a_sender_stays_quiet(tmp_path: Path) -> None:
    """The probe is the sender's lock: held by a process (as a running sender holds it), no warning."""
    spool_dir = tmp_path / "spool"
    run_producer(spool_dir, 0.1, "run-on")  # creates the spool
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(spool_dir / "sender.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        out = run_producer(spool_dir, 2.5, "run-on")
    finally:
        holder.communicate(timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", out.stderr
