"""Helpers shared by the test tiers: run the real console scripts, wait on conditions with deadlines."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    """The path of one of the project's console scripts in the running virtualenv."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"console script {name} is not installed in {BIN}")
    return str(path)


def inspect_spool(spool_dir: Path, timeout: float = 120.0) -> tuple[list[dict[str, Any]], str]:
    """Run ``rudder-fast inspect`` for real: the pending events (parsed) and its stderr summary."""
    proc = subprocess.run(
        [console_script("rudder-fast"), "inspect", "--spool-dir", str(spool_dir)],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    events = [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return events, proc.stderr.decode()


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def segment_files(spool_dir: Path) -> list[Path]:
    seg = spool_dir / "segments"
    return sorted(seg.glob("*.seg")) if seg.exists() else []


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def reap(pid: int, deadline: float) -> int:
    """A forked child's exit code (negative: the signal that killed it); SIGKILLs it and fails the test
    at the deadline."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not exit in time")
        time.sleep(0.005)


def read_to_eof(r: int, pid: int, deadline: float) -> bytes:
    """Everything a child writes to pipe ``r`` until EOF (the caller closes ``r``); SIGKILLs the child
    and fails the test if no EOF comes by the deadline."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} sent no EOF in time (deadlocked?)")
        if select.select([r], [], [], left)[0]:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def point_default_emitter(monkeypatch: Any, emitter: Any) -> None:
    """Make ``rudder_fast.emit`` write through ``emitter`` for one test (undone by ``monkeypatch``)."""
    import rudder_fast

    for name in ("_writer", "_append", "spool_dir", "on_full", "block_timeout"):
        monkeypatch.setattr(rudder_fast.emit, name, getattr(emitter, name), raising=False)
