"""Error injection on the simulated file system (DESIGN.md §10 tier 4): every N, once and
persistently.

A fixed store workload (:func:`run_workload`) touches every feature on one
:class:`FaultRecordingFS`: batches, a session start with a batch in it and its end (a two-phase
commit with a final checkpoint), full and incremental checkpoints, ``write_state_files`` (a
two-phase commit), a retention that folds and drops, a compaction that rotates segments and
discards the log, ``durability="always"``. A clean run counts the calls of each kind the
simulator can fail (:data:`KINDS`). Then, for every kind and every N, the workload runs again
with the N-th call of that kind failing once, and again with it and every later call of that
kind failing (:func:`inject`). Each call of the workload goes on after an earlier one raised, so
what the store does *after* a failure is seen as well.

What the store does on a failure, as measured here and checked by :func:`check_run` and
:func:`reaction_problems` (:func:`expected_reaction` names the error per call and path):

* **Every error is in the tree** (DESIGN.md §9): no call raises a bare ``OSError``; the file
  system's errors come as ``StorageIOError`` (a ``WfstateError`` and an ``OSError``) or as the
  cause of another ``WfstateError``.
* **A failed fsync/fdatasync/directory sync is fatal** (DESIGN.md §3): the call during which
  it failed raises ``StorePoisonedError`` (outside opening), so does every later call, and no
  file or directory is synced again after a failed sync of it (never retried).
* **Opening** raises ``StorageIOError`` for any I/O failure (creating the directories, the
  first segment, its syncs): nothing was acknowledged, the caller may open again.
* **The log's own I/O** (a segment's write, fdatasync, creation, the ``wal/`` directory sync,
  ``START`` and the deletion of discarded segments): the log is *poisoned*. The failing call
  raises ``StorePoisonedError`` (a ``WfstateError``, chained to the ``OSError``) and so does
  every later call that writes.
* **Preparing files before a commit point** is the vote that may fail (DESIGN.md §7): the temp
  files are removed, the call raises, the store goes on (the next call is acknowledged). A
  two-phase commit's prepare (its participants' create or write) raises ``TransactionError``;
  a checkpoint file (of ``checkpoint``, a retention's fold, a compaction) raises
  ``StorageIOError``, in its prepare (create, write) and in its install (the rename before its
  ``CHECKPOINT`` record: a file no record names is an orphan the next compaction deletes).
  Their *syncs* poison, as every sync does.
* **Finishing a decided two-phase commit** (its renames and directory syncs): the store is
  poisoned (``StorePoisonedError``); the next open rolls the transaction forward.
* **Deleting** dropped checkpoint files after the drop is durable: a failed unlink raises
  ``StorageIOError`` and the store goes on (the files left are orphans); a failed directory
  sync poisons.

Recovery is checked on every crash state at the moment the first fault fired (the simulator
keeps the writes a failed sync covered pending forever, so they may be missing there and in
every later state) and on the disk as the run left it (as a process crash and with only what
was synced): the store opens, every acknowledged batch, checkpoint, drop, session event, state
file and compaction is there, the states equal the model after a prefix of the batches, and the
recovered store accepts a new batch. ``tests/test_fault_injection.py`` (small workload) and
:func:`reliability_section` (larger one, with the ENOSPC scenario and a SIGKILL loop) use it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.crashcheck import CK_CLOCK, CK_STORE, state_bytes, store_plan
from tests.simfs import Create, Fault, FaultOp, Fsync, SimFileSystem
from wfstate.backends.local import LocalStore, Session
from wfstate.backends.memory import MemoryStore
from wfstate.checkpointindex import CheckpointInfo
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.errors import (
    CorruptionError,
    StorageIOError,
    StorePoisonedError,
    TransactionError,
    WfstateError,
)
from wfstate.format import TXN_DIRS, WAL_DIR, parse_segment_name, session_file_name
from wfstate.model import WorkflowStep
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput
from wfstate.retention import RetentionPolicy
from wfstate.wal import Compression

KINDS: tuple[FaultOp, ...] = (
    "write",
    "fdatasync",
    "fsync",
    "fsync_dir",
    "replace",
    "create",
    "unlink",
    "mkdir",
)
"""The call kinds the simulator can fail that the workload makes, in report order (it truncates
nothing: only repairing a torn log tail at open does)."""

SYNC_KINDS: frozenset[FaultOp] = frozenset({"fsync", "fdatasync", "fsync_dir"})


# -- the file system ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fired:
    """A call the injected fault made fail: its kind, path and the op count before it."""

    kind: FaultOp
    path: str
    at: int
    step: str


class FaultRecordingFS(SimFileSystem):
    """A :class:`SimFileSystem` that counts the calls of each kind, notes every call its faults
    made fail (and during which call of the workload), every fsync/fdatasync of a file after a
    failed sync of that file (a *retry*, which DESIGN.md §3 forbids: it could report the lost
    pages durable), and every directory synced again after a failed sync of it (the same
    retry for a directory: a later sync reporting success could cover entries the failed one
    lost, also those made meanwhile for another call)."""

    def __init__(self, faults: Sequence[Fault] = ()) -> None:
        super().__init__(faults=faults)
        self.calls: Counter[str] = Counter()
        self.fired: list[Fired] = []
        self.retries: list[str] = []
        self.dirs_synced_again: set[str] = set()
        self.step = ""  # the workload's call under way, set by its driver
        self._failed_files: set[int] = set()
        self._failed_dirs: set[str] = set()

    def _check_fault(self, op: FaultOp, path: str | None) -> None:
        self.calls[op] += 1
        try:
            super()._check_fault(op, path)
        except OSError:
            self.fired.append(Fired(op, path or "", self.op_count, self.step))
            raise

    def _sync_file(self, fd: int, sync: Callable[[int], None]) -> None:
        of = self._open(fd)
        if of.inode in self._failed_files:
            self.retries.append(f"{of.path} synced again after a failed sync of it")
        try:
            sync(fd)
        except OSError:
            self._failed_files.add(of.inode)
            raise

    def fsync(self, fd: int) -> None:
        self._sync_file(fd, super().fsync)

    def fdatasync(self, fd: int) -> None:
        self._sync_file(fd, super().fdatasync)

    def fsync_dir(self, path: str) -> None:
        norm = os.path.normpath(path)
        if norm in self._failed_dirs:
            self.dirs_synced_again.add(norm)
        try:
            super().fsync_dir(path)
        except OSError:
            self._failed_dirs.add(norm)
            raise


# -- the workload -------------------------------------------------------------------------------

WORKFLOWS = ("alpha", "beta")


@dataclass
class TxnAttempt:
    """A two-phase commit the workload began: the state files it writes (workflow -> state
    bytes), the op count at its start and once acknowledged (None: it raised)."""

    step: str
    files: dict[str, bytes]
    started: int
    acked: int | None


@dataclass
class StepResult:
    """One call of the workload: its name, the op counts around it, what it raised."""

    name: str
    started: int
    ended: int
    error: BaseException | None = None
    skipped: bool = False

    @property
    def acked(self) -> bool:
        return self.error is None and not self.skipped


@dataclass
class Run:
    """A finished workload run and everything it acknowledged (op counts of the trace)."""

    fs: FaultRecordingFS
    prefixes: list[dict[str, bytes]]  # the model's states after each prefix of the plan
    steps: list[StepResult] = field(default_factory=list)
    batch_lsns: list[int] = field(default_factory=list)  # LSN of each acknowledged batch
    batch_acks: list[int] = field(default_factory=list)  # op count once acknowledged
    attempted: int = 0  # batches whose commit was called
    checkpoint_acks: list[tuple[int, CheckpointInfo]] = field(default_factory=list)
    seen: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (workflow, lsn)
    drops: list[tuple[int, int | None, set[str]]] = field(default_factory=list)
    discards: list[tuple[int, int]] = field(default_factory=list)  # (ack op, first LSN)
    sessions: list[tuple[int, str]] = field(default_factory=list)  # (ack op, id) started
    ends: list[tuple[int, str]] = field(default_factory=list)  # (ack op, id) ended
    txns: list[TxnAttempt] = field(default_factory=list)
    features: Counter[str] = field(default_factory=Counter)  # what the acknowledged calls did

    def expected(self, workflow_id: str, lsn: int) -> bytes | None:
        """The model's state of ``workflow_id`` after every acknowledged batch up to ``lsn``."""
        return self.prefixes[bisect.bisect_right(self.batch_lsns, lsn)].get(workflow_id)


def batch_time(i: int) -> float:
    """The clock while batch ``i`` is committed. Every other call sees a time of its own
    between batches ``i - 1`` and ``i``, so no two checkpoints are of the same age (the
    retention keeps the newest; a tie would be broken by random ids) and every run of the
    workload makes the same calls."""
    return CK_CLOCK + i + 1


def open_store(
    fs: SimFileSystem, clock: Callable[[], float] = lambda: CK_CLOCK + 1e6
) -> LocalStore:
    """The workload's store on ``fs``: 4 KiB segments, no compression, manual checkpoints."""
    return LocalStore.open(
        CK_STORE,
        fs=fs,
        clock=clock,
        segment_size=4096,
        compression=Compression(codec="none"),
        checkpoints=MANUAL_ONLY,
    )


class _Driver:
    def __init__(self, fs: FaultRecordingFS, plan: list[list[Mutation]]) -> None:
        self.fs = fs
        self.plan = plan
        self.now = CK_CLOCK
        model = MemoryStore(clock=lambda: self.now)
        prefixes: list[dict[str, bytes]] = [{}]
        for i, batch in enumerate(plan):
            self.now = batch_time(i)
            model.commit(batch)
            prefixes.append({w: state_bytes(model.load(w)) for w in model.list_workflows()})
        self.run = Run(fs, prefixes)
        self.store: LocalStore | None = None
        self.session: Session | None = None

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepResult]:
        name = f"{name} #{len(self.run.steps)}"
        result = StepResult(name, self.fs.op_count, self.fs.op_count)
        self.run.steps.append(result)
        self.fs.step = name
        assert len(self.run.steps) < 99
        self.now = batch_time(self.run.attempted) - 1 + len(self.run.steps) / 100
        try:
            yield result
        except Exception as exc:
            result.error = exc
        result.ended = self.fs.op_count

    def _store(self, result: StepResult) -> LocalStore | None:
        if self.store is None:
            result.skipped = True
        return self.store

    def _observe(self) -> None:
        assert self.store is not None
        for info in self.store.checkpoints():
            if info.id not in self.run.seen:
                self.run.checkpoint_acks.append((self.fs.op_count, info))
            self.run.seen[info.id] = (info.workflow_id, info.lsn)

    def open(self) -> None:
        with self.step("open"):
            self.store = open_store(self.fs, lambda: self.now)

    def commit(self, *, in_session: bool = False) -> None:
        i = self.run.attempted
        with self.step(f"commit {i}") as r:
            self.run.attempted += 1  # a skipped commit counts: later ones could land
            store = self._store(r)
            if store is None:
                return
            self.now = batch_time(i)
            session = self.session if in_session else None
            lsn = store.commit(self.plan[i], session=session)
            self.run.batch_lsns.append(lsn)
            self.run.batch_acks.append(self.fs.op_count)

    def start_session(self) -> None:
        with self.step("start_session") as r:
            store = self._store(r)
            if store is None:
                return
            self.session = store.start_session("alice", {"run": 1})
            self.run.features["sessions"] += 1
            self.run.sessions.append((self.fs.op_count, self.session.id))

    def end_session(self) -> None:
        with self.step("end_session") as r:
            store = self._store(r)
            if store is None or self.session is None:
                r.skipped = True
                return
            session, self.session = self.session, None
            attempt = TxnAttempt("end_session", self._files(store, WORKFLOWS), r.started, None)
            self.run.txns.append(attempt)
            store.end_session(session)
            attempt.acked = self.fs.op_count
            self.run.features["two-phase commits"] += 1
            self.run.ends.append((self.fs.op_count, session.id))
            self._observe()

    def _files(self, store: LocalStore, workflows: Sequence[str]) -> dict[str, bytes]:
        """The state each workflow's file will hold (what this run committed: the handle's
        own view, so no I/O)."""
        n = len(self.run.batch_lsns)
        return {w: self.run.prefixes[n][w] for w in workflows if w in self.run.prefixes[n]}

    def checkpoint(self, workflow_id: str) -> None:
        with self.step("checkpoint") as r:
            store = self._store(r)
            if store is None:
                return
            info = store.checkpoint(workflow_id, tags=("t",))
            self.run.features["incremental checkpoints" if info.parent else "full checkpoints"] += 1
            self._observe()

    def write_state_files(self) -> None:
        with self.step("write_state_files") as r:
            store = self._store(r)
            if store is None:
                return
            attempt = TxnAttempt(
                "write_state_files", self._files(store, WORKFLOWS), r.started, None
            )
            self.run.txns.append(attempt)
            store.write_state_files(checkpoint=True)
            attempt.acked = self.fs.op_count
            self.run.features["two-phase commits"] += 1
            self._observe()

    def retain(self) -> None:
        with self.step("retain") as r:
            store = self._store(r)
            if store is None:
                return
            plan = store.retain(RetentionPolicy(keep_last=1), dry_run=True)
            drop: tuple[int, int | None, set[str]] = (r.started, None, {c.id for c in plan.drop})
            self.run.drops.append(drop)
            done = store.retain(RetentionPolicy(keep_last=1))
            self.run.drops[-1] = (r.started, self.fs.op_count, {c.id for c in done.drop})
            self.run.features["checkpoints folded"] += len(done.fold)
            self.run.features["checkpoints dropped"] += len(done.drop)
            self._observe()

    def compact(self) -> None:
        with self.step("compact") as r:
            store = self._store(r)
            if store is None:
                return
            report = store.compact()
            self.run.discards.append((self.fs.op_count, report.log_first_lsn))
            self.run.features["segments discarded"] += len(report.segments_discarded)
            self._observe()

    def close(self) -> None:
        with self.step("close") as r:
            store = self._store(r)
            if store is not None:
                store.close()


SMALL = 1
LARGE = 3


def run_workload(fs: FaultRecordingFS, rounds: int = SMALL) -> Run:
    """The workload (module docstring) on ``fs``; ``rounds`` repeats its middle part. Every call
    is made whatever earlier ones raised (those needing a store or session that never came are
    skipped). Segments are 4 KiB and the batches grow, so segments rotate by size."""
    plan = store_plan(WORKFLOWS, steps=1 + 3 * rounds, outputs=1, grow=40)
    d = _Driver(fs, plan)
    d.open()
    d.commit()
    for _ in range(rounds):
        d.start_session()
        d.commit(in_session=True)
        d.end_session()
        d.write_state_files()
        d.checkpoint(WORKFLOWS[0])  # incremental on write_state_files' full one
        d.commit()
        d.checkpoint(WORKFLOWS[0])  # incremental on the previous one
        d.retain()  # folds the incremental checkpoint, drops its parent
        d.commit()
        d.compact()
        d.commit()
    while d.run.attempted < len(plan):
        d.commit()  # the last batches: the compacted log grows and rotates again
    d.close()
    d.run.features["segments created"] = sum(
        isinstance(op, Create) and parse_segment_name(os.path.basename(op.path)) is not None
        for op in fs.trace
    )
    return d.run


# -- checking ------------------------------------------------------------------------------------


REACTIONS = ("StorePoisonedError", "TransactionError", "StorageIOError")
"""What the call during which a fault fired raises (module docstring), in report order."""


def reaction_name(error: BaseException | None) -> str:
    """The name under which :data:`REACTIONS` counts ``error`` ("" for none): its class name,
    a ``StorageIOError`` subclass (``SyncFailedError``, only ever raised by opening) counted as
    ``StorageIOError``."""
    if error is None:
        return ""
    if isinstance(error, StorageIOError):
        return StorageIOError.__name__
    return type(error).__name__


def expected_reaction(run: Run, fired: Fired) -> str:
    """The error the call during which ``fired`` happened must raise: ``StorageIOError`` when
    opening; ``StorePoisonedError`` for any sync, for the log's files and directory, and for a
    two-phase commit decided before the failure (its ``TXN`` record synced: the failure is in
    its finish); ``TransactionError`` for a two-phase commit failing in its prepare;
    ``StorageIOError`` for creating, writing or renaming a checkpoint file and for deleting
    files."""
    kind = fired.step.split(" ")[0]
    wal = os.path.join(CK_STORE, WAL_DIR)
    if kind == "open":
        return "StorageIOError"
    if fired.kind in SYNC_KINDS:
        return "StorePoisonedError"
    if fired.path == wal or fired.path.startswith(wal + "/"):
        return "StorePoisonedError"
    if kind in ("end_session", "write_state_files"):
        step = next(s for s in run.steps if s.name == fired.step)
        decided = any(
            isinstance(op, Fsync) and op.path.startswith(wal + "/")
            for op in run.fs.trace[step.started : fired.at]
        )
        return "StorePoisonedError" if decided else "TransactionError"
    return "StorageIOError"


def reaction_problems(run: Run, fault: Fault) -> list[str]:
    """How the store reacted to the first failure, against :func:`expected_reaction`: the call
    raised exactly that (by :func:`reaction_name`); after a
    ``StorePoisonedError`` every later call but ``close`` raises ``StorePoisonedError``; after
    any other error, with a fault that fails once, every later call is acknowledged (the store
    really goes on)."""
    if not run.fs.fired:
        return [f"{fault} never fired"]
    fired = run.fs.fired[0]
    expected = expected_reaction(run, fired)
    k = next(i for i, s in enumerate(run.steps) if s.name == fired.step)
    step = run.steps[k]
    error = step.error
    got = reaction_name(error)
    if error is not None and not isinstance(error, WfstateError):
        got = f"{got} (not a WfstateError)"
    if got != expected:
        return [f"{fault.op} of {fired.path} in {step.name}: raised {got or 'nothing'}, "
                f"expected {expected}"]  # fmt: skip
    found = []
    for later in run.steps[k + 1 :]:
        if later.name.startswith("close") or later.skipped:
            continue
        if expected == "StorePoisonedError" and not isinstance(later.error, StorePoisonedError):
            found.append(f"{later.name} after the store was poisoned: {later.error!r}")
        elif expected != "StorePoisonedError" and not fault.persistent and not later.acked:
            found.append(f"{later.name} failed after a {expected} the store goes on from: "
                         f"{later.error!r}")  # fmt: skip
    return found


@dataclass
class Injection:
    """One run with one fault, and what its checks found."""

    fault: Fault
    run: Run
    problems: list[str]
    states_checked: int
    reaction: str  # the exception type the call that failed first raised ("" if none)
    acks_after_failed_sync: int
    recoveries_failed: int
    acknowledged_lost: int


def check_run(run: Run, fault: Fault) -> Injection:
    """Every check of one run with ``fault`` (module docstring)."""
    fs = run.fs
    problems = reaction_problems(run, fault) + [f"retry: {r}" for r in fs.retries]
    problems += [f"retry: directory {d} synced again after a failed sync of it"
                 for d in sorted(fs.dirs_synced_again)]  # fmt: skip
    acks_after = 0
    for s in run.steps:
        if s.acked and any(f.step == s.name and f.kind in SYNC_KINDS for f in fs.fired):
            acks_after += 1
            problems.append(f"{s.name} returned normally although a sync failed during it")
        if s.error is not None and not isinstance(s.error, WfstateError):
            problems.append(f"{s.name} raised {type(s.error).__name__}, not a WfstateError: "
                            f"{s.error}")  # fmt: skip
    poisoned = next(
        (k for k, s in enumerate(run.steps) if isinstance(s.error, StorePoisonedError)), None
    )
    if poisoned is not None:
        for s in run.steps[poisoned + 1 :]:
            if s.acked and not s.name.startswith("close"):
                acks_after += 1
    states = 0
    recovery: list[str] = []
    # every crash state where the first fault fired; the disk as the run left it, as a
    # process crash ("prefix") and with only what was synced ("synced-only")
    points = [(fs.fired[0].at, None)] if fs.fired else []
    for at, limit in [*points, (fs.op_count, 2)]:
        for label, disk in itertools.islice(fs.crash_states(at), limit):
            states += 1
            recovery += [f"op {at} {label}: {p}" for p in check_state(run, disk, at)]
    _label, left = next(iter(fs.crash_states(fs.op_count)))
    recovery += [f"disk as left: {p}" for p in check_accepts_writes(left)]
    failed = sum("raised" in p for p in recovery)
    lost = sum("lost" in p or "recovered" in p for p in recovery)
    reaction = ""
    if fs.fired:
        first = next(s for s in run.steps if s.name == fs.fired[0].step)
        reaction = reaction_name(first.error)
    return Injection(fault, run, problems + recovery, states, reaction, acks_after, failed, lost)


def check_state(run: Run, disk: SimFileSystem, at: int) -> list[str]:
    """Every violation of one recovered disk cut after ``at`` operations (module docstring)."""
    found: list[str] = []
    try:
        with open_store(disk) as store:
            got = {w: state_bytes(store.load(w)) for w in store.list_workflows()}
            index = {info.id: info for info in store.checkpoints()}
            ckpt_states: dict[str, bytes | str] = {}
            for cid in index:
                try:
                    ckpt_states[cid] = state_bytes(store.checkpoint_state(cid))
                except CorruptionError as exc:
                    ckpt_states[cid] = f"does not read: {exc}"
            sessions = {s.id: s.status for s in store.sessions()}
            files: dict[str, bytes | None] = {}
            for w in WORKFLOWS:
                try:
                    files[w] = state_bytes(store.read_state_file(w))
                except WfstateError:
                    files[w] = None
            first_lsn = store.stats().log_first_lsn
    except Exception as exc:
        return [f"recovery raised {type(exc).__name__}: {exc}"]
    acked = sum(1 for op in run.batch_acks if op <= at)
    if got not in run.prefixes[: run.attempted + 1]:
        found.append("states are not the model after a prefix of the batches")
    elif run.prefixes.index(got) < acked:
        found.append(f"{acked} batches acknowledged, {run.prefixes.index(got)} recovered")
    for cid, info in index.items():
        if run.seen.get(cid, (info.workflow_id, info.lsn)) != (info.workflow_id, info.lsn):
            found.append(f"checkpoint {cid} changed workflow or LSN")
        elif cid in run.seen and ckpt_states[cid] != run.expected(info.workflow_id, info.lsn):
            found.append(f"checkpoint {cid} loads wrong: {str(ckpt_states[cid])[:100]}")
    dropping = set().union(*(ids for start, _ack, ids in run.drops if start <= at))
    dropped = set().union(*(ids for _s, ack, ids in run.drops if ack is not None and ack <= at))
    for op, info in run.checkpoint_acks:
        if op <= at and info.id not in dropping and info.id not in index:
            found.append(f"acknowledged checkpoint {info.id} lost")
    if dropped & set(index):
        found.append(f"dropped checkpoints back: {sorted(dropped & set(index))}")
    for op, sid in run.sessions:
        if op <= at and sid not in sessions:
            found.append(f"acknowledged session {sid} lost")
    for op, sid in run.ends:
        if op <= at and sessions.get(sid) != "ended":
            found.append(f"acknowledged end of session {sid} lost")
        elif op <= at and not disk.exists(os.path.join(CK_STORE, session_file_name(sid))):
            found.append(f"acknowledged end of session {sid}: no session file")
    found += _check_state_files(run, files, at)
    owed = max((lsn for op, lsn in run.discards if op <= at), default=1)
    if first_lsn < owed:
        found.append(f"the log starts at {first_lsn}, before the acknowledged compaction's {owed}")
    return found


def _check_state_files(run: Run, files: dict[str, bytes | None], at: int) -> list[str]:
    """A state file holds what the newest transaction acknowledged by ``at`` wrote, or what a
    later one (begun, not acknowledged by then) wrote."""
    found = []
    for w, content in files.items():
        acked = [t for t in run.txns if t.acked is not None and t.acked <= at and w in t.files]
        if not acked:
            continue
        newest = run.txns.index(acked[-1])
        allowed = [t.files[w] for t in run.txns[newest:] if w in t.files]
        if content not in allowed:
            why = "missing" if content is None else "another state"
            found.append(f"state file of {w}: {why}, not the acknowledged transaction's")
    return found


def check_accepts_writes(disk: SimFileSystem) -> list[str]:
    """The recovered store takes a new batch, which is there after another open."""
    try:
        with open_store(disk) as store:
            wf = store.list_workflows()
            if not wf:
                return []
            state = store.load(wf[0])
            lsn = store.save(state)
        with open_store(disk) as store:
            if store.load(wf[0]).metadata.last_lsn != lsn:
                return ["a batch after recovery is not there after another open"]
    except Exception as exc:
        return [f"writing after recovery raised {type(exc).__name__}: {exc}"]
    return []


def count_calls(rounds: int = SMALL) -> Counter[str]:
    """The calls of each kind of :data:`KINDS` a clean run of the workload makes; a clean run
    must acknowledge every call and pass its checks."""
    run = run_workload(FaultRecordingFS(), rounds)
    failed = [f"{s.name}: {s.error!r}" for s in run.steps if not s.acked]
    assert not failed, failed
    problems = check_state(
        run, next(iter(run.fs.crash_states(run.fs.op_count)))[1], run.fs.op_count
    )
    assert not problems, problems
    return Counter({k: run.fs.calls[k] for k in KINDS})


def inject(fault: Fault, rounds: int = SMALL) -> Injection:
    """Run the workload with ``fault`` and check it."""
    return check_run(run_workload(FaultRecordingFS([fault]), rounds), fault)


# -- every N -------------------------------------------------------------------------------------


@dataclass
class KindFigures:
    """The injections of one kind of call, and what they found."""

    calls: int = 0  # calls of this kind in a clean run
    once: int = 0
    persistent: int = 0
    reactions: Counter[str] = field(default_factory=Counter)
    states: int = 0
    acks_after_failed_sync: int = 0
    acknowledged_lost: int = 0
    recoveries_failed: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class InjectionReport:
    rounds: int
    features: Counter[str]
    kinds: dict[str, KindFigures]
    seconds: float = 0.0
    dirs_synced_again: int = 0  # runs in which a directory was synced after a failed sync

    @property
    def problems(self) -> list[str]:
        return [p for figures in self.kinds.values() for p in figures.problems]


def inject_every_n(rounds: int = SMALL, kinds: Sequence[FaultOp] = KINDS) -> InjectionReport:
    """For every kind of ``kinds`` and every N up to the clean run's calls of that kind, run the
    workload with the N-th call failing once, then persistently, and check each run."""
    t0 = time.monotonic()
    clean = run_workload(FaultRecordingFS(), rounds)
    failed = [f"{s.name}: {s.error!r}" for s in clean.steps if not s.acked]
    assert not failed, f"the clean run failed: {failed}"
    end = clean.fs.op_count
    assert not check_state(clean, next(iter(clean.fs.crash_states(end)))[1], end)
    report = InjectionReport(rounds, clean.features, {})
    for kind in kinds:
        figures = report.kinds[kind] = KindFigures(calls=clean.fs.calls[kind])
        for n in range(1, figures.calls + 1):
            for persistent in (False, True):
                inj = inject(Fault(kind, n, persistent), rounds)
                if persistent:
                    figures.persistent += 1
                else:
                    figures.once += 1
                figures.reactions[inj.reaction or "nothing"] += 1
                figures.states += inj.states_checked
                figures.acks_after_failed_sync += inj.acks_after_failed_sync
                figures.acknowledged_lost += inj.acknowledged_lost
                figures.recoveries_failed += inj.recoveries_failed
                report.dirs_synced_again += bool(inj.run.fs.dirs_synced_again)
                how = "persistently" if persistent else "once"
                figures.problems += [f"{kind} #{n} {how}: {p}" for p in inj.problems]
    report.seconds = time.monotonic() - t0
    return report


def injection_table(report: InjectionReport) -> str:
    """The figures of ``report`` as a Markdown table, one row per kind of call."""
    head = ["call failing", "calls in the workload", "runs (once + persistent)"]
    head += [f"raised {r}" for r in REACTIONS]
    head += ["crash states recovered", "acknowledged lost", "recoveries failed"]
    head += ["acks despite a failed sync", "problems"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total = KindFigures()
    for kind, f in report.kinds.items():
        cells = [f"`{kind}`", f.calls, f"{f.once} + {f.persistent}"]
        cells += [f.reactions[r] for r in REACTIONS]
        cells += [f.states, f.acknowledged_lost, f.recoveries_failed, f.acks_after_failed_sync]
        cells += [len(f.problems)]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
        total.calls += f.calls
        total.once += f.once
        total.persistent += f.persistent
        total.reactions.update(f.reactions)
        total.states += f.states
        total.acknowledged_lost += f.acknowledged_lost
        total.recoveries_failed += f.recoveries_failed
        total.acks_after_failed_sync += f.acks_after_failed_sync
        total.problems += f.problems
    cells = ["**all**", total.calls, f"{total.once} + {total.persistent}"]
    cells += [total.reactions[r] for r in REACTIONS]
    cells += [total.states, total.acknowledged_lost, total.recoveries_failed]
    cells += [total.acks_after_failed_sync, len(total.problems)]
    rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


# -- real ENOSPC on a small tmpfs ------------------------------------------------------------------
#
# Each scenario runs a store on a real 512 KiB tmpfs, with a filler file written first so that
# the disk fills up where the scenario wants it: a batch's log append, a checkpoint's file, a
# two-phase commit's prepare. Then: the failing call raises the error the store's contract
# names (chained to ENOSPC), nothing acknowledged is lost, later writes are refused (the log
# poisoned) or accepted (a failed prepare), and after the filler is deleted a reopened store
# holds every acknowledged batch and accepts new ones.

SMALL_DISK = "512k"


class MountRefused(Exception):
    """This machine does not let the tests mount a tmpfs (not root, or no permission)."""


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    """A tmpfs of :data:`SMALL_DISK` mounted on ``path`` (created), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise MountRefused("mounting a tmpfs needs root")
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise MountRefused(f"mount -t tmpfs refused: {detail.strip()}") from exc
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=30)


def fill(disk: Path, leave: int) -> Path:
    """Write ``disk/filler`` (synced) until at most ``leave`` bytes are free."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            st = os.statvfs(disk)
            if st.f_bavail * st.f_frsize <= leave:
                break
            try:
                os.write(fd, bytes(4096))
            except OSError:
                break
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def _is_enospc(exc: BaseException) -> bool:
    """Whether ``exc`` is, or is caused by, ``OSError(ENOSPC)``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _output(i: int, size: int) -> PutStepOutput:
    text = random.Random(i).randbytes(size // 2).hex()
    return PutStepOutput(workflow_id="w", step_id="s", data={"i": i, "text": text}, at=0)


def _open_real(path: str) -> LocalStore:
    return LocalStore.open(path, compression=Compression(codec="none"), checkpoints=MANUAL_ONLY)


@dataclass
class EnospcOutcome:
    """What one scenario saw; ``problems`` is expected empty."""

    scenario: str
    acknowledged: int = 0  # batches acknowledged before the disk filled up (and after)
    error: str = ""  # the failing call's exception, and whether ENOSPC caused it
    later_writes: str = ""  # "refused (StorePoisonedError)" or "accepted"
    recovered: int = 0  # acknowledged batches found after freeing space and reopening
    problems: list[str] = field(default_factory=list)


def _acked_outputs(path: str) -> list[int]:
    with _open_real(path) as store:
        found = []
        for output in store.load("w").outputs.get("s", ()):
            assert isinstance(output.data, dict)
            found.append(int(output.data["i"]))
        return found


def _after_freeing(out: EnospcOutcome, path: str, filler: Path, acked: list[int]) -> None:
    """Delete the filler, reopen: every acknowledged batch there, a new one accepted."""
    filler.unlink()
    try:
        got = _acked_outputs(path)
        out.recovered = sum(i in got for i in acked)
        if got[: len(acked)] != acked or len(got) > len(acked) + 1:
            out.problems.append(f"acknowledged {acked}, found {got} after reopening")
        with _open_real(path) as store:
            store.commit([_output(10_000, 100)])
        if _acked_outputs(path)[-1] != 10_000:
            out.problems.append("a batch after freeing space is not there after reopening")
    except Exception as exc:
        out.problems.append(f"reopening after freeing space raised {exc!r}")


def _create(store: LocalStore, size: int) -> None:
    step = WorkflowStep(id="s", name="s")
    store.commit([CreateWorkflow(workflow_id="w", name="w", steps=(step,), at=0)])
    store.commit([_output(0, size)])


def enospc_log_append(disk: Path) -> EnospcOutcome:
    """Batches of 3 KiB until the disk is full: the failing commit raises
    ``StorePoisonedError`` caused by ENOSPC, every later one too."""
    out = EnospcOutcome("a batch's log append")
    path = str(disk / "store-log")
    acked = [0]
    with _open_real(path) as store:
        _create(store, 100)
        filler = fill(disk, 16 * 1024)
        for i in range(1, 200):
            try:
                store.commit([_output(i, 3000)])
            except Exception as exc:
                out.error = f"{type(exc).__name__}{' (ENOSPC)' if _is_enospc(exc) else ''}"
                if not isinstance(exc, StorePoisonedError) or not _is_enospc(exc):
                    out.problems.append(f"the full disk raised {exc!r}")
                break
            acked.append(i)
        else:
            out.problems.append("the disk never filled up")
        try:
            store.commit([_output(999, 10)])
            out.later_writes = "accepted"
            out.problems.append("a batch was acknowledged after the log was poisoned")
        except StorePoisonedError:
            out.later_writes = "refused (StorePoisonedError)"
    out.acknowledged = len(acked)
    _after_freeing(out, path, filler, acked)
    return out


def enospc_checkpoint(disk: Path) -> EnospcOutcome:
    """A checkpoint of a 150 KiB state with 48 KiB free: the checkpoint raises
    ``StorageIOError`` (ENOSPC, before any sync: not fatal), its temp file is removed, and the
    store goes on taking batches."""
    out = EnospcOutcome("a checkpoint's file")
    path = str(disk / "store-checkpoint")
    with _open_real(path) as store:
        _create(store, 150_000)
        filler = fill(disk, 48 * 1024)
        try:
            store.checkpoint("w")
            out.problems.append("the checkpoint fitted: the scenario does not fill the disk")
        except Exception as exc:
            out.error = f"{type(exc).__name__}{' (ENOSPC)' if _is_enospc(exc) else ''}"
            if not isinstance(exc, StorageIOError) or not _is_enospc(exc):
                out.problems.append(f"the full disk raised {exc!r}")
        out.problems += _goes_on(store, out, path)
    _after_freeing(out, path, filler, [0, 1])
    return out


def enospc_prepare(disk: Path) -> EnospcOutcome:
    """``write_state_files`` of a 150 KiB state with 48 KiB free: it raises
    ``TransactionError`` (ENOSPC), its temp files are removed, the store goes on."""
    out = EnospcOutcome("a two-phase commit's prepare")
    path = str(disk / "store-2pc")
    with _open_real(path) as store:
        _create(store, 150_000)
        filler = fill(disk, 48 * 1024)
        try:
            store.write_state_files()
            out.problems.append("the transaction fitted: the scenario does not fill the disk")
        except Exception as exc:
            out.error = f"{type(exc).__name__}{' (ENOSPC)' if _is_enospc(exc) else ''}"
            if not isinstance(exc, TransactionError) or not _is_enospc(exc):
                out.problems.append(f"the full disk raised {exc!r}")
        out.problems += _goes_on(store, out, path)
    _after_freeing(out, path, filler, [0, 1])
    return out


def _goes_on(store: LocalStore, out: EnospcOutcome, path: str) -> list[str]:
    """After a failed prepare: no temp file left, the next batch acknowledged."""
    left = [
        f"{d}/{n}"
        for d in TXN_DIRS
        for n in os.listdir(os.path.join(path, d))
        if n.endswith(".tmp")
    ]
    try:
        store.commit([_output(1, 100)])
        out.later_writes = "accepted"
    except Exception as exc:
        out.later_writes = f"refused ({type(exc).__name__})"
        return [f"the store did not go on after the failed prepare: {exc!r}"]
    out.acknowledged = 2
    return [f"temp files left: {left}"] if left else []


ENOSPC_SCENARIOS: tuple[Callable[[Path], EnospcOutcome], ...] = (
    enospc_log_append,
    enospc_checkpoint,
    enospc_prepare,
)


def run_enospc_scenarios() -> tuple[list[EnospcOutcome], str]:
    """Every ENOSPC scenario on a fresh small tmpfs each; ``([], why)`` when mounting is not
    permitted here."""
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, scenario in enumerate(ENOSPC_SCENARIOS):
            try:
                with small_disk(Path(tmp) / f"disk-{k}") as disk:
                    outcomes.append(scenario(disk))
            except MountRefused as exc:
                return [], str(exc)
    return outcomes, ""


# -- docs/reliability.md ---------------------------------------------------------------------------

KILL_SEEDS = (1, 2, 3)


def reliability_section() -> str:
    """Run error injection for every N on the larger workload, the ENOSPC scenarios (when this
    machine lets a tmpfs be mounted) and the many-writers SIGKILL loop for :data:`KILL_SEEDS`;
    return their figures as a Markdown section. Raises AssertionError on any violation."""
    from tests.storerun import run_kill_loop  # noqa: PLC0415 (spawns processes: only here)

    report = inject_every_n(LARGE)
    features = ", ".join(f"{v} {k}" for k, v in sorted(report.features.items()))
    out = [
        "## Error injection, a full disk, many writers killed",
        "",
        f'A store workload on the simulated file system ({features}; `durability="always"`) '
        "ran once per kind of call and N with the N-th call failing once, and again with it "
        "and every later one failing. Each run checks that the call during which a sync failed "
        "raised, that it raised what the store's contract names (`StorePoisonedError` for the "
        "log, any failed sync and a decided transaction's finish, after which every call is "
        "refused; `TransactionError` for a transaction's prepare and `StorageIOError` for "
        "writing or renaming a checkpoint file, a deletion or an open, after which the store "
        "goes on), that nothing raised an error outside the `WfstateError` tree, that no file "
        "was synced again after a failed sync of it, and that every crash state at the failure "
        "and the disk as left reopen with every acknowledged batch, checkpoint, drop, session "
        f"event, state file and compaction ({report.seconds:.0f} s).",
        "",
        injection_table(report),
        "",
        f"Runs in which a directory was synced again after a failed sync of it (a retry, "
        f"counted among the problems): {report.dirs_synced_again}.",
        "",
    ]
    problems = [f"error injection: {p}" for p in report.problems]
    outcomes, refused = run_enospc_scenarios()
    if refused:
        out += [f"Real ENOSPC: not run, this machine refused the tmpfs mount ({refused}).", ""]
    else:
        out += [
            f"Real ENOSPC on a {SMALL_DISK} tmpfs filled by a filler file, then the filler "
            "deleted and the store reopened:",
            "",
            "| ENOSPC in | the failing call raised | later writes | acknowledged batches "
            "| recovered after freeing space | problems |",
            "|---|---|---|---|---|---|",
        ]
        for o in outcomes:
            out.append(
                f"| {o.scenario} | {o.error} | {o.later_writes} | {o.acknowledged} "
                f"| {o.recovered} | {len(o.problems)} |"
            )
            problems += [f"ENOSPC in {o.scenario}: {p}" for p in o.problems]
        out.append("")
    out += [
        "SIGKILL loop with 6 writer processes on 4 KiB segments, 4 rounds of 30 batches per "
        "writer, one writer killed per round, store reopened and checked after each round:",
        "",
        "| seed | acknowledged batches | acknowledged checkpoints | compactions "
        "| segments discarded | kills | acknowledged lost | stores failing to recover |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed in KILL_SEEDS:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                loop, found = run_kill_loop(
                    Path(tmp), seed=seed, procs=6, rounds=4, commits=30, checkpoint_every=5,
                    maintain_every=10, segment_size=4096,
                )  # fmt: skip
            except Exception as exc:  # a store that does not reopen raises in the check
                problems.append(f"kill loop seed {seed}: {exc!r}")
                out.append(f"| {seed} | - | - | - | - | - | - | 1 |")
                continue
        f = loop.figures
        lost = sum(p.startswith("acknowledged") and "not in the" in p for p in found)
        out.append(
            f"| {seed} | {f.get('acknowledged batches', 0)} "
            f"| {f.get('acknowledged checkpoints', 0)} | {f.get('compactions', 0)} "
            f"| {f.get('segments discarded', 0)} | {f.get('kills', 0)} | {lost} | 0 |"
        )
        problems += [f"kill loop seed {seed}: {p}" for p in found]
    if problems:
        raise AssertionError(f"{len(problems)} violations:\n" + "\n".join(problems[:30]))
    return "\n".join(out) + "\n"
