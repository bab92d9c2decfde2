"""Error injection for every N (DESIGN.md §10 tier 4), on the simulated file system.

The store workload of :mod:`tests.faultinject` (batches, a session and its end, full and
incremental checkpoints, ``write_state_files``, a retention that folds and drops, a compaction
rotating and discarding segments) runs once per kind of call and N, with the N-th call of that
kind failing once, and again with it and every later one failing. In each run: nothing raises
an error outside the ``WfstateError`` tree; the call during which a sync failed raises; the
error is the one :func:`tests.faultinject.expected_reaction` names (``StorePoisonedError`` for
any failed sync, the log and a decided transaction's finish, after which every call is
refused; ``TransactionError`` for a transaction's prepare and ``StorageIOError`` for writing
or renaming a checkpoint file, a deletion or an open, after which the store goes on); no file
or directory is synced again after a failed sync of it; and every crash state at the failure,
and the disk as left, reopens with every acknowledged batch, checkpoint, drop, session event,
state file and compaction there. The tests at the end show that each check fires on a store
that breaks its rule.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from tests.faultinject import (
    KINDS,
    LARGE,
    FaultRecordingFS,
    check_run,
    inject,
    inject_every_n,
    injection_table,
    reaction_problems,
    reliability_section,
    run_workload,
)
from tests.simfs import Fault, FaultOp
from wfstate.errors import StorageIOError, StorePoisonedError, TransactionError


def test_the_workload_makes_the_same_calls_every_run_and_uses_every_feature() -> None:
    first, second = run_workload(FaultRecordingFS()), run_workload(FaultRecordingFS())
    assert first.fs.calls == second.fs.calls
    assert all(s.acked for s in first.steps), [s for s in first.steps if not s.acked]
    features = first.features
    assert features["sessions"] == 1 and features["two-phase commits"] == 2
    assert features["incremental checkpoints"] >= 2 and features["checkpoints folded"] >= 1
    assert features["checkpoints dropped"] >= 1 and features["segments discarded"] >= 1
    assert features["segments created"] >= 3  # rotation by size, and by the compaction
    assert all(first.fs.calls[kind] > 0 for kind in KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_nth_call_failing_once_and_persistently(
    kind: FaultOp, crash_report: list[str]
) -> None:
    report = inject_every_n(kinds=[kind])
    figures = report.kinds[kind]
    crash_report.append(
        f"fault injection, {kind}: {figures.once} + {figures.persistent} runs, "
        f"{dict(figures.reactions)}, {figures.states} crash states, {report.seconds:.1f} s"
    )
    assert figures.once == figures.calls > 0
    assert not report.problems, "\n".join(report.problems[:30])


@pytest.mark.slow
def test_every_nth_call_failing_in_the_larger_workload(crash_report: list[str]) -> None:
    report = inject_every_n(LARGE)
    crash_report.append(f"fault injection, larger workload ({report.seconds:.0f} s):")
    crash_report += injection_table(report).splitlines()
    assert not report.problems, "\n".join(report.problems[:30])


# -- the checks fire -----------------------------------------------------------------------------


class SwallowingSyncFS(FaultRecordingFS):
    """A disk whose failed fdatasync returns as if it succeeded (what a store ignoring the
    error would do): the writes it covered stay pending forever."""

    def fdatasync(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            super().fdatasync(fd)


def test_an_acknowledgement_after_a_failed_fdatasync_is_caught() -> None:
    fault = Fault("fdatasync", 3)  # the sync of batch 1, in a session
    run = run_workload(SwallowingSyncFS([fault]))
    injection = check_run(run, fault)
    problems = "\n".join(injection.problems)
    assert "commit 1 #3 returned normally although a sync failed" in problems
    assert "synced again after a failed sync" in problems  # the next batch's sync
    assert injection.acknowledged_lost > 0, problems  # batch 1 and later: synced-only state
    assert injection.acks_after_failed_sync > 0


def test_a_sync_retried_after_it_failed_is_caught() -> None:
    fs = FaultRecordingFS([Fault("fsync", 1)])
    fs.mkdir("/d")
    fd = fs.create_exclusive("/d/f")
    fs.write(fd, b"data")
    with pytest.raises(OSError):
        fs.fsync(fd)
    fs.fsync(fd)
    assert fs.retries == ["/d/f synced again after a failed sync of it"]


def test_a_directory_synced_again_after_a_failed_sync_of_it_is_caught() -> None:
    fs = FaultRecordingFS([Fault("fsync_dir", 1)])
    fs.mkdir("/d")
    with pytest.raises(OSError):
        fs.fsync_dir("/d")
    fs.create_exclusive("/d/f")
    fs.fsync_dir("/d")
    assert fs.dirs_synced_again == {"/d"}
    injection = next(
        inj
        for n in range(1, 40)
        if (inj := inject(Fault("fsync_dir", n))).reaction == StorePoisonedError.__name__
    )
    assert not injection.problems
    injection.run.fs.dirs_synced_again.add("/d")
    problems = check_run(injection.run, injection.fault).problems
    assert "retry: directory /d synced again after a failed sync of it" in problems


def test_a_wrong_reaction_to_a_failure_is_caught() -> None:
    """A poisoning failure answered with a bare OSError, a call acknowledged after the store
    was poisoned, a store that does not go on after a failed prepare, and a checkpoint file's
    failed write surfacing as a bare OSError are each reported."""
    poisoning = inject(Fault("fdatasync", 5))
    assert poisoning.reaction == "StorePoisonedError" and not poisoning.problems
    steps = poisoning.run.steps
    k = next(i for i, s in enumerate(steps) if s.name == poisoning.run.fs.fired[0].step)
    bare = dataclasses.replace(steps[k], error=OSError(5, "EIO"))
    run = dataclasses.replace(poisoning.run, steps=[*steps[:k], bare, *steps[k + 1 :]])
    assert "expected StorePoisonedError" in reaction_problems(run, poisoning.fault)[0]
    acked = dataclasses.replace(steps[k + 1], error=None)
    run = dataclasses.replace(poisoning.run, steps=[*steps[: k + 1], acked, *steps[k + 2 :]])
    assert "after the store was poisoned" in reaction_problems(run, poisoning.fault)[0]

    prepare = next(
        inj
        for n in range(1, 20)
        if (inj := inject(Fault("create", n))).reaction == TransactionError.__name__
    )
    assert not prepare.problems
    steps = prepare.run.steps
    k = next(i for i, s in enumerate(steps) if s.name == prepare.run.fs.fired[0].step)
    stopped = dataclasses.replace(steps[k + 1], error=StorePoisonedError("stopped"))
    run = dataclasses.replace(prepare.run, steps=[*steps[: k + 1], stopped, *steps[k + 2 :]])
    assert "the store goes on from" in reaction_problems(run, prepare.fault)[0]

    checkpoint = next(
        inj
        for n in range(1, 40)
        if (inj := inject(Fault("write", n))).run.fs.fired[0].step.startswith("checkpoint")
    )
    assert checkpoint.reaction == StorageIOError.__name__ and not checkpoint.problems
    steps = checkpoint.run.steps
    k = next(i for i, s in enumerate(steps) if s.name == checkpoint.run.fs.fired[0].step)
    bare = dataclasses.replace(steps[k], error=OSError(5, "EIO"))
    run = dataclasses.replace(checkpoint.run, steps=[*steps[:k], bare, *steps[k + 1 :]])
    assert (
        "raised OSError (not a WfstateError), expected StorageIOError"
        in (reaction_problems(run, checkpoint.fault)[0])
    )


@pytest.mark.slow
def test_the_reliability_section_runs_every_check_and_reports_its_figures() -> None:
    section = reliability_section()  # raises AssertionError on any violation
    assert section.startswith("## ")
    assert "| **all** |" in section and "| seed |" in section
