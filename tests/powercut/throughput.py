"""How many producer events a second the power-cut file system takes (as root).

``python -m tests.powercut.throughput [--producers N] [--seconds S] [--plain]``

Starts N producers (:mod:`.producer`, as fast as they can) on a spool on the mount, or on the plain
disk beside it with ``--plain``, counts the events they log over S seconds after a one-second warm-up,
and prints events/s with the file system's counters. No sender runs: this is the write path alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .mount import REPO, PowerCutFS, unavailable_reason


def count_lines(paths: list[Path]) -> int:
    return sum(path.read_bytes().count(b"\n") for path in paths if path.exists())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="events/s through the power-cut file system")
    parser.add_argument("--producers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--plain", action="store_true", help="the spool on the plain disk instead")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(reason)
    with tempfile.TemporaryDirectory() as tmp, PowerCutFS(Path(tmp) / "powercut") as fs:
        spool = (Path(tmp) if args.plain else fs.mountpoint) / "spool"
        logs = [Path(tmp) / f"producer-{i}.log" for i in range(args.producers)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for i, log in enumerate(logs):
                cmd = [sys.executable, "-m", "tests.powercut.producer", "--spool", str(spool), "--log",
                       str(log), "--index", str(i), "--rate", "0"]  # fmt: skip
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL))
            time.sleep(1.0)  # imports and the first segments
            before, started = count_lines(logs), time.monotonic()
            time.sleep(args.seconds)
            after, elapsed = count_lines(logs), time.monotonic() - started
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        where = "plain disk" if args.plain else "power-cut mount"
        print(
            f"{where}, {args.producers} producer(s): {(after - before) / elapsed:,.0f} events/s; {fs.stats()}"
        )


if __name__ == "__main__":
    main()
