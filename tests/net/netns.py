"""The topology: two network namespaces joined by the user-space IP relay, and the processes in them.

::

      app namespace                      root namespace                     dp namespace
    ┌──────────────────────┐          ┌──────────────────┐          ┌───────────────────────────┐
    │ rudder-fast-sender   │   TUN    │  tests.net.relay │   TUN    │ tcpfault :TCP_PORT        │
    │ DNS responder :53    ├──────────┤  delay/loss/     ├──────────┤   → devserver 127.0.0.1   │
    │ 10.201.0.1           │          │  blackhole       │          │ 10.201.0.2                │
    └──────────────────────┘          └──────────────────┘          └───────────────────────────┘

Names are unique per run (``rfnet-<pid>-<n>-app`` / ``-dp``) so parallel runs never meet. The relay
creates both TUN devices in the root namespace and holds their file descriptors; :meth:`Topology.start`
moves one device into each namespace and gives them point-to-point addresses (``10.201.0.1 peer
10.201.0.2``), which also installs the route to the other side. Loopback is up on both sides.

``ip netns exec`` bind-mounts ``/etc/netns/<ns>/hosts`` and ``resolv.conf`` over the real ones for the
command it starts, so :meth:`Topology.start` writes both for the app namespace: the data plane's host
name resolves through ``hosts`` until a test removes it, and then goes to a nameserver on the app side's
own loopback. The files are rewritten in place (never renamed over), because a bind mount follows the
inode.

Teardown, also after a failure: every process started through :meth:`Topology.spawn` (SIGTERM, then
SIGKILL), anything else still inside either namespace, the relay (its exit removes both devices), both
namespaces and their ``/etc/netns`` directories. :func:`remove_stale` does the same for what a crashed
earlier run left behind: namespaces whose owner pid is gone, or that carry this process's pid without
having been made by it (a recycled pid).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.net import control
from tests.support.processes import stop_process

PREFIX = "rfnet-"
APP_ADDR = "10.201.0.1"
DP_ADDR = "10.201.0.2"
DATAPLANE_HOST = "dataplane.rf.test"
NETNS_ETC = Path("/etc/netns")
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
CLONE_NEWNET = 0x40000000

_serial = itertools.count(1)
_made_here: set[str] = set()  # namespace tags created by this process: never "stale" while it runs


class NetnsUnavailable(Exception):
    """Network namespaces (or TUN devices) cannot be made here; the message says why."""


def ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def preflight() -> None:
    """Raise :class:`NetnsUnavailable` if this machine cannot host the topology."""
    if sys.platform != "linux":
        raise NetnsUnavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces and TUN devices need root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        raise NetnsUnavailable(f"/dev/net/tun cannot be opened: {exc}") from None


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _netns_pids(name: str) -> list[int]:
    proc = ip("netns", "pids", name, check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def _stale_relays(tag: str | None = None) -> list[int]:
    """Relay processes of dead owners (or, with ``tag``, of that topology)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tests.net.relay" not in argv or b"--owner" not in argv:
            continue
        owner_tag = argv[argv.index(b"--owner") + 1].decode()
        owner_pid = int(owner_tag.split("-")[1]) if owner_tag.count("-") >= 2 else 0
        if owner_tag == tag or (tag is None and owner_tag not in _made_here and not _alive(owner_pid)):
            found.append(int(entry.name))
    return found


def _delete_namespace(name: str) -> None:
    _kill_pids(_netns_pids(name))
    ip("netns", "del", name, check=False)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def remove_stale() -> list[str]:
    """Remove what crashed earlier runs left: their namespaces, /etc/netns entries and relays."""
    names = [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines() if line]
    if NETNS_ETC.exists():
        names += [p.name for p in NETNS_ETC.iterdir()]
    removed = []
    for name in sorted(set(names)):
        m = re.fullmatch(rf"{PREFIX}(\d+)-(\d+)-(app|dp)", name)
        if m is None:
            continue
        tag = f"{PREFIX}{m[1]}-{m[2]}"
        if tag in _made_here or (int(m[1]) != os.getpid() and _alive(int(m[1]))):
            continue
        _delete_namespace(name)
        removed.append(name)
    _kill_pids(_stale_relays())
    return removed


@dataclass
class Topology:
    """Two namespaces, the relay between them, and every process a test starts in them."""

    tmp: Path
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-{next(_serial)}")
    relay: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    @property
    def app(self) -> str:
        return f"{self.tag}-app"

    @property
    def dp(self) -> str:
        return f"{self.tag}-dp"

    @property
    def relay_socket(self) -> str:
        return str(self.tmp / "relay.sock")

    def __repr__(self) -> str:
        return f"<Topology {self.tag} relay={self.relay.pid if self.relay else None} procs={len(self.procs)}>"

    # -- set up and tear down ----------------------------------------------------------------------------

    def start(self) -> Topology:
        _made_here.add(self.tag)
        for name in (self.app, self.dp):
            proc = ip("netns", "add", name, check=False)
            if proc.returncode != 0:
                raise NetnsUnavailable(f"`ip netns add {name}` failed: {proc.stderr.strip()}")
            self._made.append(name)
        serial = self.tag.rsplit("-", 1)[1]
        tun_app, tun_dp = f"rf{os.getpid()}{serial}a", f"rf{os.getpid()}{serial}d"
        argv = [sys.executable, "-m", "tests.net.relay", "--tun-a", tun_app, "--tun-b", tun_dp]
        argv += ["--control", self.relay_socket, "--owner", self.tag]
        self.relay = self._popen(
            argv,
            "relay.log",
            stdout=subprocess.PIPE,
        )
        self._wait_ready(self.relay, "relay")
        for ns, tun, local, peer in (
            (self.app, tun_app, APP_ADDR, DP_ADDR),
            (self.dp, tun_dp, DP_ADDR, APP_ADDR),
        ):
            ip("link", "set", tun, "netns", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", local, "peer", peer, "dev", tun)
            ip("-n", ns, "link", "set", tun, "up")
        etc = NETNS_ETC / self.app
        etc.mkdir(parents=True, exist_ok=True)
        self.set_hosts(resolvable=True)
        self.set_resolv_conf("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return self

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        for name in self._made:
            _kill_pids(_netns_pids(name))
        if self.relay is not None:
            stop(self.relay)
            if self.relay.stdout is not None:
                self.relay.stdout.close()
        _kill_pids(_stale_relays(self.tag))
        for name in self._made:
            ip("netns", "del", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only if no one else uses it
        for log in self._logs:
            log.close()
        _made_here.discard(self.tag)

    # -- name resolution in the app namespace ------------------------------------------------------------

    def set_hosts(self, *, resolvable: bool) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        if resolvable:
            lines.append(f"{DP_ADDR} {DATAPLANE_HOST}")
        _rewrite_in_place(NETNS_ETC / self.app / "hosts", "\n".join(lines) + "\n")

    def set_resolv_conf(self, text: str) -> None:
        _rewrite_in_place(NETNS_ETC / self.app / "resolv.conf", text)

    # -- processes --------------------------------------------------------------------------------------

    def spawn(
        self,
        side: str,
        argv: list[str],
        log_name: str,
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the ``app`` or ``dp`` namespace (``root``: no namespace); stopped at close."""
        prefix = {
            "app": ["ip", "netns", "exec", self.app],
            "dp": ["ip", "netns", "exec", self.dp],
            "root": [],
        }
        proc = self._popen(prefix[side] + argv, log_name, env=env, stdout=stdout)
        self.procs.append(proc)
        return proc

    def run(self, side: str, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in a namespace (killed at ``timeout``)."""
        ns = {"app": self.app, "dp": self.dp}[side]
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            check=False,
        )

    def socket_in(self, side: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """An IPv4 socket of the ``app`` or ``dp`` namespace, usable from any thread of this process.

        A socket belongs to the namespace of the thread that created it, so a short-lived thread enters
        the namespace (setns) and creates it; the test's own threads never change namespace.
        """
        path = f"/var/run/netns/{self.app if side == 'app' else self.dp}"
        made: list[socket.socket | BaseException] = []

        def create() -> None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc().setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({path}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                made.append(socket.socket(socket.AF_INET, kind))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                made.append(exc)

        thread = threading.Thread(target=create)
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]

    def relay_control(self, **cmd: Any) -> dict[str, Any]:
        """Change the wire: ``delay_ms``, ``loss``, ``blackhole``, ``reset``; returns its state."""
        return control.request(self.relay_socket, cmd)

    def _popen(
        self,
        argv: list[str],
        log_name: str,
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / log_name, "ab")  # noqa: SIM115 - closed at close()
        self._logs.append(log)
        return subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], what: str) -> None:
        try:
            wait_line(proc, "ready", START_TIMEOUT_S)
        except AssertionError:
            lines = (self.tmp / f"{what}.log").read_text(errors="replace").strip().splitlines()
            why = lines[-1] if lines else f"no output, exit code {proc.poll()}"
            raise NetnsUnavailable(f"the {what} could not start: {why}") from None


def _rewrite_in_place(path: Path, text: str) -> None:
    with open(path, "w") as f:  # truncate and write: the same inode, so bind mounts see the change
        f.write(text)


def wait_line(proc: subprocess.Popen[bytes], expected: str, timeout: float) -> str:
    """Read ``proc``'s stdout up to the first line starting with ``expected``; fail at the deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        lines = buf.split(b"\n")
        for line in lines[:-1]:
            if line.decode(errors="replace").startswith(expected):
                return line.decode()
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {expected!r} line within {timeout} s (got {buf[-500:]!r})")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"exited ({proc.wait(5)}) before printing {expected!r}: {buf[-500:]!r}")
            buf += chunk


def stop(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, SIGKILL (the kit's processes get a shorter wait than the suite's default)."""
    return stop_process(proc, timeout)
