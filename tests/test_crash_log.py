"""The crash simulator over append/rotate workloads: every crash state recovers, and nothing
acknowledged is lost (DESIGN.md §10 tier 2; the figures go to docs/reliability.md)."""

from __future__ import annotations

import pytest

from tests.crashcheck import (
    BROKEN_VARIANTS,
    QUICK_WORKLOADS,
    SlowSyncFS,
    WorkloadFactory,
    explore,
    run_workload,
    states_showing_the_bug,
)
from tests.simfs import Fsync, Write


@pytest.mark.parametrize("name", sorted(QUICK_WORKLOADS))
def test_every_crash_state_recovers_with_every_acknowledged_record(
    name: str, crash_report: list[str]
) -> None:
    factory: WorkloadFactory = QUICK_WORKLOADS[name]
    workload = factory()
    outcome = explore(workload)
    crash_report.append(
        f"{name}: {outcome.total_states} crash states at {outcome.crash_points} crash points "
        f"({dict(sorted(outcome.states.items()))}); violations {outcome.violations}"
    )
    # Every crash point of the trace is explored. How many there are depends on how the
    # threaded workloads' appends happen to group into writes and syncs (4 threads: 510 to 557
    # states in 12 runs), so the floor only guards against a trace that collapsed.
    assert outcome.crash_points == len(workload.fs.crash_points())
    assert outcome.total_states > 300
    assert {"prefix", "synced-only", "torn"} <= set(outcome.states)
    assert outcome.recovery_errors == []
    assert outcome.wrong_records == []
    assert outcome.acknowledged_lost == []
    assert outcome.recover_twice_differs == []
    assert outcome.append_after_recovery_fails == []


def test_the_group_commit_workload_really_groups() -> None:
    workload = run_workload("always-4t", appends=32, threads=4, fs=SlowSyncFS())
    syncs = sum(1 for op in workload.fs.trace if isinstance(op, Fsync))
    writes = sum(1 for op in workload.fs.trace if isinstance(op, Write))
    assert writes < 32, "some writes must carry several records"
    assert syncs < 32 + 10


@pytest.mark.parametrize("variant", sorted(BROKEN_VARIANTS))
def test_the_simulator_catches_a_broken_variant(variant: str, crash_report: list[str]) -> None:
    outcome = explore(run_workload(variant, appends=20, fs=BROKEN_VARIANTS[variant]()))
    caught = states_showing_the_bug(outcome)
    crash_report.append(
        f"broken variant, {variant}: caught in {caught} of {outcome.total_states} states"
    )
    assert caught > 0, f"the simulator must see the bug: {variant}"


@pytest.mark.slow
def test_long_crash_exploration(crash_report: list[str]) -> None:
    for threads in (1, 3):
        outcome = explore(run_workload(f"always-{threads}t-long", appends=120, threads=threads))
        crash_report.append(f"long, {threads} threads: {outcome.total_states} states")
        assert outcome.violations == 0, outcome
