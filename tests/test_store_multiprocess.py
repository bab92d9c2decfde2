"""Several processes on one LocalStore (issue 3), checked against the model.

Requirement: several processes can open the same store; writers are serialized (portalocker),
each sees the others' committed writes (it tails the log before applying), readers do not block
writers. 4 processes x 500 commits on one store: no lost or duplicated mutation, final states
equal the model.

The writers and the reader are :mod:`tests.store_worker` roles; :mod:`tests.storerun` starts
them (as processes behind one start barrier, or as threads sharing one opened store) and checks
what the store holds afterwards against what every writer reported, independently of how the
commits were made. Every batch puts an output on the shared workflow's step ``shared`` (whose
versions the store numbers from the current state) and one on the writer's own workflow; every
10th batch also claims a task step that all writers race for, so a writer that did not see the
others' commits would number a version twice or claim a task twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from msgspec.structs import replace

from tests.store_worker import (
    CLAIM_FIELD,
    OWN_STEP,
    SHARED,
    Ack,
    Rejected,
    Violation,
    own_workflow,
    run_reader,
    task_step,
)
from tests.storerun import (
    Run,
    check_reader,
    check_run,
    read_store,
    run_processes,
    run_threads,
    summary,
)
from wfstate.errors import WfstateError
from wfstate.model import StepOutput, WorkflowState
from wfstate.mutations import Mutation

PROCS, COMMITS, CLAIM_EVERY = 4, 500, 10


def verify(
    tmp_path: Path, run: Run, name: str, report: list[str], *, min_seen: int | None = None
) -> None:
    try:
        final, records = read_store(str(tmp_path / "store"))
    except WfstateError as exc:
        pytest.fail(f"reopening the store after the run failed: {exc!r} ({run.note})", False)
    problems = check_run(run, final, records)
    if min_seen is not None:
        problems += check_reader(run, final, min_seen=min_seen)
    report.append(summary(name, run, final))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])


# -- runs today: one process per store --------------------------------------------------------


def test_threads_sharing_one_store_lose_and_duplicate_nothing(
    tmp_path: Path, crash_report: list[str]
) -> None:
    """The same roles and checks, as 4 writer threads and a reader thread in one process."""
    run = run_threads(tmp_path, procs=PROCS, commits=COMMITS, claim_every=CLAIM_EVERY)
    verify(tmp_path, run, "threads", crash_report, min_seen=3)


def test_a_lone_writer_process_killed_mid_run_keeps_every_acknowledged_batch(
    tmp_path: Path, crash_report: list[str]
) -> None:
    """The subprocess machinery and the kill checks, with the one writer a store allows today."""
    run = run_processes(tmp_path, procs=1, commits=COMMITS, claim_every=CLAIM_EVERY, kill_seed=7)
    assert run.killed == {0}, run.note
    verify(tmp_path, run, "one killed writer", crash_report)


# -- the checks catch what they claim to: tampered outcomes of a small run ----------------------

Records = list[tuple[int, list[Mutation]]]
Outcome = tuple[Run, dict[str, WorkflowState], Records]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("small")
    run = run_threads(tmp, procs=3, commits=30, claim_every=5)
    final, records = read_store(str(tmp / "store"))
    assert check_run(run, final, records) == []
    assert check_reader(run, final, min_seen=0) == []
    return run, final, records


def with_outputs(state: WorkflowState, step: str, outputs: tuple[StepOutput, ...]) -> WorkflowState:
    versions = len(outputs) - len(state.outputs.get(step, ()))
    meta = replace(state.metadata, version=state.metadata.version + versions)
    return replace(state, outputs={**state.outputs, step: outputs}, metadata=meta)


def acks(run: Run, p: int) -> list[Ack]:
    return [e for e in run.writers[p] if isinstance(e, Ack)]


def lose_a_batch(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    lost = acks(run, 1)[-1].lsn
    return run, final, [r for r in records if r[0] != lost]


def number_a_version_twice(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    outs = list(final[SHARED].outputs[SHARED])
    outs[5] = replace(outs[5], version=outs[4].version)
    return run, {**final, SHARED: with_outputs(final[SHARED], SHARED, tuple(outs))}, records


def skip_a_version(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    outs = [
        replace(o, version=o.version + (k >= 5))
        for k, o in enumerate(final[SHARED].outputs[SHARED])
    ]
    return run, {**final, SHARED: with_outputs(final[SHARED], SHARED, tuple(outs))}, records


def apply_a_batch_twice(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    outs = final[SHARED].outputs[SHARED]
    again = replace(outs[3], version=len(outs) + 1)
    return run, {**final, SHARED: with_outputs(final[SHARED], SHARED, (*outs, again))}, records


def half_apply_a_batch(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    own = final[own_workflow(0)]
    cut = with_outputs(own, OWN_STEP, own.outputs[OWN_STEP][:-1])
    return run, {**final, own_workflow(0): cut}, records


def claim_a_task_twice(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    shared = final[SHARED]
    steps = tuple(
        replace(s, attempts=2) if s.id == task_step(0) else s for s in shared.workflow.steps
    )
    tampered = replace(shared, workflow=replace(shared.workflow, steps=steps))
    return run, {**final, SHARED: tampered}, records


def stamp_a_wrong_last_lsn(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    own = final[own_workflow(1)]
    meta = replace(own.metadata, last_lsn=own.metadata.last_lsn - 1)
    return run, {**final, own_workflow(1): replace(own, metadata=meta)}, records


def log_an_unacknowledged_batch(
    run: Run, final: dict[str, WorkflowState], records: Records
) -> Outcome:
    return run, final, [*records, (records[-1][0] + 1, records[-1][1])]


def log_other_content(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    lsn, batch = records[-1]
    other = [replace(m, workflow_id="elsewhere") for m in batch]
    return run, final, [*records[:-1], (lsn, other)]


def stamp_a_wrong_time(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    lsn, batch = records[-1]
    return run, final, [*records[:-1], (lsn, [replace(m, at=1.0) for m in batch])]


def acknowledge_an_lsn_twice(
    run: Run, final: dict[str, WorkflowState], records: Records
) -> Outcome:
    twin = replace(acks(run, 1)[3], lsn=acks(run, 0)[7].lsn)
    events = [twin if isinstance(e, Ack) and e.i == 3 else e for e in run.writers[1]]
    return dataclasses.replace(run, writers={**run.writers, 1: events}), final, records


def lose_a_race_to_oneself(run: Run, final: dict[str, WorkflowState], records: Records) -> Outcome:
    output = final[SHARED].outputs[task_step(2)][0].data
    assert isinstance(output, dict)
    p = output["claimed_by"]
    lost = Rejected(p=p, i=2 * run.claim_every, field=CLAIM_FIELD, error="tampered")
    return (
        dataclasses.replace(run, writers={**run.writers, p: [lost, *run.writers[p]]}),
        final,
        records,
    )


@pytest.mark.parametrize(
    ("tamper", "reported"),
    [
        (lose_a_batch, "is not in the log: LOST"),
        (number_a_version_twice, "does not validate"),
        (skip_a_version, "without gaps or repeats"),
        (apply_a_batch_twice, "(duplicate, lost or out of order)"),
        (half_apply_a_batch, "half-applied batches"),
        (claim_a_task_twice, "claimed more than once"),
        (stamp_a_wrong_last_lsn, "metadata.last_lsn is"),
        (log_an_unacknowledged_batch, "holds a batch nobody acknowledged"),
        (log_other_content, "acknowledged to process"),
        (stamp_a_wrong_time, "outside the run's time"),
        (acknowledge_an_lsn_twice, "acknowledged twice"),
        (lose_a_race_to_oneself, "lost the race"),
    ],
)
def test_the_checks_report_a_tampered_outcome(
    small: Outcome,
    tamper: Callable[[Run, dict[str, WorkflowState], Records], Outcome],
    reported: str,
) -> None:
    run, final, records = small
    problems = check_run(*tamper(run, dict(final), list(records)))
    assert any(reported in p for p in problems), problems


class ScriptedStore:
    """Serves a scripted sequence of states per workflow (the last one repeats)."""

    def __init__(self, script: dict[str, list[WorkflowState]]) -> None:
        self._script = {w: list(states) for w, states in script.items()}

    def load(self, workflow_id: str) -> WorkflowState:
        states = self._script[workflow_id]
        return states.pop(0) if len(states) > 1 else states[0]

    def commit(self, batch: Sequence[Mutation]) -> int:
        raise NotImplementedError

    def save(self, state: WorkflowState) -> int:
        raise NotImplementedError

    def delete(self, workflow_id: str) -> int:
        raise NotImplementedError

    def list_workflows(self) -> list[str]:
        return sorted(self._script)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("order", "reported"),
    [
        ({SHARED: ["final", "setup"]}, "went backwards"),
        ({own_workflow(2): ["setup", "final"]}, "loaded after the shared workflow showed"),
    ],
)
def test_the_reader_reports_what_cannot_be(
    small: Outcome, order: dict[str, list[str]], reported: str
) -> None:
    run, final, _ = small
    known = {"setup": run.setup.states, "final": final}
    script = {w: [known[k][w] for k in order.get(w, ["final"])] for w in final}
    store = ScriptedStore(script)
    rounds = iter([False, False, True])
    with pytest.raises(Violation, match=reported):
        run_reader(
            store, procs=run.procs, claim_every=run.claim_every, should_stop=lambda: next(rounds),
            emit=lambda _e: None,
        )  # fmt: skip


# -- the acceptance tests of multi-process writers ---------------------------------------------


def test_four_writer_processes_and_a_reader_share_one_store(
    tmp_path: Path, crash_report: list[str]
) -> None:
    run = run_processes(
        tmp_path, procs=PROCS, commits=COMMITS, claim_every=CLAIM_EVERY, reader=True
    )
    verify(tmp_path, run, "4 processes + reader", crash_report, min_seen=3)


@pytest.mark.parametrize("seed", [1])
def test_a_writer_process_killed_mid_run_loses_only_its_unacknowledged_batch(
    tmp_path: Path, crash_report: list[str], seed: int
) -> None:
    run = run_processes(tmp_path, procs=3, commits=COMMITS, claim_every=CLAIM_EVERY, kill_seed=seed)
    assert len(run.killed) == 1, f"the kill came too late: {run.note}"
    verify(tmp_path, run, "3 processes, 1 killed", crash_report)


def test_processes_opening_a_fresh_store_race_to_create_one_workflow(
    tmp_path: Path, crash_report: list[str]
) -> None:
    """No setup: 4 processes open a store that does not exist yet; each creates the shared
    workflow (exactly one succeeds, the others get "already exists") and then writes to it."""
    run = run_processes(tmp_path, procs=PROCS, commits=50, claim_every=5, create=True)
    verify(tmp_path, run, "fresh store, racing creations", crash_report)
    lost = [
        e
        for events in run.writers.values()
        for e in events
        if isinstance(e, Rejected) and e.field == "mutations[0].workflow_id"
    ]
    assert len(lost) == PROCS - 1, lost


# -- bigger and repeated variants (-m slow) ---------------------------------------------------


@pytest.mark.slow
def test_four_writer_processes_2000_commits_each_with_a_reader(
    tmp_path: Path, crash_report: list[str]
) -> None:
    run = run_processes(
        tmp_path, procs=PROCS, commits=2000, claim_every=CLAIM_EVERY, reader=True, timeout=600
    )
    verify(tmp_path, run, "4 x 2000 + reader", crash_report, min_seen=10)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 12))
def test_killed_writer_process_seeds(tmp_path: Path, crash_report: list[str], seed: int) -> None:
    run = run_processes(tmp_path, procs=3, commits=COMMITS, claim_every=CLAIM_EVERY, kill_seed=seed)
    assert len(run.killed) == 1, f"the kill came too late: {run.note}"
    verify(tmp_path, run, f"3 processes, 1 killed (seed {seed})", crash_report)
