"""Resident memory of the running process, for the benchmarks: now, its peak so far, and sampled during a run."""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (0 where ``/proc`` is unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``), in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 2**10  # bytes on macOS, KiB on Linux


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds while active (a context manager); ``peak`` in MiB."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.peak = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
