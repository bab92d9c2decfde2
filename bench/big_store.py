"""The big store of BENCHMARKS.md, built once per run for every system (P5, P5b, P7).

One pass over :func:`fixtures.reference_states.big_store_batches` feeds two systems:

- ``wfstate/``: a ``LocalStore`` that committed every batch (durability ``none``, only to build
  it fast; checkpoint policy ``MANUAL_ONLY``, so the log holds every batch and no checkpoint;
  it is closed, so everything is on disk, before any measurement);
- ``sqlite_full/mutations.sqlite``: SQLite (WAL, synchronous=FULL) holding the same batches,
  one row per batch, as JSON, in one transaction, checkpointed into the main file;

then ``json_rewrite/`` gets one JSON file per workflow (:class:`bench.peers.JsonStateFiles`)
holding exactly the states the wfstate store ended with (each ``load``-ed from it).

Last, ``with_checkpoints/wfstate/`` (system ``wfstate+checkpoints``, :attr:`BigStore.checkpointed`)
is the same batches committed to a second ``LocalStore`` with the **default** checkpoint policy
(``wfstate.checkpointpolicy.DEFAULT_POLICY``: automatic checkpoints every 1,000 batches of a
workflow, a compaction every ``every_log_bytes`` logged, retention after it): the store a user
who changes no setting has after the same work (closed before any measurement, like the rest).
The seed targets of P5, P5b and P7 are judged on it; the log-only store shows the worst case
(a store whose application turned automatic checkpoints off). Its ``close()`` compacts the log
(``compact_on_close_bytes``), as a clean shutdown does.

``after_crash/wfstate/`` (system ``wfstate+crash``, :attr:`BigStore.crashed`) is the
default-policy store as a crash leaves it: a copy of its directory taken before that close,
while the handle was open with every batch written (what ``kill -9`` of the process then
leaves on disk: durability ``none`` writes each batch to the OS before ``commit`` returns, and
the copy reads it from there). Reopening it scans the log since the last automatic compaction;
P5 and P5b report it, ungated.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
from dataclasses import dataclass
from typing import Final

import msgspec

from bench.peers import JsonStateFiles
from fixtures.reference_data import workflow_id
from fixtures.reference_states import big_store_batches
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import DEFAULT_POLICY, MANUAL_ONLY

__all__ = ["BIG_STORE_SHAPE", "CHECKPOINTED", "CRASHED", "BigStore", "build_big_store"]


def _shape(text: str) -> tuple[int, int]:
    workflows, _, steps = text.lower().partition("x")
    return int(workflows), int(steps)


#: ``(workflows, steps per workflow)``: BENCHMARKS.md's 100 x 1,000 (100,000 step outputs,
#: ~110 MB as JSON), in quick mode too: the CI gate judges the seed targets of P5, P7 and P8 on
#: it, and those grow with the store (a smaller store would pass where the real one fails).
#: ``WFSTATE_BENCH_BIG_STORE=WORKFLOWSxSTEPS`` (e.g. ``100x100``) sets another, for smoke runs;
#: the table says which one a run used.
BIG_STORE_SHAPE: Final = _shape(os.environ.get("WFSTATE_BENCH_BIG_STORE", "100x1000"))

#: The SQLite peer's database file (table ``mutations``: one row per batch, as JSON).
SQLITE_MUTATIONS_FILE: Final = "mutations.sqlite"

#: The system name of the wfstate big store built with the default checkpoint policy.
CHECKPOINTED: Final = "wfstate+checkpoints"

#: Where, under a big store's root, the default-policy store's own root is (it holds ``wfstate/``).
_CHECKPOINTED_ROOT: Final = "with_checkpoints"

#: The system name of the default-policy store as a crash before its close leaves it.
CRASHED: Final = "wfstate+crash"

#: Where, under a big store's root, that copy is (``after_crash/wfstate/``).
_CRASHED_ROOT: Final = "after_crash"


@dataclass(frozen=True)
class BigStore:
    """Where the big store of each system lives, and its shape."""

    root: str
    workflows: int
    per_workflow: int
    #: Measured while building (0 on :attr:`checkpointed`): the batches as JSON
    #: (``msgspec.json``, what the SQLite peer stores), and ``Log.appended_bytes`` of the
    #: wfstate build (msgpack payload, stored after compression; framing excluded).
    batches_json_bytes: int = 0
    appended_payload_bytes: int = 0
    appended_stored_bytes: int = 0

    @property
    def mutations(self) -> int:
        """Step-output mutations (``PutStepOutput`` batches); creations not counted."""
        return self.workflows * self.per_workflow

    @property
    def first_workflow(self) -> str:
        return workflow_id(0)

    def directory(self, system: str) -> str:
        """The directory to ``open`` for ``system`` (``wfstate``, ``wfstate+checkpoints``,
        ``wfstate+crash``, ``json_rewrite``)."""
        if system == CHECKPOINTED:
            return self.checkpointed.directory("wfstate")
        if system == CRASHED:
            return os.path.join(self.root, _CRASHED_ROOT, "wfstate")
        return os.path.join(self.root, system)

    @property
    def checkpointed(self) -> BigStore:
        """The default-policy store as a big store of its own, whose ``wfstate`` system it is (so
        code that opens ``directory("wfstate")``, like ``bench/rss_probe.py``, opens it)."""
        root = os.path.join(self.root, _CHECKPOINTED_ROOT)
        return BigStore(root=root, workflows=self.workflows, per_workflow=self.per_workflow)

    @property
    def sqlite_mutations_path(self) -> str:
        return os.path.join(self.root, "sqlite_full", SQLITE_MUTATIONS_FILE)

    def label(self) -> str:
        full = (self.workflows, self.per_workflow) == (100, 1000)
        size = "BENCHMARKS.md size" if full else "smaller than BENCHMARKS.md's 100 x 1,000"
        return (
            f"big store: {self.workflows} workflows x {self.per_workflow:,} steps = "
            f"{self.mutations:,} step-output mutations ({size})"
        )


def build_big_store(
    root: str, workflows: int = BIG_STORE_SHAPE[0], per_workflow: int = BIG_STORE_SHAPE[1]
) -> BigStore:
    """Build the big store of every system under ``root`` (which must not hold one yet)."""
    big = BigStore(root=root, workflows=workflows, per_workflow=per_workflow)
    os.makedirs(os.path.dirname(big.sqlite_mutations_path), exist_ok=True)
    conn = sqlite3.connect(big.sqlite_mutations_path, isolation_level=None)
    store = LocalStore.open(big.directory("wfstate"), durability="none", checkpoints=MANUAL_ONLY)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE mutations (id INTEGER PRIMARY KEY, workflow_id TEXT NOT NULL, "
            "payload BLOB NOT NULL)"
        )
        conn.execute("BEGIN IMMEDIATE")
        encoder = msgspec.json.Encoder()
        json_bytes = 0
        for batch in big_store_batches(workflows, per_workflow):
            store.commit(batch)
            encoded = encoder.encode(batch)
            json_bytes += len(encoded)
            conn.execute(
                "INSERT INTO mutations (workflow_id, payload) VALUES (?, ?)",
                (batch[0].workflow_id, encoded),
            )
        conn.execute("COMMIT")
        stats = store.stats()
        big = dataclasses.replace(
            big,
            batches_json_bytes=json_bytes,
            appended_payload_bytes=stats.appended_payload_bytes,
            appended_stored_bytes=stats.appended_stored_bytes,
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        files = JsonStateFiles()
        files.open(big.directory("json_rewrite"))
        for wid in store.list_workflows():
            files.save(store.load(wid))
    finally:
        store.close()
        conn.close()
    _build_checkpointed(big)
    return big


def _build_checkpointed(big: BigStore) -> None:
    """Commit the big store's batches again, to a store with the default checkpoint policy
    (module docstring); every workflow must end covered by a checkpoint or the log."""
    directory = big.directory(CHECKPOINTED)
    store = LocalStore.open(directory, durability="none", checkpoints=DEFAULT_POLICY)
    try:
        for batch in big_store_batches(big.workflows, big.per_workflow):
            store.commit(batch)
        stats = store.stats()
        shutil.copytree(directory, big.directory(CRASHED))  # the crash image (module docstring)
    finally:
        store.close()
    if stats.auto_checkpoint_failures:
        raise RuntimeError(f"automatic checkpoints failed building the big store: {stats}")
