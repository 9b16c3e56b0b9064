# The C module rudder_fast/_speedups.c (optional: see pyproject.toml). Each function is a drop-in for a
# Python one that stays the reference: framing.FrameDecoder.take_events_in_python and
# wire.StubEncoder's Python way for plain tracks.
from collections.abc import Callable, Sequence
from typing import Final

from .framing import Crc32

SYNC: Final[int]
FRAME_HEAD_SIZE: Final[int]
FRAME_EVENT: Final[int]
MAX_PAYLOAD: Final[int]

def crc32(data: bytes | bytearray | memoryview, value: int = 0, /) -> int: ...
def take_events(
    buf: bytes, pos: int, limit: int, base: int, crc32: Crc32, /
) -> tuple[list[int], list[bytes], list[int], int]: ...
def plain_track_stubs(
    payloads: Sequence[bytes],
    seqs: Sequence[int],
    kind: int,
    head: bytes,
    keys: tuple[bytes, bytes, bytes, bytes],
    tail_of: Callable[[int], bytes],
    /,
) -> list[bytes] | None: ...
