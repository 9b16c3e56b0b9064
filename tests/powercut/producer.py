"""A producer process for the power-cut test: ``track()`` at a steady rate until killed.

``python -m tests.powercut.producer --spool DIR --log FILE --index N --rate EVENTS_PER_S``

After each call it appends ``<messageId> <CLOCK_MONOTONIC ns>`` (or ``- <ns>`` for a dropped event) to
``--log`` with one ``write``, so a SIGKILL at any moment leaves the ids of every accepted event but at
most the last one. The log must be on a file system the cut does not touch. ``--rate 0`` is as fast as
possible. It dies with the process that started it (PR_SET_PDEATHSIG), so a test killed halfway
leaves no producer behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import time
from pathlib import Path

from rudder_fast import Emitter

PAD = "x" * 100  # an event of about 170 bytes in the spool
PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--segment-max-bytes", type=int, default=128 * 1024)
    args = parser.parse_args(argv)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    emitter = Emitter(args.spool, segment_max_bytes=args.segment_max_bytes)
    log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    period_ns = int(1e9 / args.rate) if args.rate > 0 else 0
    user = f"user-{args.index}"
    start = time.monotonic_ns()
    n = 0
    while True:
        ahead = start + n * period_ns - time.monotonic_ns()
        if ahead > 0:
            time.sleep(ahead / 1e9)
        mid = emitter.track(user_id=user, event="Power Cut", properties={"n": n, "pad": PAD})
        os.write(log, f"{mid or '-'} {time.monotonic_ns()}\n".encode())
        n += 1


if __name__ == "__main__":
    main()
