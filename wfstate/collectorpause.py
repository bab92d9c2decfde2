"""Pausing the cyclic garbage collector while a large state decodes: :func:`collector_paused`.

Why: decoding a workflow state allocates one container per output document and per nested
dict or list, and every allocation counts toward the collector's thresholds. Loading the
BENCHMARKS.md big store (100 states of 1,000 outputs, ~10 M tracked objects) triggers
collections that traverse the states already loaded again and again: measured, two thirds of
P5's time (1.57 s with the collector, 0.49 s with it paused, docs/profiling.md). A decode makes
no reference cycles, so nothing the pause defers is garbage that a collection could free.

Contract: while at least one :func:`collector_paused` block runs, in any thread, automatic
collection is off; when the last one ends, the collector is back to what it was before the
first began (so an application that disabled it keeps it disabled). It is process-wide, as the
collector is: another thread allocating meanwhile gets no automatic cyclic collection for that
time, which is bounded by the decode. Explicit ``gc.collect()`` calls still run.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


class _Pause:
    """How many paused blocks run, and whether the collector was enabled before the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.was_enabled = False


_PAUSE = _Pause()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with automatic cyclic garbage collection off (module docstring)."""
    with _PAUSE.lock:
        if _PAUSE.depth == 0:
            _PAUSE.was_enabled = gc.isenabled()
            gc.disable()
        _PAUSE.depth += 1
    try:
        yield
    finally:
        with _PAUSE.lock:
            _PAUSE.depth -= 1
            if _PAUSE.depth == 0 and _PAUSE.was_enabled:
                gc.enable()
