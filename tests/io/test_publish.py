"""The sender's status publication (``rudder_fast.publish``): once a second, from a moment made only
when one is due (the main loop asks at every turn, and gathering the figures walks every segment)."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from rudder_fast import config
from rudder_fast.counts import Counters
from rudder_fast.delivery import DeliveryState
from rudder_fast.layout import ensure_spool
from rudder_fast.publish import Moment, Publisher
from rudder_fast.retry import RetryPolicy


def test_a_moment_is_made_and_published_only_when_one_is_due(tmp_path: Path) -> None:
    paths = ensure_spool(tmp_path / "spool")
    cfg = config.SenderConfig(spool_dir=paths.root, write_key="k", data_plane_urls=("http://127.0.0.1:1",))
    state = DeliveryState(["http://127.0.0.1:1/v1/batch"], concurrency=1, policy=RetryPolicy())
    publisher = Publisher(paths.status, cfg, state)
    taken: list[int] = []

    def take() -> Moment:
        taken.append(len(taken))
        return Moment(
            counters=Counters(sent=len(taken)), inflight=0, usage_bytes=0, segments=2, live_producers=1
        )

    start = publisher.next_at
    publisher.publish_if_due(start, take)
    assert taken == [0]
    assert orjson.loads(paths.status.read_bytes())["counters"]["sent"] == 1
    for turn in range(1, 100):  # the turns of the next second: nothing is due
        publisher.publish_if_due(start + turn * config.STATUS_INTERVAL_S / 100, take)
    assert taken == [0]
    publisher.publish_if_due(start + config.STATUS_INTERVAL_S, take)
    assert taken == [0, 1]
    assert orjson.loads(paths.status.read_bytes())["counters"]["sent"] == 2


def test_drops_are_announced_once_as_reports_with_their_total_and_once_when_none_is_new(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Producers' drop reports reach the sender with their events, possibly long after the drops (an
    outage holds the reading back): the line gives the total and says so, never "dropping now"."""
    paths = ensure_spool(tmp_path / "spool")
    cfg = config.SenderConfig(spool_dir=paths.root, write_key="k", data_plane_urls=("http://127.0.0.1:1",))
    state = DeliveryState(["http://127.0.0.1:1/v1/batch"], concurrency=1, policy=RetryPolicy())
    publisher = Publisher(paths.status, cfg, state)
    dropped = {"quota": 0}

    def take() -> Moment:
        return Moment(
            counters=Counters(dropped=dict(dropped)), inflight=0, usage_bytes=0, segments=1, live_producers=0
        )

    caplog.set_level(logging.WARNING, logger="rudder_fast")
    now = publisher.next_at
    publisher.publish_if_due(now, take)  # the start: what is counted already is not announced
    for more in (600, 397):  # two reports read a second apart: one line
        dropped["quota"] += more
        now += config.STATUS_INTERVAL_S
        publisher.publish_if_due(now, take)
    now += config.DROPS_QUIET_S + config.STATUS_INTERVAL_S
    publisher.publish_if_due(now, take)
    assert [r.getMessage() for r in caplog.records] == [
        "producers report dropped events: {'quota': 600} in total since the spool was made (their reports "
        "are read with their events, so they may predate this sender; see `rudder-fast status`)",
        f"no new drop reported by producers for {config.DROPS_QUIET_S:.0f} s; "
        "dropped in total: {'quota': 997}",
    ]
