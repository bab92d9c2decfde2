"""The embedded default: a store in a local directory, every batch a record of its log.

Layout (docs/format.md §1): ``<store>/LOCK`` (held while open) and ``<store>/wal/``.

Open: take the store lock (one writing process at a time; a second opener gets
``LockTimeoutError`` at once), recover the log (its recovery mode), replay every committed
batch into the materialized states. Commit: under the store's lock, stamp and validate the
batch against the current states, queue it in the log (which fixes its LSN) and install the
results; then, outside the lock, wait for durability, so that commits of concurrent threads
share one fdatasync. ``load`` waits for the batch that produced the state it returns.

Crash reasoning: a batch is one log record, so it is in the log whole or not at all; replay
applies exactly the records the log recovered, in LSN order, so after a crash every workflow
is at the state after the same prefix of batches, which includes every acknowledged one.
"""

from __future__ import annotations

import os
import time

from wfstate.errors import (
    CorruptionError,
    LockTimeoutError,
    NotFoundError,
    ValidationError,
)
from wfstate.format import RECORD_BATCH, WAL_DIR
from wfstate.fs import OS_FS, FileSystem, make_dirs
from wfstate.mutations import Mutation, decode_mutations, encode_mutations
from wfstate.statetable import Clock, StateTable, TableStore
from wfstate.wal import Compression, Durability, Log, RecoveryMode
from wfstate.wal.log import DEFAULT_MAX_RECORD_SIZE, DEFAULT_SEGMENT_SIZE

LOCK_FILE = "LOCK"


class LocalStore(TableStore):
    """A :class:`wfstate.store.Store` in a local directory. Thread-safe. Use :meth:`open`."""

    def __init__(self, log: Log, table: StateTable, *, lock: object, fs: FileSystem,
                 clock: Clock, path: str) -> None:  # fmt: skip
        super().__init__(table, clock=clock, name=path)
        self._log = log
        self._lock_handle = lock
        self._fs = fs
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
        clock: Clock = time.time,
        fs: FileSystem = OS_FS,
    ) -> LocalStore:
        """Open (creating if needed) the store in directory ``path``: lock, recover, replay."""
        if not isinstance(path, str) or not path:
            raise ValidationError("path", "must be a non-empty str")
        make_dirs(fs, path)
        try:
            lock = fs.lock(os.path.join(path, LOCK_FILE))
        except BlockingIOError as exc:
            raise LockTimeoutError(f"store {path} is open in another process") from exc
        try:
            log = Log.open(
                os.path.join(path, WAL_DIR),
                durability=durability,
                segment_size=segment_size,
                compression=compression,
                max_record_size=max_record_size,
                mode=mode,
                fs=fs,
            )
            try:
                table = _replay(log)
            except BaseException:
                log.close()
                raise
        except BaseException:
            fs.unlock(lock)
            raise
        return cls(log, table, lock=lock, fs=fs, clock=clock, path=path)

    def _log_batch(self, stamped: list[Mutation]) -> int:
        try:
            return self._log.enqueue(encode_mutations(stamped), record_type=RECORD_BATCH)
        except ValidationError as exc:  # too large: name the input, not the log's field
            raise ValidationError("mutations", exc.message) from exc

    def _wait_durable(self, lsn: int) -> None:
        self._log.wait(lsn)

    def close(self) -> None:
        """Sync and release the store (the log, then the lock); idempotent."""
        if not self._mark_closed():
            return
        try:
            self._log.close()
        finally:
            self._fs.unlock(self._lock_handle)

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replay(log: Log) -> StateTable:
    table = StateTable()
    for record in log.read():
        if record.type != RECORD_BATCH:
            raise CorruptionError(
                log.path, 0, f"record LSN {record.lsn} has type {record.type}, not a batch"
            )
        try:
            table.replay(decode_mutations(record.payload), record.lsn)
        except (ValidationError, NotFoundError) as exc:
            raise CorruptionError(
                log.path, 0, f"batch at LSN {record.lsn} does not apply: {exc}"
            ) from exc
    return table
