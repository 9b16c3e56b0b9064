"""A nameserver that never resolves anything: the DNS outage of the net scenarios.

Run as ``python -m tests.net.dns --listen 127.0.0.1:53 --control PATH --mode servfail`` inside the app
namespace (whose ``resolv.conf`` names it); it prints ``ready``. It answers every query according to
its mode, which the control socket can change (``{"mode": "silent"}``):

``servfail``  SERVFAIL at once (a resolver whose upstream is down): lookups fail fast
``silent``    no answer at all (a nameserver behind a dead link): lookups wait for the resolver's
              timeout, ``options timeout:N attempts:M`` in ``resolv.conf``

Every query is logged (wall-clock time, name, type); ``{"since": 0}`` returns the log.
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from tests.net.control import LineServer, die_with_parent

MODES = ("servfail", "silent")
RCODE_SERVFAIL = 2


def parse_question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset of the question) of a query's first question."""
    labels = []
    i = 12
    while packet[i]:
        n = packet[i]
        labels.append(packet[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype = struct.unpack_from("!H", packet, i + 1)[0]
    return ".".join(labels), qtype, i + 5


def servfail(packet: bytes, question_end: int) -> bytes:
    """The answer to ``packet``: same id and question, QR and RA set, RD echoed, RCODE SERVFAIL."""
    (qid, flags) = struct.unpack_from("!HH", packet, 0)
    answer_flags = 0x8000 | (flags & 0x7900) | 0x0080 | RCODE_SERVFAIL  # QR, opcode+RD echoed, RA
    return struct.pack("!HHHHHH", qid, answer_flags, 1, 0, 0, 0) + packet[12:question_end]


class Responder:
    def __init__(self, listen: tuple[str, int], mode: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(listen)
        self.mode = mode
        self.log: list[dict[str, Any]] = []

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if "mode" in cmd:
            if cmd["mode"] not in MODES:
                raise ValueError(f"mode must be one of {MODES}")
            self.mode = cmd["mode"]
        return {"mode": self.mode, "count": len(self.log), "queries": self.log[int(cmd.get("since", 0)) :]}

    def handle(self) -> None:
        packet, peer = self.sock.recvfrom(4096)
        try:
            name, qtype, end = parse_question(packet)
        except (IndexError, struct.error):
            return
        self.log.append({"t": time.time(), "name": name, "qtype": qtype, "mode": self.mode})
        if self.mode == "servfail":
            self.sock.sendto(servfail(packet, end), peer)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--listen", type=_addr, default=("127.0.0.1", 53))
    p.add_argument("--control", required=True)
    p.add_argument("--mode", choices=MODES, default="servfail")
    args = p.parse_args(argv)
    die_with_parent()
    responder = Responder(args.listen, args.mode)
    control = LineServer(args.control, responder.command)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    try:
        while not stopping:
            for fd in select.select([responder.sock.fileno(), *control.fds()], [], [], 0.2)[0]:
                if fd == responder.sock.fileno():
                    responder.handle()
                else:
                    control.ready(fd)
    finally:
        control.close()
        responder.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
