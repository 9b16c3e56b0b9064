"""Operations through the real console scripts: status (human and JSON), metrics scraped over HTTP,
inspect after a partial delivery, and replaying quarantined events from rejected/."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.support.devserver import DevServer
from tests.support.processes import console_script
from tests.support.producers import fill_spool
from tests.support.sender import Senders, sender_env
from tests.support.spool import inspect_spool, read_rejected, status_json, status_text
from tests.support.waiting import wait_for

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_status_before_and_after_delivery(tmp_path: Path, devserver: DevServer, senders: Senders) -> None:
    spool = tmp_path / "spool"
    produced = fill_spool(spool, 2, 300)
    doc = status_json(spool)
    assert doc["backlog"]["events"] == 600
    assert doc["backlog"]["segments"] >= 2
    assert doc["backlog"]["oldest_age_s"] is not None
    assert doc["backlog"]["oldest_age_s"] >= 0
    assert doc["sender"]["state"] == "not running"
    assert doc["counters"]["sent"] == 0
    assert doc["counters"]["dropped"] == {"total": 0}
    assert "600 events" in status_text(spool)
    assert "not running" in status_text(spool)

    key = "status-secret-key-123"
    sender = senders.start([], sender_env(spool, devserver.url, write_key=key))
    wait_for(lambda: status_json(spool)["counters"]["sent"] == 600, timeout=60)
    doc = status_json(spool)
    assert doc["sender"]["state"] == "ok"
    assert doc["sender"]["pid"] == sender.pid
    assert doc["sender"]["data_plane_url"] == devserver.url + "/v1/batch"
    assert doc["backlog"]["events"] == 0
    assert doc["counters"]["accepted"] == 600
    per_producer = {p["nonce"]: p for p in doc["producers"]["recent"]}
    assert sum(p["sent"] for p in per_producer.values()) == 600
    assert {mid.split("-")[0] for mid in produced.ids} == set(per_producer)
    text = status_text(spool)
    assert re.search(r"sender\s+ok \(pid \d+\)", text), text
    assert key not in text
    assert key not in orjson.dumps(doc).decode()
    sender.proc.terminate()
    assert sender.wait(15) == 0
    assert status_json(spool)["counters"]["sent"] == 600  # from the ledger once the sender is gone


def test_metrics_are_served_and_scraped(tmp_path: Path, devserver: DevServer, senders: Senders) -> None:
    spool = tmp_path / "spool"
    fill_spool(spool, 1, 250)
    textfile = tmp_path / "rudder_fast.prom"
    sender = senders.start(
        ["--metrics-port", "0", "--metrics-textfile", str(textfile)],
        sender_env(spool, devserver.url),
    )
    url = wait_for(lambda: re.search(r"metrics at (http://\S+)", sender.stderr()), timeout=30).group(1)

    def scrape() -> tuple[int, str]:
        try:
            with _OPENER.open(url, timeout=5) as resp:
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                body: bytes = resp.read()
                return resp.status, body.decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    def scraped_all() -> str | None:
        status, body = scrape()
        if status == 503:
            # The port is announced before the first snapshot is published: until then a scrape fails
            # (a failed scrape, never counters at zero that would read as a reset).
            assert body.startswith("metrics not ready"), body
            return None
        assert status == 200, (status, body)
        return body if "rudder_fast_events_sent_total 250" in body else None

    body = wait_for(scraped_all, timeout=60)
    assert "# TYPE rudder_fast_events_sent_total counter" in body
    assert 'rudder_fast_sender_state{state="ok"} 1' in body
    assert "rudder_fast_sender_up 1" in body
    # The sender's own process, as Prometheus's standard process_* metrics (read with psutil).
    for family, kind in (
        ("process_cpu_seconds_total", "counter"), ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"), ("process_max_fds", "gauge"), ("process_start_time_seconds", "gauge"),
    ):  # fmt: skip
        assert f"# TYPE {family} {kind}" in body, family
    rss = float(re.search(r"^process_resident_memory_bytes (\S+)$", body, re.M)[1])  # type: ignore[index]
    assert 10 * 2**20 < rss < 2**31, rss
    wait_for(lambda: textfile.exists() and "rudder_fast_events_sent_total 250" in textfile.read_text())
    sender.proc.terminate()
    assert sender.wait(15) == 0
    assert "rudder_fast_sender_up 0" in textfile.read_text()


def test_inspect_lists_only_unacknowledged_events(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    spool = tmp_path / "spool"
    first = fill_spool(spool, 1, 200)
    result = senders.run(["--drain"], sender_env(spool, devserver.url))
    assert result.returncode == 0, result.stderr
    second = fill_spool(spool, 1, 50)
    events, _ = inspect_spool(spool)
    assert {e["messageId"] for e in events} == second.id_set
    assert not ({e["messageId"] for e in events} & first.id_set)


def test_replay_brings_back_quarantined_events(
    tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    spool = tmp_path / "spool"
    dev: DevServer = start_devserver(extra_args=["--poison-user-id", "user-0-5"])
    fill_spool(spool, 1, 20, identity=lambda p, j: (f"user-{p}-{j}", None))
    result = senders.run(["--drain"], sender_env(spool, dev.url))
    assert result.returncode == 0, result.stderr
    rejected = read_rejected(spool)
    assert [r["event"]["userId"] for r in rejected] == ["user-0-5"]
    assert rejected[0]["status"] == 400
    original = rejected[0]["event"]

    # The cause is fixed (here: a data plane that no longer refuses it); replay, deliver.
    dev.control({"poison_user_id": None})
    files = sorted((spool / "rejected").glob("*.jsonl"))
    replay = subprocess.run(
        [console_script("rudder-fast"), "replay", "--spool-dir", str(spool), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 events" in replay.stderr
    result = senders.run(["--drain"], sender_env(spool, dev.url))
    assert result.returncode == 0, result.stderr
    delivered = [e for e in dev.received() if e["userId"] == "user-0-5"]
    assert len(delivered) == 1
    again = delivered[0]
    assert again["messageId"] == original["messageId"]
    assert again["properties"] == original["properties"]
    assert again["timestamp"] == original["originalTimestamp"]  # the event keeps its time
