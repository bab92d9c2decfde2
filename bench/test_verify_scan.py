"""P9 from BENCHMARKS.md: how fast ``verify`` scans the log, in MB/s of log bytes.

``python -m wfstate verify`` (:func:`wfstate.verification.verify_store`) checks the log by
reading every record of every segment in the ``skip_corrupted`` mode (so that all damage is
listed): each record's chained checksum and header are checked and its payload decompressed.
That scan is what P9 times (``wfstate``): :class:`wfstate.wal.LogScan` over the log-only big
store's ``wal/`` directory, every record consumed. Its target is >= 500 MB/s of segment bytes.

For context, in the same run on the same files (all of them in the page cache, just written):

- ``floor``: read every segment file and hash it with xxh3-64, the floor of any checksum scan;
- ``sqlite_full``: ``PRAGMA integrity_check`` on the SQLite peer's database holding the same
  mutations, in MB/s of its own file;
- row ``P9 verify`` (full mode only: one round is a P5-sized job, ~10 s): the whole
  ``verify_store``, which also opens the store and builds every workflow, in MB/s of the same
  log bytes, beside the same floor.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
import xxhash

from bench import report
from bench.benchmark_protocol import Benchmark
from bench.big_store import BigStore
from bench.report import QUICK
from wfstate.format import WAL_DIR
from wfstate.fs import OS_FS
from wfstate.verification import verify_store
from wfstate.wal import LogScan, list_segments

SCAN_ROUNDS = 2 if QUICK else 5
VERIFY_ROUNDS = 2

_MB = 1e6


def segment_paths(store_dir: str) -> list[str]:
    return [seg.path for seg in list_segments(OS_FS, os.path.join(store_dir, WAL_DIR))]


def scan_log(store_dir: str) -> int:
    """verify's log check: every record read, checked and decompressed; returns the count.
    Damage is a failure here (the big store is clean)."""
    scan = LogScan(OS_FS, os.path.join(store_dir, WAL_DIR), mode="skip_corrupted")
    count = sum(1 for _ in scan.records())
    assert not scan.damage, scan.damage
    return count


def hash_files(paths: list[str]) -> int:
    """Read and xxh3-64 every file of ``paths``; returns the bytes read."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        xxhash.xxh3_64_intdigest(data)
        total += len(data)
    return total


def sqlite_integrity_check(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("PRAGMA integrity_check").fetchone()
    finally:
        conn.close()
    return str(row[0])


def record_throughput(benchmark: Benchmark, key: str, system: str, nbytes: int) -> None:
    """Report ``nbytes`` over the median round, in MB/s, for store row ``key``."""
    if benchmark.stats is None:
        return
    mb_s = nbytes / _MB / benchmark.stats["median"]
    benchmark.extra_info.update(mb_per_s=round(mb_s, 1), bytes=nbytes)
    report.RESULTS.record(key, system, mb_s)


@pytest.mark.benchmark(group="P9")
@pytest.mark.parametrize("system", ["floor", "sqlite_full", "wfstate"])
def test_p9_log_scan(benchmark: Benchmark, big_store: BigStore, system: str) -> None:
    """One round: the whole log scanned by ``system`` (module docstring)."""
    store_dir = big_store.directory("wfstate")
    paths = segment_paths(store_dir)
    log_bytes = sum(os.path.getsize(p) for p in paths)
    if system == "wfstate":
        records = benchmark.pedantic(scan_log, args=(store_dir,), rounds=SCAN_ROUNDS)
        assert records == big_store.workflows + big_store.mutations
        record_throughput(benchmark, "P9", system, log_bytes)
    elif system == "floor":
        read = benchmark.pedantic(hash_files, args=(paths,), rounds=SCAN_ROUNDS)
        assert read == log_bytes
        record_throughput(benchmark, "P9", system, log_bytes)
        record_throughput(benchmark, "P9 verify", system, log_bytes)
    else:
        db = big_store.sqlite_mutations_path
        verdict = benchmark.pedantic(sqlite_integrity_check, args=(db,), rounds=SCAN_ROUNDS)
        assert verdict == "ok"
        record_throughput(benchmark, "P9", system, os.path.getsize(db))
    benchmark.extra_info["big_store"] = big_store.label()


@pytest.mark.skipif(QUICK, reason="a P5-sized job per round: full mode only")
@pytest.mark.benchmark(group="P9")
def test_p9_whole_verify(benchmark: Benchmark, big_store: BigStore) -> None:
    """One round: ``verify_store`` of the log-only big store, as ``python -m wfstate verify``."""
    store_dir = big_store.directory("wfstate")
    log_bytes = sum(os.path.getsize(p) for p in segment_paths(store_dir))
    verified = benchmark.pedantic(verify_store, args=(store_dir,), rounds=VERIFY_ROUNDS)
    assert verified.status == "clean", verified
    assert verified.workflows_checked == big_store.workflows
    record_throughput(benchmark, "P9 verify", "wfstate", log_bytes)
    benchmark.extra_info["big_store"] = big_store.label()
