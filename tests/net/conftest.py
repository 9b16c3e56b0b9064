"""Fixtures of the net suite: the topology, a running pipeline on it, and the scenario results.

Where network namespaces cannot be made (not root, no ``/dev/net/tun``, ``ip netns add`` refused) the
tests that need them are skipped with the reason — unless ``RUDDER_FAST_REQUIRE_NETNS=1`` is set, which
turns that skip into a failure (``./scripts/test`` sets it when it runs as root, so CI never skips them
silently). Tests of the TCP fault relay alone run on loopback and need nothing special.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import orjson
import pytest

from tests.net.netns import NetnsUnavailable, Topology, preflight, remove_stale
from tests.net.scenario import ScenarioResult

REQUIRE_ENV = "RUDDER_FAST_REQUIRE_NETNS"
RESULTS_ENV = "RUDDER_FAST_NET_RESULTS"  # a file to append each scenario's result to, as a JSON line
_RESULTS = pytest.StashKey[list[ScenarioResult]]()


def unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"network namespaces are required ({REQUIRE_ENV}=1) but: {reason}", pytrace=False)
    pytest.skip(f"network namespaces unavailable: {reason}")


@pytest.fixture
def netns_ready() -> None:
    """Namespaces can be made here (else skip, or fail under RUDDER_FAST_REQUIRE_NETNS=1), and what a
    crashed earlier run left behind is gone."""
    try:
        preflight()
    except NetnsUnavailable as exc:
        unavailable(str(exc))
    remove_stale()


@pytest.fixture
def topology(netns_ready: None, tmp_path: Path) -> Iterator[Topology]:
    """Two fresh namespaces joined by the IP relay; everything removed afterwards, even on failure."""
    topo = Topology(tmp_path)
    try:
        try:
            topo.start()
        except NetnsUnavailable as exc:
            unavailable(str(exc))
        yield topo
    finally:
        topo.close()


@pytest.fixture
def record_result(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[ScenarioResult]]:
    """Append a :class:`ScenarioResult` here: it is printed in the summary, kept in the test's tmp dir
    and, with ``RUDDER_FAST_NET_RESULTS=<file>``, appended to that file for later comparison."""
    mine: list[ScenarioResult] = []
    yield mine
    for result in mine:
        request.config.stash.setdefault(_RESULTS, []).append(result)
        with open(tmp_path / "results.txt", "a") as f:
            f.write(result.line() + "\n")
        target = os.environ.get(RESULTS_ENV)
        if target:
            with open(target, "ab") as f:
                f.write(orjson.dumps(result.to_json()) + b"\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, [])
    if results:
        terminalreporter.section("network fault scenarios")
        for result in results:
            terminalreporter.write_line(result.line())
