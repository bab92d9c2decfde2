"""A Hypothesis state machine driving a whole :class:`LocalStore` on the simulated disk
(DESIGN.md §10 tier 3), with operation, fault, crash and reopen rules against a model.

The machine runs one store on a :class:`~tests.simfs.SimFileSystem` seen through
:class:`WatchedFS` (which notes every failed call and every sync), with 4 KiB segments so the
log rotates, and an automatic checkpoint policy that takes incremental checkpoints. The model
is a list of :class:`Entry`: the *snapshot* (workflow states, state files, sessions) after each
operation that changes one, in order, with the trace position where the operation started
and, once it returned, where it was acknowledged.

What is checked:

* **After every step** the store reads exactly the model's last snapshot (states, state files,
  sessions); a store expected to be poisoned refuses a write with ``StorePoisonedError`` and
  touches no file doing so.
* **Every operation** returns, or raises an error of the ``WfstateError`` tree (a bare
  ``OSError`` is a violation: the file system's errors come as ``StorageIOError``). What it
  raises decides what the model assumes:
  ``StorePoisonedError`` means *in flight* (the operation may or may not have happened: it is
  kept as an unacknowledged last entry, and the store must then refuse every write and never
  sync again); any other error means *nothing happened* (the entry is not kept, so a crash
  state showing it is a violation). A raised error must follow an injected failure.
* **Fault kinds**, as the store handles them (and the machine requires): a failed write or
  rename of the log (an append, a segment rotation, ``START``) poisons the store; so does a
  failed rename while finishing a decided transaction, and **every failed sync** (fsync,
  fdatasync or directory fsync, of any file: DESIGN.md §3), whether or not the operation
  raised (an automatic checkpoint failing inside a commit leaves the commit acknowledged and
  the store poisoned). A failed write or rename while preparing a checkpoint or a
  transaction file (its temp file, a checkpoint's rename into place) changes nothing and the
  store goes on: the file is never named by the log, and is deleted. After a failed sync the
  store never syncs or writes that file again, nor syncs that directory again (never
  retried: after fsyncgate nothing written to it can be trusted).
* **A crash** (one crash state of the current trace, at a drawn point, of a drawn kind) is
  recovered by opening a new store on it. Its snapshot must equal the model after a prefix of
  the operations that includes every one acknowledged at that point (and at most those that
  had started); every checkpoint in the index must load exactly the model's state of its
  workflow at its LSN; every acknowledged checkpoint must be there unless a retention begun
  by then may have dropped it, no acknowledged drop may come back, and the log may not start
  before the last acknowledged compaction's anchor. The machine continues on that store.
* **A reopen** (clean close, open on the same disk) is a crash state with nothing lost: the
  same checks at the end of the trace. A store poisoned by a failed fdatasync of the log is
  reopened too, in the same boot: the page cache still shows what the failed sync may have
  lost (fsyncgate, which the simulator models as never durable); the poisoned ``LOCK`` hint
  (format §8.1) makes the reopen cut those records, so later crashes find every acknowledged
  operation. A store poisoned by another failed sync (a directory's, a checkpoint file's) is
  continued only through a crash (a reboot): nothing marks what that sync may have lost.

:func:`run_machine` runs it with given settings and returns the figures;
:func:`reliability_section` is the thorough run for ``docs/reliability.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final, TypeVar

import msgspec
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.crashcheck import CK_CLOCK, CK_STORE, state_bytes
from tests.simfs import FaultOp, SimFileSystem
from wfstate.backends.local import LocalStore, Session
from wfstate.checkpointpolicy import CheckpointPolicy
from wfstate.errors import CorruptionError, StorePoisonedError, WfstateError
from wfstate.format import WAL_DIR, WORKFLOW_STATE_SUFFIX, WORKFLOWS_DIR
from wfstate.model import WorkflowState, WorkflowStep
from wfstate.mutations import (
    STEP_TRANSITIONS,
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    PutStepOutput,
    ReplaceState,
    SetAgentState,
    SetStepStatus,
    apply_batch,
    mutation_targets,
)
from wfstate.retention import RetentionPolicy
from wfstate.wal import Compression

T = TypeVar("T")

WORKFLOWS: Final = ("a", "b", "c", "d")
STEPS: Final = 3
SEGMENT_SIZE: Final = 4096
POLICY: Final = CheckpointPolicy(
    every_batches=3,
    every_log_bytes=None,
    on_step_end=True,
    on_error=False,
    max_chain=3,
    retention=RetentionPolicy(keep_last=2),
)
"""Automatic checkpoints every third batch of a workflow and after each completed step,
incremental up to three links deep (compaction and retention stay manual: the model counts
what they drop from the operation that asked)."""

FAULT_OPS: Final[tuple[FaultOp, ...]] = ("write", "fsync", "fdatasync", "fsync_dir", "replace")
SYNC_OPS: Final = frozenset({"fsync", "fdatasync"})
FATAL_OPS: Final = SYNC_OPS | {"fsync_dir"}
"""A failure of any of these poisons the store, wherever it happens (DESIGN.md §3)."""
OUTPUT_SIZES: Final = (20, 700, 2600)

FIGURE_ORDER: Final = (
    "examples",
    "steps",
    "operations acknowledged",
    "operations failed (nothing happened)",
    "operations in flight when the store stopped",
    "faults armed",
    "injected failures hit",
    "stores poisoned",
    "crashes recovered",
    "reopens",
    "poisoned stores reopened in the same boot",
    "acknowledged operations checked after a crash or reopen",
    "in-flight operations found applied after recovery",
    "in-flight operations found absent after recovery",
    "checkpoints verified after recovery",
    "checkpoints taken",
    "incremental checkpoints taken",
    "segments rotated",
)


class Violation(AssertionError):
    """The store broke a guarantee the machine checks."""


# -- the file system as the store sees it -------------------------------------------------------


class WatchedFS:
    """A :class:`wfstate.fs.FileSystem` passing every call to a :class:`SimFileSystem` and
    noting each failed call, by the path of the descriptor or name it was made on (faults are
    injected into the simulator, whose failed syncs leave writes never durable).

    ``failures``: ``(op, path)`` of every call that failed with the injected ``EIO``.
    ``violations``: a sync or write of a file, or a sync of a directory, after a sync of it
    failed (the store must never retry one).
    ``drop_fdatasync``: a deliberately broken disk whose fdatasync returns without syncing.
    """

    def __init__(self, sim: SimFileSystem, *, drop_fdatasync: bool = False) -> None:
        self.sim = sim
        self.drop_fdatasync = drop_fdatasync
        self.failures: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self.segments_created = 0
        self._paths: dict[int, str] = {}
        self._sync_failed: set[str] = set()
        self._dir_sync_failed: set[str] = set()

    def _call(self, op: str, path: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except OSError as exc:
            if exc.errno != errno.EIO:  # the store's own probing (a file already gone)
                raise
            self.failures.append((op, path))
            if op in SYNC_OPS:
                self._sync_failed.add(path)
            if op == "fsync_dir":
                self._dir_sync_failed.add(os.path.normpath(path))
            raise

    def _check_not_failed(self, op: str, fd: int) -> str:
        path = self._paths.get(fd, "?")
        if path in self._sync_failed:
            self.violations.append(f"{op} of {path} after a failed sync of it")
        return path

    # reads and descriptors
    def read_file(self, path: str) -> bytes:
        return self.sim.read_file(path)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        return self.sim.read_range(path, offset, size)

    def file_size(self, path: str) -> int:
        return self.sim.file_size(path)

    def exists(self, path: str) -> bool:
        return self.sim.exists(path)

    def is_dir(self, path: str) -> bool:
        return self.sim.is_dir(path)

    def listdir(self, path: str) -> list[str]:
        return self.sim.listdir(path)

    def open_append(self, path: str) -> int:
        fd = self.sim.open_append(path)
        self._paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self.sim.close(fd)
        self._paths.pop(fd, None)

    def dup(self, fd: int) -> int:
        new = self.sim.dup(fd)
        self._paths[new] = self._paths.get(fd, "?")
        return new

    # mutations
    def mkdir(self, path: str) -> None:
        self._call("mkdir", path, lambda: self.sim.mkdir(path))

    def create_exclusive(self, path: str) -> int:
        fd = self._call("create", path, lambda: self.sim.create_exclusive(path))
        self._paths[fd] = path
        if os.path.basename(os.path.dirname(path)) == WAL_DIR and path.endswith(".wal"):
            self.segments_created += 1
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> None:
        path = self._check_not_failed("write", fd)
        self._call("write", path, lambda: self.sim.write(fd, data))

    def fsync(self, fd: int) -> None:
        path = self._check_not_failed("fsync", fd)
        self._call("fsync", path, lambda: self.sim.fsync(fd))

    def fdatasync(self, fd: int) -> None:
        path = self._check_not_failed("fdatasync", fd)
        if self.drop_fdatasync:
            return
        self._call("fdatasync", path, lambda: self.sim.fdatasync(fd))

    def truncate(self, fd: int, size: int) -> None:
        path = self._check_not_failed("truncate", fd)
        self._call("truncate", path, lambda: self.sim.truncate(fd, size))

    def replace(self, src: str, dst: str) -> None:
        self._call("replace", src, lambda: self.sim.replace(src, dst))

    def unlink(self, path: str) -> None:
        self._call("unlink", path, lambda: self.sim.unlink(path))

    def fsync_dir(self, path: str) -> None:
        if os.path.normpath(path) in self._dir_sync_failed:
            self.violations.append(f"fsync_dir of {path} after a failed sync of it")
        self._call("fsync_dir", path, lambda: self.sim.fsync_dir(path))

    # locks (in-memory state of a running machine)
    def open_lock(self, path: str) -> object:
        return self.sim.open_lock(path)

    def try_lock(self, handle: object) -> bool:
        return self.sim.try_lock(handle)

    def unlock(self, handle: object) -> None:
        self.sim.unlock(handle)

    def close_lock(self, handle: object) -> None:
        self.sim.close_lock(handle)

    def read_lock_data(self, handle: object, size: int) -> bytes:
        return self.sim.read_lock_data(handle, size)

    def write_lock_data(self, handle: object, data: bytes) -> None:
        self.sim.write_lock_data(handle, data)


def is_log_path(path: str) -> bool:
    """Whether ``path`` is in the store's ``wal/`` directory (or is it)."""
    wal = os.path.join(CK_STORE, WAL_DIR)
    return path == wal or path.startswith(wal + os.sep)


def open_store(fs: WatchedFS) -> LocalStore:
    return LocalStore.open(
        CK_STORE,
        fs=fs,
        clock=lambda: CK_CLOCK,
        segment_size=SEGMENT_SIZE,
        compression=Compression(codec="none"),
        checkpoints=POLICY,
    )


class SeededSecrets:
    """Stand-ins for ``secrets.token_hex`` and ``secrets.randbits`` drawing from a seeded
    generator, reset for every example. The ids of checkpoints, sessions, transactions and
    temp files and the store's epoch end up in records and files whose sizes decide where
    segments rotate; Hypothesis needs an example to replay the same operations."""

    def __init__(self) -> None:
        self.rng = random.Random(0)

    def reset(self) -> None:
        self.rng = random.Random(0)

    def token_hex(self, nbytes: int | None = None) -> str:
        return self.rng.randbytes(32 if nbytes is None else nbytes).hex()

    def randbits(self, k: int) -> int:
        return self.rng.getrandbits(k)


SEEDED: Final = SeededSecrets()


@contextlib.contextmanager
def seeded_secrets() -> Iterator[None]:
    """Patch the ``secrets`` functions the store uses with :data:`SEEDED` meanwhile."""
    saved = secrets.token_hex, secrets.randbits
    secrets.token_hex, secrets.randbits = SEEDED.token_hex, SEEDED.randbits
    try:
        yield
    finally:
        secrets.token_hex, secrets.randbits = saved


# -- the model --------------------------------------------------------------------------------

SessionView = tuple[str, tuple[str, ...]]
"""A session as compared: its status and the workflows its batches touched."""


@dataclass(frozen=True)
class Snapshot:
    """What a store reads back: each workflow's state, each state file's state (both as
    :func:`state_bytes`), each session's status and workflows."""

    workflows: dict[str, bytes]
    files: dict[str, bytes]
    sessions: dict[str, SessionView]


@dataclass
class Entry:
    """The model after one operation. ``states``: the workflow states (objects, to build the
    next batches from); ``lsn``: the LSN of the operation's batch (None: no batch, or in
    flight and not known); ``start``/``ack``: trace positions where the operation began and
    was acknowledged (None: in flight, it raised ``StorePoisonedError``)."""

    states: dict[str, WorkflowState]
    files: dict[str, bytes]
    sessions: dict[str, SessionView]
    lsn: int | None
    start: int
    ack: int | None
    batch: bool = False
    touched: frozenset[str] = frozenset()
    new_session: bool = False

    def snapshot(self) -> Snapshot:
        return Snapshot(
            {w: state_bytes(s) for w, s in sorted(self.states.items())},
            dict(sorted(self.files.items())),
            dict(sorted(self.sessions.items())),
        )

    def matches(self, observed: Snapshot) -> bool:
        """Whether a store reading ``observed`` is this entry. A session started in flight
        has an id the caller never learnt: any one new active session without workflows."""
        mine = self.snapshot()
        if not self.new_session:
            return observed == mine
        new = [i for i in observed.sessions if i not in mine.sessions]
        if len(new) != 1 or observed.sessions[new[0]] != ("active", ()):
            return False
        rest = {i: s for i, s in observed.sessions.items() if i != new[0]}
        return replace(observed, sessions=rest) == mine


def stamp(batch: Sequence[Mutation]) -> list[Mutation]:
    return [msgspec.structs.replace(m, at=CK_CLOCK) for m in batch]


def applied(
    states: dict[str, WorkflowState], batch: Sequence[Mutation]
) -> dict[str, WorkflowState]:
    """``states`` after ``batch`` (stamped as the store stamps it); raises on an invalid one."""
    out = dict(states)
    for workflow_id, state in apply_batch(states, stamp(batch)).items():
        if state is None:
            out.pop(workflow_id, None)
        else:
            out[workflow_id] = state
    return out


def save_batch(states: dict[str, WorkflowState], state: WorkflowState) -> list[Mutation]:
    """What ``save(state)`` commits: create the workflow first if absent (fresh steps), then
    replace its state."""
    workflow_id = state.workflow.id
    batch: list[Mutation] = []
    if workflow_id not in states:
        fresh = tuple(
            msgspec.structs.replace(
                s, status="pending", attempts=0, started_at=None, ended_at=None, error=None
            )
            for s in state.workflow.steps
        )
        batch.append(
            CreateWorkflow(
                workflow_id=workflow_id,
                name=state.workflow.name,
                steps=fresh,
                context=state.context,
                at=0,
            )
        )
    batch.append(ReplaceState(workflow_id=workflow_id, state=state, at=0))
    return batch


def new_workflow(workflow_id: str) -> CreateWorkflow:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"s{i}", max_retries=2) for i in range(STEPS))
    return CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)


@st.composite
def batches(draw: st.DrawFn, states: dict[str, WorkflowState]) -> list[Mutation]:
    """A valid batch of one to four mutations over one to four workflows: creations of absent
    ones, step transitions, outputs of drawn sizes (some over a segment), agent states."""
    tentative = dict(states)
    out: list[Mutation] = []
    for _ in range(draw(st.integers(1, 4))):
        workflow_id = draw(st.sampled_from(WORKFLOWS))
        state = tentative.get(workflow_id)
        m: Mutation
        if state is None:
            m = new_workflow(workflow_id)
        else:
            kind = draw(st.sampled_from(("step", "step", "output", "agent")))
            step = state.workflow.steps[draw(st.integers(0, STEPS - 1))]
            targets = sorted(STEP_TRANSITIONS[step.status])
            if step.attempts > step.max_retries:
                targets = [t for t in targets if t != "running"]
            if kind == "step" and targets:
                m = SetStepStatus(
                    workflow_id=workflow_id,
                    step_id=step.id,
                    status=draw(st.sampled_from(targets)),
                    at=0,
                )
            elif kind == "agent":
                m = SetAgentState(
                    workflow_id=workflow_id,
                    agent_id="agent",
                    status=f"seen {draw(st.integers(0, 9))}",
                    data={},
                    at=0,
                )
            else:
                size = draw(st.sampled_from(OUTPUT_SIZES))
                m = PutStepOutput(
                    workflow_id=workflow_id,
                    step_id=step.id,
                    data={"text": f"{workflow_id}{len(out)}" * (size // 3)},
                    at=0,
                )
        tentative = applied(tentative, [m])
        out.append(m)
    return out


def observe(store: LocalStore, fs: WatchedFS) -> Snapshot:
    """What ``store`` (on ``fs``) reads back, as a :class:`Snapshot`."""
    workflows = {w: state_bytes(store.load(w)) for w in store.list_workflows()}
    files: dict[str, bytes] = {}
    for name in fs.listdir(os.path.join(CK_STORE, WORKFLOWS_DIR)):
        if name.endswith(WORKFLOW_STATE_SUFFIX) and not name.startswith("."):
            workflow_id = name[: -len(WORKFLOW_STATE_SUFFIX)]
            files[workflow_id] = state_bytes(store.read_state_file(workflow_id))
    sessions = {s.id: (s.status, tuple(s.workflows)) for s in store.sessions()}
    return Snapshot(
        dict(sorted(workflows.items())),
        dict(sorted(files.items())),
        dict(sorted(sessions.items())),
    )


def resolve_lsn(store: LocalStore, entry: Entry) -> int:
    """The LSN of an in-flight batch found applied after recovery. It was the last batch, so
    it is the newest LSN of the live workflows it touched; if it left none of them live (a
    delete), any LSN up to the log's last serves (no later batch has one below it)."""
    live = set(store.list_workflows())
    lsns = [store.load(w).metadata.last_lsn for w in entry.touched if w in live]
    return max(lsns) if lsns else store.stats().last_lsn


# -- the figures --------------------------------------------------------------------------------


@dataclass
class Figures:
    """What the runs exercised, summed over every example (see :data:`FIGURE_ORDER`)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n


# -- the machine ------------------------------------------------------------------------------


Outcome = str
"""What an attempted operation did: ``"ok"``, ``"nothing"`` (failed, nothing happened),
``"in flight"`` (failed, the store stopped: may have happened) or ``"refused"`` (the store
was already stopped)."""


class StoreMachine(RuleBasedStateMachine):
    """The state machine (module docstring). ``figures`` collects over every example run
    with the class; ``drop_fdatasync`` runs it on a deliberately broken disk."""

    figures: ClassVar[Figures] = Figures()
    drop_fdatasync: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        SEEDED.reset()
        self.figures.add("examples")
        self.sim = SimFileSystem()
        self.fs = WatchedFS(self.sim, drop_fdatasync=self.drop_fdatasync)
        self.store: LocalStore | None = open_store(self.fs)
        self.entries: list[Entry] = [Entry({}, {}, {}, 0, 0, 0)]
        self.poisoned = False
        # crashes land at or after this trace position: a poisoned store reopened in the same
        # boot cut operations the model then forgets, which an earlier crash point may show
        self.crash_floor = 0
        self.owned: dict[str, Session] = {}
        # checkpoints: id -> trace position once acknowledged (seen in the index after a call)
        self.known: dict[str, int] = {}
        self.drops_started: list[tuple[int, frozenset[str]]] = []
        self.drops_acked: list[tuple[int, frozenset[str]]] = []
        self.discards: list[tuple[int, int]] = []  # (ack position, the log's first LSN)
        self.failures_seen = 0

    # -- helpers ---------------------------------------------------------------------------
    @property
    def last(self) -> Entry:
        return self.entries[-1]

    @property
    def usable(self) -> bool:
        return self.store is not None

    def last_lsn(self) -> int:
        """The log's last LSN. Compaction is drawn only once the log holds a record: on a new,
        empty store ``compact()`` raises ``ValidationError`` from ``discard_before`` (its anchor
        gets LSN 1 in segment 1; a known bug of ``LocalStore.compact``, reported to the lead)."""
        assert self.store is not None
        return self.store.stats().last_lsn

    @property
    def live(self) -> list[str]:
        return sorted(self.last.states)

    def _new_failures(self) -> list[tuple[str, str]]:
        found = self.fs.failures[self.failures_seen :]
        self.failures_seen = len(self.fs.failures)
        for op, _path in found:
            self.figures.add(f"injected failures hit: {op}")
            self.figures.add("injected failures hit")
        return found

    def _attempt(self, kind: str, call: Callable[[], T]) -> tuple[Outcome, T | None]:
        """Run one operation of the store and judge how it ended (module docstring)."""
        assert self.store is not None
        before = self.sim.op_count
        was_poisoned = self.poisoned
        try:
            result = call()
        except WfstateError as exc:
            failures = self._new_failures()
            if was_poisoned:
                if not isinstance(exc, StorePoisonedError):
                    raise Violation(f"{kind} on a poisoned store raised {exc!r}") from exc
                if self.sim.op_count != before:
                    raise Violation(f"{kind} on a poisoned store changed the disk") from exc
                return "refused", None
            if not failures:
                raise Violation(f"{kind} failed with no injected failure: {exc!r}") from exc
            if isinstance(exc, StorePoisonedError):
                self._poison()
                self.figures.add("operations in flight when the store stopped")
                return "in flight", None
            if any(op in FATAL_OPS for op, _path in failures):
                raise Violation(
                    f"{kind} hit a failed sync and raised {exc!r}, not poisoned"
                ) from exc
            self.figures.add(f"{kind} failed: {type(exc).__name__}")
            self.figures.add("operations failed (nothing happened)")
            self._check_poisoning(failures, kind)
            return "nothing", None
        except OSError as exc:
            raise Violation(f"{kind} raised a bare {exc!r}, not a WfstateError") from exc
        failures = self._new_failures()
        if was_poisoned:
            raise Violation(f"a poisoned store acknowledged {kind}")
        self._check_poisoning(failures, kind)
        self.figures.add("operations acknowledged")
        self.figures.add(f"acknowledged: {kind}")
        return "ok", result

    def _check_poisoning(self, failures: list[tuple[str, str]], kind: str) -> None:
        """A failure in the log, and a failed sync anywhere, poisons the store even when the
        call did not raise (an automatic checkpoint's record or file after its commit
        returned)."""
        if any(is_log_path(path) or op in FATAL_OPS for op, path in failures):
            self._poison()

    def _poison(self) -> None:
        if not self.poisoned:
            self.figures.add("stores poisoned")
        self.poisoned = True
        self.owned.clear()

    def _record(
        self,
        start: int,
        outcome: Outcome,
        *,
        states: dict[str, WorkflowState] | None = None,
        files: dict[str, bytes] | None = None,
        sessions: dict[str, SessionView] | None = None,
        lsn: int | None = None,
        touched: frozenset[str] = frozenset(),
        new_session: bool = False,
    ) -> None:
        """Add the model entry of an operation that changed a snapshot (acknowledged or in
        flight)."""
        if outcome not in ("ok", "in flight"):
            return
        last = self.last
        self.entries.append(
            Entry(
                states=last.states if states is None else states,
                files=last.files if files is None else files,
                sessions=last.sessions if sessions is None else sessions,
                lsn=lsn if outcome == "ok" else None,
                start=start,
                ack=self.sim.op_count if outcome == "ok" else None,
                batch=states is not None,
                touched=touched,
                new_session=new_session,
            )
        )

    def _observe_index(self) -> None:
        """Note every checkpoint the index holds that the model did not know (acknowledged
        from now on)."""
        assert self.store is not None
        if self.poisoned:
            return
        now = self.sim.op_count
        for info in self.store.checkpoints():
            if info.id not in self.known:
                self.known[info.id] = now
                self.figures.add("checkpoints taken")
                if info.parent is not None:
                    self.figures.add("incremental checkpoints taken")

    def _batch_op(
        self, kind: str, batch: list[Mutation], call: Callable[[], int], session: str | None = None
    ) -> None:
        start = self.sim.op_count
        states = applied(self.last.states, batch)
        outcome, lsn = self._attempt(kind, call)
        sessions = None
        if session is not None:
            status, written = self.last.sessions[session]
            workflows = {w for _op, w in mutation_targets(batch)} | set(written)
            sessions = {**self.last.sessions, session: (status, tuple(sorted(workflows)))}
        touched = frozenset(w for _op, w in mutation_targets(batch))
        self._record(start, outcome, states=states, sessions=sessions, lsn=lsn, touched=touched)
        self._after(outcome)

    def _after(self, outcome: Outcome) -> None:
        if outcome != "refused" and self.store is not None:
            self._observe_index()

    # -- operation rules ---------------------------------------------------------------------
    @precondition(lambda self: self.usable)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        assert self.store is not None
        batch = data.draw(batches(self.last.states))
        store = self.store
        self._batch_op("commit", batch, lambda: store.commit(batch))

    @precondition(lambda self: self.usable)
    @rule(data=st.data(), note=st.integers(0, 99))
    def save(self, data: st.DataObject, note: int) -> None:
        assert self.store is not None
        workflow_id = data.draw(st.sampled_from(WORKFLOWS))
        base = self.last.states.get(workflow_id)
        if base is None:
            base = applied({}, [new_workflow(workflow_id)])[workflow_id]
        context = msgspec.structs.replace(base.context, user_data={"note": note})
        state = msgspec.structs.replace(base, context=context)
        store = self.store
        self._batch_op("save", save_batch(self.last.states, state), lambda: store.save(state))

    @precondition(lambda self: self.usable and self.last.states)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        assert self.store is not None
        workflow_id = data.draw(st.sampled_from(self.live))
        store = self.store
        batch: list[Mutation] = [DeleteWorkflow(workflow_id=workflow_id, at=0)]
        self._batch_op("delete", batch, lambda: store.delete(workflow_id))

    @precondition(lambda self: self.usable and self.last.states)
    @rule(data=st.data())
    def checkpoint(self, data: st.DataObject) -> None:
        assert self.store is not None
        workflow_id = data.draw(st.sampled_from(self.live))
        store = self.store
        outcome, _info = self._attempt("checkpoint", lambda: store.checkpoint(workflow_id))
        self._after(outcome)

    @precondition(lambda self: self.usable)
    @rule(keep=st.integers(1, 2))
    def retain(self, keep: int) -> None:
        assert self.store is not None
        store = self.store
        start = self.sim.op_count
        self.drops_started.append((start, frozenset(self.known)))
        outcome, plan = self._attempt(
            "retain", lambda: store.retain(RetentionPolicy(keep_last=keep))
        )
        if plan is not None:
            self.drops_acked.append((self.sim.op_count, frozenset(i.id for i in plan.drop)))
            for info in plan.drop:
                self.known.pop(info.id, None)
        self._after(outcome)

    @precondition(lambda self: self.usable and (self.poisoned or self.last_lsn() > 0))
    @rule()
    def compact(self) -> None:
        assert self.store is not None
        store = self.store
        outcome, report = self._attempt("compact", store.compact)
        if report is not None:
            self.discards.append((self.sim.op_count, report.log_first_lsn))
            self.figures.add("segments discarded", len(report.segments_discarded))
        self._after(outcome)

    @precondition(lambda self: self.usable and self.last.states)
    @rule(data=st.data(), checkpoint=st.booleans())
    def write_state_files(self, data: st.DataObject, checkpoint: bool) -> None:
        assert self.store is not None
        chosen = data.draw(
            st.none() | st.lists(st.sampled_from(self.live), min_size=1, unique=True)
        )
        ids = self.live if chosen is None else chosen
        files = {**self.last.files, **{w: state_bytes(self.last.states[w]) for w in ids}}
        store = self.store
        start = self.sim.op_count
        outcome, _ = self._attempt(
            "write_state_files", lambda: store.write_state_files(chosen, checkpoint=checkpoint)
        )
        self._record(start, outcome, files=files)
        self._after(outcome)

    @precondition(lambda self: self.usable)
    @rule()
    def start_session(self) -> None:
        assert self.store is not None
        store = self.store
        start = self.sim.op_count
        outcome, session = self._attempt("start_session", lambda: store.start_session("user"))
        if session is not None:
            self.owned[session.id] = session
            sessions = {**self.last.sessions, session.id: ("active", ())}
            self._record(start, outcome, sessions=sessions)
        else:
            self._record(start, outcome, new_session=True)
        self._after(outcome)

    @precondition(lambda self: self.usable and self.owned)
    @rule(data=st.data())
    def commit_in_session(self, data: st.DataObject) -> None:
        assert self.store is not None
        session = self.owned[data.draw(st.sampled_from(sorted(self.owned)))]
        batch = data.draw(batches(self.last.states))
        store = self.store
        self._batch_op(
            "commit in a session",
            batch,
            lambda: store.commit(batch, session=session),
            session=session.id,
        )

    @precondition(lambda self: self.usable and self.owned)
    @rule(data=st.data(), final_checkpoint=st.booleans())
    def end_session(self, data: st.DataObject, final_checkpoint: bool) -> None:
        assert self.store is not None
        session = self.owned[data.draw(st.sampled_from(sorted(self.owned)))]
        _status, touched = self.last.sessions[session.id]
        states = self.last.states
        files = {**self.last.files, **{w: state_bytes(states[w]) for w in touched if w in states}}
        sessions = {**self.last.sessions, session.id: ("ended", touched)}
        store = self.store
        start = self.sim.op_count
        outcome, _ = self._attempt(
            "end_session", lambda: store.end_session(session, final_checkpoint)
        )
        if outcome == "ok":
            del self.owned[session.id]
        self._record(start, outcome, files=files, sessions=sessions)
        self._after(outcome)

    @precondition(
        lambda self: (
            self.usable
            and not self.poisoned
            and any(s[0] == "active" and i not in self.owned for i, s in self.last.sessions.items())
        )
    )
    @rule(data=st.data())
    def resume_session(self, data: st.DataObject) -> None:
        assert self.store is not None
        sessions = self.last.sessions
        crashed = [i for i, s in sessions.items() if s[0] == "active" and i not in self.owned]
        session_id = data.draw(st.sampled_from(sorted(crashed)))
        store = self.store
        outcome, session = self._attempt("resume_session", lambda: store.resume_session(session_id))
        if session is not None:
            self.owned[session.id] = session
        self._after(outcome)

    @precondition(lambda self: self.usable and not self.poisoned and self.known)
    @rule(data=st.data(), to_file=st.booleans())
    def restore(self, data: st.DataObject, to_file: bool) -> None:
        assert self.store is not None
        store = self.store
        index = store.checkpoints()
        if not index:
            return
        info = data.draw(st.sampled_from(index))
        expected = self.expected(info.workflow_id, info.lsn, self.entries)
        assert expected is not None, f"checkpoint {info.id} of a state the model never had"
        batch = save_batch(self.last.states, expected)
        states = applied(self.last.states, batch)
        files = {**self.last.files, info.workflow_id: state_bytes(states[info.workflow_id])}
        start = self.sim.op_count
        outcome, lsn = self._attempt(
            "restore to the file" if to_file else "restore",
            lambda: store.restore(info.id, to_file=to_file),
        )
        self._record(
            start,
            outcome,
            states=states,
            files=files if to_file else None,
            lsn=lsn,
            touched=frozenset({info.workflow_id}),
        )
        self._after(outcome)

    # -- fault rules --------------------------------------------------------------------------
    @precondition(lambda self: self.usable)
    @rule(op=st.sampled_from(FAULT_OPS), nth=st.integers(1, 3), persistent=st.booleans())
    def arm_fault(self, op: FaultOp, nth: int, persistent: bool) -> None:
        self.sim.inject(op, nth, persistent=persistent)
        self.figures.add("faults armed")
        self.figures.add(f"faults armed: {op}{' (persistent)' if persistent else ''}")

    # -- crash and reopen ---------------------------------------------------------------------
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """Crash after a drawn number of the trace's operations (often the last, or during
        the last operation) into a crash state of a drawn kind, and recover."""
        top = self.sim.op_count
        recent = max(min(self.last.start, top), self.crash_floor)
        at = data.draw(
            st.one_of(st.just(top), st.integers(recent, top), st.integers(self.crash_floor, top)),
            label="at",
        )
        by_kind: dict[str, list[tuple[str, SimFileSystem]]] = {}
        for label, disk in self.sim.crash_states(at):
            by_kind.setdefault(label.split(":")[0], []).append((label, disk))
        kind = data.draw(st.sampled_from(sorted(by_kind)), label="kind")
        label, disk = data.draw(st.sampled_from(by_kind[kind]), label="state")
        self.figures.add("crashes recovered")
        self.figures.add(f"crash states: {kind}")
        self._recover(disk, at, f"crash at op {at} ({label})")

    def poison_is_marked(self) -> bool:
        """Whether every failure this store hit is one the poisoned ``LOCK`` hint covers: a
        failed fdatasync of a log segment (format §8.1), or a failed write (no sync failed:
        what the page cache shows will reach the disk). A failed sync of a directory or of
        another file is not covered: a reopen in the same boot would trust entries the disk
        may never get (docs/guarantees.md), so such a store goes on only through a crash."""
        return all(
            op == "write" or (op == "fdatasync" and f"/{WAL_DIR}/" in path)
            for op, path in self.fs.failures
        )

    @precondition(lambda self: self.usable and (not self.poisoned or self.poison_is_marked()))
    @rule()
    def reopen(self) -> None:
        """Close and open again on the same disk (the trace goes on: what was acknowledged
        stays acknowledged where it was). Opening under an armed fault may fail: then the
        machine goes on only through a crash."""
        assert self.store is not None
        self.store.close()
        for session in self.owned.values():
            assert session.closed
        self._new_failures()
        self.figures.add("reopens")
        was_poisoned = self.poisoned
        self.figures.add("segments rotated", self.fs.segments_created)
        fs = WatchedFS(self.sim, drop_fdatasync=self.drop_fdatasync)
        try:
            store = open_store(fs)
        except (WfstateError, OSError) as exc:
            self.fs, self.failures_seen = fs, 0
            if not self._new_failures():
                raise Violation(f"reopen raised {exc!r} with no injected failure") from exc
            self.figures.add(f"reopens failing under a fault: {type(exc).__name__}")
            self.store = None
            return
        # a poisoned store's operation in flight may be cut by the reopen (format §8.1)
        self.entries = self._check_recovered(store, fs, self.sim.op_count, "reopen")
        if was_poisoned:
            self.figures.add("poisoned stores reopened in the same boot")
            self.crash_floor = self.sim.op_count
        self.store, self.fs = store, fs
        self.failures_seen = 0
        self.owned = {}
        self.poisoned = False

    def _recover(self, disk: SimFileSystem, at: int, where: str) -> None:
        """Open a store on crash state ``disk`` (cut after ``at`` operations of the trace),
        check it against the model and continue on it: everything it holds is durable on
        the new disk, whose trace starts empty."""
        self.figures.add("segments rotated", self.fs.segments_created)
        fs = WatchedFS(disk, drop_fdatasync=self.drop_fdatasync)
        try:
            store = open_store(fs)
        except Exception as exc:
            raise Violation(f"{where}: recovery raised {exc!r}") from exc
        kept = self._check_recovered(store, fs, at, where)
        self.entries = [replace(e, start=0, ack=0) for e in kept]
        self.sim, self.fs, self.store = disk, fs, store
        self.failures_seen = 0
        self.poisoned = False
        self.crash_floor = 0
        self.owned = {}
        self.known = {info.id: 0 for info in store.checkpoints()}
        self.drops_started, self.drops_acked = [], []
        self.discards = [(0, store.stats().log_first_lsn)]

    def _check_recovered(
        self, store: LocalStore, fs: WatchedFS, at: int, where: str
    ) -> list[Entry]:
        """Check a store opened on the disk after ``at`` operations against the model; return
        the model's entries it holds (module docstring)."""
        observed = observe(store, fs)
        low = sum(1 for e in self.entries if e.ack is not None and e.ack <= at)
        high = max(low, sum(1 for e in self.entries if e.start < at))
        match = [k for k in range(low - 1, high) if self.entries[k].matches(observed)]
        if not match:
            raise Violation(
                f"{where}: the store is not the model after any prefix of {low} to {high} "
                f"operations ({len(self.entries)} known)\nread:  {observed}\nmodel: "
                f"{self.entries[low - 1].snapshot()}"
            )
        kept = self.entries[: match[-1] + 1]
        self.figures.add("acknowledged operations checked after a crash or reopen", low - 1)
        if high > low:
            self.figures.add(
                "in-flight operations found applied after recovery"
                if len(kept) > low
                else "in-flight operations found absent after recovery"
            )
        last = kept[-1]
        if last.new_session:
            last.sessions = dict(observed.sessions)
            last.new_session = False
        if last.ack is None and last.batch:
            last.lsn = resolve_lsn(store, last)
        self._check_checkpoints(store, at, kept, where)
        return kept

    def _check_checkpoints(self, store: LocalStore, at: int, kept: list[Entry], where: str) -> None:
        index = {info.id: info for info in store.checkpoints()}
        for checkpoint_id, info in index.items():
            expected = self.expected(info.workflow_id, info.lsn, kept)
            try:
                got = state_bytes(store.checkpoint_state(checkpoint_id))
            except CorruptionError as exc:
                problem = f"{where}: checkpoint {checkpoint_id} does not read: {exc}"
                raise Violation(problem) from exc
            if expected is None or got != state_bytes(expected):
                raise Violation(f"{where}: checkpoint {checkpoint_id} loads another state")
            self.figures.add("checkpoints verified after recovery")
        dropping = set().union(*(ids for start, ids in self.drops_started if start < at))
        for checkpoint_id, ack in self.known.items():
            if ack <= at and checkpoint_id not in dropping and checkpoint_id not in index:
                raise Violation(f"{where}: acknowledged checkpoint {checkpoint_id} lost")
        dropped = set().union(*(ids for ack, ids in self.drops_acked if ack <= at))
        if dropped & set(index):
            raise Violation(f"{where}: dropped checkpoints {sorted(dropped & set(index))} back")
        owed = max((lsn for ack, lsn in self.discards if ack <= at), default=1)
        if store.stats().log_first_lsn < owed:
            raise Violation(f"{where}: the log starts before the acknowledged compaction's {owed}")

    @staticmethod
    def expected(workflow_id: str, lsn: int, entries: Sequence[Entry]) -> WorkflowState | None:
        """The model's state of ``workflow_id`` after every batch up to LSN ``lsn``."""
        batches_ = [e for e in entries if e.lsn is not None and (e.batch or e.lsn == 0)]
        position = bisect.bisect_right([e.lsn or 0 for e in batches_], lsn)
        return batches_[position - 1].states.get(workflow_id) if position else None

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def reads_equal_the_model(self) -> None:
        self.figures.add("steps")
        if self.store is None or self.poisoned:
            return
        observed = observe(self.store, self.fs)
        if observed != self.last.snapshot():
            raise Violation(f"the store reads {observed}, the model is {self.last.snapshot()}")

    @invariant()
    def a_poisoned_store_refuses_writes(self) -> None:
        if self.store is None or not self.poisoned:
            return
        before = self.sim.op_count
        try:
            self.store.commit([new_workflow("probe")])
        except StorePoisonedError:
            pass
        else:
            raise Violation("a poisoned store acknowledged a commit")
        if self.sim.op_count != before:
            raise Violation("a poisoned store wrote to the disk")

    @invariant()
    def no_sync_is_retried(self) -> None:
        if self.fs.violations:
            raise Violation("; ".join(self.fs.violations))

    def teardown(self) -> None:
        self.figures.add("segments rotated", self.fs.segments_created)
        if self.store is not None:
            self.store.close()


# -- running it -------------------------------------------------------------------------------


def machine_class(*, drop_fdatasync: bool = False) -> type[StoreMachine]:
    """A subclass of :class:`StoreMachine` with figures of its own."""
    attributes: dict[str, Any] = {"figures": Figures(), "drop_fdatasync": drop_fdatasync}
    return type("StoreMachineRun", (StoreMachine,), attributes)


@contextlib.contextmanager
def quiet_store_logs() -> Iterator[None]:
    """Silence the warnings the store logs for every failed automatic checkpoint meanwhile
    (the machine counts them)."""
    loggers = [logging.getLogger(name) for name in ("wfstate.checkpoints", "wfstate.wal")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def run_machine(max_examples: int, steps: int, *, drop_fdatasync: bool = False) -> Counter[str]:
    """Run the machine for ``max_examples`` examples of up to ``steps`` steps, derandomized
    (the same examples every run), without the example database; return its figures.
    Raises the first violation found (shrunk), as ``AssertionError``."""
    machine = machine_class(drop_fdatasync=drop_fdatasync)
    with seeded_secrets(), quiet_store_logs():
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=max_examples,
                stateful_step_count=steps,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                print_blob=False,
                phases=[Phase.generate, Phase.shrink],
                report_multiple_bugs=False,
            ),
        )
    return machine.figures.counts


def broken_disk_is_caught(max_examples: int = 40, steps: int = 25) -> str:
    """Run the machine on a disk that drops fdatasync; return the first line of the violation
    it must find (``AssertionError`` if it finds none)."""
    try:
        run_machine(max_examples, steps, drop_fdatasync=True)
    except AssertionError as exc:
        return str(exc).splitlines()[0][:200]
    raise AssertionError("the machine found nothing on a disk that drops fdatasync")


def reliability_section(max_examples: int = 1000, steps: int = 60) -> str:
    """Run the thorough machine and return the ``docs/reliability.md`` section with its
    figures; raises ``AssertionError`` on any violation."""
    started = time.perf_counter()
    counts = run_machine(max_examples, steps)
    elapsed = time.perf_counter() - started
    proof = broken_disk_is_caught()
    rows = [f"| {name} | {counts[name]:,} |" for name in FIGURE_ORDER]
    rows += [f"| {name} | {counts[name]:,} |" for name in sorted(k for k in counts if ": " in k)]
    return "\n".join(
        [
            "## The whole store under a Hypothesis state machine",
            "",
            "A `RuleBasedStateMachine` (`tests/storemachine.py`) drives one `LocalStore` on the "
            "simulated disk (4 KiB segments, automatic incremental checkpoints) with batches, "
            "saves, deletes, checkpoints, retention, compaction, state files, sessions and "
            "restores, arms injected failures of writes, syncs and renames, crashes into a drawn "
            "crash state and recovers, and reopens. After every step the store reads as the "
            "model; after every crash as the model after a prefix holding every acknowledged "
            "operation, each checkpoint loading its state; a failed fsync poisons the store and "
            f"is never retried. {max_examples} derandomized examples of up to {steps} steps "
            f"({elapsed:.0f} s): no violation.",
            "",
            "| figure | count |",
            "|---|---|",
            *rows,
            "",
            f"On a disk whose fdatasync is dropped the machine fails, as it must: `{proof}`.",
            "",
        ]
    )
