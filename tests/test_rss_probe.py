"""The P7 probe (``bench/rss_probe.py``) measures a store and changes nothing in it.

The benchmarks after P7 read the same big store: P9 scans the log-only store's log, which a
probe closing with the default policy compacted (``compact_on_close_bytes``), leaving P9 one
record to scan instead of 100,100.
"""

from __future__ import annotations

from pathlib import Path

from bench.big_store import BigStore
from bench.rss_probe import probe
from fixtures.reference_states import big_store_batches
from tests.bytesutil import snapshot_without_locks
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY

_WORKFLOWS, _STEPS = 2, 700  # ~1.5 MB of batches: past the default compact_on_close_bytes


def test_the_wfstate_probe_leaves_the_store_as_it_found_it(tmp_path: Path) -> None:
    big = BigStore(root=str(tmp_path), workflows=_WORKFLOWS, per_workflow=_STEPS)
    with LocalStore.open(big.directory("wfstate"), durability="none", checkpoints=MANUAL_ONLY) as s:
        for batch in big_store_batches(_WORKFLOWS, _STEPS):
            s.commit(batch)
        assert s.stats().bytes_since_compaction > 1024 * 1024
    before = snapshot_without_locks(tmp_path)
    measured = probe("wfstate", big)
    assert measured.first_load_growth_kib is not None
    assert snapshot_without_locks(tmp_path) == before
