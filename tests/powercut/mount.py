"""The tests' handle on the power-cut file system: mount it in a subprocess, drive it, always unmount.

:class:`PowerCutFS` starts ``python -m tests.powercut.fs`` on ``<workdir>/backing`` mounted at
``<workdir>/mnt``, waits for the kernel to have initialised the mount, and speaks the line protocol of
:mod:`.fs`. :meth:`PowerCutFS.stop` (also run by the context manager, whatever happened) detaches the
mount, closes the command pipe, and waits for the daemon to exit, killing it at a deadline; a mount
left by a dead daemon is detached too. :func:`unavailable_reason` says why this machine cannot mount
it (not root, no /dev/fuse, no libfuse2, no fusepy), for the tests to skip, or to fail when
``RUDDER_FAST_REQUIRE_FUSE=1``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
ENV_REQUIRE_FUSE = "RUDDER_FAST_REQUIRE_FUSE"
FS_TYPE = "fuse.powercut"
START_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
MNT_DETACH = 2


def unavailable_reason() -> str | None:
    """Why the power-cut file system cannot be mounted here, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "FUSE file systems need Linux"
    if os.geteuid() != 0:
        return "mounting the power-cut file system needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc}"
    if ctypes.util.find_library("fuse") is None:
        return "libfuse2 is not installed (Debian: apt-get install libfuse2)"
    if importlib.util.find_spec("fuse") is None:
        return "fusepy is not installed (pip install -e '.[test]')"
    return None


def require_fuse_mode() -> bool:
    """True when a missing FUSE must fail the run instead of skipping (CI as root sets it)."""
    return os.environ.get(ENV_REQUIRE_FUSE, "").lower() in ("1", "true", "yes")


def is_mounted(mountpoint: Path) -> bool:
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                return True
    return False


def mount_fs_type(mountpoint: Path) -> str | None:
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target and right:
                return right.split()[0]
    return None


def detach(mountpoint: Path) -> None:
    """umount2(MNT_DETACH), ignoring "not mounted"."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.umount2(os.fsencode(mountpoint), MNT_DETACH)


class PowerCutFS:
    """A mounted power-cut file system (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.backing = workdir / "backing"
        self.mountpoint = workdir / "mnt"
        self.log_path = workdir / "fs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._buffer = b""

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<PowerCutFS mountpoint={self.mountpoint} pid={pid}>"

    def __enter__(self) -> PowerCutFS:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.powercut.fs", "--backing", str(self.backing),
             "--mountpoint", str(self.mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO, env=env,
        )  # fmt: skip
        line = self._read_line(START_TIMEOUT_S)
        if line != "ready":
            raise AssertionError(f"power-cut file system did not start: {line!r}\n{self.log_tail()}")
        fstype = mount_fs_type(self.mountpoint)
        if fstype != FS_TYPE:
            raise AssertionError(f"{self.mountpoint} is mounted as {fstype!r}, not {FS_TYPE!r}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer from the power-cut file system in {timeout} s")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    rc = self.proc.poll()
                    raise AssertionError(f"the power-cut file system exited ({rc}):\n{self.log_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def command(self, line: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        """Send one command; its answer after "ok" (fails the test on "error ...")."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        answer = self._read_line(timeout)
        if answer != "ok" and not answer.startswith("ok "):
            raise AssertionError(f"power-cut file system: {line!r} -> {answer!r}")
        return answer[3:]

    def sync(self) -> None:
        """Make everything durable, as if the machine had run for a long time since."""
        self.command("sync")

    def freeze(self) -> None:
        """The power cut: nothing more becomes durable; every operation on the mount fails with EIO."""
        self.command("freeze")

    def write_durable(self, out: Path) -> tuple[int, int]:
        """Write what survived the cut into the new directory ``out``: (files, bytes)."""
        files, size = self.command(f"write {out}").split()
        return int(files), int(size)

    def stats(self) -> dict[str, Any]:
        """Counts of writes, bytes written, file syncs and directory syncs since the mount."""
        result: dict[str, Any] = json.loads(self.command("stats"))
        return result

    def stop(self) -> None:
        """Unmount and end the daemon, whatever state it is in."""
        proc = self.proc
        if proc is not None:
            if is_mounted(self.mountpoint):
                detach(self.mountpoint)  # the daemon's loop ends once nothing uses the mount
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self.proc = None
        if is_mounted(self.mountpoint):
            detach(self.mountpoint)  # left by a daemon that died
        if self._log is not None:
            self._log.close()
            self._log = None
