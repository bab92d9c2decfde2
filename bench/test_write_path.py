"""What the write path costs in CPU, apart from the disk: the figures behind design choices.

Not BENCHMARKS.md workloads; they explain P1/P2. ``append_cpu`` is ``Log.append`` under
durability ``none`` (framing, compression, the writers' lock round, the catch-up check, the
write; no sync). ``lock_round`` is one take-and-release of the writers' lock through the I/O
seam (portalocker plus the inode check) beside the bare ``fcntl.flock`` pair it wraps.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from bench.benchmark_protocol import Benchmark
from bench.report import QUICK
from fixtures.reference_data import step_output_bytes
from wfstate.fs import OS_FS
from wfstate.wal import Log

PAYLOADS = [step_output_bytes(0, s) for s in range(64)]
APPENDS = 500 if QUICK else 3000
ROUNDS = 5 if QUICK else 20
LOCK_ROUNDS = 2000 if QUICK else 20000


@pytest.mark.benchmark(group="write path")
def test_append_cpu(benchmark: Benchmark, tmp_path: Path) -> None:
    """One round: ``APPENDS`` appends of 1 KB step outputs at durability ``none``."""
    with Log.open(str(tmp_path / "wal"), durability="none") as log:

        def appends() -> None:
            for i in range(APPENDS):
                log.append(PAYLOADS[i % 64])

        benchmark.pedantic(appends, rounds=ROUNDS, warmup_rounds=1)
    assert benchmark.stats is not None
    benchmark.extra_info["us_per_append"] = benchmark.stats["median"] / APPENDS * 1e6


@pytest.mark.benchmark(group="write path")
@pytest.mark.parametrize("how", ["seam (portalocker + inode check)", "fcntl.flock"])
def test_lock_round(benchmark: Benchmark, tmp_path: Path, how: str) -> None:
    """One round: ``LOCK_ROUNDS`` takes and releases of an uncontended lock file."""
    path = str(tmp_path / "LOCK")
    handle = OS_FS.open_lock(path)
    fd = os.open(path, os.O_RDWR)
    try:
        if how == "fcntl.flock":

            def rounds() -> None:
                for _ in range(LOCK_ROUNDS):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)

        else:

            def rounds() -> None:
                for _ in range(LOCK_ROUNDS):
                    assert OS_FS.try_lock(handle)
                    OS_FS.unlock(handle)

        benchmark.pedantic(rounds, rounds=ROUNDS, warmup_rounds=1)
    finally:
        os.close(fd)
        OS_FS.close_lock(handle)
    assert benchmark.stats is not None
    benchmark.extra_info["us_per_round"] = benchmark.stats["median"] / LOCK_ROUNDS * 1e6
