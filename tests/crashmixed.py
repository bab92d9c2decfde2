"""Crash exploration of one store running every feature at once (DESIGN.md §10 tier 2).

One :class:`LocalStore` (durability ``always``, 4 KiB segments so the log rotates often, a
:data:`MIXED_POLICY` taking automatic incremental checkpoints) runs a workload that mixes every
kind of write the store has: batches over several workflows, ``save`` and ``delete``, manual
and automatic checkpoints, retentions that fold and drop, compactions that discard segments,
``write_state_files`` (two-phase commit, 2PC), a session (start, batches in it, its end: a 2PC
with final checkpoints), ``restore(id, to_file=True)`` (a 2PC committing a batch) and
``import_session`` of a bundle another store exported (a 2PC committing a batch, checkpoints
and a session). :class:`MixedDriver` notes after which operation of the simulated disk's trace
each call began and was acknowledged, and keeps an independent model (a ``MemoryStore`` fed
the same batches) of the workflow states after every state-changing call.

In every crash state of every explored crash point, the real recovery (``LocalStore.open``)
runs and :func:`check_mixed_state` checks, by kind of violation (:data:`MIXED_VIOLATIONS`):

* recovery does not raise;
* the workflows equal the model after one prefix of the state-changing calls, that prefix
  includes every acknowledged one and none that had not begun;
* 2PC all-or-nothing: for one ``n``, the files of ``workflows/`` and ``sessions/`` are what the
  first ``n`` transactions wrote, and for every transaction its checkpoint entries, its
  session event and its batch are there exactly when it is among the first ``n``; ``n``
  covers every acknowledged transaction;
* every acknowledged checkpoint and session start is there (unless a retention begun by then
  dropped the checkpoint); every checkpoint in the index is one the run took, of the same
  workflow and LSN, reading as the model's state there;
* no checkpoint an acknowledged retention dropped is back, and the log starts no earlier than
  the last acknowledged compaction's discard, with no segment before it left on disk;
* a second recovery changes nothing on the disk.

:func:`explore_recovery_crashes` then crashes the recovery itself: for crash states whose
recovery repairs something (it writes, renames, truncates or deletes), the recovery runs on a
simulated disk recording its own trace, and every crash state of *that* trace is recovered
again and checked the same way (against the acknowledgements before the first crash), and
also against the result of the uninterrupted recovery.

:data:`BROKEN_DISKS` plant one durability bug each; the checks must see every one on this
workload (:func:`reliability_section` asserts it, and that the correct code shows none).
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from tests.crashcheck import (
    CK_CLOCK,
    CK_STORE,
    CrashOutcome,
    NoDataSyncFS,
    NoDirSyncFS,
    dropped_and_discarded_violations,
    open_sim_store,
    read_store,
    state_bytes,
    store_plan,
    txn_files,
)
from tests.simfs import Create, Fsync, Mkdir, Replace, SimFileSystem, Truncate, Unlink
from tests.simfs import Write as WriteOp
from wfstate.backends.local import LocalStore, Session
from wfstate.backends.memory import MemoryStore
from wfstate.checkpointpolicy import MANUAL_ONLY, CheckpointPolicy
from wfstate.format import SESSIONS_DIR, WAL_DIR, WORKFLOWS_DIR, parse_segment_name
from wfstate.model import WorkflowContext, WorkflowState, WorkflowStep
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus
from wfstate.retention import RetentionPolicy

MIXED_POLICY = CheckpointPolicy(
    every_batches=3, every_log_bytes=None, on_step_end=True, on_error=False, max_chain=4
)
"""Automatic checkpoints after every completed step and every third batch without one,
incremental up to four links deep."""

SEGMENT_SIZE = 4096
WORKFLOWS = ("alpha", "beta", "gamma")

MIXED_VIOLATIONS = (
    "recoveries raising",
    "acknowledged writes lost",
    "states not the model after a prefix",
    "2PC atomicity violations",
    "checkpoints loading wrong",
    "dropped checkpoints resurrected",
    "discarded segments resurrected",
    "recover-twice differences",
)
"""What the mixed exploration counts, in the order the report lists it."""

RECOVERY_CRASH_VIOLATIONS = (*MIXED_VIOLATIONS, "result differs from an uninterrupted recovery")


@dataclass(frozen=True)
class StateOp:
    """A call that changed workflow states: its LSN and the op counts at its start and ack."""

    what: str
    lsn: int
    started: int
    acked: int


@dataclass(frozen=True)
class Transaction:
    """A 2PC call and every part it commits: ``files`` (path below the store -> content, in
    ``workflows/`` and ``sessions/``), checkpoint ids, a session's status after it, the index of
    the batch it commits among the :class:`StateOp` s (None: no batch)."""

    what: str
    files: dict[str, bytes]
    checkpoints: frozenset[str]
    session: tuple[str, str] | None
    state_op: int | None
    started: int
    acked: int


@dataclass
class MixedWorkload:
    """A finished workload: its disk (with the trace), the model and every acknowledgement."""

    name: str
    fs: SimFileSystem
    prefixes: list[dict[str, bytes]]  # the model's states after each prefix of the state ops
    state_ops: list[StateOp]
    txns: list[Transaction]
    checkpoints: dict[str, tuple[str, int, bytes]]  # every id the run took: workflow, LSN, state
    checkpoint_acks: list[tuple[int, str]]  # (op count once in the index, id)
    drops: list[tuple[int, int, str]]  # (op count at the retention's start, at its ack, id)
    discards: list[tuple[int, int]]  # (op count at the compaction's ack, the log's first LSN)
    session_starts: list[tuple[int, str]]  # (op count at the start's ack, session id)
    figures: Counter[str] = field(default_factory=Counter)

    def files_after(self, n: int) -> dict[str, bytes | None]:
        """Every path a transaction writes, as the first ``n`` transactions leave it."""
        out: dict[str, bytes | None] = {p: None for t in self.txns for p in t.files}
        for t in self.txns[:n]:
            out.update(t.files)
        return out

    def sessions_after(self, n: int) -> dict[str, str | None]:
        """The status each session a transaction touches has after the first ``n``."""
        out: dict[str, str | None] = {t.session[0]: None for t in self.txns if t.session}
        for t in self.txns[:n]:
            if t.session:
                out[t.session[0]] = t.session[1]
        return out


def open_mixed(fs: SimFileSystem, policy: CheckpointPolicy = MANUAL_ONLY) -> LocalStore:
    """The store of the workload on ``fs`` (recovery opens it without automatic checkpoints:
    opening takes none either way)."""
    return open_sim_store(fs, policy, segment_size=SEGMENT_SIZE)


class MixedDriver:
    """Runs the mixed workload's calls on a simulated disk, noting every acknowledgement and
    checking the live store against the model after each call."""

    def __init__(self, name: str, fs: SimFileSystem | None = None) -> None:
        self.fs = fs if fs is not None else SimFileSystem()
        self.model = MemoryStore(clock=lambda: CK_CLOCK)
        self.store = open_mixed(self.fs, MIXED_POLICY)
        self.w = MixedWorkload(name, self.fs, [{}], [], [], {}, [], [], [], [])
        self.imported: dict[str, bytes] = {}  # imported checkpoint id -> the state it holds

    # -- the model -------------------------------------------------------------------------
    def _model_states(self) -> dict[str, bytes]:
        return {w: state_bytes(self.model.load(w)) for w in self.model.list_workflows()}

    def _live_states(self) -> dict[str, bytes]:
        return {w: state_bytes(self.store.load(w)) for w in self.store.list_workflows()}

    def expected(self, workflow_id: str, lsn: int) -> bytes | None:
        lsns = [op.lsn for op in self.w.state_ops]
        return self.w.prefixes[bisect.bisect_right(lsns, lsn)].get(workflow_id)

    def _state_op(self, what: str, started: int, lsn: int) -> int:
        """Note a state-changing call the model has been given too; its index."""
        self.w.state_ops.append(StateOp(what, lsn, started, self.fs.op_count))
        self.w.prefixes.append(self._model_states())
        assert self._live_states() == self.w.prefixes[-1], f"{what}: the store differs"
        self.w.figures[f"calls: {what}"] += 1
        return len(self.w.state_ops) - 1

    def _observe(self) -> None:
        """Note every checkpoint the index holds that was not seen yet (acknowledged now)."""
        before = self.fs.op_count
        for info in self.store.checkpoints():
            if info.id in self.w.checkpoints:
                known = self.w.checkpoints[info.id]
                assert known[:2] == (info.workflow_id, info.lsn), f"{info.id} changed"
                continue
            if info.origin == 0:
                state = self.imported[info.id]
            else:
                expected = self.expected(info.workflow_id, info.lsn)
                assert expected is not None, f"{info.id}: no model state at {info.lsn}"
                state = expected
            assert state_bytes(self.store.checkpoint_state(info.id)) == state, info.id
            self.w.checkpoints[info.id] = (info.workflow_id, info.lsn, state)
            self.w.checkpoint_acks.append((before, info.id))
            kind = "imported" if info.origin == 0 else info.type
            self.w.figures[f"checkpoints: {kind}"] += 1
            self.w.figures["checkpoints: incremental"] += info.parent is not None
        assert self.fs.op_count == before, "looking at the index must not write"

    # -- calls that change states ------------------------------------------------------------
    def commit(self, batch: list[Mutation], session: Session | None = None) -> None:
        started = self.fs.op_count
        lsn = self.store.commit(batch, session=session)
        self.model.commit(batch)
        self._state_op("commit in a session" if session else "commit", started, lsn)
        self._observe()

    def save(self, state: WorkflowState) -> None:
        started = self.fs.op_count
        lsn = self.store.save(state)
        self.model.save(state)
        self._state_op("save", started, lsn)
        self._observe()

    def delete(self, workflow_id: str) -> None:
        started = self.fs.op_count
        lsn = self.store.delete(workflow_id)
        self.model.delete(workflow_id)
        self._state_op("delete", started, lsn)
        self._observe()

    # -- checkpoints, retention, compaction --------------------------------------------------
    def checkpoint(self, workflow_id: str) -> None:
        self.store.checkpoint(workflow_id, tags=("manual",))
        self._observe()

    def retain(self, policy: RetentionPolicy) -> None:
        started = self.fs.op_count
        result = self.store.retain(policy)
        self.w.drops += [(started, self.fs.op_count, info.id) for info in result.drop]
        self.w.figures["retention: checkpoints folded"] += len(result.fold)
        self.w.figures["retention: checkpoints dropped"] += len(result.drop)
        self._observe()

    def compact(self) -> None:
        report = self.store.compact()
        assert report.segments_discarded, "the workload's compactions must discard segments"
        self.w.discards.append((self.fs.op_count, report.log_first_lsn))
        self.w.figures["compaction: segments discarded"] += len(report.segments_discarded)
        self._observe()

    # -- transactions ------------------------------------------------------------------------
    def _transaction(
        self,
        what: str,
        call: Callable[[], object],
        *,
        model: Callable[[], int] | None = None,
        session: tuple[str, str] | None = None,
    ) -> None:
        before_files = txn_files(self.fs)
        before_index = {info.id for info in self.store.checkpoints()}
        started = self.fs.op_count
        call()
        acked = self.fs.op_count
        state_op = model() if model is not None else None
        after = txn_files(self.fs)
        files = {
            path: content
            for path, content in after.items()
            if path.startswith((f"{WORKFLOWS_DIR}/", f"{SESSIONS_DIR}/"))
            and before_files.get(path) != content
        }
        checkpoints = frozenset(i.id for i in self.store.checkpoints()) - before_index
        self.w.txns.append(Transaction(what, files, checkpoints, session, state_op, started, acked))
        self.w.figures[f"transactions: {what}"] += 1
        self._observe()

    def write_state_files(self) -> None:
        self._transaction(
            "write_state_files", lambda: self.store.write_state_files(checkpoint=True)
        )

    def start_session(self, user: str) -> Session:
        session = self.store.start_session(user, {"run": 1})
        self.w.session_starts.append((self.fs.op_count, session.id))
        self.w.figures["sessions started"] += 1
        return session

    def end_session(self, session: Session) -> None:
        self._transaction("end_session", session.end, session=(session.id, "ended"))

    def restore_to_file(self, checkpoint_id: str) -> None:
        workflow_id, _lsn, content = self.w.checkpoints[checkpoint_id]
        restored: list[int] = []
        started = self.fs.op_count

        def model() -> int:
            self.model.save(msgspec.msgpack.decode(content, type=WorkflowState))
            return self._state_op("restore to file", started, restored[0])

        self._transaction(
            "restore to file",
            lambda: restored.append(self.store.restore(checkpoint_id, to_file=True)),
            model=model,
        )
        assert workflow_id in self.store.list_workflows()

    def import_session(self, bundle: bytes, states: Sequence[WorkflowState]) -> str:
        """Import ``bundle`` (holding ``states``); the imported session's id."""
        started = self.fs.op_count
        sid: list[str] = []

        def model() -> int:
            for state in states:
                self.model.save(state)
            lsn = self.store.load(states[0].workflow.id).metadata.last_lsn
            return self._state_op("import_session", started, lsn)

        def call() -> None:
            sid.append(self.store.import_session(bundle).id)

        self._transaction("import_session", call, model=model)
        # the session is the one the transaction made: note the status it has after it
        info = {s.id: s for s in self.store.sessions()}[sid[0]]
        self.w.txns[-1] = dataclasses.replace(self.w.txns[-1], session=(sid[0], info.status))
        return sid[0]

    def export_session(self, session_id: str) -> bytes:
        before = self.fs.op_count
        bundle = self.store.export_session(session_id)
        assert self.fs.op_count == before, "an export must not write"
        self.w.figures["sessions exported"] += 1
        return bundle

    def finish(self) -> MixedWorkload:
        assert self._live_states() == self.w.prefixes[-1]
        checks = self.store.verify()
        assert all(c.ok and c.matches_log is not False for c in checks), checks
        self.store.close()
        return self.w


def _create(workflow_id: str, steps: int = 2) -> list[Mutation]:
    return [
        CreateWorkflow(
            workflow_id=workflow_id,
            name=workflow_id,
            steps=tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(steps)),
            at=0,
        )
    ]


def _source_bundle() -> tuple[bytes, list[WorkflowState], dict[str, bytes]]:
    """A bundle of an ended session of another store (its own disk, not explored): the session
    wrote workflows ``imp1`` and ``imp2``; ``imp1`` has a checkpoint. Returns the bundle, the
    states it holds and the state each bundled checkpoint holds."""
    source = open_mixed(SimFileSystem())
    session = source.start_session("bob", {"from": "elsewhere"})
    for w in ("imp1", "imp2"):
        source.commit(_create(w), session=session)
        source.commit(
            [
                SetStepStatus(workflow_id=w, step_id="s0", status="running", at=0),
                PutStepOutput(workflow_id=w, step_id="s0", data={"t": f"{w} " * 200}, at=0),
            ],
            session=session,
        )
    source.checkpoint("imp1")
    session.end()
    bundle = source.export_session(session.id)
    states = [source.load(w) for w in ("imp1", "imp2")]
    checkpoints = {
        info.id: state_bytes(source.checkpoint_state(info.id)) for info in source.checkpoints()
    }
    source.close()
    return bundle, states, checkpoints


def mixed_workload(fs: SimFileSystem | None = None, name: str = "mixed") -> MixedWorkload:
    """The mixed workload: 3 workflows of 6 steps (``store_plan``: 13 batches, records growing
    past a segment), plus a scratch workflow saved and deleted, a session of two batches ended
    with final checkpoints, manual and automatic (incremental) checkpoints, two retentions,
    two compactions, a ``write_state_files``, a restore into the workflow file and an import of
    another store's session, then an export of it."""
    plan = store_plan(WORKFLOWS, 6, grow=30)
    bundle, imported_states, imported_checkpoints = _source_bundle()
    d = MixedDriver(name, fs)
    d.imported = imported_checkpoints
    for batch in plan[:3]:
        d.commit(batch)
    d.checkpoint("alpha")
    session = d.start_session("alice")
    for batch in plan[3:5]:
        d.commit(batch, session)
    beta = d.store.load("beta")
    d.save(msgspec.structs.replace(beta, context=WorkflowContext(user_data={"saved": True})))
    scratch = msgspec.structs.replace(
        beta, workflow=msgspec.structs.replace(beta.workflow, id="scratch", name="scratch")
    )
    d.save(scratch)
    d.write_state_files()
    for batch in plan[5:7]:
        d.commit(batch)
    d.checkpoint("alpha")
    d.retain(RetentionPolicy(keep_last=2))
    d.end_session(session)
    d.compact()
    for batch in plan[7:9]:
        d.commit(batch)
    d.delete("scratch")
    oldest_alpha = d.store.checkpoints("alpha")[-1].id  # newest first
    d.restore_to_file(oldest_alpha)
    assert d.w.prefixes[-1]["alpha"] != d.w.prefixes[-2]["alpha"], "the restore changes alpha"
    imported = d.import_session(bundle, imported_states)
    d.export_session(imported)
    for batch in plan[9:11]:
        d.commit(batch)
    d.retain(RetentionPolicy(keep_last=1))
    d.compact()
    for batch in plan[11:]:
        d.commit(batch)
    w = d.finish()
    assert w.figures["retention: checkpoints folded"] > 0, w.figures
    assert w.figures["checkpoints: incremental"] > 0, w.figures
    return w


# -- checking one crash state -----------------------------------------------------------------


@dataclass(frozen=True)
class Recovered:
    """What a recovery yields: the states, the index ids and the sessions' statuses."""

    states: dict[str, bytes]
    index: frozenset[str]
    sessions: dict[str, str]


def check_mixed_state(
    w: MixedWorkload, disk: SimFileSystem, at: int
) -> tuple[list[tuple[str, str]], Recovered | None]:
    """The violations (kind, what) of one crash state of ``w`` cut after ``at`` operations,
    and what the (first) recovery yielded (None if it raised)."""
    try:
        with open_mixed(disk) as store:
            got, index, read = read_store(store)
            sessions: dict[str, str] = {s.id: s.status for s in store.sessions()}
            first_lsn = store.stats().log_first_lsn
        once = disk.snapshot()
        with open_mixed(disk):
            pass
    except Exception as exc:
        return [("recoveries raising", f"{type(exc).__name__}: {exc}")], None
    recovered = Recovered(got, frozenset(index), sessions)
    found: list[tuple[str, str]] = []
    if disk.snapshot() != once:
        found.append(("recover-twice differences", "the second recovery changed the disk"))
    # the workflows: the model after a prefix of the state ops covering every acknowledged one
    begun = sum(1 for op in w.state_ops if op.started < at)
    acked = sum(1 for op in w.state_ops if op.acked <= at)
    ks = [k for k, states in enumerate(w.prefixes) if states == got and k <= begun]
    if not ks:
        found.append(("states not the model after a prefix", f"not after any of 0..{begun}"))
    elif max(ks) < acked:
        found.append(("acknowledged writes lost", f"{acked} state calls acknowledged, "
                      f"states after {ks}"))  # fmt: skip
    # checkpoints
    dropping = {cid for start, _op, cid in w.drops if start < at}
    dropped = {cid for _start, op, cid in w.drops if op <= at}
    for checkpoint_id, info in index.items():
        known = w.checkpoints.get(checkpoint_id)
        if known is None or known[:2] != (info.workflow_id, info.lsn):
            found.append(("checkpoints loading wrong", f"{checkpoint_id} was never taken"))
        elif read[checkpoint_id] != known[2]:
            why = read[checkpoint_id]
            found.append(("checkpoints loading wrong", why if isinstance(why, str) else
                          f"{checkpoint_id} holds another state"))  # fmt: skip
    found += dropped_and_discarded_violations(
        index=set(index),
        first_lsn=first_lsn,
        disk=disk,
        at=at,
        checkpoint_acks=w.checkpoint_acks,
        dropping=dropping,
        dropped=dropped,
        discards=w.discards,
        lost="acknowledged writes lost",
    )
    # sessions started
    for op, session_id in w.session_starts:
        if op <= at and session_id not in sessions:
            found.append(("acknowledged writes lost", f"session {session_id} started"))
    found += _check_transactions(w, at, once, recovered, ks, dropping)
    return found, recovered


def _check_transactions(
    w: MixedWorkload,
    at: int,
    snapshot: dict[str, bytes | None],
    got: Recovered,
    ks: Sequence[int],
    dropping: set[str],
) -> list[tuple[str, str]]:
    """2PC all-or-nothing across files, checkpoint entries, session events and batches."""
    files = {
        path[len(CK_STORE) + 1 :]: content
        for path, content in snapshot.items()
        if content is not None and path.startswith(CK_STORE + "/")
    }
    ns = [
        n
        for n in range(len(w.txns) + 1)
        if all(files.get(p) == c for p, c in w.files_after(n).items())
    ]
    if not ns:
        return [("2PC atomicity violations", "the files are not those of any prefix")]
    started = {sid for _op, sid in w.session_starts}

    def agrees(k: int | None, n: int) -> bool:
        for t, txn in enumerate(w.txns):
            happened = t < n
            if k is not None and txn.state_op is not None and (txn.state_op < k) != happened:
                return False
            present = txn.checkpoints & got.index
            if happened and not (txn.checkpoints - dropping) <= present:
                return False
            if not happened and present:
                return False
        for sid, status in w.sessions_after(n).items():
            actual = got.sessions.get(sid)
            allowed = {status} if status else ({None, "active"} if sid in started else {None})
            if actual not in allowed:
                return False
        return True

    prefixes: list[int | None] = [*ks] or [None]  # no prefix matched: judged above
    consistent = [n for n in ns if any(agrees(k, n) for k in prefixes)]
    if not consistent:
        return [("2PC atomicity violations", f"files of the first n in {ns}, but entries, "
                 "sessions or batches of another n")]  # fmt: skip
    acked = sum(1 for t in w.txns if t.acked <= at)
    if max(consistent) < acked:
        return [("acknowledged writes lost", f"{acked} transactions acknowledged, "
                 f"{max(consistent)} there")]  # fmt: skip
    return []


def explore_mixed(
    w: MixedWorkload, *, stride: int = 1, points: Sequence[int] | None = None
) -> CrashOutcome:
    """Check every crash state at every ``stride``-th crash point of ``w``'s trace (or at
    ``points``); counts states by the simulator's kind."""
    out = CrashOutcome(w.name, MIXED_VIOLATIONS)
    for at in w.fs.crash_points()[::stride] if points is None else points:
        out.crash_points += 1
        for label, disk in w.fs.crash_states(at):
            out.states[label.split(":")[0]] += 1
            found, _got = check_mixed_state(w, disk, at)
            out.states_with_violations += bool(found)
            for kind, problem in found:
                out.found[kind].append(f"{w.name} op {at} {label}: {problem}")
    return out


# -- crash during recovery --------------------------------------------------------------------


REPAIR_KINDS = (
    "torn segment creation set aside",
    "torn log tail cut",
    "segments after the tail quarantined",
    "discarded segments deleted",
    "decided transaction rolled forward",
    "undecided temp files deleted",
    "store creation finished",
    "a segment created where none was readable",
    "other repair",
)
"""What a recovery repairs, most telling first (:func:`repair_kind`)."""


def _repair_of(op: object) -> str | None:
    wal = f"/{WAL_DIR}/"
    if isinstance(op, Mkdir):
        if f"/{WAL_DIR}/quarantine" in op.path:
            return "segments after the tail quarantined"
        return "store creation finished"
    if isinstance(op, Create) and wal in op.path and parse_segment_name(op.path.split("/")[-1]):
        return "a segment created where none was readable"
    if isinstance(op, Truncate) and wal in op.path:
        return "torn log tail cut"
    if isinstance(op, Replace) and wal in op.path:
        src, dst = op.path.split(" -> ")
        if ".broken-" in dst and not src.endswith(".tmp"):
            return "torn segment creation set aside"
        if "/quarantine/" in dst:
            return "segments after the tail quarantined"
        return None  # an evidence file or START put in place: part of another repair
    if isinstance(op, Unlink) and wal in op.path and parse_segment_name(op.path.split("/")[-1]):
        return "discarded segments deleted"
    if isinstance(op, Replace) and op.path.split(" -> ")[0].endswith(".tmp"):
        return "decided transaction rolled forward"
    if isinstance(op, Unlink) and op.path.endswith(".tmp"):
        return "undecided temp files deleted"
    if isinstance(op, WriteOp | Truncate | Create | Replace | Unlink):
        return "other repair"
    return None


def repair_kind(trace: Sequence[object]) -> str | None:
    """What a recovery's trace repaired (the first of :data:`REPAIR_KINDS` it did); None if
    it repaired nothing (it only synced)."""
    done = {kind for op in trace if (kind := _repair_of(op)) is not None}
    return next((kind for kind in REPAIR_KINDS if kind in done), None)


@dataclass
class RecoveryCrashOutcome:
    """Crash-during-recovery figures: repairing states recovered with a crash, by kind of
    repair; states of the recoveries' traces checked; what they found."""

    repairing_states: Counter[str] = field(default_factory=Counter)
    outcome: CrashOutcome = field(
        default_factory=lambda: CrashOutcome("recovery crashes", RECOVERY_CRASH_VIOLATIONS)
    )


def explore_recovery_crashes(
    w: MixedWorkload, *, stride: int = 1, every: int = 1, limit: int | None = None
) -> RecoveryCrashOutcome:
    """At every ``stride``-th crash point, every ``every``-th crash state whose recovery repairs
    something (up to ``limit`` of them): crash that recovery at each of its operations, recover
    again, check as :func:`check_mixed_state` against ``w`` cut at the first crash, and that
    the result equals the uninterrupted recovery's."""
    out = RecoveryCrashOutcome()
    seen = 0
    taken = 0
    for at in w.fs.crash_points()[::stride]:
        for label, disk in w.fs.crash_states(at):
            if limit is not None and taken >= limit:
                return out
            try:
                with open_mixed(disk):  # on a fresh disk: its trace is the recovery's
                    pass
            except Exception:
                continue  # counted by explore_mixed as a recovery raising
            kind = repair_kind(disk.trace)
            if kind is None:
                continue
            seen += 1
            if (seen - 1) % every:
                continue
            taken += 1
            out.repairing_states[kind] += 1
            _found, reference = check_mixed_state(w, _before_recovery(disk), at)
            recovering = disk
            for at2 in recovering.crash_points()[1:]:
                out.outcome.crash_points += 1
                for label2, disk2 in recovering.crash_states(at2):
                    out.outcome.states[label2.split(":")[0]] += 1
                    found, got = check_mixed_state(w, disk2, at)
                    if got is not None and reference is not None and got != reference:
                        found.append(("result differs from an uninterrupted recovery", ""))
                    out.outcome.states_with_violations += bool(found)
                    where = f"{w.name} op {at} {label}, recovery op {at2} {label2}"
                    for what, problem in found:
                        out.outcome.found[what].append(f"{where}: {problem}")
    return out


def _before_recovery(disk: SimFileSystem) -> SimFileSystem:
    """A fresh copy of ``disk`` as it was before any operation of its trace."""
    return next(iter(disk.crash_states(0)))[1]


# -- broken disks: each plants one durability bug the checks must see -------------------------


class _DeferringFS(SimFileSystem):
    """A disk that records some syncs later than they were called (the call returns at
    once): :meth:`_defer` holds one back, :meth:`_flush` records every one held back. Used to
    model code that acknowledges, or renames, before the data is durable."""

    def __init__(self) -> None:
        super().__init__()
        self._held: list[Fsync] = []

    def _defer(self, fd: int, kind: str) -> None:
        with self._lock:
            of = self._open(fd)
            self._held.append(Fsync(of.inode, "fsync" if kind == "fsync" else "fdatasync", of.path))

    def _flush(self) -> None:
        with self._lock:
            held, self._held = self._held, []
            for op in held:
                self._record(op)

    # every mutating operation first records the syncs held back (subclasses hold one kind)
    def write(self, fd: int, data: bytes | memoryview) -> None:
        self._flush()
        super().write(fd, data)

    def truncate(self, fd: int, size: int) -> None:
        self._flush()
        super().truncate(fd, size)

    def fsync(self, fd: int) -> None:
        self._flush()
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._flush()
        super().fdatasync(fd)

    def create_exclusive(self, path: str) -> int:
        self._flush()
        return super().create_exclusive(path)

    def mkdir(self, path: str) -> None:
        self._flush()
        super().mkdir(path)

    def replace(self, src: str, dst: str) -> None:
        self._flush()
        super().replace(src, dst)

    def unlink(self, path: str) -> None:
        self._flush()
        super().unlink(path)

    def fsync_dir(self, path: str) -> None:
        self._flush()
        super().fsync_dir(path)


class AckBeforeSyncFS(_DeferringFS):
    """fdatasync returns at once and the sync happens only at the next mutating operation:
    every log append is acknowledged before it is durable."""

    def fdatasync(self, fd: int) -> None:
        self._flush()
        self._defer(fd, "fdatasync")


class RenameBeforeFsyncFS(_DeferringFS):
    """A file's fsync is held back past the rename that follows it (and happens right after
    that rename); before any other mutating operation it happens as called. So a temp file is
    renamed into place before it is durable, as code that renames before fsyncing would."""

    def fsync(self, fd: int) -> None:
        self._flush()
        self._defer(fd, "fsync")

    def replace(self, src: str, dst: str) -> None:
        SimFileSystem.replace(self, src, dst)
        self._flush()


BROKEN_DISKS: dict[str, Callable[[], SimFileSystem]] = {
    "fdatasync dropped (log appends never durable)": NoDataSyncFS,
    "directory fsync dropped (new entries and renames not durable)": NoDirSyncFS,
    "acknowledge before fdatasync (the sync happens after the ack)": AckBeforeSyncFS,
    "rename before fsync (a temp file renamed into place before it is durable)": (
        RenameBeforeFsyncFS
    ),
}
"""Deliberately broken disks, each named by the bug it plants."""

BROKEN_STRIDE = {
    name: 5 if make in (NoDataSyncFS, NoDirSyncFS) else 1 for name, make in BROKEN_DISKS.items()
}
"""Crash-point stride of each broken disk in :func:`reliability_section`: the first two
break most states (every fifth point shows thousands); the last two show only at a few
points (right after an acknowledgement, right after a rename), so every point is explored."""


def rename_points(w: MixedWorkload) -> list[int]:
    """The crash points right after each rename of the trace (where a file renamed before it
    is durable shows)."""
    return [i + 1 for i, op in enumerate(w.fs.trace) if isinstance(op, Replace)]


def explore_broken(name: str, *, stride: int = 1) -> tuple[MixedWorkload, CrashOutcome]:
    """The mixed workload on broken disk ``name`` of :data:`BROKEN_DISKS`, explored."""
    w = mixed_workload(BROKEN_DISKS[name](), name)
    return w, explore_mixed(w, stride=stride)


def _kinds(o: CrashOutcome) -> str:
    return ", ".join(f"{k} {len(v)}" for k, v in o.found.items() if v) or "none"


def reliability_section() -> str:
    """Run the whole mixed workload's exploration (every crash point), crash every repairing
    recovery at each of its operations, and explore the workload on every broken disk; the
    figures as a Markdown section. ``AssertionError`` if the correct code shows any violation
    or a broken disk goes unnoticed."""
    started = time.monotonic()
    w = mixed_workload()
    o = explore_mixed(w)
    assert o.violations == 0, "\n".join(o.problems())
    r = explore_recovery_crashes(w)
    assert r.outcome.violations == 0, "\n".join(r.outcome.problems())
    broken = {name: explore_broken(name, stride=BROKEN_STRIDE[name])[1] for name in BROKEN_DISKS}
    for name, b in broken.items():
        assert b.states_with_violations > 0, f"{name}: the checks did not see the bug"
    seconds = time.monotonic() - started

    calls = ", ".join(f"{k} {v}" for k, v in sorted(w.figures.items()))
    lines = [
        "## Mixed workload: every feature in one store, crashed at every operation",
        "",
        "One store (durability `always`, 4 KiB segments) runs batches over several workflows, "
        "`save`/`delete`, manual and automatic incremental checkpoints, retentions, "
        "compactions, `write_state_files`, a session ended with final checkpoints, a restore "
        "into the workflow file and an import of another store's session on the crash "
        "simulator; at every operation every crash state is recovered by `LocalStore.open` "
        "and checked against an independent model (`tests/crashmixed.py`). Recoveries that "
        "repair something are then crashed at each of their own operations and recovered "
        "again, and the same workload runs on deliberately broken disks, which the checks "
        f"must catch. Run time {seconds:.0f} s.",
        "",
        f"Workload: {len(w.fs.trace)} operations; {calls}.",
        "",
        "| Figure | Value |",
        "|---|---:|",
        f"| crash points | {o.crash_points} |",
        f"| crash states explored | {o.total_states} |",
    ]
    lines += [f"| crash states: {kind} | {n} |" for kind, n in sorted(o.states.items())]
    lines += [f"| {kind} | {len(o.found[kind])} |" for kind in MIXED_VIOLATIONS]
    lines += [
        "",
        "Crash during recovery:",
        "",
        "| Figure | Value |",
        "|---|---:|",
        f"| repairing crash states whose recovery was crashed | "
        f"{sum(r.repairing_states.values())} |",
    ]
    lines += [f"| repairing: {kind} | {n} |" for kind, n in sorted(r.repairing_states.items())]
    lines += [
        f"| crash states of those recoveries explored | {r.outcome.total_states} |",
        f"| violations in them (every kind above, and results differing from an "
        f"uninterrupted recovery) | {r.outcome.violations} |",
        "",
        "Broken disks (the same workload; every crash point, or every fifth where the bug "
        "shows in most of them):",
        "",
        "| Planted bug | Crash points | States explored | States showing the bug | Found |",
        "|---|---:|---:|---:|---|",
        f"| none (the correct code) | {o.crash_points} | {o.total_states} | "
        f"{o.states_with_violations} | none |",
    ]
    lines += [
        f"| {name} | {b.crash_points} | {b.total_states} | {b.states_with_violations} | "
        f"{_kinds(b)} |"
        for name, b in broken.items()
    ]
    return "\n".join(lines) + "\n"
