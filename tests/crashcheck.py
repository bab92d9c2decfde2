"""Crash exploration of log workloads on the simulated file system (DESIGN.md §10 tier 2).

A workload runs on a :class:`SimFileSystem`, noting after which operation each append was
acknowledged. Then, for every operation of the trace and every disk a crash there could leave,
the real recovery (``Log.open``) runs and the result is checked against the model:

* recovery succeeds (no exception);
* the records read are exactly the first ``n`` records appended, byte for byte (no garbage,
  no gap, no reordering);
* every record acknowledged at or before the crash point is among them, except where the
  durability level's contract allows the loss (``none``/``interval``: an OS-crash state may
  lose what was not synced; a process-crash state never);
* recovering a second time changes nothing on disk and reads the same records;
* the recovered log accepts a new append, which reads back after another reopen.

The same code feeds ``tests/test_crash_log.py`` (quick) and ``docs/reliability.md``
(``python -m tests.reliability``).
"""

from __future__ import annotations

import bisect
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from tests.simfs import Create, SimFileSystem
from wfstate.backends.local import LocalStore
from wfstate.backends.memory import MemoryStore
from wfstate.checkpointindex import CheckpointInfo
from wfstate.checkpointpolicy import MANUAL_ONLY, CheckpointPolicy
from wfstate.checkpointreports import CompactionReport
from wfstate.errors import CorruptionError
from wfstate.format import CHECKPOINTS_DIR, TXN_DIRS, WAL_DIR, parse_segment_name
from wfstate.model import WorkflowState, WorkflowStep, encode_state
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus
from wfstate.retention import RetentionPlan, RetentionPolicy
from wfstate.statetable import stamped_with
from wfstate.wal import Compression, Durability, Log
from wfstate.wal.log import DictionaryTrigger

WAL = "/store/wal"


@dataclass
class Ack:
    lsn: int
    payload: bytes
    after_op: int  # the append had returned once this many operations were recorded
    durable_after_op: int | None = None  # under none/interval: op count once a sync covered it


@dataclass
class Workload:
    """A finished workload: its file system (with the trace) and what it appended."""

    name: str
    durability: Durability
    fs: SimFileSystem
    appended: list[bytes]
    acks: list[Ack]


@dataclass
class Outcome:
    """What the exploration found; every list is expected to stay empty."""

    workload: str
    states: Counter[str] = field(default_factory=Counter)
    crash_points: int = 0
    acknowledged_lost: list[str] = field(default_factory=list)
    wrong_records: list[str] = field(default_factory=list)
    recovery_errors: list[str] = field(default_factory=list)
    recover_twice_differs: list[str] = field(default_factory=list)
    append_after_recovery_fails: list[str] = field(default_factory=list)

    @property
    def total_states(self) -> int:
        return sum(self.states.values())

    @property
    def violations(self) -> int:
        return (
            len(self.acknowledged_lost)
            + len(self.wrong_records)
            + len(self.recovery_errors)
            + len(self.recover_twice_differs)
            + len(self.append_after_recovery_fails)
        )


def _payload(i: int) -> bytes:
    """Varied sizes (below the compression threshold to several KiB), half-compressible, so
    records span several 512 B and 4 KiB pieces and tear in interesting places."""
    size = (37, 300, 900, 2600, 5000)[i % 5]
    rng = random.Random(i)
    text = f"workflow w{i % 3} step {i}: " + "".join(
        f"{rng.getrandbits(32):08x} " for _ in range(size // 9 + 1)
    )
    return text.encode()[:size]


class SlowSyncFS(SimFileSystem):
    """A simulated disk whose syncs take a millisecond, so concurrent appends form groups."""

    def fdatasync(self, fd: int) -> None:
        time.sleep(0.001)
        super().fdatasync(fd)


def run_workload(
    name: str,
    *,
    durability: Durability = "always",
    appends: int = 30,
    threads: int = 1,
    sync_every: int = 0,
    handles: int = 1,
    fs: SimFileSystem | None = None,
    dictionary: DictionaryTrigger | None = None,
) -> Workload:
    """Append ``appends`` records (split over ``threads``) to a fresh log on a simulated disk.

    ``sync_every``: call ``sync()`` after every that many appends (for ``none``/``interval``).
    ``handles``: open the log that many times and give thread ``k`` handle ``k % handles``,
    as separate processes would (writers' lock, catch-up, rotation by whoever holds the lock).
    Segments are small (4 KiB) so the workload rotates several times. ``dictionary``: zstd
    with segment dictionaries, every handle training at this trigger (docs/format.md §2.3),
    so the trace crosses a dictionary rotation; else lz4 (one thread) or zstd without them.
    """
    fs = fs if fs is not None else SimFileSystem()
    payloads = [_payload(i) for i in range(appends)]
    acks: list[Ack] = []
    lock = threading.Lock()
    logs = [
        Log.open(
            WAL,
            fs=fs,
            durability=durability,
            segment_size=4096,
            compression=(
                Compression()
                if dictionary is not None
                else Compression(codec="lz4" if threads == 1 else "zstd", dictionary=False)
            ),
            epoch=0x5EED,
        )
        for _ in range(handles)
    ]
    for log in logs:
        if dictionary is not None:
            log.dictionary_trigger = dictionary

    def worker(k: int) -> None:
        log = logs[k % handles]
        for i in range(k, appends, threads):
            lsn = log.append(payloads[i])
            with lock:
                acks.append(Ack(lsn, payloads[i], fs.op_count))
                if sync_every and len(acks) % sync_every == 0:
                    log.sync()
                    synced = fs.op_count
                    for a in acks:
                        if a.durable_after_op is None:
                            a.durable_after_op = synced

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for log in logs:
        log.close()
    # The log assigns LSNs in append order; with threads the payload of each LSN is the one
    # whose append returned it.
    by_lsn = {a.lsn: a.payload for a in acks}
    appended = [by_lsn[lsn] for lsn in sorted(by_lsn)]
    if durability == "always":
        for a in acks:
            a.durable_after_op = a.after_op
    return Workload(name, durability, fs, appended, acks)


def _records(log: Log) -> list[tuple[int, bytes]]:
    return [(r.lsn, r.payload) for r in log.read()]


def explore(workload: Workload, *, stride: int = 1) -> Outcome:
    """Check every crash state at every ``stride``-th crash point of the workload's trace."""
    out = Outcome(workload.name)
    expected = [(i + 1, p) for i, p in enumerate(workload.appended)]
    for at in workload.fs.crash_points()[::stride]:
        out.crash_points += 1
        for label, disk in workload.fs.crash_states(at):
            kind = label.split(":")[0]
            out.states[kind] += 1
            where = f"{workload.name} op {at} {label}"
            _check_state(workload, disk, at, kind, where, expected, out)
    return out


def _check_state(
    workload: Workload,
    disk: SimFileSystem,
    at: int,
    kind: str,
    where: str,
    expected: list[tuple[int, bytes]],
    out: Outcome,
) -> None:
    try:
        with Log.open(WAL, fs=disk) as log:
            got = _records(log)
    except Exception as exc:
        out.recovery_errors.append(f"{where}: {type(exc).__name__}: {exc}")
        return
    if got != expected[: len(got)]:
        out.wrong_records.append(f"{where}: records are not a prefix of what was appended")
        return
    process_crash = kind == "prefix"
    for ack in workload.acks:
        must_survive = ack.after_op <= at and (
            process_crash or (ack.durable_after_op is not None and ack.durable_after_op <= at)
        )
        if must_survive and ack.lsn > len(got):
            out.acknowledged_lost.append(f"{where}: acknowledged LSN {ack.lsn} lost")
            break
    before = disk.snapshot()
    try:
        with Log.open(WAL, fs=disk) as log:
            again = _records(log)
    except Exception as exc:
        out.recover_twice_differs.append(f"{where}: second recovery raised {exc!r}")
        return
    if again != got or disk.snapshot() != before:
        out.recover_twice_differs.append(f"{where}: second recovery changed the log")
    try:
        with Log.open(WAL, fs=disk) as log:
            lsn = log.append(b"after recovery")
        with Log.open(WAL, fs=disk) as log:
            final = _records(log)
        if lsn != len(got) + 1 or final != [*got, (lsn, b"after recovery")]:
            raise AssertionError(f"append after recovery read back as {final[-2:]}")
    except Exception as exc:
        out.append_after_recovery_fails.append(f"{where}: {exc!r}")


WorkloadFactory = Callable[[], Workload]

CRASH_TRIGGER = DictionaryTrigger(
    min_bytes=16384, min_samples=10, max_samples=1000, max_bytes=1 << 20, size=1024
)
"""Trains a dictionary after ~12 of :func:`_payload`'s records (zstd's trainer fails on fewer)."""

QUICK_WORKLOADS: dict[str, WorkloadFactory] = {
    "always, 1 thread, 80 appends, rotating": lambda: run_workload("always-1t", appends=80),
    "always, 4 threads (group commit), 80 appends": lambda: run_workload(
        "always-4t", appends=80, threads=4, fs=SlowSyncFS()
    ),
    "always, 2 handles x 2 threads (two processes' writers), 80 appends": lambda: run_workload(
        "always-2h", appends=80, threads=4, handles=2, fs=SlowSyncFS()
    ),
    "none, sync every 5 appends": lambda: run_workload(
        "none-sync5", durability="none", appends=60, sync_every=5
    ),
    "always, 1 thread, 40 appends across a dictionary rotation": lambda: run_workload(
        "always-1t-dictionary", appends=40, dictionary=CRASH_TRIGGER
    ),
}


class NoDataSyncFS(SimFileSystem):
    """A broken disk: fdatasync returns without syncing (acknowledges before durability)."""

    def fdatasync(self, fd: int) -> None:
        pass


class NoDirSyncFS(SimFileSystem):
    """A broken disk: directory fsync returns without syncing (new segments may vanish)."""

    def fsync_dir(self, path: str) -> None:
        pass


BROKEN_VARIANTS: dict[str, Callable[[], SimFileSystem]] = {
    "fdatasync dropped (acknowledge before the data is durable)": NoDataSyncFS,
    "directory fsync dropped (new segment entries not durable)": NoDirSyncFS,
}
"""Deliberately broken file systems the simulator must catch (proof that it sees bugs)."""


def states_showing_the_bug(outcome: Outcome) -> int:
    """Crash states in which a broken variant lost an acknowledged record or broke recovery."""
    return len(outcome.acknowledged_lost) + len(outcome.recovery_errors)


# -- checkpoints, retention and compaction over a store (issue 4) ------------------------------
#
# A store workload (batches of mutations, checkpoints taken by hand or by a policy, retentions
# that fold and drop, compactions that discard segments; one handle or two alternating handles
# on one simulated disk) notes after which operation each batch, checkpoint, drop and discard
# was acknowledged. Then in every crash state of every crash point the store is reopened and:
#
# * every workflow equals the model after one prefix of the batches that includes every
#   acknowledged batch (no acknowledged batch lost, nothing half applied);
# * every checkpoint in the index is one the run created, of the same workflow and LSN, and
#   reads as exactly the model's state of its workflow at its LSN (a fold: the same state
#   under the same id), so no checkpoint loads wrong;
# * every acknowledged checkpoint is in the index unless a retention begun by then dropped it,
#   and no checkpoint an acknowledged retention dropped is back;
# * the log starts no earlier than the last acknowledged compaction's anchor, and no segment
#   before the log's start is left on disk once the store is open (a discarded segment never
#   comes back as live data).
#
# ``tests/test_checkpoint_crash.py`` (quick and slow) and ``docs/reliability.md`` use it.

CK_STORE = "/data/store"
CK_CLOCK = 1000.0
"""The one time of every checkpoint workload (and its model): checkpoints read the clock too."""
CK_WORKFLOWS = ("alpha", "beta", "gamma")

CK_VIOLATIONS = (
    "recoveries raising",
    "acknowledged batches lost",
    "states not a prefix of the batches",
    "checkpoints loading wrong",
    "acknowledged checkpoints lost",
    "dropped checkpoints resurrected",
    "discarded segments resurrected",
)
"""What the checkpoint exploration counts, in the order the report lists it."""


def state_bytes(state: WorkflowState) -> bytes:
    """A state's encoding without its LSN stamp: checkpoint, drop and discard records take
    LSNs the model's batches do not."""
    return encode_state(stamped_with(state, 0))


def store_plan(
    workflows: Sequence[str] = CK_WORKFLOWS, steps: int = 10, *, outputs: int = 1, grow: int = 60
) -> list[list[Mutation]]:
    """A creation batch, then per step: one batch starting the step in every workflow,
    ``outputs - 1`` batches putting an output on it, and one putting an output and completing
    it (cross-workflow atomicity; outputs grow by ``grow`` words a step, so records span
    segments and tear across pieces). ``store_plan()`` is ``tests.test_store_crash.batches()``.
    """
    out: list[list[Mutation]] = [
        [
            CreateWorkflow(
                workflow_id=w,
                name=w,
                steps=tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(steps)),
                at=0,
            )
            for w in workflows
        ]
    ]
    for i in range(steps):
        out.append(
            [
                SetStepStatus(workflow_id=w, step_id=f"s{i}", status="running", at=0)
                for w in workflows
            ]
        )
        for k in range(outputs):
            batch: list[Mutation] = [
                PutStepOutput(
                    workflow_id=w,
                    step_id=f"s{i}",
                    data={"text": (f"{w} {i} " if k == 0 else f"{w} {i}.{k} ") * (40 + grow * i)},
                    at=0,
                )
                for w in workflows
            ]
            if k == outputs - 1:
                batch += [
                    SetStepStatus(workflow_id=w, step_id=f"s{i}", status="completed", at=0)
                    for w in workflows
                ]
            out.append(batch)
    return out


def open_sim_store(
    fs: SimFileSystem, policy: CheckpointPolicy = MANUAL_ONLY, *, segment_size: int = 4096
) -> LocalStore:
    return LocalStore.open(
        CK_STORE,
        fs=fs,
        clock=lambda: CK_CLOCK,
        segment_size=segment_size,
        compression=Compression(codec="none"),
        checkpoints=policy,
    )


@dataclass
class CheckpointWorkload:
    """A finished store workload: its disk (with the trace), the model, and what was
    acknowledged after which operation."""

    name: str
    fs: SimFileSystem
    prefixes: list[dict[str, bytes]]  # the model's states after each prefix of the batches
    batch_lsns: list[int]  # the LSN of each batch, in commit order
    batch_acks: list[int]  # op count once each batch was acknowledged
    seen: dict[str, tuple[str, int]]  # every checkpoint id the run's index held: (workflow, lsn)
    checkpoint_acks: list[tuple[int, str]]  # (op count once durable and in the index, id)
    drops: list[tuple[int, int, str]]  # (op count at the retention's start, at its ack, id)
    discards: list[tuple[int, int]]  # (op count at the compaction's ack, the log's first LSN)
    figures: Counter[str]

    def expected(self, workflow_id: str, lsn: int) -> bytes | None:
        """The model's state of ``workflow_id`` after every batch up to LSN ``lsn``."""
        return self.prefixes[bisect.bisect_right(self.batch_lsns, lsn)].get(workflow_id)


class CheckpointDriver:
    """Runs a store workload on a simulated disk and notes every acknowledgement.

    ``handles`` stores are opened on the one disk (separate processes' worth of writers' lock,
    catch-up, following a discard); batch ``i`` is committed by handle ``i % handles`` unless
    ``by`` says otherwise. Every call is followed by a look at the acting handle's index, so
    checkpoints a policy took inside a commit (or a compaction took) count as acknowledged
    from the call's return on.
    """

    def __init__(
        self,
        name: str,
        plan: list[list[Mutation]],
        *,
        handles: int = 1,
        policy: CheckpointPolicy = MANUAL_ONLY,
        fs: SimFileSystem | None = None,
    ) -> None:
        self.plan = plan
        self.fs = fs if fs is not None else SimFileSystem()
        model = MemoryStore(clock=lambda: CK_CLOCK)
        prefixes: list[dict[str, bytes]] = [{}]
        for batch in plan:
            model.commit(batch)
            prefixes.append({w: state_bytes(model.load(w)) for w in model.list_workflows()})
        self.stores = [open_sim_store(self.fs, policy) for _ in range(handles)]
        self.figures: Counter[str] = Counter()
        for k, store in enumerate(self.stores):
            self._count_followed_discards(k, store)
        self.w = CheckpointWorkload(name, self.fs, prefixes, [], [], {}, [], [], [], self.figures)
        self._observe(self.stores[0])

    def _count_followed_discards(self, k: int, store: LocalStore) -> None:
        """Count each anchor a handle is handed because another discarded its view."""
        take = store._take_anchor

        def counting(data: bytes, *, skipped: bool) -> None:
            if skipped:
                self.figures[f"discards followed by handle {k}"] += 1
            take(data, skipped=skipped)

        setattr(store, "_take_anchor", counting)  # noqa: B010 (an instance attribute)

    @property
    def done(self) -> int:
        return len(self.w.batch_lsns)

    def _observe(self, store: LocalStore) -> None:
        before = self.fs.op_count
        for info in store.checkpoints():
            known = self.w.seen.get(info.id)
            if known is None:
                self.w.checkpoint_acks.append((before, info.id))
                self.figures[f"checkpoints ({info.type})"] += 1
                if info.parent is not None:
                    self.figures["incremental checkpoints"] += 1
            elif known != (info.workflow_id, info.lsn):
                raise AssertionError(f"checkpoint {info.id} changed workflow or LSN")
            self.w.seen[info.id] = (info.workflow_id, info.lsn)
        assert self.fs.op_count == before, "looking at the index must not write"

    def commit(self, upto: int, *, by: int | None = None) -> None:
        while self.done < upto:
            store = self.stores[self.done % len(self.stores) if by is None else by]
            lsn = store.commit(self.plan[self.done])
            self.w.batch_lsns.append(lsn)
            self.w.batch_acks.append(self.fs.op_count)
            self._observe(store)

    def checkpoint(self, handle: int, workflow_id: str) -> CheckpointInfo:
        store = self.stores[handle]
        info = store.checkpoint(workflow_id, tags=("t",))
        self._observe(store)
        return info

    def retain(self, handle: int, policy: RetentionPolicy) -> RetentionPlan:
        store = self.stores[handle]
        by_id = {info.id: info for info in store.checkpoints()}
        started = self.fs.op_count
        result = store.retain(policy)
        self.w.drops += [(started, self.fs.op_count, info.id) for info in result.drop]
        for info in result.fold:
            chain = 1
            link = info
            while link.parent is not None:
                link = by_id[link.parent]
                chain += 1
            self.figures["folds"] += 1
            self.figures["longest chain folded"] = max(self.figures["longest chain folded"], chain)
        self.figures["checkpoints dropped"] += len(result.drop)
        self.figures["retentions"] += 1
        self._observe(store)
        return result

    def compact(self, handle: int) -> CompactionReport:
        store = self.stores[handle]
        started = self.fs.op_count
        report = store.compact()
        self.w.discards.append((self.fs.op_count, report.log_first_lsn))
        created = [
            op
            for op in self.fs.trace[started:]
            if isinstance(op, Create) and parse_segment_name(os.path.basename(op.path))
        ]
        self.figures["compactions"] += 1
        self.figures["segments discarded"] += len(report.segments_discarded)
        self.figures["compactions rotating a segment by size"] += len(created) > 1
        self._observe(store)
        return report

    def finish(self) -> CheckpointWorkload:
        """Check the live handles against the model and each other (the same states, the same
        index, every checkpoint verifying), close them, return the workload."""
        final = self.w.prefixes[self.done]
        indexes = []
        for k, store in enumerate(self.stores):
            got = {w: state_bytes(store.load(w)) for w in store.list_workflows()}
            assert got == final, f"handle {k} differs from the model"
            indexes.append(store.checkpoints())
            checks = store.verify()
            assert all(c.ok and c.matches_log is not False for c in checks), checks
        for k, index in enumerate(indexes):
            assert index == indexes[0], f"handle {k}'s index differs from handle 0's"
        for store in self.stores:
            self._close(store)
        return self.w

    def _close(self, store: LocalStore) -> None:
        """Close ``store``, noting a compaction its policy makes it take on close: its
        checkpoints once it returned, its discard once ``close`` returned."""
        reports: list[CompactionReport] = []
        compact = store.compact

        def noting(*, dry_run: bool = False) -> CompactionReport:
            report = compact(dry_run=dry_run)
            reports.append(report)
            self.figures["compactions"] += 1
            self.figures["compactions on close"] += 1
            self.figures["segments discarded"] += len(report.segments_discarded)
            self._observe(store)
            return report

        setattr(store, "compact", noting)  # noqa: B010 (an instance attribute)
        store.close()
        self.w.discards += [(self.fs.op_count, r.log_first_lsn) for r in reports]


@dataclass
class CrashOutcome:
    """What exploring a crash workload found, by kind of violation (``kinds``, in report
    order); every list is expected to stay empty."""

    workload: str
    kinds: tuple[str, ...]
    states: Counter[str] = field(default_factory=Counter)
    crash_points: int = 0
    states_with_violations: int = 0
    found: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.found = {k: [] for k in self.kinds}

    @property
    def total_states(self) -> int:
        return sum(self.states.values())

    @property
    def violations(self) -> int:
        return sum(len(v) for v in self.found.values())

    def problems(self, limit: int = 20) -> list[str]:
        return [p for kind in self.kinds for p in self.found[kind]][:limit]


def explore_checkpoints(
    workload: CheckpointWorkload, *, stride: int = 1, points: Sequence[int] | None = None
) -> CrashOutcome:
    """Check every crash state at every ``stride``-th crash point of the workload's trace (or
    at ``points``)."""
    out = CrashOutcome(workload.name, tuple(CK_VIOLATIONS))
    for at in workload.fs.crash_points()[::stride] if points is None else points:
        out.crash_points += 1
        for label, disk in workload.fs.crash_states(at):
            out.states[label.split(":")[0]] += 1
            found = check_checkpoint_state(workload, disk, at)
            out.states_with_violations += bool(found)
            for kind, problem in found:
                out.found[kind].append(f"{workload.name} op {at} {label}: {problem}")
    return out


def read_store(
    store: LocalStore,
) -> tuple[dict[str, bytes], dict[str, CheckpointInfo], dict[str, bytes | str]]:
    """What a reopened store holds: each workflow's state, its checkpoint index, and the
    state each checkpoint yields (or why it does not read)."""
    got = {wf: state_bytes(store.load(wf)) for wf in store.list_workflows()}
    index = {info.id: info for info in store.checkpoints()}
    states: dict[str, bytes | str] = {}
    for checkpoint_id in index:
        try:
            states[checkpoint_id] = state_bytes(store.checkpoint_state(checkpoint_id))
        except CorruptionError as exc:
            states[checkpoint_id] = f"does not read: {exc}"
    return got, index, states


def txn_files(fs: SimFileSystem) -> dict[str, bytes]:
    """Every file of ``workflows/``, ``checkpoints/`` and ``sessions/`` (locks excluded), by
    path below the store."""
    out: dict[str, bytes] = {}
    for directory in TXN_DIRS:
        root = os.path.join(CK_STORE, directory)
        if fs.exists(root):
            for name in fs.listdir(root):
                if not name.endswith((".tmp", ".lock")):
                    out[f"{directory}/{name}"] = fs.read_file(os.path.join(root, name))
    return out


def check_checkpoint_state(
    w: CheckpointWorkload, disk: SimFileSystem, at: int
) -> list[tuple[str, str]]:
    """The violations (kind, what) of one crash state of ``w`` cut after ``at`` operations."""
    found: list[tuple[str, str]] = []
    try:
        with open_sim_store(disk) as store:
            got, index, states = read_store(store)
            first_lsn = store.stats().log_first_lsn
    except Exception as exc:
        return [("recoveries raising", f"{type(exc).__name__}: {exc}")]
    acked = sum(1 for op in w.batch_acks if op <= at)
    if got not in w.prefixes:
        found.append(("states not a prefix of the batches", "not the model after any prefix"))
    elif w.prefixes.index(got) < acked:
        found.append(("acknowledged batches lost", f"{acked} acknowledged, "
                      f"{w.prefixes.index(got)} recovered"))  # fmt: skip
    for checkpoint_id, info in index.items():
        if w.seen.get(checkpoint_id) != (info.workflow_id, info.lsn):
            found.append(("checkpoints loading wrong", f"{checkpoint_id} was never taken"))
            continue
        state = states[checkpoint_id]
        if state != w.expected(info.workflow_id, info.lsn):
            why = state if isinstance(state, str) else "another state than the one taken"
            found.append(("checkpoints loading wrong", f"{checkpoint_id}: {why}"))
    found += dropped_and_discarded_violations(
        index=set(index),
        first_lsn=first_lsn,
        disk=disk,
        at=at,
        checkpoint_acks=w.checkpoint_acks,
        dropping={cid for start, _op, cid in w.drops if start <= at},
        dropped={cid for _start, op, cid in w.drops if op <= at},
        discards=w.discards,
        lost="acknowledged checkpoints lost",
    )
    return found


def dropped_and_discarded_violations(
    *,
    index: set[str],
    first_lsn: int,
    disk: SimFileSystem,
    at: int,
    checkpoint_acks: Sequence[tuple[int, str]],
    dropping: set[str],
    dropped: set[str],
    discards: Sequence[tuple[int, int]],
    lost: str,
) -> list[tuple[str, str]]:
    """What a reopened store (checkpoint ids ``index``, log from ``first_lsn``, files on
    ``disk``) must hold in a crash state cut after ``at`` operations: every checkpoint
    acknowledged by then (op, id) unless a drop of it had begun (``dropping``), reported as
    kind ``lost``; none whose drop was acknowledged (``dropped``); a log starting at or after
    the anchor of every compaction acknowledged by then (``discards``: op, its DISCARD LSN),
    with no segment before its start left on disk once the store is open."""
    found: list[tuple[str, str]] = []
    for op, checkpoint_id in checkpoint_acks:
        if op <= at and checkpoint_id not in dropping and checkpoint_id not in index:
            found.append((lost, f"checkpoint {checkpoint_id} is not in the index"))
    if dropped & index:
        found.append(("dropped checkpoints resurrected", f"{sorted(dropped & index)}"))
    owed = max((lsn for op, lsn in discards if op <= at), default=1)
    if first_lsn < owed:
        found.append(("discarded segments resurrected", f"the log starts at {first_lsn}, "
                      f"not at or after the acknowledged compaction's {owed}"))  # fmt: skip
    wal = os.path.join(CK_STORE, WAL_DIR)
    left = [n for n in disk.listdir(wal) if (p := parse_segment_name(n)) and p[1] < first_lsn]
    if left:
        found.append(("discarded segments resurrected", f"{left} still there after the open"))
    return found


class NoCheckpointDirSyncFS(SimFileSystem):
    """A broken disk: fsync of ``checkpoints/`` returns without syncing, so a checkpoint
    file's rename into place (and the deletion of dropped ones) may not last."""

    def fsync_dir(self, path: str) -> None:
        if os.path.basename(os.path.normpath(path)) == CHECKPOINTS_DIR:
            return
        super().fsync_dir(path)


class NoCheckpointFileSyncFS(SimFileSystem):
    """A broken disk: fsync of a checkpoint's temp file returns without syncing, so the file
    renamed into place may be torn or empty after a crash."""

    def __init__(self) -> None:
        super().__init__()
        self._checkpoint_fds: set[int] = set()

    def create_exclusive(self, path: str) -> int:
        fd = super().create_exclusive(path)
        in_checkpoints = os.path.basename(os.path.dirname(os.path.normpath(path)))
        if in_checkpoints == CHECKPOINTS_DIR:
            self._checkpoint_fds.add(fd)
        return fd

    def fsync(self, fd: int) -> None:
        if fd not in self._checkpoint_fds:
            super().fsync(fd)

    def close(self, fd: int) -> None:
        super().close(fd)
        self._checkpoint_fds.discard(fd)


def checkpoints_one_handle(fs: SimFileSystem | None = None) -> CheckpointWorkload:
    """21 batches by one handle; a full and an incremental checkpoint, a retention folding the
    incremental one and dropping its parent, a compaction discarding the log before it."""
    w0, w1 = CK_WORKFLOWS[:2]
    d = CheckpointDriver("checkpoints-1h", store_plan(), fs=fs)
    d.commit(5)
    first = d.checkpoint(0, w0)  # full
    d.checkpoint(0, w1)
    d.commit(9)
    second = d.checkpoint(0, w0)  # incremental on `first`
    assert second.parent == first.id
    result = d.retain(0, RetentionPolicy(keep_last=1))  # folds `second`, drops `first`
    assert [i.id for i in result.fold] == [second.id] and first.id in {i.id for i in result.drop}
    d.commit(13)
    assert d.compact(0).segments_discarded, "the workload must discard segments"
    d.commit(len(d.plan))
    return d.finish()


CLOSE_POLICY: Final = msgspec.structs.replace(MANUAL_ONLY, compact_on_close_bytes=1)
"""No automatic work but the compaction on close, whatever the log holds."""


def checkpoints_close(fs: SimFileSystem | None = None) -> CheckpointWorkload:
    """21 batches by one handle whose policy compacts on close, a checkpoint of one workflow
    midway; then ``close``: its compaction checkpoints the workflows, writes the anchor,
    moves ``START``, deletes the segments before it, and retention runs."""
    d = CheckpointDriver("checkpoints-close", store_plan(), policy=CLOSE_POLICY, fs=fs)
    d.commit(9)
    d.checkpoint(0, CK_WORKFLOWS[0])
    d.commit(len(d.plan))
    w = d.finish()
    assert d.figures["compactions on close"] == 1, d.figures
    assert d.figures["segments discarded"] >= 1, "the close must discard segments"
    return w


def checkpoints_two_handles(fs: SimFileSystem | None = None) -> CheckpointWorkload:
    """21 batches committed by two handles in turn: handle 0 takes the checkpoints, handle 1
    retains and compacts. Handle 0's view ends in a segment handle 1 discards, so its next
    commit follows the discard (it is handed the anchor: ``on_discard``), and it takes
    checkpoints after that; a retention folds a checkpoint handle 0 holds the state of."""
    w0, w1, w2 = CK_WORKFLOWS
    a, b = 0, 1
    d = CheckpointDriver("checkpoints-2h", store_plan(), handles=2, fs=fs)
    d.commit(5)
    first = d.checkpoint(a, w0)
    d.checkpoint(a, w1)
    d.commit(9)
    second = d.checkpoint(a, w0)
    assert second.parent == first.id
    result = d.retain(b, RetentionPolicy(keep_last=1))  # folds a's `second`, drops `first`
    assert [i.id for i in result.fold] == [second.id] and first.id in {i.id for i in result.drop}
    d.commit(12)  # batch 11 by b, then... a follows the drop when it commits batch 10? see below
    d.checkpoint(a, w0)  # its newest was folded by b: a full one
    d.commit(14)  # the last batch (13) by b: a's view ends before the compaction
    assert d.compact(b).segments_discarded, "the workload must discard segments"
    d.commit(15)  # batch 14 by a, whose segment is gone: it follows from START
    assert d.figures["discards followed by handle 0"] == 1, d.figures
    d.checkpoint(a, w2)
    d.checkpoint(a, w0)
    d.commit(17)
    d.checkpoint(a, w0)  # incremental again
    d.retain(b, RetentionPolicy(keep_last=1))
    d.commit(len(d.plan))
    return d.finish()


LARGE_POLICY = CheckpointPolicy(
    every_batches=3, every_log_bytes=None, on_step_end=True, on_error=False, max_chain=6
)
"""Automatic checkpoints after every completed step and every third batch without one,
incremental up to six links deep."""


def checkpoints_large(handles: int = 1, fs: SimFileSystem | None = None) -> CheckpointWorkload:
    """33 batches (4 workflows, 8 steps of 4 batches), automatic checkpoints by
    :data:`LARGE_POLICY` (incremental chains), manual ones, four retentions folding chains
    deeper than two links, three compactions (each rotating a segment by size before its own
    new segment). With two handles, batches alternate, handle 0 takes the manual checkpoints
    and handle 1 retains and compacts."""
    workflows = (*CK_WORKFLOWS, "delta")
    a, m = 0, handles - 1
    d = CheckpointDriver(
        f"checkpoints-large-{handles}h",
        store_plan(workflows, 8, outputs=3, grow=30),
        handles=handles,
        policy=LARGE_POLICY,
        fs=fs,
    )
    # Batch 4i+2 puts the first output of step i: a record of more than a segment, after
    # which no policy checkpoint is due, so a compaction there checkpoints every workflow and
    # its first CHECKPOINT record rotates the segment by size.
    d.commit(6)
    d.checkpoint(a, workflows[0])
    d.commit(11)
    d.retain(m, RetentionPolicy(keep_last=2))
    d.commit(15)
    d.compact(m)
    d.commit(18)
    d.retain(m, RetentionPolicy(keep_last=1))
    d.commit(21)
    d.checkpoint(a, workflows[1])
    d.commit(23)
    d.compact(m)
    d.commit(26)
    d.retain(m, RetentionPolicy(keep_last=1))
    d.commit(31)
    d.compact(m)
    d.commit(len(d.plan))
    d.retain(m, RetentionPolicy(keep_last=2))
    assert d.figures["compactions rotating a segment by size"] == 3, d.figures
    assert d.figures["longest chain folded"] > 2, d.figures
    return d.finish()


# -- segment dictionaries (docs/format.md §2.1.1) -----------------------------------------------
@dataclass
class DictionaryCrashReport:
    """Crash exploration of workloads crossing a dictionary rotation: per workload ``(name,
    states, crash points, violations)``; per broken variant ``(name, states caught, states)``."""

    workloads: list[tuple[str, int, int, int]]
    broken: list[tuple[str, int, int]]


def dictionary_workloads(*, thorough: bool) -> dict[str, WorkloadFactory]:
    """Workloads whose traces cross a dictionary rotation (and, thorough, inherit it)."""
    found: dict[str, WorkloadFactory] = {
        "always, 1 thread, 40 appends": lambda: run_workload(
            "dict-1t", appends=40, dictionary=CRASH_TRIGGER
        ),
    }
    if thorough:
        found["always, 2 handles x 2 threads, 60 appends"] = lambda: run_workload(
            "dict-2h", appends=60, threads=4, handles=2, fs=SlowSyncFS(), dictionary=CRASH_TRIGGER
        )
        found["none, sync every 5 appends, 60 appends"] = lambda: run_workload(
            "dict-none", durability="none", appends=60, sync_every=5, dictionary=CRASH_TRIGGER
        )
    return found


def dictionary_crash_report(*, thorough: bool) -> DictionaryCrashReport:
    """Explore :func:`dictionary_workloads` and the broken variants on the first of them;
    ``AssertionError`` on any violation, a trace without a dictionary segment, or a broken
    variant not caught."""
    from tests.logdictionary import segment_dictionaries  # noqa: PLC0415 (no cycle at import)

    rows: list[tuple[str, int, int, int]] = []
    for name, factory in dictionary_workloads(thorough=thorough).items():
        workload = factory()
        if not any(d is not None for d in segment_dictionaries(WAL, workload.fs)):
            raise AssertionError(f"{name}: the trace never reached a dictionary rotation")
        outcome = explore(workload)
        if outcome.violations:
            raise AssertionError(f"{name}: {outcome}")
        rows.append((name, outcome.total_states, outcome.crash_points, outcome.violations))
    broken: list[tuple[str, int, int]] = []
    for variant, make in BROKEN_VARIANTS.items():
        outcome = explore(run_workload(variant, appends=24, fs=make(), dictionary=CRASH_TRIGGER))
        caught = states_showing_the_bug(outcome)
        if not caught:
            raise AssertionError(f"broken variant not caught with dictionaries: {variant}")
        broken.append((variant, caught, outcome.total_states))
    return DictionaryCrashReport(rows, broken)
