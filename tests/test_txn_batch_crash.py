"""The crash simulator over the transactions that commit a batch (docs/format.md §10.2, ``TXN``
version 2): a session import (§11.4) and a restore into the workflow file. In every crash
state of every crash point, after reopening the store:

- the transaction is all or nothing: the workflows' states, the files it writes, the
  checkpoint entries it commits and the session it imports are all there (with the content
  it wrote) or none is;
- it is there once acknowledged, and not at the point where it began;
- opening the store a second time changes nothing on the disk (recovering twice is the same).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tests.crashcheck import open_sim_store, txn_files
from tests.simfs import SimFileSystem
from wfstate.backends.local import LocalStore
from wfstate.model import WorkflowStep
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus


def _create(workflow_id: str) -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(2))
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)]


def _step(workflow_id: str, text: str) -> list[Mutation]:
    return [
        SetStepStatus(workflow_id=workflow_id, step_id="s0", status="running", at=0),
        PutStepOutput(workflow_id=workflow_id, step_id="s0", data={"t": text * 40}, at=0),
    ]


Observed = tuple[bool, ...]
"""Each part of the transaction, as found in a crash state: there (True) or not."""


def _explore(
    fs: SimFileSystem,
    begun: int,
    acked: int,
    observe: Callable[[LocalStore, SimFileSystem], Observed],
) -> Counter[str]:
    found: Counter[str] = Counter()
    problems: list[str] = []
    for at in fs.crash_points()[begun:]:  # from where the transaction begins
        for label, disk in fs.crash_states(at):
            where = f"op {at} {label}"
            found["states"] += 1
            try:
                with open_sim_store(disk) as store:
                    parts = observe(store, disk)
                first = disk.snapshot()
                with open_sim_store(disk):
                    pass
            except Exception as exc:  # every failure is a finding
                problems.append(f"{where}: reopening raised {exc!r}")
                continue
            if disk.snapshot() != first:
                problems.append(f"{where}: a second open changed the disk")
            if len(set(parts)) != 1:
                problems.append(f"{where}: not all or nothing: {parts}")
                continue
            happened = parts[0]
            found["happened" if happened else "not happened"] += 1
            if happened and at == begun:
                problems.append(f"{where}: there before it began")
            if not happened and at >= acked:
                problems.append(f"{where}: the acknowledged transaction is lost")
    assert not problems, "\n".join(problems[:20])
    assert found["happened"] and found["not happened"], found  # both sides were seen
    return found


def test_a_session_import_is_all_or_nothing_in_every_crash_state() -> None:
    source = open_sim_store(SimFileSystem())
    session = source.start_session("alice", {"k": 1})
    for w in ("a", "b"):
        source.commit(_create(w), session=session)
        source.commit(_step(w, w), session=session)
    source.checkpoint("a")
    session.end()
    bundle = source.export_session(session.id)
    expected = {w: source.load(w) for w in ("a", "b")}
    source.close()

    fs = SimFileSystem()
    store = open_sim_store(fs)
    store.commit(_create("local"))
    before = txn_files(fs)
    begun = fs.op_count
    info = store.import_session(bundle)
    acked = fs.op_count
    after = txn_files(fs)
    imported = {i.id for i in store.checkpoints()}
    store.close()
    written = {p for p in after if after[p] != before.get(p)}
    assert len(written) == 1 + 2 + 3  # the session file, 2 state files, 3 checkpoints

    def observe(reopened: LocalStore, disk: SimFileSystem) -> Observed:
        files = txn_files(disk)
        listed = reopened.list_workflows()
        states = [
            w in listed and reopened.load(w).workflow == expected[w].workflow for w in expected
        ]
        return (
            *states,
            *(files.get(p) == after[p] for p in sorted(written)),
            imported <= {i.id for i in reopened.checkpoints()},
            reopened.sessions() == [info],
        )

    found = _explore(fs, begun, acked, observe)
    print(f"\n{found}")
    assert found["states"] > 100, found


def test_a_restore_into_the_workflow_file_is_all_or_nothing_in_every_crash_state() -> None:
    fs = SimFileSystem()
    store = open_sim_store(fs)
    store.commit(_create("w"))
    store.commit(_step("w", "x"))
    checkpoint = store.checkpoint("w")
    store.commit([SetStepStatus(workflow_id="w", step_id="s0", status="completed", at=0)])
    begun = fs.op_count
    lsn = store.restore(checkpoint.id, to_file=True)
    acked = fs.op_count
    restored = store.load("w")
    content = txn_files(fs)["workflows/w.state"]
    store.close()

    def observe(reopened: LocalStore, disk: SimFileSystem) -> Observed:
        state = reopened.load("w")
        return (
            state == restored,
            state.metadata.last_lsn == lsn,
            txn_files(disk).get("workflows/w.state") == content,
        )

    found = _explore(fs, begun, acked, observe)
    print(f"\n{found}")
    assert found["states"] > 15, found
