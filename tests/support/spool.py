"""What is in a spool: its files, its segments decoded two ways, and the toolbox's view of it.

- the toolbox, for real: ``rudder-fast inspect`` (:func:`inspect_spool`, and the summary it prints) and
  ``rudder-fast status`` (:func:`status_json`, :func:`status_text`);
- files the sender writes: ``status`` (:func:`read_status`) and ``rejected/`` (:func:`read_rejected`);
- segments as the library decodes them (:func:`dump_segment`), and as an independent reader written from
  the documented format decodes them (:func:`scan_segment`), which does not share the decoder it checks.
"""

from __future__ import annotations

import ast
import re
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import orjson

from rudder_fast.framing import FRAME_DROPS, FRAME_EVENT, Frame, Skip
from rudder_fast.tail import read_whole
from tests.support.processes import console_script

# -- the toolbox, for real ---------------------------------------------------------------------------------


def inspect_spool(spool_dir: Path, timeout: float = 120.0) -> tuple[list[dict[str, Any]], str]:
    """Run ``rudder-fast inspect`` for real: the pending events (parsed) and its stderr summary."""
    proc = subprocess.run(
        [console_script("rudder-fast"), "inspect", "--spool-dir", str(spool_dir)],
        capture_output=True,
        timeout=timeout,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    events = [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return events, proc.stderr.decode()


def skipped_bytes(summary: str) -> int:
    """The bytes ``inspect``'s summary says were skipped as torn or corrupt."""
    match = re.search(r"(\d+) bytes skipped as torn or corrupt", summary)
    assert match, summary
    return int(match.group(1))


def dropped_by_producers(summary: str) -> dict[str, int]:
    """The drops ``inspect``'s summary reports from the producers' drop markers, by reason."""
    match = re.search(r"dropped by producers: (.*)$", summary.strip(), re.M)
    assert match, summary
    text = match.group(1)
    return {} if text == "none" else dict(ast.literal_eval(text))


def status_json(spool_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    """``rudder-fast status --json`` for real; it must exit 0."""
    proc = subprocess.run(
        [console_script("rudder-fast"), "status", "--json", "--spool-dir", str(spool_dir)],
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    doc: dict[str, Any] = orjson.loads(proc.stdout)
    return doc


def status_text(spool_dir: Path, timeout: float = 60.0) -> str:
    """``rudder-fast status`` (the human form) for real; it must exit 0."""
    return subprocess.run(
        [console_script("rudder-fast"), "status", "--spool-dir", str(spool_dir)],
        capture_output=True,
        check=True,
        timeout=timeout,
        text=True,
        stdin=subprocess.DEVNULL,
    ).stdout


def dropped(doc: dict[str, Any], reason: str) -> int:
    """A ``status --json`` document's drop count for ``reason``."""
    return int(doc["counters"]["dropped"].get(reason, 0))


# -- files the sender writes -----------------------------------------------------------------------------


def read_status(spool_dir: Path) -> dict[str, Any] | None:
    """The sender's ``status`` snapshot, or None while there is none (or it is being replaced)."""
    try:
        result: dict[str, Any] = orjson.loads((spool_dir / "status").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return result


def read_rejected(spool_dir: Path) -> list[dict[str, Any]]:
    """Every line of every ``rejected/*.jsonl``, parsed."""
    rejected = spool_dir / "rejected"
    lines: list[dict[str, Any]] = []
    for path in sorted(rejected.glob("*.jsonl")) if rejected.exists() else []:
        lines += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return lines


# -- files and names ---------------------------------------------------------------------------------------


def segment_files(spool_dir: Path) -> list[Path]:
    seg = spool_dir / "segments"
    return sorted(seg.glob("*.seg")) if seg.exists() else []


def spool_files(spool_dir: Path, sub: str) -> list[Path]:
    d = spool_dir / sub
    return sorted(d.iterdir()) if d.exists() else []


def segment_pids(spool_dir: Path) -> dict[str, int]:
    """``{segment name: writer pid}`` from names of the form ``<nonce>-<pid>-<n>.seg``."""
    out = {}
    for path in segment_files(spool_dir):
        nonce, pid, index = path.name[: -len(".seg")].split("-")
        assert len(nonce) == 16, path.name
        assert index.isdigit(), path.name
        out[path.name] = int(pid)
    return out


def nonce_of(message_id: str) -> str:
    """The producer nonce of a generated ``messageId`` (``<nonce>-<seq>``)."""
    return message_id.rsplit("-", 1)[0]


def seq_of(message_id: str) -> int:
    """The frame sequence number of a generated ``messageId``."""
    return int(message_id.rsplit("-", 1)[1])


# -- segments as the library decodes them ------------------------------------------------------------------


@dataclass
class SegmentDump:
    """One segment as :func:`rudder_fast.tail.read_whole` decodes it, without waiting on anything."""

    path: Path
    nonce: str
    events: list[Frame] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    leftover: int = 0  # bytes after the last whole frame that a live writer has not completed
    size: int = 0

    def message_id(self, frame: Frame) -> str:
        return f"{self.nonce}-{frame.seq}"


def dump_segment(path: Path) -> SegmentDump:
    tail, items = read_whole(path)
    assert tail is not None, f"{path} vanished"
    try:
        dump = SegmentDump(path, tail.nonce, leftover=tail.decoder.buffered, size=tail.read_pos)
        for item in items:
            if isinstance(item, Skip):
                dump.skips.append(item)
            elif item.type == FRAME_EVENT:
                dump.events.append(item)
            elif item.type == FRAME_DROPS:
                for reason, n in msgpack.unpackb(item.payload).items():
                    dump.drops[reason] = dump.drops.get(reason, 0) + n
    finally:
        tail.close()
    return dump


# -- an independent reader of the documented format (docs/spool-format.md), not the library's decoder ----

_HEADER_SIZE = 48
_MAGIC = b"RFSPOOL\x00"
_SYNC = 0x1CA92EF5
_HEAD = struct.Struct("<IIIB3xQ")  # sync, crc32 (of everything after it), len, type, seq
_MAX_PAYLOAD = 4_000_000


@dataclass
class SegmentScan:
    name: str
    frames: int = 0
    events: int = 0
    torn_bytes: int = 0  # bytes after the last complete frame
    corrupt: list[str] = field(default_factory=list)


def scan_segment(path: Path) -> SegmentScan:
    data = path.read_bytes()
    scan = SegmentScan(path.name)
    if len(data) < _HEADER_SIZE or data[:8] != _MAGIC:
        scan.corrupt.append(f"bad header ({len(data)} bytes)")
        return scan
    pos = _HEADER_SIZE
    while pos < len(data):
        left = len(data) - pos
        if left < _HEAD.size:
            scan.torn_bytes = left
            break
        sync, crc, length, kind, _seq = _HEAD.unpack_from(data, pos)
        if sync != _SYNC or length > _MAX_PAYLOAD:
            scan.corrupt.append(f"no frame at offset {pos}")
            break
        end = pos + _HEAD.size + length
        if end > len(data):
            scan.torn_bytes = left
            break
        if zlib.crc32(data[pos + 8 : end]) != crc:
            # A complete-looking frame with a bad CRC: only acceptable as the very last bytes (a
            # short write the kernel finished with zeros is not expected; report it).
            scan.corrupt.append(f"bad crc at offset {pos} (last frame: {end == len(data)})")
            break
        scan.frames += 1
        scan.events += kind == 1
        pos = end
    return scan


def scan_spool(spool_dir: Path) -> list[SegmentScan]:
    return [scan_segment(p) for p in segment_files(spool_dir)]
