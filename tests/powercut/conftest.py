"""Fixtures for the power-cut tests: a mounted power-cut file system, removed at the end whatever
happens. Skipped with the reason where FUSE cannot be mounted, or failed if RUDDER_FAST_REQUIRE_FUSE=1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.powercut.mount import PowerCutFS, require_fuse_mode, unavailable_reason


def require_fuse() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if require_fuse_mode():
        pytest.fail(f"RUDDER_FAST_REQUIRE_FUSE is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def powercut_fs(tmp_path: Path) -> Iterator[PowerCutFS]:
    """A power-cut file system mounted at ``<tmp>/powercut/mnt`` over ``<tmp>/powercut/backing``."""
    require_fuse()
    with PowerCutFS(tmp_path / "powercut") as fs:
        yield fs
