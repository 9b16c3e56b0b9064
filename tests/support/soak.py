"""The soak's instruments: a sampler of a process's RSS, and a data plane that flaps until stopped."""

from __future__ import annotations

import http.client
import threading
import time
import traceback
from typing import Any

import psutil

from tests.support.devserver import DevServer


class RssSampler(threading.Thread):
    """Samples a process's RSS (psutil) every ``interval`` seconds until stopped or the process ends."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(name=f"rss-{pid}", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.error: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            t0 = time.monotonic()
            while True:
                try:
                    self.samples.append((time.monotonic() - t0, proc.memory_info().rss))
                except psutil.NoSuchProcess:
                    return
                if self._stop_event.wait(self.interval):
                    return
        except psutil.Error as exc:
            self.error = repr(exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


class Flapper(threading.Thread):
    """Makes the devserver flap until stopped: 503 for ~1 s, down (connection refused) for ~1 s,
    200 ms latency for ~1 s, healthy for ~2 s, and again. Leaves it healthy."""

    def __init__(self, devserver: DevServer, phase_s: float = 1.0, healthy_s: float = 2.0) -> None:
        super().__init__(name="flapper", daemon=True)
        self.dev = devserver
        self.phase_s = phase_s
        self.healthy_s = healthy_s
        self.cycles = 0
        self.down_seen = 0
        self.error: str | None = None
        self._stop_event = threading.Event()

    def _control(self, cmd: dict[str, Any], timeout: float = 10.0) -> None:
        """Send a fault switch, retrying while the port is closed (after a ``down_for``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.dev.control(cmd)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _go_down(self) -> bool:
        """One ``down_for`` phase; False once stopped."""
        self._control({"down_for": self.phase_s})
        t_down = time.monotonic()
        while time.monotonic() - t_down < self.phase_s / 2:
            if self.dev.try_stats() is None:  # the port really is closed
                self.down_seen += 1
                break
            time.sleep(0.02)
        return not self._stop_event.wait(max(0.0, self.phase_s - (time.monotonic() - t_down)))

    def _cycle(self) -> bool:
        """503, down, slow, healthy; False once stopped."""
        self._control({"fail_status": 503, "fail_for": self.phase_s})
        if self._stop_event.wait(self.phase_s) or not self._go_down():
            return False
        self._control({"latency_ms": 200})  # retried until the port is open again
        if self._stop_event.wait(self.phase_s):
            return False
        self._control({"latency_ms": 0})
        self.cycles += 1
        return not self._stop_event.wait(self.healthy_s)

    def run(self) -> None:
        try:
            while not self._stop_event.is_set() and self._cycle():
                pass
        except (OSError, http.client.HTTPException, AssertionError) as exc:
            self.error = f"{exc!r}\n{traceback.format_exc()}"

    def stop(self) -> None:
        """Stop flapping and make the devserver healthy (waits for its port to be open again)."""
        self._stop_event.set()
        self.join(30)
        self._control({"fail_status": None, "latency_ms": 0}, timeout=30)
