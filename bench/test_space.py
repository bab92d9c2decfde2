"""P8 from BENCHMARKS.md: how much space wfstate's files save against the same data as JSON.

Measured on the big store every system already holds (``bench/big_store.py``), at default
compression settings (the big store is built with ``LocalStore.open``'s defaults but for the
checkpoint policy, ``MANUAL_ONLY``, so that the log-only store keeps every record):

- row ``P8``: the log-only wfstate store, every file under its directory (segments, START,
  lock files: what ``du`` would count, in apparent bytes) against its batches encoded as JSON
  (``msgspec.json``, exactly the rows of the SQLite peer);
- row ``P8+ck``: the store built with the default checkpoint policy, every file (checkpoints
  with the history retention keeps, and the log since the last compaction) against the final
  states as JSON (exactly the files of the JSON peer): reported, not gated (the history is
  more than the data);
- row ``P8 codec``: the log codec alone, ``Log.appended_bytes`` of the build (msgpack payload
  in, stored bytes out, record framing excluded);
- rows ``P8 MB`` and ``P8+ck MB``: the bytes on disk of each system's big store.

"Space saved" is ``1 - bytes / JSON bytes``, in %: the seed target is > 60 %, wfstate's
>= 70 %. The JSON peer's files are the reference of ``P8+ck`` (0 % by definition); the SQLite
peer's database file is set against the batches as JSON (``P8``) and is shown in both rows.
The benchmark's time is only the size walk (not a target).
"""

from __future__ import annotations

import os

import pytest

from bench import report
from bench.benchmark_protocol import Benchmark
from bench.big_store import CHECKPOINTED, BigStore

_MB = 1e6


def directory_bytes(path: str) -> int:
    """Apparent size of every regular file under ``path`` (what a copy of it would take)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def saved_pct(stored: int, reference: int) -> float:
    """Space saved by ``stored`` bytes against ``reference`` bytes, in % (negative: larger)."""
    if reference <= 0:
        raise ValueError(f"no reference bytes: {reference}")
    return 100.0 * (1.0 - stored / reference)


@pytest.mark.benchmark(group="P8")
def test_p8_space_saved_big_store(benchmark: Benchmark, big_store: BigStore) -> None:
    """Bytes on disk of each system's big store against the same data as JSON (docstring)."""

    def sizes() -> dict[str, int]:
        return {
            "wfstate": directory_bytes(big_store.directory("wfstate")),
            CHECKPOINTED: directory_bytes(big_store.directory(CHECKPOINTED)),
            "sqlite_full": directory_bytes(os.path.dirname(big_store.sqlite_mutations_path)),
            "json_rewrite": directory_bytes(big_store.directory("json_rewrite")),
        }

    disk = benchmark.pedantic(sizes, rounds=1)
    batches_json = big_store.batches_json_bytes
    states_json = disk["json_rewrite"]
    assert batches_json > 0 and states_json > 0
    assert big_store.appended_payload_bytes > 0
    codec = saved_pct(big_store.appended_stored_bytes, big_store.appended_payload_bytes)
    results = report.RESULTS
    results.record("P8", "wfstate", saved_pct(disk["wfstate"], batches_json))
    results.record("P8", "sqlite_full", saved_pct(disk["sqlite_full"], batches_json))
    results.record("P8+ck", "wfstate", saved_pct(disk[CHECKPOINTED], states_json))
    results.record("P8+ck", "sqlite_full", saved_pct(disk["sqlite_full"], batches_json))
    results.record("P8+ck", "json_rewrite", saved_pct(states_json, states_json))
    results.record("P8 codec", "wfstate", codec)
    for system in ("wfstate", "sqlite_full", "json_rewrite"):
        results.record("P8 MB", system, disk[system] / _MB)
        results.record("P8+ck MB", system, disk[system] / _MB)
    results.record("P8+ck MB", "wfstate", disk[CHECKPOINTED] / _MB)
    benchmark.extra_info.update(
        bytes_on_disk=disk,
        batches_json_bytes=batches_json,
        appended_payload_bytes=big_store.appended_payload_bytes,
        appended_stored_bytes=big_store.appended_stored_bytes,
        big_store=big_store.label(),
    )
