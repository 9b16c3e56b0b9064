"""The IP relay between the two test namespaces: a user-space "wire" with impairments.

Run as ``python -m tests.net.relay --tun-a NAME --tun-b NAME --control PATH`` in the root namespace.
It creates two TUN devices (layer 3, no packet-info header) and prints ``ready`` once both exist; the
test then moves each into its namespace (the file descriptors stay valid across the move). From then on
every IP packet one side's kernel sends is read here and written to the other side's device, unchanged
(the two sides have addresses of their own, so no rewriting is needed) — or delayed, or dropped.

Impairments apply to both directions and can be changed at any time through the control socket, a UNIX
stream socket speaking one JSON object per line (the answer is one JSON line: settings and counters)::

    {"delay_ms": 100}      hold every packet this long (one way: 100 gives a 200 ms round trip)
    {"loss": 0.01}         drop each packet with this probability
    {"blackhole": true}    drop everything both ways, queued packets included
    {"reset": true}        back to a perfect wire
    {}                     just report

Why user space: this kernel has no netem qdisc and no netfilter, so the fault has to be on the path.
Delayed packets wait in one heap ordered by release time, so a change of delay never reorders packets
already queued in the same direction by more than the change itself. The relay asks the kernel to end it
when its parent dies (PR_SET_PDEATHSIG), so a killed test run cannot leave it behind; closing the TUN
file descriptors removes the devices.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tests.net.control import LineServer, die_with_parent

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536
READ_BURST = 64  # packets read from one device before looking at the other: neither side starves


def open_tun(name: str) -> int:
    """A new TUN device called ``name``, as a non-blocking file descriptor (the device lives as long as
    the descriptor)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class Impairment:
    delay_s: float = 0.0
    loss: float = 0.0
    blackhole: bool = False

    def apply(self, cmd: dict[str, Any]) -> None:
        if cmd.get("reset"):
            self.delay_s, self.loss, self.blackhole = 0.0, 0.0, False
        if "delay_ms" in cmd:
            self.delay_s = max(0.0, float(cmd["delay_ms"]) / 1000)
        if "loss" in cmd:
            self.loss = min(1.0, max(0.0, float(cmd["loss"])))
        if "blackhole" in cmd:
            self.blackhole = bool(cmd["blackhole"])


@dataclass
class Counters:
    forwarded: dict[str, int] = field(default_factory=lambda: {"a_to_b": 0, "b_to_a": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"a_to_b": 0, "b_to_a": 0})
    overflow: int = 0  # packets a device refused to take (its queue full): lost, but not by design


class Relay:
    def __init__(self, fd_a: int, fd_b: int, control_path: str, rng: random.Random) -> None:
        self.fd_a, self.fd_b = fd_a, fd_b
        self.rng = rng
        self.imp = Impairment()
        self.counters = Counters()
        self.queue: list[tuple[float, int, int, str, bytes]] = []  # (release, seq, dst fd, dir, packet)
        self.seq = 0
        self.control = LineServer(control_path, self.command)
        self.stopping = False

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.imp.apply(cmd)
        return {
            "delay_ms": self.imp.delay_s * 1000,
            "loss": self.imp.loss,
            "blackhole": self.imp.blackhole,
            "queued": len(self.queue),
            "forwarded": self.counters.forwarded,
            "dropped": self.counters.dropped,
            "overflow": self.counters.overflow,
        }

    def _drop(self, direction: str) -> None:
        self.counters.dropped[direction] += 1

    def _write(self, dst: int, direction: str, packet: bytes) -> None:
        try:
            os.write(dst, packet)
            self.counters.forwarded[direction] += 1
        except OSError as exc:  # a full device queue or a device not up yet: the wire lost it
            if exc.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL, errno.ENOBUFS):
                raise
            self.counters.overflow += 1
            print(f"relay: a {direction} packet of {len(packet)} bytes not written: {exc}", file=sys.stderr)

    def _packets(self, src: int) -> None:
        dst, direction = (self.fd_b, "a_to_b") if src == self.fd_a else (self.fd_a, "b_to_a")
        for _ in range(READ_BURST):
            try:
                packet = os.read(src, MAX_PACKET)
            except BlockingIOError:
                return
            if self.imp.blackhole or (self.imp.loss and self.rng.random() < self.imp.loss):
                self._drop(direction)
            elif self.imp.delay_s:
                self.seq += 1
                release = time.monotonic() + self.imp.delay_s
                heapq.heappush(self.queue, (release, self.seq, dst, direction, packet))
            else:
                self._write(dst, direction, packet)

    def _release_due(self) -> None:
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, _, dst, direction, packet = heapq.heappop(self.queue)
            if self.imp.blackhole:
                self._drop(direction)
            else:
                self._write(dst, direction, packet)

    def run(self) -> None:
        try:
            while not self.stopping:
                timeout = max(0.0, self.queue[0][0] - time.monotonic()) if self.queue else 0.5
                try:
                    ready, _, _ = select.select([self.fd_a, self.fd_b, *self.control.fds()], [], [], timeout)
                except InterruptedError:
                    continue
                for fd in ready:
                    if fd in (self.fd_a, self.fd_b):
                        self._packets(fd)
                    else:
                        self.control.ready(fd)
                self._release_due()
        finally:
            self.control.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--tun-a", required=True)
    p.add_argument("--tun-b", required=True)
    p.add_argument("--control", required=True, help="path of the control UNIX socket")
    p.add_argument("--owner", default="", help="the topology's tag, rfnet-<pid>-<n> (for stale cleanup)")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    die_with_parent()
    fd_a = open_tun(args.tun_a)
    fd_b = open_tun(args.tun_b)
    relay = Relay(fd_a, fd_b, args.control, random.Random(args.seed))

    def stop(*_: Any) -> None:
        relay.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    try:
        relay.run()
    finally:
        os.close(fd_a)
        os.close(fd_b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
