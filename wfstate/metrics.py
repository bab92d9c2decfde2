"""Per-store operation timings, a snapshot of them with the store's sizes, and threshold
alerts: :class:`Metrics`, :class:`MetricsSnapshot`, :class:`Thresholds`, :class:`Alert`.

Each operation (``"save"``, ``"load"``, ``"commit"``, ``"fsync"``, ``"checkpoint"``,
``"restore"``, or any other name) keeps lifetime totals (calls, errors) and a window of its
last ``window`` samples (duration, success); the mean, the p99 and the error rate describe the
window, so they follow the store's recent behaviour rather than its whole history. The p99 is
the nearest-rank percentile: the smallest sample at least 99 % of the window's samples are
less than or equal to.

Log fsync times come from the log: ``log.set_sync_observer(metrics.observe_sync)``
(:meth:`wfstate.wal.Log.set_sync_observer`).

Alerts fire once per crossing (:meth:`Metrics.check`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import msgspec

from wfstate.checkpointreports import StoreStats
from wfstate.errors import ValidationError

LOGGER: Final = logging.getLogger("wfstate.metrics")

OPERATIONS: Final[tuple[str, ...]] = ("save", "load", "commit", "fsync", "checkpoint", "restore")
"""The operations the orchestration API records (others may be recorded too)."""

DEFAULT_WINDOW: Final = 10_000
"""Samples kept per operation for the mean, the p99 and the error rate."""


class OperationStats(msgspec.Struct, frozen=True, kw_only=True):
    """One operation's figures. ``count``/``errors``: calls and failed calls since the
    :class:`Metrics` was made. ``samples``: how many of the last calls the window holds;
    ``error_rate`` (0..1), ``mean_s`` and ``p99_s`` (seconds, nearest rank) describe them."""

    count: int
    errors: int
    samples: int
    error_rate: float
    mean_s: float
    p99_s: float


class MetricsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Operation figures by name (only operations recorded at least once), and the store's
    sizes (``LocalStore.stats()``) when the snapshot was given them."""

    operations: dict[str, OperationStats]
    store: StoreStats | None = None

    @property
    def recovery_backlog_bytes(self) -> int | None:
        """Batch bytes logged or read since the last compaction the store's process saw
        (``StoreStats.bytes_since_compaction``): what bounds the replay after a crash."""
        return None if self.store is None else self.store.bytes_since_compaction


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Limits that raise an :class:`Alert` when a figure goes above them; ``None`` turns one
    off. ``max_log_bytes``: the log's segment files. ``max_recovery_backlog_bytes``:
    :attr:`MetricsSnapshot.recovery_backlog_bytes`. ``max_fsync_p99_s``: the p99 of
    ``"fsync"``. ``max_error_rate``: the error rate of each operation (0..1).
    ``min_samples``: the p99 and error-rate limits apply only to an operation whose window
    holds at least this many samples (one failed call out of one is not a 100 % failure
    rate worth waking someone for)."""

    max_log_bytes: int | None = None
    max_recovery_backlog_bytes: int | None = None
    max_fsync_p99_s: float | None = None
    max_error_rate: float | None = None
    min_samples: int = 20

    def __post_init__(self) -> None:
        for field in ("max_log_bytes", "max_recovery_backlog_bytes"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValidationError(field, f"must be an int >= 0 or None, not {value!r}")
        p99 = self.max_fsync_p99_s
        if p99 is not None and not _is_seconds(p99):
            raise ValidationError(
                "max_fsync_p99_s", f"must be seconds >= 0 (finite) or None, not {p99!r}"
            )
        rate = self.max_error_rate
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1
        ):
            raise ValidationError("max_error_rate", f"must be in 0..1 or None, not {rate!r}")
        samples = self.min_samples
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValidationError("min_samples", f"must be an int >= 1, not {samples!r}")


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """A figure above its limit. ``name``: ``"log_bytes"``, ``"recovery_backlog_bytes"``,
    ``"fsync_p99_s"`` or ``"error_rate:<operation>"``."""

    name: str
    value: float
    limit: float
    message: str


AlertCallback = Callable[[Alert], None]


def _is_seconds(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )


def nearest_rank(samples: list[float], percentile: float) -> float:
    """The nearest-rank ``percentile`` (0 < p <= 100) of non-empty ``samples``: the smallest
    sample such that at least ``percentile`` % of the samples are less than or equal to it."""
    ordered = sorted(samples)
    rank = math.ceil(percentile / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


class _Operation:
    __slots__ = ("count", "errors", "window")

    def __init__(self, size: int) -> None:
        self.count = 0
        self.errors = 0
        self.window: deque[tuple[float, bool]] = deque(maxlen=size)

    def stats(self) -> OperationStats:
        durations = [seconds for seconds, _ok in self.window]
        failed = sum(1 for _seconds, ok in self.window if not ok)
        return OperationStats(
            count=self.count,
            errors=self.errors,
            samples=len(durations),
            error_rate=failed / len(durations),
            mean_s=math.fsum(durations) / len(durations),
            p99_s=nearest_rank(durations, 99),
        )


class Metrics:
    """Records operation timings and checks them against :class:`Thresholds`. Thread-safe:
    every method may be called from any thread; ``on_alert`` runs on the thread that called
    :meth:`check`, with no lock of this object held.

    ``window``: samples kept per operation. ``timer``: the monotonic clock :meth:`timed`
    reads (seconds).
    """

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        thresholds: Thresholds | None = None,
        on_alert: AlertCallback | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValidationError("window", f"must be an int >= 1, not {window!r}")
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise ValidationError("thresholds", "must be a wfstate.metrics.Thresholds or None")
        if on_alert is not None and not callable(on_alert):
            raise ValidationError("on_alert", f"must be callable or None, not {on_alert!r}")
        self._window = window
        self._thresholds = thresholds if thresholds is not None else Thresholds()
        self._on_alert = on_alert
        self._timer = timer
        self._lock = threading.Lock()
        self._operations: dict[str, _Operation] = {}
        self._active: set[str] = set()

    def record(self, operation: str, seconds: float, *, ok: bool = True) -> None:
        """Record one call of ``operation`` that took ``seconds`` and succeeded (``ok``) or
        failed. Raises ``ValidationError`` (``operation``, ``seconds``) for an empty name or a
        negative or non-finite duration, recording nothing."""
        if not isinstance(operation, str) or not operation:
            raise ValidationError("operation", f"must be a non-empty str, not {operation!r}")
        if not _is_seconds(seconds):
            raise ValidationError("seconds", f"must be >= 0 and finite, not {seconds!r}")
        with self._lock:
            entry = self._operations.get(operation)
            if entry is None:
                entry = self._operations[operation] = _Operation(self._window)
            entry.count += 1
            if not ok:
                entry.errors += 1
            entry.window.append((float(seconds), ok))

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        """Time the ``with`` block as one call of ``operation``: a failure if it raises
        (anything, ``KeyboardInterrupt`` included), which is re-raised unchanged."""
        if not isinstance(operation, str) or not operation:
            raise ValidationError("operation", f"must be a non-empty str, not {operation!r}")
        started = self._timer()
        try:
            yield
        except BaseException:
            self.record(operation, max(self._timer() - started, 0.0), ok=False)
            raise
        self.record(operation, max(self._timer() - started, 0.0))

    def observe_sync(self, seconds: float) -> None:
        """Record one log fdatasync of ``seconds`` as ``"fsync"``: the observer to give
        :meth:`wfstate.wal.Log.set_sync_observer` (quick, and never calls into the log)."""
        self.record("fsync", seconds)

    def snapshot(self, store_stats: StoreStats | None = None) -> MetricsSnapshot:
        """The figures of every operation recorded so far, with ``store_stats`` (for example
        ``LocalStore.stats()``) as the store's sizes."""
        if store_stats is not None and not isinstance(store_stats, StoreStats):
            raise ValidationError("store_stats", "must be a wfstate.StoreStats or None")
        with self._lock:
            operations = {name: entry.stats() for name, entry in self._operations.items()}
        return MetricsSnapshot(operations=operations, store=store_stats)

    @property
    def active_alerts(self) -> frozenset[str]:
        """Names of the limits above which the last :meth:`check` found their figure."""
        with self._lock:
            return frozenset(self._active)

    def check(self, snapshot: MetricsSnapshot) -> list[Alert]:
        """Compare ``snapshot`` with the thresholds; return the alerts that fired, after
        calling ``on_alert`` with each (in order; one that raises is logged on
        ``wfstate.metrics`` and the rest still run).

        Once per crossing: an alert fires when its figure is above the limit (``>``) and was
        not at the previous check; it fires again only after a check found the figure at or
        under the limit. A figure the snapshot lacks (no store sizes; an operation without
        ``min_samples`` samples in its window) leaves that alert's state as it was.
        """
        breaches, known = self._evaluate(snapshot)
        with self._lock:
            fired = [alert for alert in breaches if alert.name not in self._active]
            self._active -= known - {alert.name for alert in breaches}
            self._active |= {alert.name for alert in breaches}
        if self._on_alert is not None:
            for alert in fired:
                try:
                    self._on_alert(alert)
                except Exception:
                    LOGGER.exception("metrics on_alert raised on alert %s", alert.name)
        return fired

    def _evaluate(self, snapshot: MetricsSnapshot) -> tuple[list[Alert], set[str]]:
        """The limits ``snapshot`` is above, and the names of every limit it can judge."""
        limits = self._thresholds
        figures: list[tuple[str, float | None, float | None, str]] = []
        if snapshot.store is not None:
            figures.append(
                ("log_bytes", snapshot.store.log_bytes, limits.max_log_bytes, "log size")
            )
            figures.append(
                (
                    "recovery_backlog_bytes",
                    snapshot.store.bytes_since_compaction,
                    limits.max_recovery_backlog_bytes,
                    "bytes logged since the last compaction",
                )
            )
        fsync = snapshot.operations.get("fsync")
        if fsync is not None and fsync.samples >= limits.min_samples:
            figures.append(("fsync_p99_s", fsync.p99_s, limits.max_fsync_p99_s, "fsync p99"))
        for name, stats in sorted(snapshot.operations.items()):
            if stats.samples >= limits.min_samples:
                figures.append(
                    (
                        f"error_rate:{name}",
                        stats.error_rate,
                        limits.max_error_rate,
                        f"{name} error rate",
                    )
                )
        breaches: list[Alert] = []
        known: set[str] = set()
        for name, value, limit, what in figures:
            if value is None or limit is None:
                continue
            known.add(name)
            if value > limit:
                breaches.append(
                    Alert(
                        name=name,
                        value=value,
                        limit=limit,
                        message=f"{what} {value:g} is above the limit {limit:g}",
                    )
                )
        return breaches, known
