"""The cyclic garbage collector of the sender and the devserver: tuned to run rarely (see
``rudder_fast.gcpolicy``), and still collecting reference cycles."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from rudder_fast import gcpolicy


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_the_start_up_objects_and_collects_less_often() -> None:
    gcpolicy.tune()
    assert gc.get_threshold() == gcpolicy.THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_reference_cycles_are_still_collected_with_the_tuned_thresholds() -> None:
    """A process making a million cycles, tuned as the sender and the devserver are: they are
    collected, and memory stays bounded by the young generation, not by what was made."""
    code = (
        "import gc\n"
        "from rudder_fast import gcpolicy\n"
        "gcpolicy.tune()\n"
        "for _ in range(1_000_000):\n"
        "    a = [None] * 8\n"
        "    a.append(a)\n"
        # VmHWM, this process's own peak: ru_maxrss would carry the parent's across fork and exec
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print(gc.get_stats()[0]['collected'], hwm.split()[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    collected, max_rss_kib = map(int, out.stdout.split())
    assert collected >= 900_000  # all but the last young generation's worth
    assert max_rss_kib < 100 * 1024  # ~50 MB here; a million uncollected cycles make it ~200 MB
