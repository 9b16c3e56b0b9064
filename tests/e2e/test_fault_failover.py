"""Several data planes: the real ``rudder-fast-sender`` given two (``RUDDER_DATA_PLANE_URL`` with a comma)
moves its traffic to the second when the first answers 503 or has its port closed, shows which one it
uses in ``rudder-fast status`` (text and ``--json``), and returns to the first once it answers again.
Every event arrives exactly once over the two: a batch never goes to both. (The first is probed with
the next batch to send: an idle sender has nothing to probe it with.)
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rudder_fast import Emitter
from rudder_fast.transport import BATCH_PATH
from tests.support.delivery import assert_delivered_exactly
from tests.support.devserver import DevServer
from tests.support.processes import clean_env, console_script
from tests.support.sender import Senders, sender_env, wait_sender_ready
from tests.support.spool import status_json
from tests.support.waiting import wait_for

EVENTS = 50  # per phase
FAULT_S = 4.0  # how long the first data plane fails: then probes (at most 2 s apart) find it again


@pytest.fixture
def two_devservers(tmp_path: Path) -> Iterator[tuple[DevServer, DevServer]]:
    with (
        DevServer.start(out=tmp_path / "first.jsonl", stderr=tmp_path / "first.log") as first,
        DevServer.start(out=tmp_path / "second.jsonl", stderr=tmp_path / "second.log") as second,
    ):
        yield first, second


def in_use(spool: Path) -> str | None:
    """The base URL of the data plane in use (status shows the URL posted to)."""
    planes: list[dict[str, Any]] = status_json(spool)["sender"]["data_planes"]
    return next((plane["url"].removesuffix(BATCH_PATH) for plane in planes if plane["in_use"]), None)


def emit(emitter: Emitter, phase: str, n: int = EVENTS) -> list[str]:
    ids = [emitter.track(user_id=f"u{i}", event=phase) for i in range(n)]
    assert None not in ids
    return [str(mid) for mid in ids]


@pytest.mark.parametrize(
    "fault", [{"fail_status": 503, "fail_for": FAULT_S}, {"down_for": FAULT_S}], ids=["503", "port-closed"]
)
def test_traffic_fails_over_to_the_second_data_plane_and_returns_to_the_first(
    fault: dict[str, Any], two_devservers: tuple[DevServer, DevServer], senders: Senders, tmp_path: Path
) -> None:
    first, second = two_devservers
    spool = tmp_path / "spool"
    emitter = Emitter(spool)
    try:
        sender = senders.start([], sender_env(spool, f"{first.url},{second.url}"))
        wait_sender_ready(spool, sender)
        ids = emit(emitter, "before")
        wait_for(lambda: len(first.received()) >= EVENTS, timeout=30)
        assert in_use(spool) == first.url

        first.control(fault)
        ids += emit(emitter, "during")
        wait_for(lambda: len(second.received()) >= EVENTS, timeout=30)
        wait_for(lambda: in_use(spool) == second.url, timeout=10)
        text = subprocess.run(
            [console_script("rudder-fast"), "status", "--spool-dir", str(spool)],
            capture_output=True, text=True, timeout=60, env=clean_env(), check=True,
        ).stdout  # fmt: skip
        assert f"* {second.url}{BATCH_PATH} (in use)" in text, text
        assert f"  {first.url}{BATCH_PATH} (backoff)" in text, text

        # A probe goes out with the next batch: events keep coming until one finds the first answering.
        deadline = time.monotonic() + FAULT_S + 20
        while in_use(spool) != first.url:
            assert time.monotonic() < deadline, "the sender never returned to the first data plane"
            ids += emit(emitter, "after", 5)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: in_use(spool) == first.url, timeout=1)
        ids += emit(emitter, "back")
        wait_for(lambda: len(first.received()) + len(second.received()) >= len(ids), timeout=30)
        assert "back" in {e["event"] for e in first.received()}
        assert "back" not in {e["event"] for e in second.received()}
        assert "failed (" in sender.stderr()
        assert "answers again: delivering to it" in sender.stderr()
    finally:
        emitter.close()
    assert_delivered_exactly(first.received() + second.received(), ids)
