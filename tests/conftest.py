from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """A fresh spool directory path (not yet created: the emitter creates it)."""
    return tmp_path / "spool"
