"""The embedded default: a store in a local directory, every batch a record of its log.

Layout (docs/format.md §1): ``<store>/LOCK`` (the writers' lock) and ``<store>/wal/``.

Open: recover the log under the writers' lock (its recovery mode), then replay every committed
batch into the materialized states. Commit: under the store's lock, enter the log's
``writing`` block (which takes the writers' lock and first applies every batch other
processes committed since), stamp and validate the batch against the now current states,
queue it in the log (which fixes its LSN) and install the results; then, outside the lock,
wait for durability, so that commits of concurrent threads share one fdatasync. Reads
(``load``, ``list_workflows``) first catch up on other processes' batches without taking the
writers' lock, so readers never block writers; ``load`` waits for the batch that produced the
state it returns to be durable.

Any number of processes may open one store (docs/format.md §8); they are serialized per write
group by the writers' lock, and each sees the others' committed batches before it validates
its own.

Crash reasoning: a batch is one log record, so it is in the log whole or not at all; replay
and catching up apply exactly the records the log holds, in LSN order, so after a crash every
workflow is at the state after the same prefix of batches, which includes every acknowledged
one; a process that dies holding the writers' lock leaves at most a torn record, which the next
writer (or opener) cuts as recovery would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from wfstate.errors import CorruptionError, NotFoundError, ValidationError
from wfstate.format import LOCK_FILE, RECORD_BATCH, WAL_DIR
from wfstate.fs import OS_FS, FileSystem, make_dirs
from wfstate.model import SCHEMA_VERSION, WorkflowState
from wfstate.mutations import (
    Mutation,
    batch_targets,
    decode_mutations,
    encode_mutations,
    replay_batch,
)
from wfstate.schema import BATCH_UPGRADES, SchemaUpgrades
from wfstate.statetable import (
    DEFAULT_CACHE_BYTES,
    BatchLogger,
    Clock,
    StateTable,
    TableStore,
    stamped_with,
)
from wfstate.wal import Compression, Durability, Log, Record, RecoveryMode
from wfstate.wal.log import DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_RECORD_SIZE, DEFAULT_SEGMENT_SIZE


class LocalStore(TableStore):
    """A :class:`wfstate.store.Store` in a local directory. Thread- and process-safe. Use
    :meth:`open`."""

    def __init__(self, log: Log, table: StateTable, *, clock: Clock, path: str) -> None:
        super().__init__(table, clock=clock, name=path)
        self._log = log
        self.path = path

    @classmethod
    def open(
        cls,
        path: str,
        *,
        durability: Durability = "always",
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        compression: Compression | None = None,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        mode: RecoveryMode = "tolerate_torn_tail",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        upgrades: SchemaUpgrades = BATCH_UPGRADES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        clock: Clock = time.time,
        fs: FileSystem = OS_FS,
    ) -> LocalStore:
        """Open (creating if needed) the store in directory ``path``: recover, replay.

        ``lock_timeout``: seconds to wait for the writers' lock (held by another process while
        it writes) before ``LockTimeoutError`` (retryable). Recovery modes other than
        ``tolerate_torn_tail`` may discard valid records: use them only when no other process
        has the store open (docs/format.md §8). ``upgrades``: how batches written under older
        schema versions are read (:mod:`wfstate.schema`); its chain must end at the current
        ``SCHEMA_VERSION``. ``cache_bytes``: about how much workflow state to keep
        materialized (estimated by the size of the batches that built it); states are built
        from the log when first read, so opening builds none.
        """
        if not isinstance(path, str) or not path:
            raise ValidationError("path", "must be a non-empty str")
        if not isinstance(upgrades, SchemaUpgrades):
            raise ValidationError("upgrades", "must be a wfstate.schema.SchemaUpgrades")
        if upgrades.current != SCHEMA_VERSION:
            raise ValidationError(
                "upgrades", f"the chain ends at version {upgrades.current}, not {SCHEMA_VERSION}"
            )
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValidationError("cache_bytes", f"must be an int >= 0, not {cache_bytes!r}")
        make_dirs(fs, path)
        wal_dir = os.path.join(path, WAL_DIR)
        tables: list[StateTable] = []  # the table exists once the log does
        log = Log.open(
            wal_dir,
            durability=durability,
            segment_size=segment_size,
            compression=compression,
            max_record_size=max_record_size,
            mode=mode,
            on_foreign=lambda record: _apply(tables[0], wal_dir, record, upgrades),
            lock_path=os.path.join(path, LOCK_FILE),
            lock_timeout=lock_timeout,
            fs=fs,
        )
        table = StateTable(
            lambda workflow_id, entries: _materialize(log, workflow_id, entries, upgrades),
            cache_bytes=cache_bytes,
        )
        tables.append(table)
        try:
            for record in log.read():
                _apply(table, wal_dir, record, upgrades)
        except BaseException:
            log.close()
            raise
        return cls(log, table, clock=clock, path=path)

    @contextmanager
    def _writing(self) -> Iterator[BatchLogger]:
        with self._log.writing() as writer:

            def log_batch(stamped: list[Mutation]) -> tuple[int, int]:
                payload = encode_mutations(stamped)
                try:
                    return writer.enqueue(payload, record_type=RECORD_BATCH), len(payload)
                except ValidationError as exc:  # too large: name the input, not the log's
                    raise ValidationError("mutations", exc.message) from exc

            yield log_batch

    def _catch_up(self) -> None:
        self._log.follow()

    def _wait_durable(self, lsn: int) -> None:
        self._log.wait(lsn)

    def close(self) -> None:
        """Sync and release the store (its log and lock handle); idempotent."""
        if self._mark_closed():
            self._log.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _apply(table: StateTable, wal_dir: str, record: Record, upgrades: SchemaUpgrades) -> None:
    """Take one committed batch read from the log (replay at open, or another process's)."""
    if record.type != RECORD_BATCH:
        raise CorruptionError(
            wal_dir, 0, f"record LSN {record.lsn} has type {record.type}, not a batch"
        )
    payload = record.payload
    try:
        table.replay(
            batch_targets(payload, upgrades=upgrades),
            record.lsn,
            len(payload),
            lambda: decode_mutations(payload, upgrades=upgrades),
        )
    except (ValidationError, NotFoundError) as exc:
        raise CorruptionError(
            wal_dir, 0, f"batch at LSN {record.lsn} does not apply: {exc}"
        ) from exc


def _materialize(
    log: Log, workflow_id: str, entries: Sequence[tuple[int, int]], upgrades: SchemaUpgrades
) -> WorkflowState:
    """Rebuild ``workflow_id`` by applying its part of each of its batches, read by position."""
    state: WorkflowState | None = None
    for lsn, skip in entries:
        payload = log.read_at(lsn).payload
        try:
            mine = [m for m in decode_mutations(payload, upgrades=upgrades)
                    if m.workflow_id == workflow_id][skip:]  # fmt: skip
            state = replay_batch({workflow_id: state} if state else {}, mine)[workflow_id]
        except (ValidationError, NotFoundError, KeyError) as exc:
            raise CorruptionError(
                log.path, 0, f"batch at LSN {lsn} does not apply to {workflow_id!r}: {exc}"
            ) from exc
    if state is None:
        raise CorruptionError(log.path, 0, f"the batches of {workflow_id!r} leave it deleted")
    return stamped_with(state, entries[-1][0])
