"""The real ``rudder-fast-sender`` console script in a subprocess: in the background, or to completion
(``--drain``). Every sender started through :class:`Senders` is killed and reaped by its ``close``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support.devserver import DevServer
from tests.support.processes import console_script
from tests.support.waiting import wait_for


def sender_env(
    spool_dir: Path, url: str | None, write_key: str | None = "e2e-key", **extra: str
) -> dict[str, str]:
    """The sender's environment: no RUDDER_* variable of the caller's leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
    env["RUDDER_FAST_SPOOL_DIR"] = str(spool_dir)
    if url is not None:
        env["RUDDER_DATA_PLANE_URL"] = url
    if write_key is not None:
        env["RUDDER_WRITE_KEY"] = write_key
    env.update(extra)
    return env


@dataclass
class RunningSender:
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code; kills the sender and fails the test at the deadline."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"sender {self.pid} still running after {timeout} s:\n{self.stderr()[-4000:]}"
            ) from None


class Senders:
    """Runs the real ``rudder-fast-sender`` console script, to completion or in the background."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.exe = console_script("rudder-fast-sender")
        self.running: list[RunningSender] = []
        self._files: list[IO[bytes]] = []

    def run(
        self, args: Sequence[str], env: dict[str, str], timeout: float = 120.0, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (killed, and the test failed, after ``timeout``)."""
        return subprocess.run(
            [self.exe, *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def start(self, args: Sequence[str], env: dict[str, str]) -> RunningSender:
        """Start in the background; stdout and stderr go to a log file. Stopped at teardown."""
        log_path = self.tmp_path / f"sender-{len(self.running)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
        self._files.append(log)
        proc = subprocess.Popen([self.exe, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        running = RunningSender(proc, log_path)
        self.running.append(running)
        return running

    def close(self) -> None:
        for running in self.running:
            if running.proc.poll() is None:
                running.proc.kill()
            running.proc.wait()
        for f in self._files:
            f.close()


def drain(senders: Senders, spool_dir: Path, devserver: DevServer, timeout: float = 60.0) -> str:
    """Run ``rudder-fast-sender --drain --drain-timeout TIMEOUT`` to the devserver; assert it exits 0.
    Its stderr."""
    proc = senders.run(
        ["--drain", "--drain-timeout", str(timeout)],
        sender_env(spool_dir, devserver.url),
        timeout=timeout + 30,
    )
    assert proc.returncode == 0, f"drain failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stderr


def wait_sender_ready(spool_dir: Path, sender: RunningSender, timeout: float = 30.0) -> None:
    """Until the sender has published its control file and a status snapshot (its loop is running)."""

    def ready() -> bool:
        assert sender.proc.poll() is None, f"sender exited ({sender.proc.returncode}):\n{sender.stderr()}"
        return (spool_dir / "control").exists() and (spool_dir / "status").exists()

    wait_for(ready, timeout=timeout)
