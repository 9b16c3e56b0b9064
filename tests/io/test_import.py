"""Importing rudder_fast does nothing to the world: no file, no directory, no thread, no open descriptor.

Each check runs in a fresh interpreter (this test process has long since imported the package) with
the spool, HOME and XDG_STATE_HOME pointed into a temporary directory, and reports what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.support.processes import env_with
from tests.support.spool import inspect_spool

PROBE = textwrap.dedent(
    """
    import json, os, sys, threading

    root = sys.argv[1]
    spool = os.environ["RUDDER_FAST_SPOOL_DIR"]
    steps = {}

    def look(step):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            found += [os.path.relpath(os.path.join(dirpath, n), root) for n in dirnames + filenames]
        steps[step] = {
            "paths": sorted(found),
            "spool_exists": os.path.lexists(spool),
            "threads": threading.active_count(),
            "os_threads": len(os.listdir("/proc/self/task")),
            "fds": sorted(os.listdir("/proc/self/fd")),
        }

    look("start")
    import rudder_fast
    look("import")
    text = repr(rudder_fast.emit)
    steps["repr_text"] = text
    look("repr")
    emitter = rudder_fast.Emitter()
    emitter.stats()
    look("explicit emitter")
    emitter.close()
    first = rudder_fast.emit.track(user_id="u", event="first call")
    steps["first"] = first
    steps["stats"] = rudder_fast.emit.stats()
    look("first call")
    steps["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("msgspec", "urllib3", "psutil"))
    print(json.dumps(steps))
    """
)


def run_probe(tmp_path: Path) -> dict[str, Any]:
    spool = tmp_path / "state" / "spool"
    env = env_with(
        RUDDER_FAST_SPOOL_DIR=str(spool),
        HOME=str(tmp_path / "home"),
        XDG_STATE_HOME=str(tmp_path / "xdg"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_import_creates_nothing_and_starts_no_thread(tmp_path: Path) -> None:
    steps = run_probe(tmp_path)
    start = steps["start"]
    assert start["paths"] == []
    for step in ("import", "repr", "explicit emitter"):
        seen = steps[step]
        assert seen["paths"] == [], f"{step}: created {seen['paths']}"
        assert not seen["spool_exists"], step
        assert seen["threads"] == 1, f"{step}: a Python thread was started"
        assert seen["os_threads"] == 1, f"{step}: a native thread was started"
        # listing /proc/self/fd opens one descriptor itself, the same one each time
        assert seen["fds"] == start["fds"], f"{step}: a file was left open"
    assert "<Emitter" not in steps["repr_text"], "repr(emit) created the default emitter"


def test_first_call_creates_the_spool_and_still_no_thread(tmp_path: Path) -> None:
    steps = run_probe(tmp_path)
    after = steps["first call"]
    first = steps["first"]
    assert isinstance(first, str)
    assert after["spool_exists"]
    segments = [p for p in after["paths"] if p.startswith("state/spool/segments/")]
    assert len(segments) == 1
    assert segments[0].endswith(".seg")
    assert steps["stats"]["accepted"] == 1
    assert after["threads"] == 1
    assert after["os_threads"] == 1
    # the default directories were never touched: the environment variable decided the spool
    assert not any(p.startswith(("home", "xdg")) for p in after["paths"])
    events, _ = inspect_spool(tmp_path / "state" / "spool")
    assert [(e["messageId"], e["event"]) for e in events] == [(first, "first call")]


def test_an_apps_process_loads_only_what_the_producer_needs(tmp_path: Path) -> None:
    """Importing the package and emitting loads none of the sender's libraries (msgspec reads records,
    urllib3 posts them): an app's processes pay for neither at start-up."""
    assert run_probe(tmp_path)["modules"] == []
