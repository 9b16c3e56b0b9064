"""The ledger replaced atomically under SIGKILL: a process committing ever larger ledgers, killed at
random moments, always leaves a whole, valid ledger, never a truncated or half-written one, and its
generation never goes backwards."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rudder_fast import ledger
from tests.support.waiting import wait_for

COMMITTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from rudder_fast import ledger
    path = Path(sys.argv[1])
    state = ledger.read(path) or ledger.LedgerState()
    n = len(state.offsets)
    while True:
        for _ in range(500):  # a large ledger: each commit writes a few hundred kilobytes
            state.offsets[f"{n:016x}-{n}-0.seg"] = 48 + n
            n += 1
        ledger.commit(path, state)
    """
)


def test_a_ledger_commit_killed_at_any_moment_leaves_a_whole_ledger(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("E2E_SEED") or time.time_ns() % 1_000_000))
    path = tmp_path / "ledger"
    last = 0
    for _ in range(25):
        proc = subprocess.Popen(
            [sys.executable, "-c", COMMITTER, str(path)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
        )
        try:
            # Once this run has committed (the ledger is then rewritten back to back), at a random moment.
            def committed(last: int = last) -> bool:
                return (ledger.read(path) or ledger.LedgerState()).generation > last

            wait_for(committed, timeout=30)
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        state = ledger.read(path)
        assert state is not None, "a SIGKILLed commit left a damaged ledger"
        assert state.generation >= last, (state.generation, last)
        last = state.generation
