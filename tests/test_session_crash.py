"""The crash simulator over a session's life (docs/format.md §11): start, batches in the
session, the end transaction, a batch after. In every crash state of every crash point, after
reopening the store:

- an acknowledged start is there (the session is listed);
- the session is ended exactly when every file of its end transaction (final checkpoints,
  workflow state files, the session record file) is in place with its content and the final
  checkpoint entries are in the index; active, none of them is (all or nothing);
- an acknowledged end is there;
- an ended session's record file decodes as the session the log lists.
"""

from __future__ import annotations

from collections import Counter

from tests.crashcheck import CK_STORE, open_sim_store, txn_files
from tests.simfs import SimFileSystem
from wfstate.model import WorkflowStep
from wfstate.mutations import CreateWorkflow, Mutation, SetStepStatus
from wfstate.sessions import decode_session_file


def _create(workflow_id: str) -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(2))
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)]


def test_ending_a_session_is_all_or_nothing_in_every_crash_state() -> None:
    fs = SimFileSystem()
    store = open_sim_store(fs)
    session = store.start_session("alice", {"run": 1})
    start_acked = fs.op_count
    for w in ("a", "b"):
        store.commit(_create(w), session=session)
    store.commit(
        [SetStepStatus(workflow_id="a", step_id="s0", status="running", at=0)], session=session
    )
    store.commit(_create("other"))
    before = txn_files(fs)
    end_begun = fs.op_count
    session.end()
    end_acked = fs.op_count
    after = txn_files(fs)
    final_checkpoints = {i.id for i in store.checkpoints()}
    store.commit([SetStepStatus(workflow_id="b", step_id="s0", status="running", at=0)])
    store.close()
    written = {path for path in after if after[path] != before.get(path)}
    assert len(written) == 5 and len(final_checkpoints) == 2  # 2 ckpt, 2 state, 1 session

    found: Counter[str] = Counter()
    states = 0
    problems: list[str] = []
    for at in fs.crash_points():
        for label, disk in fs.crash_states(at):
            states += 1
            where = f"op {at} {label}"
            try:
                reopened = open_sim_store(disk)
            except Exception as exc:  # every failure is a finding
                problems.append(f"{where}: reopening raised {exc!r}")
                continue
            with reopened:
                listed = reopened.sessions()
                if not listed:
                    if at >= start_acked:
                        problems.append(f"{where}: the acknowledged start is lost")
                    continue
                (info,) = listed
                files = txn_files(disk)
                present = {p for p in written if files.get(p) == after[p]}
                index = {i.id for i in reopened.checkpoints()}
                found[info.status] += 1
                if info.status == "ended" and at <= end_begun:
                    problems.append(f"{where}: ended before the end began")
                if info.status == "ended":
                    if present != written or not final_checkpoints <= index:
                        problems.append(f"{where}: ended, but files missing {written - present}")
                    name = f"{CK_STORE}/sessions/{session.id}.session"
                    if decode_session_file(disk.read_file(name), name) != info:
                        problems.append(f"{where}: the session file disagrees with the log")
                else:
                    if at >= end_acked:
                        problems.append(f"{where}: the acknowledged end is lost")
                    if present or index & final_checkpoints:
                        problems.append(f"{where}: active, but end files present {present}")
    assert not problems, "\n".join(problems[:20])
    assert found["ended"] and found["active"], found  # both sides of the decision were seen
    assert states > 100, states
