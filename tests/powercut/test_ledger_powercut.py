"""The sender's ledger across a power cut, on the power-cut file system: a commit that returned is the
ledger after the cut (it was written to a temporary file, fsynced, renamed, and the directory fsynced),
and a cut in the middle of a commit leaves the previous ledger, whole."""

from __future__ import annotations

from pathlib import Path

from rudder_fast import ledger
from tests.powercut.mount import PowerCutFS


def state(generation_offsets: int) -> ledger.LedgerState:
    offsets = {f"{i:016x}-{i}-0.seg": 48 + i * 101 for i in range(generation_offsets)}
    return ledger.LedgerState(offsets=offsets, ahead={"a-1-0.seg": [[100, 200]]})


def test_a_committed_ledger_survives_a_power_cut(powercut_fs: PowerCutFS, tmp_path: Path) -> None:
    path = powercut_fs.mountpoint / "ledger"
    first = state(100)
    ledger.commit(path, first)
    second = state(2_000)
    second.generation = first.generation
    ledger.commit(path, second)
    powercut_fs.freeze()
    after = tmp_path / "after"
    powercut_fs.write_durable(after)
    survived = ledger.read(after / "ledger")
    assert survived is not None, "the ledger did not survive the cut whole"
    assert survived.generation == second.generation == 2
    assert survived.offsets == second.offsets
    assert survived.ahead == second.ahead
    assert not (after / "ledger.tmp").exists()


def test_a_cut_before_a_commit_returns_leaves_the_previous_ledger_whole(
    powercut_fs: PowerCutFS, tmp_path: Path
) -> None:
    """The cut comes after the new ledger was written but before anything was synced: the old one
    survives, never a mix of the two (a ledger written in place would leave nothing readable)."""
    path = powercut_fs.mountpoint / "ledger"
    ledger.commit(path, state(100))
    tmp = path.with_name("ledger.tmp")
    tmp.write_bytes(ledger.encode(state(3_000)))  # a commit's first step, unsynced
    powercut_fs.freeze()
    after = tmp_path / "after"
    powercut_fs.write_durable(after)
    survived = ledger.read(after / "ledger")
    assert survived is not None
    assert survived.generation == 1
    assert len(survived.offsets) == 100
