"""Metrics: percentile and rate math, timed(), once-per-crossing alerts, and the log's sync
observer reporting real fdatasync times."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from tests.fsdoubles import FailingFS, RecordingFS
from wfstate import StorePoisonedError, StoreStats, ValidationError
from wfstate.metrics import (
    OPERATIONS,
    Alert,
    Metrics,
    MetricsSnapshot,
    OperationStats,
    Thresholds,
    nearest_rank,
)
from wfstate.wal import Log


class FakeTimer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _stats(*, log_bytes: int = 0, backlog: int = 0) -> StoreStats:
    return StoreStats(
        workflows=1,
        last_lsn=10,
        log_first_lsn=1,
        log_segments=1,
        log_bytes=log_bytes,
        uncovered_batches=3,
        bytes_since_compaction=backlog,
        checkpoints=0,
        checkpoint_bytes=0,
        bad_checkpoints=(),
        auto_checkpoint_failures=0,
    )


# -- math -----------------------------------------------------------------------------------


def test_nearest_rank_on_known_samples() -> None:
    hundred = [float(i) for i in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert nearest_rank(hundred, 99) == 99.0
    assert nearest_rank(hundred, 50) == 50.0
    assert nearest_rank(hundred, 100) == 100.0
    assert nearest_rank([float(i) for i in range(1, 1001)], 99) == 990.0
    assert nearest_rank([7.0], 99) == 7.0
    assert nearest_rank([1.0, 2.0], 99) == 2.0


def test_operation_stats_from_known_samples() -> None:
    metrics = Metrics()
    for i in range(1, 101):
        metrics.record("save", i / 1000, ok=i % 10 != 0)  # every 10th fails
    stats = metrics.snapshot().operations["save"]
    assert stats == OperationStats(
        count=100, errors=10, samples=100, error_rate=0.1, mean_s=stats.mean_s, p99_s=0.099
    )
    assert stats.mean_s == pytest.approx(0.0505)


def test_the_window_keeps_the_last_samples_and_totals_keep_everything() -> None:
    metrics = Metrics(window=4)
    for _ in range(6):
        metrics.record("load", 10.0, ok=False)
    for seconds in (1.0, 2.0, 3.0, 4.0):
        metrics.record("load", seconds)
    stats = metrics.snapshot().operations["load"]
    assert (stats.count, stats.errors, stats.samples) == (10, 6, 4)
    assert stats.error_rate == 0.0  # the failures left the window
    assert stats.mean_s == 2.5
    assert stats.p99_s == 4.0


def test_a_snapshot_lists_recorded_operations_only_and_carries_the_store_sizes() -> None:
    metrics = Metrics()
    metrics.record("commit", 0.001)
    stats = _stats(log_bytes=5, backlog=7)
    snapshot = metrics.snapshot(stats)
    assert set(snapshot.operations) == {"commit"}
    assert snapshot.store is stats
    assert snapshot.recovery_backlog_bytes == 7
    assert metrics.snapshot().recovery_backlog_bytes is None
    assert "fsync" in OPERATIONS and "restore" in OPERATIONS


def test_a_snapshot_does_not_change_when_more_is_recorded() -> None:
    metrics = Metrics()
    metrics.record("commit", 1.0)
    before = metrics.snapshot()
    metrics.record("commit", 3.0)
    assert before.operations["commit"].count == 1
    assert metrics.snapshot().operations["commit"].mean_s == 2.0


# -- timed ----------------------------------------------------------------------------------


def test_timed_records_the_blocks_duration() -> None:
    timer = FakeTimer()
    metrics = Metrics(timer=timer)
    with metrics.timed("checkpoint"):
        timer.now += 0.25
    stats = metrics.snapshot().operations["checkpoint"]
    assert (stats.count, stats.errors, stats.mean_s) == (1, 0, 0.25)


def test_timed_counts_an_exception_as_an_error_and_reraises_it() -> None:
    timer = FakeTimer()
    metrics = Metrics(timer=timer)
    boom = OSError("disk")
    with pytest.raises(OSError) as caught, metrics.timed("restore"):
        timer.now += 0.5
        raise boom
    assert caught.value is boom
    stats = metrics.snapshot().operations["restore"]
    assert (stats.count, stats.errors, stats.error_rate, stats.mean_s) == (1, 1, 1.0, 0.5)


def test_bad_input_is_rejected_naming_it_and_records_nothing() -> None:
    metrics = Metrics()
    for operation, seconds, field in [
        ("", 1.0, "operation"),
        ("save", -1.0, "seconds"),
        ("save", float("nan"), "seconds"),
        ("save", float("inf"), "seconds"),
    ]:
        with pytest.raises(ValidationError) as caught:
            metrics.record(operation, seconds)
        assert caught.value.field == field
    assert metrics.snapshot().operations == {}
    with pytest.raises(ValidationError) as caught:
        Metrics(window=0)
    assert caught.value.field == "window"
    with pytest.raises(ValidationError) as caught:
        Thresholds(max_error_rate=1.5)
    assert caught.value.field == "max_error_rate"
    with pytest.raises(ValidationError) as caught:
        Thresholds(max_log_bytes=-1)
    assert caught.value.field == "max_log_bytes"


# -- alerts ---------------------------------------------------------------------------------


def test_an_alert_fires_on_crossing_and_not_again_until_back_under() -> None:
    fired: list[Alert] = []
    metrics = Metrics(thresholds=Thresholds(max_log_bytes=1000), on_alert=fired.append)
    assert metrics.check(metrics.snapshot(_stats(log_bytes=1000))) == []  # at the limit: fine
    first = metrics.check(metrics.snapshot(_stats(log_bytes=1001)))
    assert [a.name for a in first] == ["log_bytes"]
    assert first[0].value == 1001 and first[0].limit == 1000
    assert "1001" in first[0].message
    assert metrics.check(metrics.snapshot(_stats(log_bytes=5000))) == []  # still above
    assert metrics.active_alerts == {"log_bytes"}
    assert metrics.check(metrics.snapshot()) == []  # no store sizes: state unchanged
    assert metrics.active_alerts == {"log_bytes"}
    assert metrics.check(metrics.snapshot(_stats(log_bytes=10))) == []  # back under
    assert metrics.active_alerts == frozenset()
    again = metrics.check(metrics.snapshot(_stats(log_bytes=2000)))
    assert [a.name for a in again] == ["log_bytes"]
    assert fired == first + again


def test_backlog_fsync_and_error_rate_alerts() -> None:
    metrics = Metrics(
        thresholds=Thresholds(
            max_recovery_backlog_bytes=100,
            max_fsync_p99_s=0.05,
            max_error_rate=0.2,
            min_samples=10,
        )
    )
    for _ in range(9):
        metrics.record("fsync", 1.0)
        metrics.record("save", 0.0, ok=False)
    # too few samples for the rate and the percentile to count
    assert [a.name for a in metrics.check(metrics.snapshot(_stats(backlog=101)))] == [
        "recovery_backlog_bytes"
    ]
    metrics.record("fsync", 1.0)
    metrics.record("save", 0.0, ok=False)
    names = {a.name for a in metrics.check(metrics.snapshot(_stats(backlog=101)))}
    assert names == {"fsync_p99_s", "error_rate:save"}


def test_a_raising_on_alert_is_logged_and_the_other_alerts_still_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered: list[str] = []

    def on_alert(alert: Alert) -> None:
        delivered.append(alert.name)
        raise RuntimeError("pager down")

    metrics = Metrics(
        thresholds=Thresholds(max_log_bytes=1, max_recovery_backlog_bytes=1), on_alert=on_alert
    )
    with caplog.at_level(logging.ERROR, logger="wfstate.metrics"):
        fired = metrics.check(metrics.snapshot(_stats(log_bytes=2, backlog=2)))
    assert [a.name for a in fired] == delivered == ["log_bytes", "recovery_backlog_bytes"]
    assert len(caplog.records) == 2


def test_no_thresholds_no_alerts() -> None:
    metrics = Metrics()
    metrics.record("save", 100.0, ok=False)
    assert metrics.check(MetricsSnapshot(operations={}, store=_stats(log_bytes=10**12))) == []


# -- the log's sync observer ----------------------------------------------------------------


def test_a_real_log_reports_each_fdatasync_and_how_long_it_took(tmp_path: Path) -> None:
    fs = RecordingFS(sync_delay=0.01)
    metrics = Metrics()
    with Log.open(str(tmp_path / "wal"), durability="always", segment_size=4096, fs=fs) as log:
        before = fs.count("fdatasync")
        log.set_sync_observer(metrics.observe_sync)
        for _ in range(10):
            log.append(os.urandom(1000))  # incompressible: 4 KiB segments rotate, and sync
    syncs = fs.count("fdatasync") - before
    stats = metrics.snapshot().operations["fsync"]
    assert syncs > 10  # one per append, and the rotations'
    assert stats.count == syncs
    assert stats.mean_s >= 0.01


def test_the_interval_syncer_reports_too(tmp_path: Path) -> None:
    metrics = Metrics()
    with Log.open(str(tmp_path / "wal"), durability="interval", sync_interval_ms=1) as log:
        log.set_sync_observer(metrics.observe_sync)
        log.append(b"payload")
        deadline = time.monotonic() + 5
        while "fsync" not in metrics.snapshot().operations and time.monotonic() < deadline:
            time.sleep(0.002)
        log.set_sync_observer(None)
    assert metrics.snapshot().operations["fsync"].count >= 1


def test_a_removed_observer_hears_nothing(tmp_path: Path) -> None:
    metrics = Metrics()
    with Log.open(str(tmp_path / "wal")) as log:
        log.set_sync_observer(metrics.observe_sync)
        log.append(b"a")
        log.set_sync_observer(None)
        log.append(b"b")
    assert metrics.snapshot().operations["fsync"].count == 1


def test_a_raising_observer_does_not_poison_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def observer(seconds: float) -> None:
        raise RuntimeError("metrics broke")

    with Log.open(str(tmp_path / "wal")) as log:
        log.set_sync_observer(observer)
        with caplog.at_level(logging.ERROR, logger="wfstate.wal"):
            lsn = log.append(b"a")
        assert log.durable_lsn >= lsn
        assert not log.poisoned
        log.append(b"b")
    assert any("sync observer" in r.getMessage() for r in caplog.records)


def test_a_failed_fdatasync_is_not_reported(tmp_path: Path) -> None:
    seen: list[float] = []
    fs = FailingFS("fdatasync", 1)
    log = Log.open(str(tmp_path / "wal"), fs=fs)
    try:
        log.set_sync_observer(seen.append)
        with pytest.raises(StorePoisonedError):
            log.append(b"a")
    finally:
        log.close()
    assert seen == []


def test_set_sync_observer_rejects_a_non_callable(tmp_path: Path) -> None:
    with Log.open(str(tmp_path / "wal")) as log, pytest.raises(ValidationError) as caught:
        log.set_sync_observer(3)  # type: ignore[arg-type]
    assert caught.value.field == "observer"
