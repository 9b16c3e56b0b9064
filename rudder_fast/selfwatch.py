"""The sender's own process figures (CPU, memory, open files), read with psutil: shown by
``rudder-fast status`` and exported as Prometheus's standard ``process_*`` metrics, so that an operator
sees what the daemon costs the host without a separate process exporter.

psutil is a runtime dependency for this alone: one library that reads these figures the same way on
every Linux (and other POSIX) kernel, instead of parsing ``/proc`` by hand.
"""

from __future__ import annotations

import logging
import resource

import psutil

from .metrics import ProcessFigures

log = logging.getLogger("rudder_fast.sender")


class SelfWatch:
    """Reads this process's figures; None once psutil cannot (logged once, at debug level)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._broken = False

    def figures(self) -> ProcessFigures | None:
        if self._broken:
            return None
        p = self._process
        try:
            with p.oneshot():
                cpu = p.cpu_times()
                memory = p.memory_info()
                fds = p.num_fds()
                started = p.create_time()
        except (psutil.Error, OSError) as exc:
            log.debug("cannot read this process's figures: %s", exc)
            self._broken = True
            return None
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return ProcessFigures(
            cpu_seconds=cpu.user + cpu.system,
            resident_bytes=memory.rss,
            virtual_bytes=memory.vms,
            open_fds=fds,
            max_fds=None if soft == resource.RLIM_INFINITY else soft,
            start_time_seconds=started,
        )
