"""The optional C extension end to end: a sender with it and one without it (its import blocked, as where
it was never built) send the same spool as the very same events, and the one without says so out loud,
as does ``rudder-fast doctor``.

Without the extension is a real process whose ``import rudder_fast._speedups`` fails
(``sys.modules[name] = None``), exactly what an install without a C compiler gives.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rudder_fast import Emitter, __version__
from tests.support.devserver import DevServer
from tests.support.native import speedups
from tests.support.processes import clean_env, console_script, process_group
from tests.support.sender import sender_env
from tests.support.spool import read_status
from tests.support.waiting import wait_for

WITHOUT_SPEEDUPS = (
    "import sys; sys.modules['rudder_fast._speedups'] = None; from {module} import main; sys.exit(main())"
)
MISSING = "the C extension rudder_fast._speedups is not built"


def run(
    module: str, args: list[str], env: dict[str, str], *, blocked: bool
) -> subprocess.CompletedProcess[str]:
    if blocked:
        cmd = [sys.executable, "-c", WITHOUT_SPEEDUPS.format(module=module), *args]
    else:
        cmd = [
            console_script("rudder-fast-sender" if module == "rudder_fast.sender" else "rudder-fast"),
            *args,
        ]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False
    )


def fill(spool: Path) -> None:
    """Every shape of track the C writer takes or hands back: plain ones with and without ids and
    properties, non-ASCII names, strings JSON escapes, and other calls between them."""
    emit = Emitter(spool)
    for i in range(3_000):
        emit.track(user_id=f"u{i % 50}", event="Order Completed", properties={"i": i, "total": 12.5})
    for i in range(200):
        emit.track(anonymous_id=f"a-é-{i}", event="Käse gekauft")
        emit.track(user_id=f'quote"{i}', event="tab\there", properties={"k": [1, 2]})
        emit.identify(user_id=f"u{i}", traits={"plan": "pro"})
        emit.track(user_id="u", event="with context", context={"ip": "1.2.3.4"}, message_id=f"m-{i}")
    emit.close()


def delivered(dev: DevServer) -> list[dict[str, Any]]:
    return sorted(
        ({k: v for k, v in e.items() if k not in ("sentAt", "receivedAt")} for e in dev.received()),
        key=lambda e: e["messageId"],
    )


def test_a_sender_without_the_extension_sends_the_same_events_and_says_so(
    tmp_path: Path, start_devserver: Callable[..., DevServer]
) -> None:
    speedups()  # the comparison needs the extension on one side
    spool = tmp_path / "spool"
    fill(spool)
    copy = tmp_path / "copy"
    shutil.copytree(spool, copy)
    results = []
    for blocked, directory in ((False, spool), (True, copy)):
        dev = start_devserver()
        proc = run(
            "rudder_fast.sender",
            ["--drain", "--drain-timeout", "60"],
            sender_env(directory, dev.url),
            blocked=blocked,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (MISSING in proc.stderr) is blocked, proc.stderr[-3000:]
        results.append(delivered(dev))
        dev.stop()
    with_c, without_c = results
    assert len(with_c) == 3_000 + 4 * 200
    assert with_c == without_c


def test_doctor_says_whether_the_extension_is_built(tmp_path: Path) -> None:
    speedups()
    env = clean_env(RUDDER_WRITE_KEY="k", RUDDER_DATA_PLANE_URL="http://127.0.0.1:9")
    args = ["doctor", "--spool-dir", str(tmp_path / "spool"), "--no-network"]
    built = run("rudder_fast.cli", args, env, blocked=False)
    assert "ok    C extension     built" in built.stdout, built.stdout
    missing = run("rudder_fast.cli", args, env, blocked=True)
    line = next(line for line in missing.stdout.splitlines() if "C extension" in line)
    assert line.startswith("warn"), missing.stdout
    assert MISSING in line, missing.stdout
    assert "apt-get install gcc libc6-dev python3-dev" in missing.stdout
    assert f"--no-cache-dir rudder-fast=={__version__}" in missing.stdout


@pytest.mark.parametrize("sender_blocked", [True, False], ids=["sender-without", "sender-with"])
def test_doctor_tells_what_the_running_sender_runs_not_its_own_install(
    tmp_path: Path, start_devserver: Callable[..., DevServer], sender_blocked: bool
) -> None:
    """The sender may run from another install than the doctor (a sidecar's image): the doctor reports
    the loops the running sender says it runs (its status), whatever its own install has."""
    speedups()
    dev = start_devserver()
    spool = tmp_path / "spool"
    if sender_blocked:
        cmd = [sys.executable, "-c", WITHOUT_SPEEDUPS.format(module="rudder_fast.sender")]
    else:
        cmd = [console_script("rudder-fast-sender")]
    log = tmp_path / "sender.log"
    with process_group(cmd, env=sender_env(spool, dev.url), cwd=tmp_path, log=log) as proc:

        def published() -> dict[str, Any] | None:
            status = read_status(spool)
            return status if status is not None and "loops" in status else None

        assert wait_for(published, timeout=30)["loops"] == ("Python" if sender_blocked else "C")
        env = clean_env(RUDDER_WRITE_KEY="e2e-key", RUDDER_DATA_PLANE_URL=dev.url)
        args = ["doctor", "--spool-dir", str(spool), "--no-network"]
        out = run("rudder_fast.cli", args, env, blocked=not sender_blocked).stdout
        line = next(line for line in out.splitlines() if "C extension" in line)
        assert f"the running sender (pid {proc.pid})" in line, out
        assert line.startswith("warn" if sender_blocked else "ok"), out
