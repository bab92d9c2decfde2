"""Pausing the cyclic garbage collector while a large state decodes: :func:`collector_paused`.

Why: decoding a workflow state allocates one container per output document and per nested
dict or list, and every allocation counts toward the collector's thresholds, so collections run
in the middle of a decode and traverse the states loaded before it again. Measured side by side
on BENCHMARKS.md's big store (100 workflows of 1,000 outputs, default checkpoint policy) with
``python -m tools.profile_paths p5-ck p5-ck-unpaused --full --no-profile``: a fresh handle
loading every workflow took 1.97-2.01 s (median of 3 rounds, two runs alternated) with the pause
and 2.68-3.02 s without it. A decode makes no reference cycles, so nothing the pause defers is
garbage that a collection could free.

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
