"""Producer programs the fault tests run as subprocesses, from the repository root or with it on
PYTHONPATH: ``python -m tests.support.programs <command> ARGS...`` (see :func:`program_command`).

- ``torn REPORT INDEX SEED GO``: after the file GO appears, a tight loop of track calls with payloads of
  mixed sizes, each returned messageId appended to REPORT, until SIGKILLed (frames torn mid-write);
- ``paced REPORT INDEX RATE SECONDS``: RATE events a second for SECONDS, each messageId appended to REPORT;
- ``cfork REPORT_DIR COUNT``: fork() through ctypes, so Python's at-fork hooks do not run in the child
  (as under uWSGI without py-call-osafterfork); the parent tracks before and after, the child between.

A program that fails prints its traceback and exits 70.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_/"
TORN_SIZES = (24,) * 12 + (300,) * 4 + (3_000, 12_000)  # mostly small; some frames span pages


def torn_payload(rng: random.Random, blob: str) -> dict[str, Any]:
    size = rng.choice(TORN_SIZES)
    start = rng.randrange(0, len(blob) - size)
    pad = blob[start : start + size]
    return {"len": size, "crc": zlib.crc32(pad.encode()), "pad": pad}


def _torn(report: str, index: str, seed: str, go: str) -> None:
    """Announce readiness (``report`` + ``.ready``), wait for the file ``go``, then a tight loop: one
    track call, then its messageId appended to ``report`` (one write each), until SIGKILLed."""
    from rudder_fast import emit

    rng = random.Random(int(seed))
    blob = "".join(rng.choice(_ALPHABET) for _ in range(16_384))
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    Path(report + ".ready").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 60 s")
        time.sleep(0.002)
    i = 0
    while True:
        props = torn_payload(rng, blob)
        props["i"] = i
        mid = emit.track(user_id=f"torn-{index}", event="Torn", properties=props)
        os.write(fd, f"{mid}\n".encode())
        i += 1


def _paced(report: str, index: str, rate: str, seconds: str) -> None:
    """``rate`` events a second for ``seconds``, each messageId appended to ``report`` after return."""
    from rudder_fast import emit

    per_s = float(rate)
    with open(report, "a", buffering=1) as f:
        start = time.monotonic()
        i = 0
        while True:
            now = time.monotonic()
            if now - start >= float(seconds):
                break
            due = start + i / per_s
            if due > now:
                time.sleep(due - now)
            mid = emit.track(
                user_id=f"soak-{index}", event="Soak", properties={"i": i, "pad": "s" * (i % 512)}
            )
            f.write(f"{mid}\n")
            i += 1
    if int(index) % 2 == 0:
        emit.close()  # half seal their segment, the others just exit


def _cfork(report_dir: str, count: str) -> None:
    """fork() called through ctypes: Python's at-fork hooks do not run in the child (as under uWSGI
    without py-call-osafterfork). The parent records events before and after; the child in between."""
    import ctypes

    from rudder_fast import emit

    n = int(count)
    out = Path(report_dir)

    def track(phase: str, j: int) -> str | None:
        return emit.track(
            user_id=f"cfork-{phase}", event="CFork", properties={"phase": phase, "j": j, "pid": os.getpid()}
        )

    before = [track("before", j) for j in range(n)]
    segment_before = emit.stats()["segment"]
    hooks: list[int] = []
    os.register_at_fork(after_in_child=lambda: hooks.append(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = libc.fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork() failed")
    if pid == 0:
        code = 0
        try:
            ids = [track("child", j) for j in range(n)]
            segment = emit.stats()["segment"]
            doc = {"pid": os.getpid(), "hooks_ran": bool(hooks), "ids": ids, "segment": segment}
            (out / "child.json").write_text(json.dumps(doc))
        except BaseException:  # noqa: BLE001 - the child's failure is its exit code, with its traceback
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    after = [track("after", j) for j in range(n)]
    doc = {
        "pid": os.getpid(),
        "child_pid": pid,
        "child_status": status,
        "before": before,
        "after": after,
        "segment_before": segment_before,
        "segment_after": emit.stats()["segment"],
    }
    (out / "parent.json").write_text(json.dumps(doc))
    print("ready", flush=True)
    sys.stdin.readline()  # the test probes our segment's lock meanwhile
    last = track("last", 0)
    print(json.dumps({"last": last}), flush=True)


def program_command(*args: object) -> list[str]:
    """The argv that runs one of these programs (cwd must be the repository root, or PYTHONPATH set:
    :func:`tests.support.producers.producer_env`)."""
    return [sys.executable, "-m", "tests.support.programs", *(str(a) for a in args)]


_COMMANDS: dict[str, Callable[..., None]] = {"torn": _torn, "paced": _paced, "cfork": _cfork}


def main(argv: Sequence[str]) -> None:
    try:
        _COMMANDS[argv[0]](*argv[1:])
    except BaseException:  # noqa: BLE001 - a program's failure is its exit code, with its traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(70)


if __name__ == "__main__":
    main(sys.argv[1:])
