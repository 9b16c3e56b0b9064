from __future__ import annotations

from pathlib import Path

import pytest

# The fixtures every tier may use: real devservers and senders (tests/support/fixtures.py).
pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """A fresh spool directory path (not yet created: the emitter creates it)."""
    return tmp_path / "spool"
