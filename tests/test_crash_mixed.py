"""The crash simulator over one store running every feature at once (``tests/crashmixed.py``):
batches, save/delete, manual and automatic incremental checkpoints, retention, compaction,
``write_state_files``, a session ended with final checkpoints, a restore into the workflow
file, a session imported from another store. In every crash state, after ``LocalStore.open``:
no acknowledged write lost, the states are the model after a prefix, every transaction all or
nothing, no dropped checkpoint or discarded segment back, no recovery raising, a second
recovery changing nothing. Recoveries that repair something are crashed in turn. Broken disks
and tampered workloads show that the checks fire."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from tests.crashmixed import (
    BROKEN_DISKS,
    BROKEN_STRIDE,
    MixedWorkload,
    explore_broken,
    explore_mixed,
    explore_recovery_crashes,
    mixed_workload,
    rename_points,
)


@pytest.fixture(scope="module")
def workload() -> MixedWorkload:
    return mixed_workload()


def test_the_workload_exercises_every_feature(workload: MixedWorkload) -> None:
    f = workload.figures
    for wanted in (
        "calls: commit",
        "calls: commit in a session",
        "calls: save",
        "calls: delete",
        "calls: restore to file",
        "calls: import_session",
        "checkpoints: manual",
        "checkpoints: post_step",
        "checkpoints: incremental",
        "checkpoints: compaction",
        "checkpoints: imported",
        "retention: checkpoints folded",
        "retention: checkpoints dropped",
        "compaction: segments discarded",
        "transactions: write_state_files",
        "transactions: end_session",
        "sessions exported",
    ):
        assert f[wanted] > 0, (wanted, f)
    assert len(workload.discards) == 2
    # the log rotates several times before each compaction discards it
    assert f["compaction: segments discarded"] >= 6, f


def test_every_third_crash_point_of_the_mixed_workload_recovers_correctly(
    workload: MixedWorkload, crash_report: list[str]
) -> None:
    o = explore_mixed(workload, stride=3)
    crash_report.append(
        f"mixed (every third point): {o.total_states} states at {o.crash_points} points "
        f"{dict(o.states)}; violations {o.violations}"
    )
    assert o.violations == 0, "\n".join(o.problems())
    assert o.total_states > 500, o.states
    assert set(o.states) == {"prefix", "synced-only", "drop-one", "lost-entry", "torn"}


def test_a_crash_during_a_repairing_recovery_recovers_correctly(
    workload: MixedWorkload, crash_report: list[str]
) -> None:
    r = explore_recovery_crashes(workload, stride=9)
    o = r.outcome
    crash_report.append(
        f"mixed, crash during recovery (every ninth point): {sum(r.repairing_states.values())} "
        f"repairing states {dict(r.repairing_states)}; {o.total_states} states of their "
        f"recoveries; violations {o.violations}"
    )
    assert o.violations == 0, "\n".join(o.problems())
    for kind in (
        "torn log tail cut",
        "decided transaction rolled forward",
        "torn segment creation set aside",
    ):
        assert r.repairing_states[kind] > 0, r.repairing_states
    assert o.total_states > 200, o.states


@pytest.mark.parametrize("name", list(BROKEN_DISKS))
def test_the_checks_catch_each_planted_durability_bug(name: str, crash_report: list[str]) -> None:
    w, o = explore_broken(name, stride=25)
    if o.states_with_violations == 0:  # shows only where a rename was just made
        o = explore_mixed(w, points=rename_points(w))
    kinds = {k: len(v) for k, v in o.found.items() if v}
    crash_report.append(
        f"mixed on a broken disk ({name}): {o.states_with_violations} of {o.total_states} "
        f"states show the bug {kinds}"
    )
    assert o.states_with_violations > 0, kinds


def test_the_correct_code_shows_nothing_right_after_each_rename(workload: MixedWorkload) -> None:
    """The points where the rename-before-fsync disk is caught are clean on a correct disk."""
    o = explore_mixed(workload, points=rename_points(workload))
    assert o.violations == 0, "\n".join(o.problems())


def _acked_at_start(w: MixedWorkload) -> MixedWorkload:
    ops = [dataclasses.replace(op, acked=op.started + 1) for op in w.state_ops]
    return dataclasses.replace(w, state_ops=ops)


def _txn_file_changed(w: MixedWorkload) -> MixedWorkload:
    first = w.txns[0]
    path = next(iter(first.files))
    changed = dataclasses.replace(first, files={**first.files, path: b"not what it wrote"})
    return dataclasses.replace(w, txns=[changed, *w.txns[1:]])


def _txn_batch_shifted(w: MixedWorkload) -> MixedWorkload:
    txns = [
        dataclasses.replace(t, state_op=t.state_op + 1 if t.state_op is not None else None)
        for t in w.txns
    ]
    return dataclasses.replace(w, txns=txns)


def _drops_acked_at_start(w: MixedWorkload) -> MixedWorkload:
    return dataclasses.replace(w, drops=[(s, s, cid) for s, _op, cid in w.drops])


def _discards_one_later(w: MixedWorkload) -> MixedWorkload:
    return dataclasses.replace(w, discards=[(op, lsn + 1) for op, lsn in w.discards])


def _checkpoints_holding_other_states(w: MixedWorkload) -> MixedWorkload:
    checkpoints = {cid: (wf, lsn, b"another state") for cid, (wf, lsn, _s) in w.checkpoints.items()}
    return dataclasses.replace(w, checkpoints=checkpoints)


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (_acked_at_start, "acknowledged writes lost"),
        (_txn_file_changed, "2PC atomicity violations"),
        (_txn_batch_shifted, "2PC atomicity violations"),
        (_drops_acked_at_start, "dropped checkpoints resurrected"),
        (_discards_one_later, "discarded segments resurrected"),
        (_checkpoints_holding_other_states, "checkpoints loading wrong"),
    ],
    ids=[
        "calls acknowledged at their start",
        "a file the transaction did not write",
        "a transaction's batch is another",
        "drops acknowledged at their start",
        "a discard one LSN further",
        "checkpoints holding other states",
    ],
)
def test_the_checks_report_a_tampered_workload(
    workload: MixedWorkload, tamper: Callable[[MixedWorkload], MixedWorkload], kind: str
) -> None:
    o = explore_mixed(tamper(workload), stride=7)
    assert o.found[kind], {k: len(v) for k, v in o.found.items()}


@pytest.mark.slow
def test_every_crash_point_of_the_mixed_workload_and_of_its_repairing_recoveries(
    workload: MixedWorkload, crash_report: list[str]
) -> None:
    o = explore_mixed(workload)
    assert o.violations == 0, "\n".join(o.problems())
    r = explore_recovery_crashes(workload)
    assert r.outcome.violations == 0, "\n".join(r.outcome.problems())
    crash_report.append(
        f"mixed (every point): {o.total_states} states; crash during recovery: "
        f"{sum(r.repairing_states.values())} repairing states, {r.outcome.total_states} states "
        "of their recoveries; violations 0"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BROKEN_DISKS))
def test_each_broken_disk_shows_the_bug_as_the_reliability_report_explores_it(name: str) -> None:
    _w, o = explore_broken(name, stride=BROKEN_STRIDE[name])
    assert o.states_with_violations > 0, {k: len(v) for k, v in o.found.items()}
