"""The pytest fixtures built on :mod:`tests.support`, registered for every tier by ``tests/conftest.py``.

- ``start_devserver``: a factory of real devservers (``--out`` files and stderr logs in ``tmp_path``);
- ``devserver``: one devserver accepting any non-empty write key;
- ``senders``: runs the real ``rudder-fast-sender``.

Every process started through them is stopped by their finalizers, whatever the test did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.devserver import DevServer
from tests.support.sender import Senders


@pytest.fixture
def start_devserver(tmp_path: Path) -> Iterator[Callable[..., DevServer]]:
    """Factory: ``start_devserver(write_keys=(), extra_args=(), tls=None)`` starts a real devserver
    (``tls``: a certificate and key, PEM files, to serve HTTPS)."""
    started: list[DevServer] = []

    def start(
        write_keys: Sequence[str] = (), extra_args: Sequence[str] = (), tls: tuple[Path, Path] | None = None
    ) -> DevServer:
        n = len(started)
        server = DevServer.start(
            out=tmp_path / f"out{n or ''}.jsonl",
            stderr=tmp_path / f"devserver{n or ''}.log",
            write_keys=write_keys,
            extra_args=extra_args,
            tls=tls,
        )
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def devserver(start_devserver: Callable[..., DevServer]) -> DevServer:
    """A devserver accepting any non-empty write key."""
    return start_devserver()


@pytest.fixture
def senders(tmp_path: Path) -> Iterator[Senders]:
    s = Senders(tmp_path)
    try:
        yield s
    finally:
        s.close()
