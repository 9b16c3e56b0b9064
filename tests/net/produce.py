"""A steady producer for the net scenarios: ``track`` calls at a fixed rate into a spool, until SIGTERM.

Run as ``python -m tests.net.produce --spool DIR --rate N --ids FILE`` (in the root namespace: the
spool is an ordinary shared directory). It prints ``ready`` after its first event, appends each
returned ``messageId`` to ``FILE`` (one per line; ``DROPPED`` for a call that returned None), and on
SIGTERM seals its segment and exits 0, so ``FILE`` then lists every event it made.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from rudder_fast import Emitter
from tests.net.control import die_with_parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--spool", required=True)
    p.add_argument("--rate", type=float, default=200.0, help="events per second")
    p.add_argument("--pad", type=int, default=0, help="bytes of random hex added to each event")
    p.add_argument("--ids", required=True, help="append each messageId here")
    args = p.parse_args(argv)
    die_with_parent()
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    emitter = Emitter(args.spool)
    interval = 1.0 / args.rate
    n = 0
    with open(args.ids, "a") as ids:
        next_at = time.monotonic()
        while not stopping:
            pad = os.urandom(args.pad // 2).hex()  # random: gzip cannot shrink it, so it takes packets
            mid = emitter.track(user_id="net-user", event="Net Scenario", properties={"n": n, "pad": pad})
            ids.write(f"{mid or 'DROPPED'}\n")
            if n == 0:
                ids.flush()
                print("ready", flush=True)
            n += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        emitter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
