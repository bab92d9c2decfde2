"""The crash simulator over two-phase commits (issue 5, docs/format.md §10): workloads of
transactions, each replacing 2 to 4 files across ``workflows/``, ``checkpoints/`` and
``sessions/`` (some committing checkpoint entries), interleaved with batches and a compaction;
one handle, and two handles with a decider "killed" between its decision and its renames
(the other handle finishes the transaction). In every crash state of every crash point, after
reopening the store (which rolls decided transactions forward):

- the files of the three directories are exactly what the first ``n`` transactions wrote, for
  one ``n``: every transaction is there whole (each of its files holds its new content, or a
  later transaction's) or not at all (each holds what it held before);
- ``n`` covers every acknowledged transaction (a killed decider's counts from its durable
  decision);
- the checkpoint entries a transaction embeds are in the index exactly when its files are
  there, and each reads as the model's state of its workflow at its LSN;
- no temp file of a decided transaction is left;
- every workflow equals the model after a prefix of the batches that includes every
  acknowledged one;
- reopening a second time changes nothing (every path and byte of the disk the same).

Broken disks and tampered workloads show that the checks fire.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

from tests.crashcheck import (
    CK_CLOCK,
    CK_STORE,
    CrashOutcome,
    open_sim_store,
    read_store,
    state_bytes,
    store_plan,
)
from tests.simfs import SimFileSystem
from wfstate.backends.local import LocalStore, _TxnPlan
from wfstate.backends.memory import MemoryStore
from wfstate.checkpointindex import CheckpointInfo
from wfstate.format import RECORD_TXN, SESSIONS_DIR, TXN_DIRS, WORKFLOWS_DIR
from wfstate.model import WorkflowState
from wfstate.mutations import Mutation
from wfstate.twophase import Participant, Txn, encode_txn, prepare

KINDS = (
    "recoveries raising",
    "transactions not all-or-nothing",
    "acknowledged transactions lost",
    "checkpoint entries disagree with the files",
    "checkpoints loading wrong",
    "decided temp files left",
    "acknowledged batches lost",
    "states not a prefix of the batches",
    "a second open changes the disk",
)


@dataclass
class Transaction:
    """One transaction of a workload: what it writes and when it was begun and acknowledged
    (op counts of the trace)."""

    id: str
    files: dict[str, bytes]  # path below the store -> new content
    temps: list[str]  # absolute paths of its temp files
    checkpoints: tuple[CheckpointInfo, ...]
    started: int
    acked: int


@dataclass
class TxnWorkload:
    name: str
    fs: SimFileSystem
    prefixes: list[dict[str, bytes]]  # the model's states after each prefix of the batches
    batch_lsns: list[int]
    batch_acks: list[int]
    txns: list[Transaction]
    figures: Counter[str]

    def expected_state(self, workflow_id: str, lsn: int) -> bytes | None:
        return self.prefixes[bisect.bisect_right(self.batch_lsns, lsn)].get(workflow_id)

    def paths(self) -> list[str]:
        return sorted({p for t in self.txns for p in t.files})

    def files_after(self, n: int) -> dict[str, bytes | None]:
        """Every participant path's content once the first ``n`` transactions happened."""
        out: dict[str, bytes | None] = dict.fromkeys(self.paths())
        for t in self.txns[:n]:
            out.update(t.files)
        return out


class TxnDriver:
    """Runs a workload on a simulated disk, noting every acknowledgement."""

    def __init__(
        self,
        name: str,
        plan: list[list[Mutation]],
        *,
        handles: int = 1,
        fs: SimFileSystem | None = None,
    ) -> None:
        self.plan = plan
        self.fs = fs if fs is not None else SimFileSystem()
        model = MemoryStore(clock=lambda: CK_CLOCK)
        prefixes: list[dict[str, bytes]] = [{}]
        for batch in plan:
            model.commit(batch)
            prefixes.append({w: state_bytes(model.load(w)) for w in model.list_workflows()})
        self.stores: list[LocalStore | None] = [open_sim_store(self.fs) for _ in range(handles)]
        self.rng = random.Random(name)
        self.w = TxnWorkload(name, self.fs, prefixes, [], [], [], Counter())

    @property
    def done(self) -> int:
        return len(self.w.batch_lsns)

    def store(self, handle: int) -> LocalStore:
        store = self.stores[handle]
        assert store is not None, f"handle {handle} was killed"
        return store

    def commit(self, upto: int, *, by: int | None = None) -> None:
        """Commit batches up to ``upto``, by handle ``by`` or the handles in turn (skipping
        killed ones)."""
        while self.done < upto:
            live = [k for k, s in enumerate(self.stores) if s is not None]
            store = self.store(live[self.done % len(live)] if by is None else by)
            self.w.batch_lsns.append(store.commit(self.plan[self.done]))
            self.w.batch_acks.append(self.fs.op_count)

    def _participants(
        self,
        store: LocalStore,
        state_files: Sequence[str],
        checkpoint: Sequence[str],
        sessions: Sequence[str],
    ) -> tuple[list[Participant], list[tuple[CheckpointInfo, WorkflowState]]]:
        participants: list[Participant] = []
        checkpoints: list[tuple[CheckpointInfo, WorkflowState]] = []
        with store._mutex:
            store._catch_up()
            states = {w: store._current(w) for w in {*state_files, *checkpoint}}
            origins = {w: store._table.origin(w) for w in states}
        for w, state in sorted(states.items()):
            origin = origins[w]
            assert state is not None and origin is not None
            if w in state_files:
                data = store._full_file(origin, state)[0]
                participants.append(Participant(f"{WORKFLOWS_DIR}/{w}.state", data))
            if w in checkpoint:
                data, info = store._full_file(origin, state, created=CK_CLOCK)
                participants.append(Participant(f"checkpoints/{info.file}", data))
                checkpoints.append((info, state))
        for s in sessions:
            size = self.rng.choice((300, 1500, 5000))
            body = f"session {s} of transaction {len(self.w.txns)}: ".encode()
            body += self.rng.randbytes(size)
            participants.append(Participant(f"{SESSIONS_DIR}/{s}.session", body))
        assert 2 <= len(participants) <= 4
        self.w.figures["files written by transactions"] += len(participants)
        self.w.figures["checkpoints embedded"] += len(checkpoints)
        return participants, checkpoints

    def _note(self, txn: Txn, participants: Sequence[Participant], started: int) -> None:
        self.w.txns.append(
            Transaction(
                id=txn.id,
                files={p.path: p.content for p in participants},
                temps=[os.path.join(CK_STORE, os.path.dirname(f.path), f.temp) for f in txn.files],
                checkpoints=txn.checkpoints,
                started=started,
                acked=self.fs.op_count,
            )
        )
        self.w.figures["transactions"] += 1

    def transact(
        self,
        handle: int,
        *,
        state_files: Sequence[str] = (),
        checkpoint: Sequence[str] = (),
        sessions: Sequence[str] = (),
    ) -> None:
        """A transaction through the store's internal API (``_transact``), acknowledged when
        it returns."""
        store = self.store(handle)
        started = self.fs.op_count
        participants, checkpoints = self._participants(store, state_files, checkpoint, sessions)
        prepared: list[Txn] = []

        def capture(*args: Any, **kwargs: Any) -> Txn:
            prepared.append(prepare(*args, **kwargs))
            return prepared[-1]

        with mock.patch("wfstate.backends.local.prepare", capture):
            store._transact(
                lambda _lsn, _now: _TxnPlan(
                    participants=list(participants), checkpoints=list(checkpoints)
                )
            )
        self._note(prepared[0], participants, started)

    def killed_decider(
        self,
        handle: int,
        *,
        state_files: Sequence[str] = (),
        checkpoint: Sequence[str] = (),
        sessions: Sequence[str] = (),
    ) -> None:
        """Handle ``handle`` prepares and decides a transaction and dies before renaming
        anything (its lock released, as at a process's death), until :meth:`revive`.
        Acknowledged once decided (the record is durable: the transaction happened)."""
        store = self.store(handle)
        started = self.fs.op_count
        participants, checkpoints = self._participants(store, state_files, checkpoint, sessions)
        txn = prepare(
            self.fs, CK_STORE, participants, checkpoints=[info for info, _s in checkpoints]
        )
        with store._mutex, store._held() as writer:
            writer.enqueue(encode_txn(txn), record_type=RECORD_TXN)
            writer.sync()
        self._note(txn, participants, started)
        self.w.figures["killed deciders"] += 1
        store.close()
        self.stores[handle] = None

    def revive(self, handle: int) -> None:
        """A new process in place of a killed one."""
        assert self.stores[handle] is None
        self.stores[handle] = open_sim_store(self.fs)

    def compact(self, handle: int) -> None:
        self.store(handle).compact()
        self.w.figures["compactions"] += 1

    def finish(self) -> TxnWorkload:
        final = self.w.prefixes[self.done]
        for store in filter(None, self.stores):
            assert {w: state_bytes(store.load(w)) for w in store.list_workflows()} == final
            store.close()
        assert all(t.temps and t.acked > t.started for t in self.w.txns)
        return self.w


def tx_one_handle(fs: SimFileSystem | None = None) -> TxnWorkload:
    """21 batches, 6 transactions (2 to 4 files each, 4 of them committing checkpoints) and a
    compaction, by one handle."""
    d = TxnDriver("2pc-1h", store_plan(), fs=fs)
    d.commit(3)
    d.transact(0, state_files=["alpha", "beta"], checkpoint=["alpha"], sessions=["s1"])
    d.commit(5)
    d.transact(0, state_files=["alpha"], sessions=["s1", "s2"])
    d.commit(8)
    d.transact(0, state_files=["gamma"], checkpoint=["gamma", "beta"])
    d.commit(10)
    d.compact(0)
    d.transact(0, checkpoint=["alpha"], sessions=["s2"])
    d.commit(13)
    d.transact(0, state_files=["alpha", "beta", "gamma"], sessions=["s1"])
    d.commit(16)
    d.transact(0, state_files=["beta"], checkpoint=["beta"])
    d.commit(len(d.plan))
    return d.finish()


def tx_two_handles() -> TxnWorkload:
    """21 batches by two handles in turn, 6 transactions; twice a decider dies between its
    decision and its renames: once the other handle's next commit finishes the transaction,
    once its next compaction does (before it deletes orphans and discards the record)."""
    d = TxnDriver("2pc-2h", store_plan(), handles=2)
    d.commit(3)
    d.transact(1, state_files=["alpha", "beta"], checkpoint=["beta"])
    d.commit(5)
    d.killed_decider(1, state_files=["alpha"], checkpoint=["alpha"], sessions=["s1"])
    d.commit(7, by=0)  # handle 0 finishes it
    d.revive(1)
    d.transact(0, state_files=["gamma"], sessions=["s1", "s2"])
    d.commit(10)
    d.killed_decider(0, state_files=["beta", "gamma"], checkpoint=["gamma"])
    d.compact(1)  # handle 1 finishes it first
    d.revive(0)
    d.commit(14)
    d.transact(0, state_files=["alpha"], checkpoint=["alpha"], sessions=["s2"])
    d.commit(17)
    d.transact(1, state_files=["beta", "gamma"], sessions=["s1"])
    d.commit(len(d.plan))
    return d.finish()


def tx_large() -> TxnWorkload:
    """33 batches over 4 workflows by two handles, 14 transactions (3 killed deciders), 3
    compactions, segments rotated by size."""
    workflows = ("alpha", "beta", "gamma", "delta")
    d = TxnDriver("2pc-large", store_plan(workflows, 8, outputs=3, grow=30), handles=2)
    rng = random.Random(5)
    killed = {3, 7, 11}
    for k in range(14):
        d.commit(2 + 2 * k + (k % 3))
        names = rng.sample(workflows, 2)
        kwargs: dict[str, list[str]] = {
            "state_files": names[:1] if k % 2 else names,
            "checkpoint": names[1:] if k % 3 else [],
            "sessions": [f"s{k % 3}"] if k % 2 else [],
        }
        if sum(len(v) for v in kwargs.values()) < 2:
            kwargs["sessions"] = [f"s{k % 3}", "s9"]
        if k in killed:
            d.killed_decider(k % 2, **kwargs)
            d.commit(d.done + 1)  # the other handle finishes it
            d.revive(k % 2)
        else:
            d.transact(k % 2, **kwargs)
        if k in (4, 8, 12):
            d.compact((k + 1) % 2)
    d.commit(len(d.plan))
    return d.finish()


def explore(w: TxnWorkload, *, stride: int = 1) -> CrashOutcome:
    out = CrashOutcome(w.name, tuple(KINDS))
    for at in w.fs.crash_points()[::stride]:
        out.crash_points += 1
        for label, disk in w.fs.crash_states(at):
            out.states[label.split(":")[0]] += 1
            for kind, problem in check_state(w, disk, at):
                out.found[kind].append(f"{w.name} op {at} {label}: {problem}")
    return out


def _files(snapshot: dict[str, bytes | None]) -> dict[str, bytes | None]:
    """The participant-style files of the three directories (no temp file), by store path."""
    out: dict[str, bytes | None] = {}
    for d in TXN_DIRS:
        prefix = f"{CK_STORE}/{d}/"
        for path, content in snapshot.items():
            if path.startswith(prefix) and content is not None and not path.endswith(".tmp"):
                out[path[len(CK_STORE) + 1 :]] = content
    return out


def check_state(w: TxnWorkload, disk: SimFileSystem, at: int) -> list[tuple[str, str]]:
    """The violations (kind, what) of one crash state of ``w`` cut after ``at`` operations."""
    found: list[tuple[str, str]] = []
    try:
        with open_sim_store(disk) as store:
            got, index, read = read_store(store)
        once = disk.snapshot()
        with open_sim_store(disk):
            pass
    except Exception as exc:
        return [("recoveries raising", f"{type(exc).__name__}: {exc}")]
    if disk.snapshot() != once:
        found.append(("a second open changes the disk", "files differ after the second open"))
    # batches
    acked_batches = sum(1 for op in w.batch_acks if op <= at)
    if got not in w.prefixes:
        found.append(("states not a prefix of the batches", "not the model after any prefix"))
    elif w.prefixes.index(got) < acked_batches:
        found.append(("acknowledged batches lost", f"{acked_batches} acknowledged"))
    # transactions: the files are what the first n wrote, for some n
    files = _files(once)
    candidates = [
        n
        for n in range(len(w.txns) + 1)
        if all(files.get(p) == c for p, c in w.files_after(n).items())
    ]
    if not candidates:
        near = max(
            range(len(w.txns) + 1),
            key=lambda n: sum(files.get(p) == c for p, c in w.files_after(n).items()),
        )
        wrong = [p for p, c in w.files_after(near).items() if files.get(p) != c]
        found.append(("transactions not all-or-nothing", f"nearest n={near}, differ: {wrong}"))
        return found
    acked = sum(1 for t in w.txns if t.acked <= at)
    if max(candidates) < acked:
        found.append(
            ("acknowledged transactions lost", f"{acked} acknowledged, files of {candidates}")
        )
    # the embedded checkpoint entries agree with the files
    present = [all(i.id in index for i in t.checkpoints) for t in w.txns]
    partial = [t.id for t in w.txns if any(i.id in index for i in t.checkpoints)]
    agreeing = [
        n
        for n in candidates
        if all(present[k] == (k < n) for k, t in enumerate(w.txns) if t.checkpoints)
    ]
    if not agreeing or any(t not in {x.id for x in w.txns[: max(agreeing)]} for t in partial):
        with_entries = [k for k, p in enumerate(present) if p and w.txns[k].checkpoints]
        found.append(
            (
                "checkpoint entries disagree with the files",
                f"files of the first n in {candidates}, entries of transactions {with_entries}",
            )
        )
    n = max(agreeing or candidates)
    embedded = {i.id: i for t in w.txns for i in t.checkpoints}
    for checkpoint_id, info in index.items():
        if checkpoint_id in embedded and read[checkpoint_id] != w.expected_state(
            info.workflow_id, info.lsn
        ):
            why = read[checkpoint_id]
            found.append(
                ("checkpoints loading wrong", why if isinstance(why, str) else checkpoint_id)
            )
    left = [temp for t in w.txns[:n] for temp in t.temps if temp in once]
    if left:
        found.append(("decided temp files left", f"{left}"))
    return found


def _report(w: TxnWorkload, o: CrashOutcome) -> str:
    figures = ", ".join(f"{k} {v}" for k, v in sorted(w.figures.items()))
    return (
        f"{w.name}: {o.total_states} crash states at {o.crash_points} crash points "
        f"({len(w.batch_lsns)} batches; {figures}); violations {o.violations}"
    )


def test_transactions_of_one_handle_are_all_or_nothing_in_every_crash_state(
    crash_report: list[str],
) -> None:
    w = tx_one_handle()
    o = explore(w)
    crash_report.append(_report(w, o))
    assert o.violations == 0, _report(w, o) + "\n" + "\n".join(o.problems())
    assert o.total_states > 800, _report(w, o)


def test_a_killed_decider_s_transaction_is_finished_by_the_other_handle_in_every_crash_state(
    crash_report: list[str],
) -> None:
    w = tx_two_handles()
    assert w.figures["killed deciders"] == 2
    o = explore(w)
    crash_report.append(_report(w, o))
    assert o.violations == 0, _report(w, o) + "\n" + "\n".join(o.problems())
    assert o.total_states > 800, _report(w, o)


# -- the checks see bugs -----------------------------------------------------------------------


class NoTxnDirSyncFS(SimFileSystem):
    """A broken disk: fsync of ``workflows/``, ``checkpoints/`` and ``sessions/`` returns
    without syncing, so a temp file may vanish after its transaction was decided."""

    def fsync_dir(self, path: str) -> None:
        if os.path.basename(os.path.normpath(path)) in TXN_DIRS:
            return
        super().fsync_dir(path)


def test_the_checks_catch_temp_files_whose_entries_are_not_durable(
    crash_report: list[str],
) -> None:
    w = tx_one_handle(NoTxnDirSyncFS())
    o = explore(w, stride=5)
    kinds = {k: len(v) for k, v in o.found.items() if v}
    crash_report.append(
        f"2pc-1h on a broken disk (NoTxnDirSyncFS), every fifth crash point: {o.total_states} "
        f"states, violations {kinds}"
    )
    assert o.found["transactions not all-or-nothing"], {k: len(v) for k, v in o.found.items()}


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (
            lambda w: dataclasses.replace(
                w, txns=[dataclasses.replace(t, acked=t.started) for t in w.txns]
            ),
            "acknowledged transactions lost",
        ),
        (
            lambda w: dataclasses.replace(
                w,
                txns=[
                    dataclasses.replace(t, files={**t.files, "sessions/extra": b"x"})
                    if k == 2
                    else t
                    for k, t in enumerate(w.txns)
                ],
            ),
            "transactions not all-or-nothing",
        ),
        (
            lambda w: dataclasses.replace(w, batch_lsns=[lsn + 1 for lsn in w.batch_lsns]),
            "checkpoints loading wrong",
        ),
    ],
    ids=["acked at start", "a file the transaction did not write", "entries one batch off"],
)
def test_the_checks_report_a_tampered_workload(
    tamper: Callable[[TxnWorkload], TxnWorkload], kind: str
) -> None:
    o = explore(tamper(tx_one_handle()), stride=4)
    assert o.found[kind], {k: len(v) for k, v in o.found.items()}


@pytest.mark.slow
def test_a_larger_workload_of_transactions_survives_every_crash_state(
    crash_report: list[str],
) -> None:
    w = tx_large()
    o = explore(w)
    crash_report.append(_report(w, o))
    assert o.violations == 0, _report(w, o) + "\n" + "\n".join(o.problems())
