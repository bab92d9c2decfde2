"""The embedded default: a store in a local directory, every batch a record of its log.

Layout (docs/format.md §1): ``<store>/LOCK`` (the writers' lock), ``<store>/wal/``, and the
directories of checkpoints and two-phase commits (``checkpoints/``, ``workflows/``,
``sessions/``), made at open.

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
writer (or opener) cuts as recovery would. A transaction over files (:mod:`wfstate.twophase`)
is decided by one ``TXN`` record; one that a crash or a failed rename left unfinished is
rolled forward at the next open, or by the next tenure of any handle that read its record,
before that handle writes anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from wfstate.bundle import checkpoint_name, decode_bundle, encode_bundle
from wfstate.checkpointfile import decode_checkpoint, encode_checkpoint, read_header
from wfstate.checkpointindex import (
    Anchor,
    AnchorWorkflow,
    CheckpointIndex,
    CheckpointInfo,
    CheckpointType,
    decode_anchor,
    decode_drop,
    decode_entry,
    encode_anchor,
    encode_drop,
    encode_entry,
)
from wfstate.checkpointpolicy import DEFAULT_POLICY, CheckpointPolicy
from wfstate.checkpointreports import (
    CheckpointCheck,
    CompactionReport,
    OpenReport,
    RecoverySuggestion,
    RolledForward,
    StoreStats,
)
from wfstate.checkpoints import CheckpointFiles, Prepared
from wfstate.collectorpause import collector_paused
from wfstate.errors import (
    ClosedError,
    CorruptionError,
    LockTimeoutError,
    NotFoundError,
    SchemaVersionError,
    StorePoisonedError,
    SyncFailedError,
    TransactionError,
    ValidationError,
    WfstateError,
    storage_error,
    storage_io,
)
from wfstate.format import (
    CHECKPOINTS_DIR,
    LOCK_FILE,
    RECORD_BATCH,
    RECORD_CHECKPOINT,
    RECORD_CHECKPOINT_DROP,
    RECORD_DISCARD,
    RECORD_SESSION,
    RECORD_TXN,
    SESSION_LOCK_SUFFIX,
    SESSIONS_DIR,
    TXN_DIRS,
    WAL_DIR,
    WORKFLOW_STATE_SUFFIX,
    WORKFLOWS_DIR,
    checkpoint_file_name,
    is_session_id,
    parse_segment_name,
    session_file_name,
    state_file_name,
)
from wfstate.fs import OS_FS, FileSystem, make_dirs
from wfstate.ids import validate_id
from wfstate.model import SCHEMA_VERSION, WorkflowState, state_checksum, validate_json
from wfstate.mutations import (
    Mutation,
    Replay,
    SetStepStatus,
    SetWorkflowStatus,
    batch_session,
    batch_targets,
    decode_mutations,
    encode_mutations,
    mutation_targets,
)
from wfstate.retention import RetentionPlan, RetentionPolicy, plan_retention
from wfstate.schema import BATCH_UPGRADES, SchemaUpgrades
from wfstate.sessions import (
    CrashedSession,
    SessionEvent,
    SessionInfo,
    SessionTable,
    WorkflowPlan,
    decode_event,
    encode_event,
    encode_session_file,
    make_event,
    new_session_id,
)
from wfstate.statetable import (
    DEFAULT_CACHE_BYTES,
    BatchLogger,
    Clock,
    StateTable,
    TableStore,
    stamped_with,
)
from wfstate.twophase import (
    Participant,
    Txn,
    abandon,
    decode_txn,
    encode_txn,
    finish,
    in_doubt_files,
    prepare,
    roll_forward,
    undecided_temps,
)
from wfstate.wal import Compression, Durability, Log, LogDamage, Record, RecoveryMode
from wfstate.wal.log import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_RECORD_SIZE,
    DEFAULT_SEGMENT_SIZE,
    LogWriter,
    check_options,
)

_LOG: Final = logging.getLogger("wfstate.checkpoints")

_TYPE_RANK: Final[dict[str, int]] = {"automatic": 0, "pre_step": 1, "post_step": 2, "error": 3}
"""Which automatic checkpoint type wins when one batch triggers several."""


class LocalStore(TableStore):
    """A :class:`wfstate.store.Store` in a local directory, with checkpoints. Thread- and
    process-safe. Use :meth:`open`."""

    def __init__(
        self,
        log: Log,
        table: StateTable,
        *,
        clock: Clock,
        path: str,
        fs: FileSystem,
        upgrades: SchemaUpgrades,
        policy: CheckpointPolicy,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        super().__init__(table, clock=clock, name=path)
        self._log = log
        self.path = path
        self._fs = fs
        self._upgrades = upgrades
        self._policy = policy
        self._index = CheckpointIndex()
        self._files = CheckpointFiles(
            fs, os.path.join(path, CHECKPOINTS_DIR), log.epoch, policy.compression
        )
        # parent candidates for incremental checkpoints: workflow -> (entry, state it yields)
        self._recent: OrderedDict[str, tuple[CheckpointInfo, WorkflowState]] = OrderedDict()
        self._bad: dict[str, str] = {}  # checkpoint id -> why it does not read
        self._logged_bytes = 0  # batch bytes logged or read since the last compaction seen
        self._auto_failures = 0
        # transactions read from the log (docs/format.md §10) that this handle has not seen
        # finished under the writers' lock: rolled forward at its next tenure (_held)
        self._unfinished: list[Txn] = []
        # why the store stopped acknowledging (_stop): a decided transaction's finish or a
        # sync outside the log failed; every later call raises StorePoisonedError
        self._poison: BaseException | None = None
        self._poison_why = ""
        self._sessions = SessionTable()  # folded from the log (docs/format.md §11)
        self._owned: dict[str, Session] = {}  # sessions this handle owns (holds the lock of)
        self._lock_timeout = float(lock_timeout)
        self._call = threading.local()  # .session: the Session of the commit on this thread
        self._checkpoint_observer: Callable[[CheckpointInfo], None] | None = None
        self._held_created: list[CheckpointInfo] = []  # by compaction, told once unlocked
        self._opened = OpenReport(log_damage=(), rolled_forward=(), undecided=())

    @classmethod
    def open(
        cls,
        path: str,
        *,
        durability: Durability = "always",
        sync_interval_ms: int = 100,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        compression: Compression | None = None,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        mode: RecoveryMode = "tolerate_torn_tail",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        upgrades: SchemaUpgrades = BATCH_UPGRADES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        checkpoints: CheckpointPolicy = DEFAULT_POLICY,
        clock: Clock = time.time,
        fs: FileSystem = OS_FS,
    ) -> LocalStore:
        """Open (creating if needed) the store in directory ``path``: recover, replay.

        ``sync_interval_ms``: the background sync period of ``durability="interval"`` (what
        an OS crash may lose). ``lock_timeout``: seconds to wait for the writers' lock (held
        by another process while it writes) before ``LockTimeoutError`` (retryable).
        Recovery modes other than ``tolerate_torn_tail`` may discard valid records: use them
        only when no other process has the store open (docs/format.md §8). ``upgrades``: how
        batches written under older schema versions are read (:mod:`wfstate.schema`); its
        chain must end at the current ``SCHEMA_VERSION``. ``cache_bytes``: about how much
        workflow state to keep materialized (estimated by the size of the batches that built
        it); states are built from checkpoints and the log when first read, so opening
        builds none. ``checkpoints``: when checkpoints are taken and the log compacted
        automatically (:class:`~wfstate.checkpointpolicy.CheckpointPolicy`).
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
        if not isinstance(checkpoints, CheckpointPolicy):
            raise ValidationError(
                "checkpoints", "must be a wfstate.checkpointpolicy.CheckpointPolicy"
            )
        if not callable(clock):
            raise ValidationError("clock", f"must be callable, not {clock!r}")
        check_options(  # before anything is created: a rejected open leaves no directory
            durability=durability,
            sync_interval_ms=sync_interval_ms,
            segment_size=segment_size,
            compression=compression,
            max_record_size=max_record_size,
            mode=mode,
            lock_timeout=lock_timeout,
        )
        # every I/O failure of opening is a StorageIOError (nothing was acknowledged: the
        # caller may open again); the log's and the roll-forward's own errors pass as they are
        with storage_io("open", path):
            make_dirs(fs, path)
            for directory in TXN_DIRS:
                make_dirs(fs, os.path.join(path, directory))
            wal_dir = os.path.join(path, WAL_DIR)
            stores: list[LocalStore] = []  # the store exists once the log does
            log = Log.open(
                wal_dir,
                durability=durability,
                sync_interval_ms=sync_interval_ms,
                segment_size=segment_size,
                compression=compression,
                max_record_size=max_record_size,
                mode=mode,
                on_foreign=lambda record: stores[0]._take(record),  # noqa: PLW0108 (late binding)
                on_discard=lambda anchor, _first_lsn: stores[0]._take_anchor(anchor, skipped=True),
                lock_path=os.path.join(path, LOCK_FILE),
                lock_timeout=lock_timeout,
                fs=fs,
            )
            try:
                table = StateTable(
                    lambda w, origin, floor, entries: stores[0]._materialize(  # noqa: PLW0108
                        w, origin, floor, entries
                    ),
                    cache_bytes=cache_bytes,
                )
                store = cls(
                    log,
                    table,
                    clock=clock,
                    path=path,
                    fs=fs,
                    upgrades=upgrades,
                    policy=checkpoints,
                    lock_timeout=lock_timeout,
                )
                stores.append(store)
                if log.anchor:
                    store._take_anchor(log.anchor, skipped=True)
                for record in log.read(log.first_lsn):
                    store._take(record)
                store._settle()
            except BaseException:
                log.close()
                raise
        return store

    # -- the Store hooks ----------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[BatchLogger]:
        session: Session | None = getattr(self._call, "session", None)
        with self._held() as writer:
            owner = None
            if session is not None:  # fencing (docs/format.md §11.2): caught up, no LSN yet
                self._sessions.check_owner(session.id, session.token)
                owner = (session.id, session.token)

            def log_batch(stamped: list[Mutation]) -> tuple[int, int]:
                payload = encode_mutations(stamped, session=owner)
                try:
                    lsn = writer.enqueue(payload, record_type=RECORD_BATCH)
                except ValidationError as exc:  # too large: name the input, not the log's
                    raise ValidationError("mutations", exc.message) from exc
                self._logged_bytes += len(payload)
                if owner is not None:
                    self._sessions.note_batch(owner[0], (w for _op, w in mutation_targets(stamped)))
                return lsn, len(payload)

            yield log_batch

    def _catch_up(self) -> None:
        with self._log_io("catch up on"):
            self._log.follow()

    @contextmanager
    def _log_io(self, operation: str) -> Iterator[None]:
        """The log's I/O other than its appends and syncs (catching up, reading a record,
        taking and releasing the writers' lock, closing): an ``OSError`` the log lets through
        is raised as ``StorageIOError`` naming ``operation`` and the log's directory, or as
        ``StorePoisonedError`` when the log poisoned itself on it (a repair's write or sync
        at the start of a tenure). The log's own errors (``StorePoisonedError``,
        ``CorruptionError``...) pass as they are."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, WfstateError):
                raise
            if self._log.poisoned:
                raise StorePoisonedError(
                    f"store {self.path}: the log stopped after a failed write or sync ({exc}); "
                    "reopen it to recover"
                ) from exc
            raise storage_error(operation, self._log.path, exc) from exc

    def _current(self, workflow_id: str) -> WorkflowState | None:
        """As the base, once more if another process discarded the segments holding this
        workflow's batches between catching up and reading them: catching up again applies
        that discard's anchor, and the state is built from its checkpoints."""
        try:
            return super()._current(workflow_id)
        except _LogMovedOn:
            return super()._current(workflow_id)

    def _wait_durable(self, lsn: int) -> None:
        with self._log_io("sync"):
            self._log.wait(lsn)

    def close(self) -> None:
        """Sync and release the store (its log and lock handle); idempotent. A failure to
        release a session's lock or to close the log raises ``StorageIOError`` (the store is
        closed all the same; a lock is released by the OS when the process ends).

        First, under the policy's ``compact_on_close_bytes``, compact and apply retention so
        that the next open scans no log (:class:`~wfstate.checkpointpolicy.CheckpointPolicy`).
        That compaction is :meth:`compact`'s, with its crash safety: a crash or kill during
        it leaves the old log or the new one, each rebuilding the same states. Its failure is
        logged (``wfstate.checkpoints`` logger), never raised: nothing is lost, the next open
        scans the log instead. A poisoned store skips it; an interrupt during it (``Ctrl-C``)
        still closes the store before it propagates."""
        threshold = self._policy.compact_on_close_bytes
        try:
            if threshold is not None and self._logged_bytes >= threshold and self._poison is None:
                self._compact_automatically("on close")
        finally:
            self._release()

    def _release(self) -> None:
        """Once: mark closed, drop the parent states, close the owned sessions and the log."""
        if self._mark_closed():
            self._recent.clear()  # parent states: dropped now, not by the cyclic collector
            try:
                for session in list(self._owned.values()):
                    session.close()
            finally:
                with self._log_io("close"):
                    self._log.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- applying the log ---------------------------------------------------------------------
    def _take(self, record: Record) -> None:
        """Apply one committed record read from the log (at open, or another process's)."""
        payload = record.payload
        try:
            if record.type == RECORD_BATCH:
                self._take_batch(payload, record.lsn)
            elif record.type == RECORD_CHECKPOINT:
                self._index.add(decode_entry(payload))
            elif record.type == RECORD_CHECKPOINT_DROP:
                for info in self._index.drop(decode_drop(payload)):
                    self._forget_recent(info.id)
            elif record.type == RECORD_DISCARD:
                self._take_anchor(payload, skipped=False)
            elif record.type == RECORD_TXN:
                self._take_txn(decode_txn(payload), record.lsn)
            elif record.type == RECORD_SESSION:
                self._sessions.apply(decode_event(payload))
            else:
                raise ValidationError("type", f"{record.type} is not a record type of a store")
        except (ValidationError, NotFoundError) as exc:
            raise CorruptionError(
                self._log.path,
                0,
                f"{_KIND.get(record.type, 'record')} at LSN {record.lsn} does not apply: {exc}",
            ) from exc

    def _take_batch(self, payload: bytes, lsn: int) -> None:
        """Apply a committed batch document at ``lsn`` (a ``BATCH`` record's, or a ``TXN``
        record's ``batch``), attributing it to its session if it names one."""
        targets = batch_targets(payload, upgrades=self._upgrades)
        owner = batch_session(payload)
        if owner is not None:
            self._sessions.note_batch(owner[0], (w for _op, w in targets))
        self._table.replay(
            targets, lsn, len(payload), lambda: decode_mutations(payload, upgrades=self._upgrades)
        )
        self._logged_bytes += len(payload)

    def _take_anchor(self, data: bytes, *, skipped: bool) -> None:
        """Make the index and the live workflows what an anchor says (docs/format.md §9.6)."""
        try:
            anchor = decode_anchor(data)
            self._table.rebase(
                [(w.workflow_id, w.origin, w.floor) for w in anchor.workflows], skipped=skipped
            )
        except ValidationError as exc:
            raise CorruptionError(self._log.path, 0, f"the anchor does not apply: {exc}") from exc
        self._index.reset(anchor.checkpoints)
        self._sessions.reset(anchor.sessions)
        if skipped:
            self._recent.clear()
        self._logged_bytes = 0

    def _take_txn(self, txn: Txn, lsn: int) -> None:
        """Apply a ``TXN`` record another handle wrote, at its ``lsn``, in the order of
        docs/format.md §10.2: the ``start`` events, the batch (as a ``BATCH`` record here),
        the checkpoint entries (as ``CHECKPOINT`` records here), the other events. The
        transaction is noted as possibly unfinished (its decider may have died between the
        decision and the renames): the next tenure of this handle rolls it forward (``_held``).
        Called by the log, whose lock is held: no file is touched here."""
        events = [decode_event(bytes(raw), versioned=False) for raw in txn.sessions]
        for event in events:
            if event.event == "start":
                self._sessions.apply(event)
        if txn.batch:
            self._take_batch(txn.batch, lsn)
        for info in txn.checkpoints:
            self._index.add(info)
        for event in events:
            if event.event != "start":
                self._sessions.apply(event)
        self._unfinished.append(txn)

    def _materialize(
        self, workflow_id: str, origin: int, floor: int, entries: Sequence[tuple[int, int]]
    ) -> tuple[WorkflowState, int]:
        """Build ``workflow_id`` from its newest checkpoint that reads, plus the later batches
        (docs/format.md §9.7); from the log alone when no checkpoint reads and the log holds
        its creation. With the cyclic garbage collector paused: the decode allocates a
        container per output and makes no cycles (:mod:`wfstate.collectorpause`)."""
        with collector_paused():
            return self._materialize_from(workflow_id, origin, floor, entries)

    def _materialize_from(
        self, workflow_id: str, origin: int, floor: int, entries: Sequence[tuple[int, int]]
    ) -> tuple[WorkflowState, int]:
        for info in self._index.of_workflow(workflow_id, origin):
            if info.lsn < floor:
                break
            if info.id in self._bad:
                continue
            try:
                state = self._files.read_state(info, self._index)
            except CorruptionError as exc:
                self._mark_bad(info, exc)
                continue
            after = [(lsn, skip) for lsn, skip in entries if lsn > info.lsn]
            state, read = self._replay(workflow_id, state, after)
            return state, info.size + read
        if floor:
            raise CorruptionError(
                self._files.directory,
                0,
                f"workflow {workflow_id!r}: the log before LSN {floor} was discarded and no "
                "checkpoint of it reads (see the store's bad checkpoints)",
            )
        return self._replay(workflow_id, None, entries)  # raises if they leave it deleted

    def _replay(
        self,
        workflow_id: str,
        state: WorkflowState | None,
        entries: Sequence[tuple[int, int]],
    ) -> tuple[WorkflowState, int]:
        """``state`` with its part of each batch in ``entries`` applied, read by position;
        CorruptionError if a batch does not read or apply, or they leave the workflow deleted.

        One :class:`~wfstate.mutations.Replay` across the batches: a workflow rebuilt from
        thousands of one-output batches copies its outputs once, not once per batch."""
        with self._log_io("read"):  # once, not per record: this is the load path
            read = 0
            replaying = Replay({workflow_id: state} if state else {})
            for lsn, skip in entries:
                if lsn < self._log.first_lsn:
                    raise _LogMovedOn(lsn)
                try:
                    record = self._log.read_at(lsn)
                except NotFoundError as exc:  # its segment was discarded by another process
                    raise _LogMovedOn(lsn) from exc
                payload = record.payload
                if record.type == RECORD_TXN:  # a transaction's batch (docs/format.md §10.2)
                    try:
                        payload = decode_txn(payload).batch
                    except (ValidationError, SchemaVersionError) as exc:
                        raise CorruptionError(
                            self._log.path, 0, f"transaction at LSN {lsn} does not read: {exc}"
                        ) from exc
                read += len(payload)
                try:
                    mine = [m for m in decode_mutations(payload, upgrades=self._upgrades)
                            if m.workflow_id == workflow_id][skip:]  # fmt: skip
                    if mine:
                        replaying.apply(mine)
                except (ValidationError, NotFoundError, KeyError) as exc:
                    raise CorruptionError(
                        self._log.path,
                        0,
                        f"batch at LSN {lsn} does not apply to {workflow_id!r}: {exc}",
                    ) from exc
            if entries:
                state = replaying.result().get(workflow_id, state)
            if state is None:
                raise CorruptionError(
                    self._log.path, 0, f"the batches of {workflow_id!r} leave it deleted"
                )
            if entries:
                state = stamped_with(state, entries[-1][0])
            return state, read

    def _mark_bad(self, info: CheckpointInfo, exc: CorruptionError) -> None:
        if info.id not in self._bad:
            _LOG.warning("checkpoint %s of %r does not read, not used: %s", info.id,
                         info.workflow_id, exc)  # fmt: skip
        self._bad[info.id] = str(exc)
        self._forget_recent(info.id)

    def _forget_recent(self, checkpoint_id: str) -> None:
        for workflow_id, (info, _state) in list(self._recent.items()):
            if info.id == checkpoint_id:
                del self._recent[workflow_id]

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(
        self,
        workflow_id: str,
        *,
        description: str = "",
        tags: Sequence[str] = (),
        type: CheckpointType = "manual",
    ) -> CheckpointInfo:
        """Checkpoint ``workflow_id``'s committed state; return its index entry once durable.

        Incremental when this handle holds the state of the workflow's newest checkpoint and
        the chain is shorter than the policy's ``max_chain``; full otherwise. Crash safety:
        the file is written and fsynced first, renamed into place under the writers' lock,
        and the checkpoint exists from its durable ``CHECKPOINT`` record on (docs/format.md
        §9.3); a crash before leaves a file nothing names, deleted by the next compaction.

        I/O failures: a failed create, write or rename of the file raises ``StorageIOError``
        (nothing names the file, it is removed or left as an orphan, the store goes on); a
        failed fsync of it or of ``checkpoints/`` stops the store (``StorePoisonedError``
        chained to the ``SyncFailedError``, :meth:`_fatal_syncs`).
        """
        validate_id(workflow_id, "workflow_id")
        if not isinstance(description, str):
            raise ValidationError("description", f"must be a str, not {type_name(description)}")
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise ValidationError("tags", "must be a sequence of str")
        if type not in _TYPES:
            raise ValidationError("type", f"must be one of {sorted(_TYPES)}, not {type!r}")
        return self._checkpoint(workflow_id, type, description, tuple(tags))

    def _checkpoint(
        self,
        workflow_id: str,
        type: CheckpointType,
        description: str,
        tags: tuple[str, ...],
        *,
        full: bool = False,
    ) -> CheckpointInfo:
        with self._mutex:
            self._check_open()
            state = self._current(workflow_id)
            if state is None:
                raise NotFoundError(f"workflow_id: no workflow {workflow_id!r}")
            origin = self._table.origin(workflow_id)
            assert origin is not None
            template = _new_entry(
                state, origin, type, self._clock(), tags=tags, description=description
            )
            parent = None if full else self._parent_for(workflow_id, origin)
        with self._fatal_syncs():
            prepared = self._files.prepare(template, state, parent)
        try:
            with self._mutex:
                self._check_open()
                with self._held() as writer:
                    if parent is not None and self._index.get(parent[0].id) != parent[0]:
                        raise _ParentGone  # dropped or folded by another process meanwhile
                    lsn = self._commit_checkpoint(writer, prepared)
                self._remember_recent(prepared)
        except _ParentGone:
            self._files.abandon(prepared)
            return self._checkpoint(workflow_id, type, description, tags, full=True)
        except BaseException:
            self._files.abandon(prepared)
            raise
        self._wait_durable(lsn)
        self._created([prepared.info])
        return prepared.info

    def _commit_checkpoint(self, writer: LogWriter, prepared: Prepared) -> int:
        """Install a prepared file and queue its ``CHECKPOINT`` record (writers' lock held).
        A failed rename raises ``StorageIOError`` (nothing names the file: the store goes
        on), a failed directory sync stops the store (:meth:`_fatal_syncs`)."""
        with self._fatal_syncs():
            self._files.install(prepared)
        lsn = writer.enqueue(encode_entry(prepared.info), record_type=RECORD_CHECKPOINT)
        self._index.add(prepared.info)
        self._bad.pop(prepared.info.id, None)
        return lsn

    def _parent_for(
        self, workflow_id: str, origin: int
    ) -> tuple[CheckpointInfo, WorkflowState] | None:
        if not self._policy.incremental:
            return None
        recent = self._recent.get(workflow_id)
        if recent is None:
            return None
        info = recent[0]
        if info.origin != origin or info.id in self._bad or self._index.get(info.id) != info:
            return None
        chain = self._index.chain(info)
        if chain is None or len(chain) > self._policy.max_chain:
            return None
        return recent

    def _remember_recent(self, prepared: Prepared) -> None:
        self._recent[prepared.info.workflow_id] = (prepared.info, prepared.state)
        self._recent.move_to_end(prepared.info.workflow_id)
        while len(self._recent) > _RECENT_STATES:
            self._recent.popitem(last=False)

    def checkpoints(
        self, workflow_id: str | None = None, *, tag: str | None = None, limit: int | None = None
    ) -> list[CheckpointInfo]:
        """The checkpoints in the index (of ``workflow_id``, with ``tag``), newest first."""
        if workflow_id is not None:
            validate_id(workflow_id, "workflow_id")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValidationError("limit", f"must be an int >= 0 or None, not {limit!r}")
        with self._mutex:
            self._check_open()
            self._catch_up()
            found = (
                self._index.all() if workflow_id is None else self._index.of_workflow(workflow_id)
            )
        if tag is not None:
            found = [info for info in found if tag in info.tags]
        return found if limit is None else found[:limit]

    def _read_checkpoint(self, info: CheckpointInfo) -> WorkflowState:
        """The state ``info`` yields; ``CorruptionError`` (and remembered as bad) if it does
        not read. Holding the store's lock."""
        try:
            state = self._files.read_state(info, self._index)
        except CorruptionError as exc:
            self._mark_bad(info, exc)
            raise
        self._bad.pop(info.id, None)
        return state

    def _find(self, checkpoint_id: str) -> CheckpointInfo:
        if not isinstance(checkpoint_id, str):
            raise ValidationError("checkpoint_id", f"must be a str, not {type_name(checkpoint_id)}")
        info = self._index.get(checkpoint_id)
        if info is None:
            raise NotFoundError(f"checkpoint_id: no checkpoint {checkpoint_id!r}")
        return info

    def checkpoint_state(self, checkpoint_id: str) -> WorkflowState:
        """The state checkpoint ``checkpoint_id`` holds, read and verified, without restoring
        it; ``CorruptionError`` if it does not read, ``NotFoundError`` if unknown."""
        with self._mutex:
            self._check_open()
            self._catch_up()
            return self._read_checkpoint(self._find(checkpoint_id))

    def restore(self, checkpoint_id: str, *, to_file: bool = False) -> int:
        """Make the checkpoint's state the workflow's current state; return the batch's LSN.

        The restore is a logged batch (a ``replace_state``; the workflow is created again if it
        was deleted), so it survives a crash, its version continues the current one, and
        restoring a later checkpoint undoes it. ``CorruptionError`` if the checkpoint does not
        read (nothing changes).

        With ``to_file``, the batch and the workflow state file ``workflows/<id>.state``
        (docs/format.md §10.3, holding the restored state) are ONE transaction (§10): after
        any crash either the workflow is restored and the file holds it, or neither changed.
        The returned LSN is the transaction's (its ``TXN`` record carries the batch).
        """
        if not isinstance(to_file, bool):
            raise ValidationError("to_file", f"must be a bool, not {to_file!r}")
        if to_file:
            return self._restore_to_file(checkpoint_id)
        with self._mutex:
            self._check_open()
            self._catch_up()
            state = self._read_checkpoint(self._find(checkpoint_id))
        return self._commit(lambda now: self._table.save_batch(state, now))

    def _restore_to_file(self, checkpoint_id: str) -> int:
        restored: list[int] = []

        def build(lsn: int, now: float) -> _TxnPlan:
            state = self._read_checkpoint(self._find(checkpoint_id))
            workflow_id = state.workflow.id
            stamped, results = self._table.prepare(self._table.save_batch(state, now), now)
            after = results[workflow_id]
            assert after is not None  # the batch ends with a replace_state
            origin = self._table.origin(workflow_id) or lsn  # recreated by this batch
            plan = _TxnPlan(batch=stamped, results=results)
            plan.participants.append(self._state_file(origin, stamped_with(after, lsn)))
            restored.append(lsn)
            return plan

        self._transact(build)
        return restored[0]

    def verify(self, checkpoint_id: str | None = None) -> list[CheckpointCheck]:
        """Verify one checkpoint or all (newest first): checksums, parent chain complete, the
        state it yields has the recorded checksum and, where the log still holds the
        workflow's history from its creation, equals replaying the log to its LSN."""
        with self._mutex:
            self._check_open()
            self._catch_up()
            infos = self._index.all() if checkpoint_id is None else [self._find(checkpoint_id)]
            return [self._check(info) for info in infos]

    def _check(self, info: CheckpointInfo) -> CheckpointCheck:
        try:
            state = self._read_checkpoint(info)
        except CorruptionError as exc:
            return CheckpointCheck(checkpoint=info, ok=False, matches_log=None, problem=str(exc))
        origin, floor = self._table.origin(info.workflow_id), self._table.floor(info.workflow_id)
        if origin != info.origin or floor != 0:
            return CheckpointCheck(checkpoint=info, ok=True, matches_log=None)
        entries = [e for e in self._table.entries(info.workflow_id) if e[0] <= info.lsn]
        try:
            replayed, _read = self._replay(info.workflow_id, None, entries)
        except _LogMovedOn:  # discarded by another process meanwhile: nothing to compare
            return CheckpointCheck(checkpoint=info, ok=True, matches_log=None)
        if state_checksum(replayed) == state_checksum(state):
            return CheckpointCheck(checkpoint=info, ok=True, matches_log=True)
        problem = f"checkpoint {info.id}: its state differs from the log replayed to LSN {info.lsn}"
        return CheckpointCheck(checkpoint=info, ok=True, matches_log=False, problem=problem)

    def recovery_suggestions(self, workflow_id: str) -> RecoverySuggestion:
        """Which checkpoint to restore ``workflow_id`` to, which are bad, and what restoring
        would undo (the workflow's batches after it)."""
        validate_id(workflow_id, "workflow_id")
        with self._mutex:
            self._check_open()
            self._catch_up()
            origin = self._table.origin(workflow_id)
            bad: list[tuple[str, str]] = []
            recommended: CheckpointInfo | None = None
            for info in self._index.of_workflow(workflow_id, origin):
                if recommended is not None:
                    if info.id in self._bad:
                        bad.append((info.id, self._bad[info.id]))
                    continue
                try:
                    self._read_checkpoint(info)
                except CorruptionError as exc:
                    bad.append((info.id, str(exc)))
                    continue
                recommended = info
            lost = (
                self._table.batches_after(workflow_id, recommended.lsn)
                if recommended is not None and origin is not None
                else 0
            )
        return RecoverySuggestion(
            workflow_id=workflow_id,
            recommended=recommended,
            bad=tuple(bad),
            batches_lost=lost,
            lsn_lost_after=recommended.lsn if recommended is not None else 0,
        )

    # -- retention and compaction -------------------------------------------------------------
    def retain(
        self, policy: RetentionPolicy | None = None, *, dry_run: bool = False
    ) -> RetentionPlan:
        """Drop the checkpoints ``policy`` (default: the store's) does not keep, folding first
        every kept incremental checkpoint whose parent goes (docs/format.md §9.5). Returns
        what was done; with ``dry_run``, what would be done, and nothing changes."""
        policy = self._policy.retention if policy is None else policy
        if not isinstance(policy, RetentionPolicy):
            raise ValidationError("policy", "must be a wfstate.retention.RetentionPolicy")
        with self._mutex:
            self._check_open()
            self._catch_up()
            plan = plan_retention(
                self._index, self._table.live(), policy, self._clock(), bad=set(self._bad)
            )
        if dry_run:
            return plan
        folded: list[CheckpointInfo] = []
        for info in plan.fold:
            done = self._fold(info)
            if done is not None:
                folded.append(info)
        with self._mutex:
            self._check_open()
            with self._held() as writer:
                ids = _droppable(self._index, {info.id for info in plan.drop})
                lsn = (
                    writer.enqueue(encode_drop(sorted(ids)), record_type=RECORD_CHECKPOINT_DROP)
                    if ids
                    else 0
                )
                dropped = self._index.drop(sorted(ids))
                for info in dropped:
                    self._forget_recent(info.id)
                    self._bad.pop(info.id, None)
                kept = len(self._index)
        if lsn:
            self._wait_durable(lsn)
        with self._fatal_syncs():  # the drop is durable: files left are orphans
            self._files.delete([info.file for info in dropped] + [info.file for info in folded])
        return RetentionPlan(
            drop=tuple(dropped),
            fold=tuple(folded),
            kept=kept,
            bytes_before=plan.bytes_before,
            bytes_dropped=sum(info.size for info in dropped),
        )

    def _fold(self, info: CheckpointInfo) -> CheckpointInfo | None:
        """Rewrite incremental checkpoint ``info`` as a full one under the same id; None when
        it cannot be (it does not read, or changed meanwhile): then its parent stays."""
        with self._mutex:
            if self._index.get(info.id) != info:
                return None
            try:
                state = self._read_checkpoint(info)
            except CorruptionError:
                return None
        template = msgspec.structs.replace(info, parent=None)
        with self._fatal_syncs():
            prepared = self._files.prepare(template, state, None, folded=True)
        try:
            with self._mutex:
                self._check_open()
                with self._held() as writer:
                    if self._index.get(info.id) != info:
                        raise _ParentGone
                    lsn = self._commit_checkpoint(writer, prepared)
                self._forget_recent(info.id)
        except _ParentGone:
            self._files.abandon(prepared)
            return None
        except BaseException:
            self._files.abandon(prepared)
            raise
        self._wait_durable(lsn)
        return prepared.info

    def compact(self, *, dry_run: bool = False) -> CompactionReport:
        """Checkpoint every workflow the log holds batches of beyond its newest checkpoint,
        then discard the log before a new segment that starts with the anchor (docs/format.md
        §9.6), and delete orphan checkpoint files. Ended sessions older than the retention
        policy's ``ended_sessions`` are left out of the anchor (forgotten; their record files
        stay). With ``dry_run``, report what would happen.

        Crash safety: nothing is discarded before every live workflow has a durable checkpoint
        that was read back whole; the ``DISCARD`` record is durable before ``START`` moves, and
        ``START`` moves before any segment is deleted (§2.2), so a crash at any point leaves
        either the old log or the new one with its anchor, and each rebuilds the same states.
        """
        with self._mutex:
            self._check_open()
            self._catch_up()
            uncovered = self._uncovered()
            if self._log.last_lsn == 0:  # an empty log: nothing to checkpoint or discard
                return CompactionReport(
                    dry_run=dry_run, checkpointed=(), segments_discarded=(),
                    orphans_deleted=(), log_first_lsn=1, sessions_forgotten=(),
                )  # fmt: skip
            if dry_run:
                return CompactionReport(
                    dry_run=True,
                    checkpointed=tuple(uncovered),
                    segments_discarded=tuple(self._segment_files()),
                    orphans_deleted=tuple(self._files.orphans(self._index)),
                    log_first_lsn=self._log.last_lsn + 1,
                    sessions_forgotten=tuple(s.id for s in self._forgettable()),
                )
        checkpointed = list(uncovered)
        for workflow_id in uncovered:
            try:
                self._checkpoint(workflow_id, "compaction", "", (), full=True)
            except NotFoundError:
                continue  # deleted meanwhile
        with self._mutex:
            self._check_open()
            with self._held() as writer:
                with self._fatal_syncs():
                    orphans = self._files.delete(self._files.orphans(self._index))
                    self._delete_undecided((WORKFLOWS_DIR, SESSIONS_DIR))
                for workflow_id in self._uncovered():  # changed by another process meanwhile
                    self._checkpoint_held(writer, workflow_id)
                    checkpointed.append(workflow_id)
                live = self._table.live()
                forgotten = {s.id for s in self._forgettable()}
                anchor = Anchor(
                    workflows=tuple(
                        AnchorWorkflow(w, origin, self._table.last_lsn(w))
                        for w, (origin, _floor) in sorted(live.items())
                    ),
                    checkpoints=tuple(sorted(self._index.all(), key=lambda i: i.id)),
                    sessions=tuple(s for s in self._sessions.snapshot() if s.id not in forgotten),
                )
                payload = encode_anchor(anchor)
                writer.start_segment()
                lsn = writer.enqueue(payload, record_type=RECORD_DISCARD)
                self._take_anchor(payload, skipped=False)
            self._wait_durable(lsn)
            before = set(self._segment_files())
            with self._log_io("discard segments of"):
                self._log.discard_before(lsn, payload)
            discarded = sorted(before - set(self._segment_files()))
            created, self._held_created = self._held_created, []
        self._created(created)
        return CompactionReport(
            dry_run=False,
            checkpointed=tuple(sorted(set(checkpointed))),
            segments_discarded=tuple(discarded),
            orphans_deleted=tuple(orphans),
            log_first_lsn=lsn,
            sessions_forgotten=tuple(sorted(forgotten)),
        )

    def _forgettable(self) -> list[SessionInfo]:
        """Ended sessions older than ``RetentionPolicy.ended_sessions`` (store lock held)."""
        keep = self._policy.retention.ended_sessions
        if keep is None:
            return []
        cutoff = self._clock() - keep
        return [
            s
            for s in self._sessions.snapshot()
            if s.status == "ended" and s.ended is not None and s.ended < cutoff
        ]

    def _uncovered(self) -> list[str]:
        """Live workflows without a checkpoint that reads at or above their last batch (each
        candidate is read back: a log is never discarded on the word of an unread file)."""
        uncovered = []
        for workflow_id, (origin, _floor) in sorted(self._table.live().items()):
            last = self._table.last_lsn(workflow_id)
            for info in self._index.of_workflow(workflow_id, origin):
                if info.lsn < last:
                    uncovered.append(workflow_id)
                    break
                if info.id in self._bad:
                    continue
                try:
                    self._read_checkpoint(info)
                except CorruptionError:
                    continue
                break
            else:
                uncovered.append(workflow_id)
        return uncovered

    def _checkpoint_held(self, writer: LogWriter, workflow_id: str) -> None:
        """A full compaction checkpoint taken while holding the writers' lock."""
        state = self._table.get(workflow_id)
        origin = self._table.origin(workflow_id)
        assert state is not None and origin is not None
        template = _new_entry(state, origin, "compaction", self._clock())
        with self._fatal_syncs():
            prepared = self._files.prepare(template, state, None)
        try:
            self._commit_checkpoint(writer, prepared)
        except BaseException:
            self._files.abandon(prepared)
            raise
        self._remember_recent(prepared)
        self._held_created.append(prepared.info)

    def _segment_files(self) -> list[str]:
        wal_dir = self._log.path
        with storage_io("listdir", wal_dir):
            names = self._fs.listdir(wal_dir)
        return sorted(n for n in names if parse_segment_name(n) is not None)

    def set_checkpoint_observer(self, observer: Callable[[CheckpointInfo], None] | None) -> None:
        """Call ``observer`` with the entry of every checkpoint this handle creates (manual,
        automatic, compaction, a session end's final ones), once it is durable, outside the
        store's locks (None removes it). An observer that raises is logged, never raised:
        the checkpoint exists."""
        self._checkpoint_observer = observer

    def _created(self, infos: Sequence[CheckpointInfo]) -> None:
        observer = self._checkpoint_observer
        if observer is None:
            return
        for info in infos:
            try:
                observer(info)
            except Exception:
                _LOG.exception("the checkpoint observer failed on %s", info.id)

    @property
    def log_damage(self) -> tuple[LogDamage, ...]:
        """What recovering the log found and repaired when this handle opened it (torn
        tails, corrupt records skipped by the recovery mode), and since, while catching up."""
        return tuple(self._log.recovery)

    @property
    def open_report(self) -> OpenReport:
        """What opening this handle found and repaired: log damage, decided transactions
        rolled forward, undecided temp files removed (``python -m wfstate recover`` lists
        them)."""
        return self._opened

    def set_sync_observer(self, observer: Callable[[float], None] | None) -> None:
        """Call ``observer`` with the seconds each fdatasync of the store's log takes (for
        metrics; None removes it). See :meth:`wfstate.wal.log.Log.set_sync_observer`."""
        self._log.set_sync_observer(observer)

    def stats(self) -> StoreStats:
        """Sizes of the log and the checkpoints, and how much a load or a crash replays."""
        with self._mutex:
            self._check_open()
            self._catch_up()
            live = self._table.live()
            uncovered = sum(
                self._table.batches_after(w, self._index.newest_lsn(w, origin))
                for w, (origin, _floor) in live.items()
            )
            segments = self._segment_files()
            with storage_io("stat", self._log.path):
                log_bytes = sum(
                    self._fs.file_size(os.path.join(self._log.path, n)) for n in segments
                )
            appended = self._log.appended_bytes
            by_workflow: dict[str, tuple[int, int]] = {}
            for info in self._index.all():
                count, size = by_workflow.get(info.workflow_id, (0, 0))
                by_workflow[info.workflow_id] = (count + 1, size + info.size)
            return StoreStats(
                workflows=len(live),
                last_lsn=self._log.last_lsn,
                log_first_lsn=self._log.first_lsn,
                log_segments=len(segments),
                log_bytes=log_bytes,
                uncovered_batches=uncovered,
                bytes_since_compaction=self._logged_bytes,
                checkpoints=len(self._index),
                checkpoint_bytes=self._index.total_size(),
                bad_checkpoints=tuple(sorted(self._bad)),
                auto_checkpoint_failures=self._auto_failures,
                appended_payload_bytes=appended[0],
                appended_stored_bytes=appended[1],
                cached_state_bytes=self._table.cached_bytes,
                checkpoints_by_workflow=dict(sorted(by_workflow.items())),
            )

    # -- two-phase commit (docs/format.md §10) -----------------------------------------------
    def _check_open(self) -> None:
        super()._check_open()
        if self._poison is not None:
            raise StorePoisonedError(
                f"store {self.path} stopped: {self._poison_why}; reopen it to recover"
            ) from self._poison

    def _stop(self, why: str, cause: BaseException) -> StorePoisonedError:
        """Poison the store (DESIGN.md §3): from now on every call raises
        ``StorePoisonedError`` (:meth:`_check_open`); reopening recovers from the disk.
        Returns the error for the call that failed, to raise ``from cause``."""
        self._poison = cause
        self._poison_why = f"{why} ({cause})"
        return StorePoisonedError(f"store {self.path} stopped: {self._poison_why}; reopen it")

    @contextmanager
    def _fatal_syncs(self) -> Iterator[None]:
        """A failed sync of a file outside the log (a checkpoint file, a transaction's temp
        file, the directory after renames or deletions) raised in the block stops the store:
        the call raises ``StorePoisonedError`` chained to the ``SyncFailedError`` (or to the
        ``TransactionError`` of a prepare it caused). DESIGN.md §3: after a failed fsync the
        kernel may have dropped what it covered (for a directory, any entry made in it since
        its last good sync, also another thread's checkpoint rename) while a later fsync
        reports success, so nothing more may be acknowledged, and the sync is never retried.
        Other I/O failures (a full disk while writing a temp file, a rename that did not
        happen) pass through as ``StorageIOError``: nothing durable depends on them, the
        store goes on."""
        try:
            yield
        except (SyncFailedError, TransactionError) as exc:
            failed = exc if isinstance(exc, SyncFailedError) else exc.__cause__
            if not isinstance(failed, SyncFailedError):
                raise
            raise self._stop("a sync failed", failed) from exc

    @contextmanager
    def _held(self) -> Iterator[LogWriter]:
        """The log's :meth:`~wfstate.wal.log.Log.writing` block (the writers' lock held, caught
        up), first rolling forward every transaction other handles decided that this one has
        not seen finished (docs/format.md §10.1): so no write of this handle, and no
        compaction (which would delete a decided temp file as undecided, or discard the
        ``TXN`` record naming it), happens while a decided transaction is unfinished. Every
        write of the store goes through here; the store's lock is held. The log's I/O
        failures are raised as :meth:`_log_io` says."""
        with self._log_io("write"), self._log.writing() as writer:
            if self._unfinished:
                self._roll_forward_others()
            yield writer

    def _roll_forward_others(self) -> None:
        """Roll forward :attr:`_unfinished` (writers' lock held). A failure stops the store:
        a decided transaction is not known finished, and writing on could put a later file in
        place before it. ``CorruptionError`` (a damaged temp file, nothing renamed) is raised
        as is, anything else as ``StorePoisonedError``."""
        txns = self._unfinished
        try:
            roll_forward(self._fs, self.path, txns)
        except BaseException as exc:
            stopped = self._stop("rolling forward a decided transaction failed", exc)
            if isinstance(exc, CorruptionError):
                raise
            raise stopped from exc
        self._unfinished = []

    def _settle(self) -> None:
        """At open, after the replay: holding the writers' lock, roll forward every decided
        transaction of the log (all are taken as possibly unfinished: the directories are
        synced even when nothing is left to rename), then delete the undecided temp files of
        writers no longer running in ``workflows/``, ``checkpoints/`` and ``sessions/``. The
        lock is not taken when the log holds no ``TXN`` record and no such temp file exists."""
        directories = [os.path.join(self.path, d) for d in TXN_DIRS]
        if not self._unfinished and not any(undecided_temps(self._fs, d) for d in directories):
            self._opened = OpenReport(
                log_damage=tuple(self._log.recovery), rolled_forward=(), undecided=()
            )
            return
        with self._mutex, self._log.writing() as _writer:
            # caught up: the transactions to finish are all read (the lock is held)
            in_doubt = [(t.id, in_doubt_files(self._fs, self.path, t)) for t in self._unfinished]
            with self._held():
                undecided = [
                    f"{d}/{temp}"
                    for d in TXN_DIRS
                    for temp in undecided_temps(self._fs, os.path.join(self.path, d))
                ]
                self._delete_undecided(TXN_DIRS)
        self._opened = OpenReport(
            log_damage=tuple(self._log.recovery),
            rolled_forward=tuple(RolledForward(txn_id=i, files=tuple(f)) for i, f in in_doubt if f),
            undecided=tuple(undecided),
        )

    def _delete_undecided(self, directories: Sequence[str]) -> None:
        """Delete the temp files of dead writers in ``directories`` (names below the store),
        each directory synced after (writers' lock held, every known transaction rolled
        forward, so those files are undecided)."""
        for name in directories:
            directory = os.path.join(self.path, name)
            found = undecided_temps(self._fs, directory)
            for temp in found:
                path = os.path.join(directory, temp)
                with storage_io("unlink", path):
                    try:
                        self._fs.unlink(path)
                    except FileNotFoundError:
                        continue  # deleted by another holder of the lock meanwhile
            if found:
                with storage_io("fsync_dir", directory):
                    self._fs.fsync_dir(directory)

    def _transact(self, build: Callable[[int, float], _TxnPlan]) -> str:
        """Run one transaction (docs/format.md §10.1) whose content ``build(lsn, now)`` makes:
        called under the writers' lock, caught up, with the LSN the ``TXN`` record will get
        and the store's clock, so the files are those of the states as of the decision (a
        state file names its workflow's LSN, a batch's results are stamped with ``lsn``).
        Returns the transaction id once decided and finished.

        Everything ``build`` raises, and an event whose owner is stale (``StaleOwnerError``:
        an ``end`` whose token is not the session's current one, or of an ended session),
        leaves nothing written. Prepare (the temp files, under the lock): ``ValidationError``
        for bad input, ``TransactionError`` for a failure while writing them; nothing changed
        either way, but a failed sync of them (``SyncFailedError`` as the cause) stops the store
        (``StorePoisonedError``, :meth:`_fatal_syncs`). Decide: the ``TXN`` record is appended
        and synced, whatever the
        durability level. A failure before it is queued (too large a record) removes the temp
        files and raises; a failed write or sync of it poisons the log
        (``StorePoisonedError``) and leaves the temp files for the next open to roll forward or
        delete, as the log says. Finish (same tenure): the renames and directory syncs; a
        failure poisons the store (``StorePoisonedError`` from every later call) and reopening
        rolls the transaction forward. The in-memory tables change only once decided.
        """
        with self._mutex:
            self._check_open()
            with self._held() as writer:
                lsn = writer.next_lsn
                plan = build(lsn, self._clock())
                starting = {event.id for event in plan.sessions if event.event == "start"}
                for event in plan.sessions:
                    if event.id not in starting:
                        self._sessions.check_owner(event.id, event.token)
                batch = encode_mutations(plan.batch, session=plan.owner) if plan.batch else b""
                with self._fatal_syncs():
                    txn = prepare(
                        self._fs,
                        self.path,
                        plan.participants,
                        checkpoints=[info for info, _state in plan.checkpoints],
                        sessions=[encode_event(e, versioned=False) for e in plan.sessions],
                        batch=batch,
                    )
                decided = False
                try:
                    got = writer.enqueue(encode_txn(txn), record_type=RECORD_TXN)
                    if got != lsn:  # the writers' lock is held: nobody can take it first
                        raise AssertionError(f"TXN record got LSN {got}, expected {lsn}")
                    writer.sync()  # the commit point
                    decided = True
                except BaseException:
                    if not decided and not self._log.poisoned:
                        abandon(self._fs, self.path, txn)  # certainly not decided
                    raise
                self._install(plan, lsn, batch)
                try:
                    finish(self._fs, self.path, txn)
                except BaseException as exc:
                    why = f"transaction {txn.id} is decided but finishing it failed"
                    raise self._stop(why, exc) from exc
        self._created([info for info, _state in plan.checkpoints if info.origin])
        return txn.id

    def _install(self, plan: _TxnPlan, lsn: int, batch: bytes) -> None:
        """Apply a decided transaction of this handle, as :meth:`_take_txn` applies one read
        from the log (docs/format.md §10.2 order)."""
        for event in plan.sessions:
            if event.event == "start":
                self._sessions.apply(event)
        if plan.batch:
            self._table.install(plan.batch, plan.results, lsn, len(batch))
            self._logged_bytes += len(batch)
            if plan.owner is not None:
                targets = mutation_targets(plan.batch)
                self._sessions.note_batch(plan.owner[0], (w for _op, w in targets))
        for info, state in plan.checkpoints:
            self._index.add(info)
            self._bad.pop(info.id, None)
            if info.origin:  # an imported one (§9.8) is never a parent
                self._remember_recent(Prepared("", info, state))
        for event in plan.sessions:
            if event.event != "start":
                self._sessions.apply(event)

    def _live(self, workflow_id: str, field: str) -> tuple[int, WorkflowState]:
        """The origin and committed state of a live workflow, the writers' lock held (so no
        discard can move the log meanwhile); ``NotFoundError`` naming ``field``."""
        state = self._table.get(workflow_id)
        origin = self._table.origin(workflow_id)
        if state is None or origin is None:
            raise NotFoundError(f"{field}: no workflow {workflow_id!r}")
        return origin, state

    def write_state_files(
        self, workflow_ids: Sequence[str] | None = None, *, checkpoint: bool = False
    ) -> str:
        """Write ``workflows/<id>.state`` (docs/format.md §10.3) for each of ``workflow_ids``
        (every live workflow when None) with its committed state, and with ``checkpoint`` a
        full checkpoint of each (type ``manual``), all in one transaction: after any crash
        either every file and checkpoint is there, new, or none is. The states are read under
        the writers' lock, so each file holds its workflow as of the transaction. Returns the
        transaction id once the transaction is durable and its files are in place.

        Input is checked before anything is written: ``ValidationError`` naming
        ``workflow_ids`` / ``workflow_ids[i]`` / ``checkpoint``, ``NotFoundError`` naming
        ``workflow_ids[i]`` for a workflow that does not exist. Failures as in a transaction:
        ``TransactionError`` when preparing the files fails (nothing changed),
        ``StorePoisonedError`` when finishing it fails (reopen to roll it forward).
        """
        if workflow_ids is not None:
            if isinstance(workflow_ids, str) or not isinstance(workflow_ids, Sequence):
                raise ValidationError(
                    "workflow_ids", f"must be a sequence of ids or None, not {workflow_ids!r}"
                )
            if not workflow_ids:
                raise ValidationError("workflow_ids", "names no workflow")
            first: dict[str, int] = {}
            for i, workflow_id in enumerate(workflow_ids):
                validate_id(workflow_id, f"workflow_ids[{i}]")
                if workflow_id in first:
                    raise ValidationError(
                        f"workflow_ids[{i}]",
                        f"{workflow_id!r} is also workflow_ids[{first[workflow_id]}]",
                    )
                first[workflow_id] = i
        if not isinstance(checkpoint, bool):
            raise ValidationError("checkpoint", f"must be a bool, not {checkpoint!r}")

        def build(_lsn: int, now: float) -> _TxnPlan:
            ids = self._table.ids() if workflow_ids is None else list(workflow_ids)
            if not ids:
                raise ValidationError("workflow_ids", "the store has no workflow to write")
            plan = _TxnPlan()
            for i, workflow_id in enumerate(ids):
                origin, state = self._live(workflow_id, f"workflow_ids[{i}]")
                plan.participants.append(self._state_file(origin, state))
                if checkpoint:
                    self._add_full_checkpoint(plan, origin, state, now)
            return plan

        return self._transact(build)

    def _state_file(self, origin: int, state: WorkflowState) -> Participant:
        """The participant ``workflows/<id>.state`` holding ``state`` (docs/format.md §10.3)."""
        return Participant(state_file_name(state.workflow.id), self._full_file(origin, state)[0])

    def _add_full_checkpoint(
        self, plan: _TxnPlan, origin: int, state: WorkflowState, now: float
    ) -> None:
        data, info = self._full_file(origin, state, created=now)
        plan.participants.append(Participant(checkpoint_name(info), data))
        plan.checkpoints.append((info, state))

    def _full_file(
        self, origin: int, state: WorkflowState, *, created: float = 0.0
    ) -> tuple[bytes, CheckpointInfo]:
        """A full checkpoint file of ``state`` under a fresh id (docs/format.md §9.1; also the
        layout of a workflow state file, §10.3), and the ``manual`` entry naming it."""
        template = _new_entry(state, origin, "manual", created)
        data = self._encode_full(template, origin, state)
        return data, self._entry_of(template, data, origin)

    def read_state_file(self, workflow_id: str) -> WorkflowState:
        """The state in ``workflows/<workflow_id>.state`` (docs/format.md §10.3), verified as a
        full checkpoint file (checksums, epoch, the state's checksum) and stamped with its LSN.
        ``NotFoundError`` when there is no such file; ``CorruptionError`` naming the file when
        it does not verify or holds another workflow."""
        validate_id(workflow_id, "workflow_id")
        with self._mutex:
            self._check_open()
        path = os.path.join(self.path, WORKFLOWS_DIR, workflow_id + WORKFLOW_STATE_SUFFIX)
        with storage_io("read", path):
            try:
                data = self._fs.read_file(path)
            except FileNotFoundError as exc:
                raise NotFoundError(f"workflow_id: no state file of {workflow_id!r}") from exc
        decoded = decode_checkpoint(data, path, epoch=self._log.epoch)
        if decoded.state is None or decoded.workflow_id != workflow_id:
            raise CorruptionError(
                path, 0, f"not a full state of {workflow_id!r} (of {decoded.workflow_id!r})"
            )
        return stamped_with(decoded.state, decoded.lsn)

    # -- sessions (docs/format.md §11) --------------------------------------------------------
    def commit(self, batch: Sequence[Mutation], *, session: Session | None = None) -> int:
        """Apply ``batch`` atomically and durably; return its LSN (wfstate.store.Store). With
        ``session``, the batch is written in it (docs/format.md §11.2): under the writers'
        lock, after catching up and before an LSN is assigned, ``StaleOwnerError`` if the
        session was taken over (its token is no longer ``session.token``) or has ended, and
        nothing is written. ``ValidationError("session")`` for a handle of another store or
        one closed/ended."""
        with self._in_session(session):
            return super().commit(batch)

    def save(self, state: WorkflowState, *, session: Session | None = None) -> int:
        """As the base; with ``session`` fenced as :meth:`commit`."""
        with self._in_session(session):
            return super().save(state)

    def delete(self, workflow_id: str, *, session: Session | None = None) -> int:
        """As the base; with ``session`` fenced as :meth:`commit`."""
        with self._in_session(session):
            return super().delete(workflow_id)

    @contextmanager
    def _in_session(self, session: Session | None) -> Iterator[None]:
        if session is not None:
            self._check_handle(session)
        self._call.session = session
        try:
            yield
        finally:
            self._call.session = None

    def _check_handle(self, session: object) -> Session:
        if not isinstance(session, Session) or session.store is not self:
            raise ValidationError("session", "must be a Session of this store handle")
        if session.closed:
            raise ValidationError("session", f"the handle of {session.id} is closed or ended")
        return session

    def start_session(self, user: str, metadata: Mapping[str, Any] | None = None) -> Session:
        """Start a session of ``user`` (an id) with JSON-like ``metadata`` and own it: its lock
        ``sessions/<id>.lock`` is taken and held until the handle is ended or closed, and its
        ``start`` record (token 1) is durable before this returns, whatever the durability
        level. ``ValidationError`` naming ``user`` / ``metadata``, before anything is written.
        """
        validate_id(user, "user")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, Mapping):
            raise ValidationError("metadata", f"must be a mapping or None, not {metadata!r}")
        data = dict(metadata)
        validate_json(data, "metadata")
        session_id = new_session_id()
        event = make_event(session_id, "start", 1, at=self._clock(), user=user, metadata=data)
        try:
            encode_event(event)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError("metadata", f"cannot be encoded: {exc}") from exc
        lock = self._take_session_lock(session_id, 0.0)  # a fresh id: nobody holds it
        try:
            self._append_session_event(session_id, lambda _info: event)
        except BaseException:
            self._release_session_lock(lock)
            raise
        return self._own(session_id, user, 1, lock)

    def resume_session(self, session_id: str) -> Session:
        """Take over ``session_id``, whose owner died (docs/format.md §11.2): take its lock
        within ``lock_timeout`` (else ``LockTimeoutError``: its owner is alive), then append a
        ``resume`` record with the next token, durable before this returns. From then on every
        write of the previous owner is refused (``StaleOwnerError``). ``ValidationError``
        naming ``session_id`` for a malformed id, an ended session or one this handle owns;
        ``NotFoundError`` for a session the log does not know."""
        if not is_session_id(session_id):
            raise ValidationError("session_id", f"not a session id: {session_id!r}")
        if session_id in self._owned:
            raise ValidationError("session_id", f"{session_id} is owned by this handle")
        self._resumable(self._session_info(session_id))
        lock = self._take_session_lock(session_id, self._lock_timeout)
        try:

            def resume(info: SessionInfo | None) -> SessionEvent:
                info = self._resumable(info, session_id)
                return make_event(session_id, "resume", info.token + 1, at=self._clock())

            event = self._append_session_event(session_id, resume)
            info = self._sessions.get(session_id)
            assert info is not None
        except BaseException:
            self._release_session_lock(lock)
            raise
        return self._own(session_id, info.user, event.token, lock)

    def _resumable(self, info: SessionInfo | None, session_id: str = "") -> SessionInfo:
        if info is None:
            raise NotFoundError(f"session_id: no session {session_id!r}")
        if info.status == "ended":
            raise ValidationError("session_id", f"{info.id} has ended; it cannot be resumed")
        return info

    def _session_info(self, session_id: str) -> SessionInfo:
        with self._mutex:
            self._check_open()
            self._catch_up()
            info = self._sessions.get(session_id)
        if info is None:
            raise NotFoundError(f"session_id: no session {session_id!r}")
        return info

    def sessions(self) -> list[SessionInfo]:
        """Every session the log knows (active or ended), sorted by id."""
        with self._mutex:
            self._check_open()
            self._catch_up()
            return list(self._sessions.snapshot())

    def detect_crashed_sessions(self) -> list[CrashedSession]:
        """The sessions the log says are active whose lock nobody holds (their owner died),
        sorted by id, each with a plan per workflow it wrote (:class:`WorkflowPlan`, from the
        workflow's durable state: its in-doubt ``running`` steps and last completed step).
        The lock is probed by taking and at once releasing it; a session a live process owns
        (this handle included) is never listed. A session whose owner dies or resumes it
        during the probe may be listed or not: take it over with :meth:`resume_session`,
        which waits for its lock."""
        crashed = []
        for info in self.sessions():
            if info.status != "active" or info.id in self._owned:
                continue
            lock_path = self._session_lock_path(info.id)
            with storage_io("lock", lock_path):
                handle = self._fs.open_lock(lock_path)
                try:
                    free = self._fs.try_lock(handle)
                    if free:
                        self._fs.unlock(handle)
                finally:
                    self._fs.close_lock(handle)
            if free:
                plans = tuple(self._plan(w) for w in info.workflows)
                crashed.append(CrashedSession(session=info, workflows=plans))
        return crashed

    def _plan(self, workflow_id: str) -> WorkflowPlan:
        with self._mutex:
            self._check_open()
            state = self._current(workflow_id)
        if state is None:
            return WorkflowPlan(
                workflow_id=workflow_id,
                last_completed=None,
                in_doubt=(),
                action="none",
                estimated_loss=0,
            )
        self._wait_durable(state.metadata.last_lsn)
        in_doubt = tuple(step.id for step in state.workflow.steps if step.status == "running")
        done = [step for step in state.workflow.steps if step.status == "completed"]
        last = max(done, key=lambda step: step.ended_at or 0.0).id if done else None
        return WorkflowPlan(
            workflow_id=workflow_id,
            last_completed=last,
            in_doubt=in_doubt,
            action="rerun_in_doubt" if in_doubt else "continue",
            estimated_loss=len(in_doubt),
        )

    def end_session(self, session: Session, final_checkpoint: bool = True) -> str:
        """End ``session`` in ONE transaction (docs/format.md §10, §11.1): with
        ``final_checkpoint`` a full checkpoint (type ``manual``) of each live workflow it
        wrote, the workflow state file of each, the session record file
        ``sessions/<id>.session`` and the ``end`` event, embedded in the ``TXN`` record. After
        any crash either all of it happened or none. The states are taken under the writers'
        lock, caught up, so they include every batch committed before the end (a write of the
        session racing with its end is either in them or refused). Then the session accepts no
        more writes (``StaleOwnerError``) and its lock is released. Returns the transaction
        id.

        ``StaleOwnerError`` if the session was taken over or has ended (checked under the
        writers' lock before the decision; nothing changed).
        """
        session = self._check_handle(session)
        if not isinstance(final_checkpoint, bool):
            raise ValidationError("final_checkpoint", f"must be a bool, not {final_checkpoint!r}")

        def build(_lsn: int, now: float) -> _TxnPlan:
            info = self._sessions.check_owner(session.id, session.token)
            plan = _TxnPlan()
            for workflow_id in info.workflows:
                if self._table.origin(workflow_id) is None:
                    continue  # deleted since
                origin, state = self._live(workflow_id, "session.workflows")
                plan.participants.append(self._state_file(origin, state))
                if final_checkpoint:
                    self._add_full_checkpoint(plan, origin, state, now)
            event = make_event(session.id, "end", session.token, at=now)
            ended = msgspec.structs.replace(info, status="ended", ended=now)
            plan.participants.append(
                Participant(session_file_name(session.id), encode_session_file(ended))
            )
            plan.sessions.append(event)
            return plan

        txn_id = self._transact(build)
        session.close()
        return txn_id

    def export_session(self, session_id: str) -> bytes:
        """The session ``session_id`` as a bundle (docs/format.md §11.4): its record, the
        committed state of each workflow it wrote that is live, and every checkpoint of those
        workflows' live incarnations (and imported ones) that reads, each written full. The
        states are durable ones. Bad checkpoints are left out (they would not import).
        Writes nothing. ``ValidationError`` naming ``session_id`` for a malformed id,
        ``NotFoundError`` for a session the log does not know."""
        if not is_session_id(session_id):
            raise ValidationError("session_id", f"not a session id: {session_id!r}")
        with self._mutex:
            self._check_open()
            self._catch_up()
            info = self._sessions.get(session_id)
            if info is None:
                raise NotFoundError(f"session_id: no session {session_id!r}")
            files: dict[str, bytes] = {}
            workflows: list[str] = []
            entries: list[CheckpointInfo] = []
            last = 0
            for workflow_id in info.workflows:
                state = self._current(workflow_id)
                origin = self._table.origin(workflow_id)
                if state is None or origin is None:
                    continue
                workflows.append(workflow_id)
                last = max(last, state.metadata.last_lsn)
                files[state_file_name(workflow_id)] = self._full_file(origin, state)[0]
                for ck in self._index.of_workflow(workflow_id):
                    if ck.origin not in (origin, 0):
                        continue
                    try:
                        ck_state = self._read_checkpoint(ck)
                    except CorruptionError:
                        continue
                    data = self._encode_full(ck, ck.origin, ck_state)
                    entry = self._entry_of(ck, data, ck.origin)
                    files[checkpoint_name(entry)] = data
                    entries.append(entry)
            files[session_file_name(session_id)] = encode_session_file(info)
            created = self._clock()
            epoch = self._log.epoch
        self._wait_durable(last)
        return encode_bundle(
            session=info,
            epoch=epoch,
            created=created,
            workflows=workflows,
            checkpoints=entries,
            files=files,
        )

    def import_session(self, data: bytes) -> SessionInfo:
        """Import a bundle made by :meth:`export_session` (of this store or another), in ONE
        transaction (docs/format.md §10, §11.4): each bundled workflow created with its
        bundled state (attributed to the session), its state file, each bundled checkpoint as
        an imported one (§9.8: listed, verified, restorable; never a base for loading), the
        session record file and the session itself (a ``start``; and an ``end`` if it had
        ended: an imported active session is listed as crashed until resumed). After any crash
        either all of it is there or none. Returns the session as this store now has it.

        Everything is checked before anything is written: ``CorruptionError`` naming the
        bundle part for a damaged, truncated or inconsistent bundle (``FormatVersionError`` /
        ``SchemaVersionError`` for a newer one); ``ValidationError`` naming ``bundle.session``
        / ``bundle.workflows[i]`` / ``bundle.checkpoints[i]`` when it clashes with this store
        (a known session, a live workflow, a known checkpoint id), checked under the writers'
        lock. Failures of the transaction as in :meth:`write_state_files`.
        """
        bundle = decode_bundle(data)
        source = bundle.session

        def build(lsn: int, now: float) -> _TxnPlan:
            if self._sessions.get(source.id) is not None:
                raise ValidationError("bundle.session", f"{source.id} is known to this store")
            for i, workflow_id in enumerate(bundle.states):
                if self._table.origin(workflow_id) is not None:
                    raise ValidationError(f"bundle.workflows[{i}]", f"{workflow_id!r} exists")
            for i, (info, _state) in enumerate(bundle.checkpoints):
                if info.id in self._index:
                    raise ValidationError(f"bundle.checkpoints[{i}]", f"{info.id} exists")
            plan = _TxnPlan(owner=(source.id, 1))
            batch: list[Mutation] = []
            for state in bundle.states.values():
                batch.extend(self._table.save_batch(state, now))
            if batch:
                plan.batch, plan.results = self._table.prepare(batch, now)
            for result in plan.results.values():
                assert result is not None  # each bundled workflow is created and replaced
                plan.participants.append(self._state_file(lsn, stamped_with(result, lsn)))
            for info, state in bundle.checkpoints:
                data = self._encode_full(info, 0, state)
                entry = self._entry_of(info, data, 0)
                plan.participants.append(Participant(checkpoint_name(entry), data))
                plan.checkpoints.append((entry, state))
            imported = msgspec.structs.replace(
                source, token=1, workflows=tuple(sorted(bundle.states))
            )
            plan.participants.append(
                Participant(session_file_name(source.id), encode_session_file(imported))
            )
            start = make_event(
                source.id, "start", 1, at=source.started, user=source.user, metadata=source.metadata
            )
            plan.sessions.append(start)
            if source.ended is not None:
                plan.sessions.append(make_event(source.id, "end", 1, at=source.ended))
            return plan

        self._transact(build)
        with self._mutex:
            info = self._sessions.get(source.id)
        assert info is not None
        return info

    def _encode_full(self, info: CheckpointInfo, origin: int, state: WorkflowState) -> bytes:
        """``info``'s state as a full checkpoint file of this store under ``info``'s id and
        LSN, with ``origin`` (0: imported, docs/format.md §9.8)."""
        return encode_checkpoint(
            checkpoint_id=info.id,
            workflow_id=info.workflow_id,
            origin=origin,
            lsn=info.lsn,
            epoch=self._log.epoch,
            parent=None,
            state=state,
            delta=None,
            compression=self._policy.compression,
        )

    @staticmethod
    def _entry_of(info: CheckpointInfo, data: bytes, origin: int) -> CheckpointInfo:
        """``info`` describing the full file ``data`` (with ``origin``)."""
        file = checkpoint_file_name(info.id)
        return msgspec.structs.replace(
            info,
            origin=origin,
            parent=None,
            file=file,
            size=len(data),
            checksum=read_header(data, file).header_checksum,
        )

    def _append_session_event(
        self, session_id: str, build: Callable[[SessionInfo | None], SessionEvent]
    ) -> SessionEvent:
        """Append the ``SESSION`` record ``build`` makes from the session as of the log (under
        the writers' lock, caught up), fold it and sync it before returning."""
        with self._mutex:
            self._check_open()
            with self._held() as writer:
                event = build(self._sessions.get(session_id))
                writer.enqueue(encode_event(event), record_type=RECORD_SESSION)
                writer.sync()
                self._sessions.apply(event)
        return event

    def _session_lock_path(self, session_id: str) -> str:
        return os.path.join(self.path, SESSIONS_DIR, session_id + SESSION_LOCK_SUFFIX)

    def _take_session_lock(self, session_id: str, timeout: float) -> object:
        """Take the lock of ``session_id``, polling up to ``timeout`` seconds, else
        ``LockTimeoutError`` (its owner is alive); ``StorageIOError`` if the lock file cannot
        be opened or locked."""
        lock_path = self._session_lock_path(session_id)
        with storage_io("lock", lock_path):
            handle = self._fs.open_lock(lock_path)
            deadline = time.monotonic() + timeout
            try:
                while not self._fs.try_lock(handle):
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"session {session_id}: its lock was not free within {timeout} s "
                            "(lock_timeout): its owner is alive"
                        )
                    time.sleep(0.01)
            except BaseException:
                with contextlib.suppress(OSError):  # the first failure is the one raised
                    self._fs.close_lock(handle)
                raise
        return handle

    def _release_session_lock(self, handle: object) -> None:
        """Unlock and close a session's lock; ``StorageIOError`` if that fails (the handle is
        closed all the same)."""
        with storage_io("unlock", self.path):
            try:
                self._fs.unlock(handle)
            finally:
                self._fs.close_lock(handle)

    def _own(self, session_id: str, user: str, token: int, lock: object) -> Session:
        session = Session(self, session_id, user, token, lock)
        self._owned[session_id] = session
        return session

    def _disown(self, session: Session) -> None:
        if self._owned.get(session.id) is session:
            del self._owned[session.id]

    # -- automatic checkpoints ----------------------------------------------------------------
    def _committed(self, stamped: Sequence[Mutation], lsn: int) -> None:
        policy = self._policy
        wanted: dict[str, CheckpointType] = {}

        def want(workflow_id: str, kind: CheckpointType) -> None:
            if _TYPE_RANK[kind] >= _TYPE_RANK.get(wanted.get(workflow_id, ""), -1):
                wanted[workflow_id] = kind

        for m in stamped:
            if isinstance(m, SetStepStatus):
                if m.status == "running" and policy.on_step_start:
                    want(m.workflow_id, "pre_step")
                elif m.status in ("completed", "skipped") and policy.on_step_end:
                    want(m.workflow_id, "post_step")
                elif m.status == "failed" and policy.on_error:
                    want(m.workflow_id, "error")
            elif isinstance(m, SetWorkflowStatus) and m.status == "failed" and policy.on_error:
                want(m.workflow_id, "error")
        if policy.every_batches is not None:
            with self._mutex:
                for _op, workflow_id in mutation_targets(stamped):
                    origin = self._table.origin(workflow_id)
                    if workflow_id in wanted or origin is None:
                        continue
                    newest = self._index.newest_lsn(workflow_id, origin)
                    if self._table.batches_after(workflow_id, newest) >= policy.every_batches:
                        want(workflow_id, "automatic")
        for workflow_id, kind in wanted.items():
            try:
                self._checkpoint(workflow_id, kind, "", ())
            except NotFoundError:
                continue  # deleted by a later commit meanwhile
            except (WfstateError, OSError) as exc:
                self._auto_failures += 1
                _LOG.warning("automatic %s checkpoint of %r failed: %s", kind, workflow_id, exc)
        if policy.every_log_bytes is not None and self._logged_bytes >= policy.every_log_bytes:
            self._compact_automatically("automatic")

    def _compact_automatically(self, kind: str) -> None:
        """:meth:`compact`, then :meth:`retain` by the policy; a failure is logged and counted,
        not raised (the commit or close that asked for it succeeded; the log stays whole)."""
        try:
            self.compact()
            self.retain()
        except ClosedError:
            return  # closed by another thread meanwhile: nothing to compact for
        except (WfstateError, OSError) as exc:
            self._auto_failures += 1
            _LOG.warning("%s compaction failed: %s", kind, exc)


class Session:
    """A handle on a session this store handle owns (docs/format.md §11): ``id``, ``user``,
    ``token`` (the fencing token its writes carry), ``store``. Pass it as ``session=`` to
    ``commit``/``save``/``delete``; :meth:`end` ends the session, :meth:`close` only gives up
    ownership (releases its lock, as a crash would: the session stays active in the log and
    another handle can take it over with ``resume_session``). Either way the handle is then
    unusable."""

    def __init__(self, store: LocalStore, session_id: str, user: str, token: int, lock: object):
        self.store = store
        self.id = session_id
        self.user = user
        self.token = token
        self._lock: object | None = lock

    @property
    def closed(self) -> bool:
        return self._lock is None

    def end(self, final_checkpoint: bool = True) -> str:
        """``store.end_session(self, final_checkpoint)``."""
        return self.store.end_session(self, final_checkpoint)

    def close(self) -> None:
        """Release the session's lock (idempotent); the session stays active in the log."""
        lock, self._lock = self._lock, None
        if lock is not None:
            self.store._disown(self)
            self.store._release_session_lock(lock)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.id!r}, user={self.user!r}, token={self.token})"


class _LogMovedOn(Exception):
    """A batch to replay was discarded by another process after this one caught up."""


class _ParentGone(Exception):
    """The checkpoint a prepared one builds on left the index before it could commit."""


_KIND: Final = {
    RECORD_BATCH: "batch",
    RECORD_CHECKPOINT: "checkpoint record",
    RECORD_CHECKPOINT_DROP: "checkpoint drop",
    RECORD_DISCARD: "discard record",
    RECORD_TXN: "transaction record",
    RECORD_SESSION: "session record",
}

_TYPES: Final = frozenset({"manual", "automatic", "pre_step", "post_step", "error", "compaction"})
_RECENT_STATES: Final = 64
"""Workflows whose newest checkpoint's state a handle keeps, to write incremental ones."""


@dataclass
class _TxnPlan:
    """What one transaction commits (built under the writers' lock, :meth:`LocalStore._transact`):
    the files, the checkpoint entries among them (each with the state its file yields), the
    session events, and a stamped batch with the states it results in (``owner``: the
    session it is attributed to)."""

    participants: list[Participant] = field(default_factory=list)
    checkpoints: list[tuple[CheckpointInfo, WorkflowState]] = field(default_factory=list)
    sessions: list[SessionEvent] = field(default_factory=list)
    batch: list[Mutation] = field(default_factory=list)
    results: dict[str, WorkflowState | None] = field(default_factory=dict)
    owner: tuple[str, int] | None = None


def _new_entry(
    state: WorkflowState,
    origin: int,
    type: CheckpointType,
    created: float,
    *,
    tags: tuple[str, ...] = (),
    description: str = "",
) -> CheckpointInfo:
    """The entry of a new checkpoint of ``state`` under a fresh id, before its file exists
    (``file``, ``size`` and ``checksum`` are filled in once it is encoded)."""
    return CheckpointInfo(
        id=f"ck-{secrets.token_hex(8)}",
        workflow_id=state.workflow.id,
        origin=origin,
        lsn=state.metadata.last_lsn,
        parent=None,
        session_id=state.context.session_id,
        type=type,
        tags=tags,
        description=description,
        file="",
        size=0,
        checksum=0,
        created=created,
    )


def _droppable(index: CheckpointIndex, wanted: set[str]) -> set[str]:
    """``wanted`` less every checkpoint a remaining one still builds on (its fold failed, or
    another process added a child meanwhile), and their ancestors."""
    drop = {i for i in wanted if i in index}
    changed = True
    while changed:
        changed = False
        for checkpoint_id in sorted(drop):
            if any(child.id not in drop for child in index.children(checkpoint_id)):
                drop.discard(checkpoint_id)
                changed = True
    return drop


def type_name(value: object) -> str:
    return type(value).__name__
