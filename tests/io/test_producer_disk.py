"""Producers on a failing or unusable disk: calls never raise, drops are counted, no partial frame stays.

The file-size limit (``RLIMIT_FSIZE``) makes the kernel refuse a write (EFBIG) or cut it short past a
size, as a full disk does with ENOSPC, but for one child process only; Python ignores SIGXFSZ, so the
child sees the error instead of dying. Each scenario runs in a forked child (limits and umask are
per process) that returns what its calls returned.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import stat
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rudder_fast import Emitter, config
from rudder_fast.framing import Frame
from rudder_fast.tail import read_whole
from tests.support.spool import dropped_by_producers, inspect_spool, segment_files, skipped_bytes
from tests.support.waiting import wait_for

CHILD_DEADLINE_S = 60.0


def run_in_child(body: Callable[[], Any], timeout: float = CHILD_DEADLINE_S) -> Any:
    """Run ``body`` in a forked child and return its JSON-able result; fails if the child fails."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(r)
            data = memoryview(json.dumps(body()).encode())
            while data:
                data = data[os.write(w, data) :]
            code = 0
        except BaseException:  # noqa: BLE001 - a child reports any failure by its exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"child {pid} did not finish within {timeout} s")
            if select.select([r], [], [], left)[0]:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed (its traceback is in stderr)"
    return json.loads(b"".join(chunks))


def assert_only_whole_frames(spool_dir: Path) -> None:
    """Every segment decodes to whole frames only, and no half-made segment is left in tmp/."""
    for path in segment_files(spool_dir):
        tail, items = read_whole(path)
        assert tail is not None, f"{path.name}: no valid header"
        assert tail.header is not None, f"{path.name}: no valid header"
        tail.close()
        assert all(isinstance(i, Frame) for i in items), f"{path.name}: {items}"
        assert tail.final
        assert tail.read_pos == path.stat().st_size
    assert list((spool_dir / "tmp").iterdir()) == []


def pass_disk_backoff() -> None:
    # After a failed write the producer leaves the disk alone for DISK_ERROR_BACKOFF_S: wait it out so
    # the next calls really write again (the counts asserted hold either way).
    time.sleep(config.DISK_ERROR_BACKOFF_S * 1.5)


def recover(em: Emitter, results: list[str | None]) -> None:
    """Call until an event is written again, recording every result."""

    def one() -> bool:
        results.append(em.track(user_id="u", event="recovered"))
        return results[-1] is not None

    wait_for(one, timeout=10, interval=0.01)


# -- RLIMIT_FSIZE: the disk refuses part-way -------------------------------------------------------


@pytest.mark.parametrize("headroom", [0, 1, 3000], ids=["at-limit", "1-byte", "3000-bytes"])
@pytest.mark.parametrize("closed", [False, True], ids=["exits", "closes"])
def test_file_size_limit_drops_and_counts_without_raising(
    spool_dir: Path, headroom: int, closed: bool
) -> None:
    def child() -> dict[str, Any]:
        em = Emitter(spool_dir)
        results = [em.track(user_id="u", event="before", properties={"i": i}) for i in range(10)]
        size = os.path.getsize(em.stats()["segment"])
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + headroom, hard))
        for _ in range(4):
            results += [
                em.track(user_id="u", event="limited", properties={"i": i, "pad": "p" * 150})
                for i in range(100)
            ]
            results.append(em.identify(user_id="u", traits={"t": "x" * 20}))
            results.append(em.alias(user_id="u", previous_id="old"))
            pass_disk_backoff()
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        recover(em, results)
        results += [em.track(user_id="u", event="after", properties={"i": i}) for i in range(10)]
        stats = em.stats()
        if closed:
            em.close()
        return {"results": results, "stats": stats}

    out = run_in_child(child)
    results = out["results"]
    nones = results.count(None)
    written = [r for r in results if r is not None]
    assert nones > 0, "the file-size limit never bit"
    assert out["stats"]["dropped"] == {"disk_error": nones}, "every None is one counted drop"
    assert out["stats"]["accepted"] == len(written)

    assert_only_whole_frames(spool_dir)
    events, summary = inspect_spool(spool_dir)
    assert sorted(e["messageId"] for e in events) == sorted(written)
    assert len(set(written)) == len(written)
    assert skipped_bytes(summary) == 0
    # the drops reach the spool with the next frame that was written, so the sender can report them
    assert dropped_by_producers(summary) == {"disk_error": nones}


def test_file_size_limit_below_the_segment_header(spool_dir: Path) -> None:
    """A new segment whose header cannot be written is dropped, not left half-made for the sender."""

    def child() -> dict[str, Any]:
        em = Emitter(spool_dir)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10, hard))
        results = [em.track(user_id="u", event="no room", properties={"i": i}) for i in range(5)]
        pass_disk_backoff()
        results.append(em.page(user_id="u", name="no room either"))
        files = sorted(os.listdir(spool_dir / "segments")) + sorted(os.listdir(spool_dir / "tmp"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        recover(em, results)
        return {"results": results, "stats": em.stats(), "files_while_limited": files}

    out = run_in_child(child)
    results = out["results"]
    assert results[:6] == [None] * 6
    assert out["files_while_limited"] == []
    assert out["stats"]["dropped"] == {"disk_error": results.count(None)}
    assert_only_whole_frames(spool_dir)
    events, summary = inspect_spool(spool_dir)
    assert [e["messageId"] for e in events] == [results[-1]]
    assert dropped_by_producers(summary) == {"disk_error": results.count(None)}


# -- a spool that cannot be used at all ------------------------------------------------------------


def _make_unusable(kind: str, tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    """An unusable spool path, and how to make it usable again."""
    if kind == "parent-is-a-file":
        blocker = tmp_path / "blocker"
        blocker.write_text("not a directory")
        return blocker / "spool", blocker.unlink
    if kind == "spool-is-a-file":
        spool = tmp_path / "spool"
        spool.write_text("not a directory")
        return spool, spool.unlink
    if kind == "spool-is-a-symlink":
        (tmp_path / "elsewhere").mkdir()
        spool = tmp_path / "spool"
        spool.symlink_to(tmp_path / "elsewhere")
        return spool, spool.unlink
    if kind == "segments-is-a-symlink":
        spool = tmp_path / "spool"
        spool.mkdir(mode=0o700)
        (tmp_path / "elsewhere").mkdir()
        (spool / "segments").symlink_to(tmp_path / "elsewhere")
        return spool, (spool / "segments").unlink
    raise AssertionError(kind)


UNUSABLE = ["parent-is-a-file", "spool-is-a-file", "spool-is-a-symlink", "segments-is-a-symlink"]


def _calls(em: Emitter) -> list[Callable[[], str | None]]:
    return [
        lambda: em.track(user_id="u", event="e", properties={"a": 1}),
        lambda: em.identify(user_id="u", traits={"a": 1}),
        lambda: em.page(user_id="u", name="p"),
        lambda: em.screen(user_id="u", name="s"),
        lambda: em.group(user_id="u", group_id="g"),
        lambda: em.alias(user_id="u", previous_id="p"),
        lambda: em.track({"userId": "u", "event": "mapping form"}),
    ]


@pytest.mark.parametrize("kind", UNUSABLE)
def test_unusable_spool_drops_without_raising_and_recovers(kind: str, tmp_path: Path) -> None:
    spool, repair = _make_unusable(kind, tmp_path)
    before = {str(p) for p in tmp_path.rglob("*")}
    em = Emitter(spool)
    results = [call() for call in _calls(em)]
    assert results == [None] * len(results)
    assert em.stats()["accepted"] == 0
    assert sum(em.stats()["dropped"].values()) == len(results)
    created = {p for p in tmp_path.rglob("*") if str(p) not in before}
    assert {p for p in created if p.is_symlink() or not p.is_dir() or spool not in p.parents} == set()
    assert not (tmp_path / "elsewhere").exists() or list((tmp_path / "elsewhere").iterdir()) == []

    repair()
    recover(em, results)
    em.close()
    events, summary = inspect_spool(spool)
    assert [e["messageId"] for e in events] == [results[-1]]
    assert sum(dropped_by_producers(summary).values()) == results.count(None)


@pytest.mark.parametrize("kind", UNUSABLE)
def test_unusable_spool_drops_are_counted_as_spool_unusable(kind: str, tmp_path: Path) -> None:
    """Each call refused for an unusable spool counts under ``spool_unusable``, not as a disk error."""
    spool, _ = _make_unusable(kind, tmp_path)
    em = Emitter(spool)
    results = [call() for call in _calls(em)]
    assert results == [None] * len(results)
    assert em.stats()["dropped"] == {"spool_unusable": len(results)}


# -- permissions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "umask", [0, 0o022, 0o077, 0o277], ids=["umask-0", "umask-022", "umask-077", "umask-277"]
)
def test_spool_is_private_whatever_the_umask(spool_dir: Path, umask: int) -> None:
    def child() -> dict[str, Any]:
        os.umask(umask)
        em = Emitter(spool_dir, segment_max_bytes=4096)  # small segments: several get created
        ids = [em.track(user_id="u", event="e", properties={"pad": "x" * 500}) for _ in range(30)]
        em.close()
        return {"ids": ids}

    ids = run_in_child(child)["ids"]
    assert None not in ids
    modes = {
        str(p.relative_to(spool_dir)): stat.S_IMODE(p.stat().st_mode)
        for p in [spool_dir, *spool_dir.rglob("*")]
    }
    dirs = {name: mode for name, mode in modes.items() if not name.endswith(".seg")}
    segments = {name: mode for name, mode in modes.items() if name.endswith(".seg")}
    assert dirs == {".": 0o700, "tmp": 0o700, "segments": 0o700, "rejected": 0o700}
    assert len(segments) > 1
    assert set(segments.values()) == {0o600}
    events, _ = inspect_spool(spool_dir)
    assert sorted(e["messageId"] for e in events) == sorted(ids)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_an_existing_spool_writable_by_others_is_refused(spool_dir: Path, mode: int) -> None:
    """Others could plant files or symlinks in it: refuse it (counted, never raised) until fixed."""
    os.mkdir(spool_dir)
    os.chmod(spool_dir, mode)
    em = Emitter(spool_dir)
    assert [em.track(user_id="u", event="e") for _ in range(3)] == [None, None, None]
    assert em.stats()["dropped"] == {"spool_unusable": 3}
    assert not (spool_dir / "segments").exists()
    os.chmod(spool_dir, 0o700)
    em2 = Emitter(spool_dir)
    assert em2.track(user_id="u", event="e") is not None
