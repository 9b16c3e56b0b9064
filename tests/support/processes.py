"""Processes: the repository's paths, the project's console scripts, environments, and starting,
stopping and reaping processes so that none outlives the test that started it.

Stopping is always the same escalation: a polite signal, a deadline, then SIGKILL, and for a process
that forks workers (gunicorn, supervisord, celery), SIGKILL to whatever is left of its process group.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The running virtualenv's bin/: the console scripts, and the tools of the `test` extra.
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0


# -- what to run, and with which environment -------------------------------------------------------------


def console_script(name: str) -> str:
    """The path of one of the project's console scripts in the running virtualenv."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"console script {name} is not installed in {BIN}")
    return str(path)


def require_script(name: str, package: str) -> str:
    """The path of an optional tool's console script in the venv, or skip the test saying why."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (pip install {package}: the `test` extra)")
    return str(path)


NOBODY = 65534


def as_nobody(argv: Sequence[str]) -> list[str]:
    """``argv`` run as user and group nobody (the caller must be root), skipping the test where this
    interpreter cannot start as another user: a pyenv Python under a private ``/root`` cannot load its
    ``libpython`` for them. The default interpreter's run covers the test then."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"{sys.executable} cannot start as uid {NOBODY}: {probe.stderr[:200]}")
    return [*prefix, *argv]


def env_with(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RUDDER_* variable (nothing leaks in by accident)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
    env.update(extra)
    return env


# -- ports ----------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the usual small race is acceptable on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused): a data plane that is down."""
    return free_port()


# -- stopping --------------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, then SIGKILL: the process is reaped whatever happens. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


def wait_exit(proc: subprocess.Popen[Any], timeout: float, log: Path) -> int:
    """The exit code within ``timeout``, else fail (whoever started it kills it)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{proc.args!r} still running after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}"
        ) from None


def group_alive(pgid: int) -> bool:
    """True while any process of process group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the group ``proc`` leads, reap ``proc``, and wait (briefly) for orphans to go."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # orphans are reaped by init: wait for them to go


@contextlib.contextmanager
def process_group(
    cmd: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    stdin: int | IO[Any] | None = None,
    user: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` as the leader of a new session (its own process group), output to ``log``.

    On exit: SIGTERM to the leader, SIGKILL at the deadline, then SIGKILL to whatever is left of its
    group (forked workers): nothing it started outlives the test. ``user``: run as this uid and gid.
    """
    ids: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            start_new_session=True,
            **ids,
        )
        try:
            yield proc
        finally:
            stop_process(proc, 20.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdin is not None:
                proc.stdin.close()


class ProcGroup:
    """Starts named processes (each the leader of its own process group) and stops them all on close.

    ``stop`` sends one signal to the leader and waits; whatever is left of its group at the deadline
    (or after the leader exited: orphaned workers) is SIGKILLed by process group id.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def __enter__(self) -> ProcGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str],
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        assert name not in self.procs, name
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self._files.append(log)
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str, n: int = 4000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the leader, wait up to ``timeout``; then SIGKILL the group. The leader's exit code,
        or None if it had to be killed."""
        proc = self.procs[name]
        code: int | None = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = proc.returncode
        kill_group(proc)
        return code

    def leftovers(self, name: str) -> bool:
        """True if members of the process's group outlived its leader (orphaned children)."""
        return group_alive(self.procs[name].pid)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            kill_group(proc)
        for f in self._files:
            f.close()
        self._files = []


# -- forked children and their pipes ---------------------------------------------------------------------


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


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a child's stdout pipe, or b"" at EOF; fails the test at the deadline."""
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line within {timeout} s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        byte = os.read(fd, 1)
        if not byte:
            return buf
        buf += byte
    return buf


def tail(text: str, n: int = 3000) -> str:
    """The end of a process's log, for an assertion message."""
    return text[-n:]
