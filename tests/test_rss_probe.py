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
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY

_WORKFLOWS, _STEPS = 2, 700  # ~1.5 MB of batches: past the default compact_on_close_bytes


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def test_the_wfstate_probe_leaves_the_store_as_it_found_it(tmp_path: Path) -> None:
    big = BigStore(root=str(tmp_path), workflows=_WORKFLOWS, per_workflow=_STEPS)
    with LocalStore.open(big.directory("wfstate"), durability="none", checkpoints=MANUAL_ONLY) as s:
        for batch in big_store_batches(_WORKFLOWS, _STEPS):
            s.commit(batch)
        assert s.stats().bytes_since_compaction > 1024 * 1024
    before = _files(tmp_path)
    measured = probe("wfstate", big)
    assert measured.first_load_growth_kib is not None
    assert _files(tmp_path) == before
