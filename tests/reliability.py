"""Regenerate ``docs/reliability.md`` from the crash exploration: ``python -m tests.reliability``.

Runs every workload of :mod:`tests.crashcheck` (the quick ones of the default test run and
larger ones: the write-ahead log, and the store with checkpoints, retention and compaction),
the discard workloads of :mod:`tests.test_log_discard`, a few seeds of the SIGKILL loop with
checkpoints (:func:`tests.storerun.run_kill_loop`), plus the deliberately broken variants that
the simulator must catch, and writes the figures as tables. Nothing in the document is typed
by hand.
"""

from __future__ import annotations

import logging
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import wfstate.twophase
from tests import crashmixed, faultinject, logdictionary, storecorruption, storemachine
from tests.crashcheck import (
    BROKEN_VARIANTS,
    CK_VIOLATIONS,
    QUICK_WORKLOADS,
    CheckpointWorkload,
    CrashOutcome,
    NoCheckpointDirSyncFS,
    NoCheckpointFileSyncFS,
    Outcome,
    SlowSyncFS,
    checkpoints_close,
    checkpoints_large,
    checkpoints_one_handle,
    checkpoints_two_handles,
    explore,
    explore_checkpoints,
    run_workload,
    states_showing_the_bug,
)
from tests.simfs import SimFileSystem
from tests.storerun import run_kill_loop
from tests.test_log_discard import DiscardWorkload, check_discard_state, run_discard_workload
from tests.test_log_discard import NoDirSyncFS as NoStartDirSyncFS
from tests.test_recover import run_crash_states
from tests.test_twophase_crash import explore as explore_txns
from tests.test_twophase_crash import tx_one_handle, tx_two_handles

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


HEADER = (
    "| workload | crash points | crash states by kind | acknowledged lost | wrong records "
    "| recoveries raising | recover-twice differences | append after recovery failing "
    "| seconds |"
)


def _row(name: str, o: Outcome, seconds: float) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(o.states.items()))
    return (
        f"| {name} | {o.crash_points} | {o.total_states} ({kinds}) | {len(o.acknowledged_lost)} "
        f"| {len(o.wrong_records)} | {len(o.recovery_errors)} | {len(o.recover_twice_differs)} "
        f"| {len(o.append_after_recovery_fails)} | {seconds:.1f} |"
    )


# -- checkpoints, retention and compaction ------------------------------------------------------

CK_HEADER = (
    "| workload | crash points | crash states by kind | acknowledged batches lost "
    "| checkpoints loading wrong | acknowledged checkpoints lost "
    "| dropped checkpoints resurrected | discarded segments resurrected | recoveries raising "
    "| states not a prefix of the batches | seconds |"
)
CK_FIGURES_HEADER = (
    "| workload | batches | checkpoints taken (by type) | incremental | folds (longest chain) "
    "| checkpoints dropped (retentions) | compactions (rotating a segment by size inside) "
    "| segments discarded | discards followed by the other handle |"
)
CK_WORKLOADS: dict[str, Callable[[], CheckpointWorkload]] = {
    "1 handle, 21 batches (default test run)": checkpoints_one_handle,
    "2 handles in turn, 21 batches (default test run)": checkpoints_two_handles,
    "1 handle, 21 batches, compacting on close (default test run)": checkpoints_close,
    "1 handle, 33 batches, automatic checkpoints (-m slow)": lambda: checkpoints_large(1),
    "2 handles in turn, 33 batches, automatic checkpoints (-m slow)": lambda: checkpoints_large(2),
}


def _ck_row(name: str, o: CrashOutcome, seconds: float) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(o.states.items()))
    order = [
        "acknowledged batches lost",
        "checkpoints loading wrong",
        "acknowledged checkpoints lost",
        "dropped checkpoints resurrected",
        "discarded segments resurrected",
        "recoveries raising",
        "states not a prefix of the batches",
    ]
    assert sorted(order) == sorted(CK_VIOLATIONS)
    counts = " | ".join(str(len(o.found[k])) for k in order)
    return f"| {name} | {o.crash_points} | {o.total_states} ({kinds}) | {counts} | {seconds:.1f} |"


def _ck_figures(name: str, w: CheckpointWorkload) -> str:
    f = w.figures
    taken = ", ".join(
        f"{k.removeprefix('checkpoints (').rstrip(')')} {v}"
        for k, v in sorted(f.items())
        if k.startswith("checkpoints (")
    )
    followed = f["discards followed by handle 0"] if "2 handles" in name else "-"
    return (
        f"| {name} | {len(w.batch_lsns)} | {len(w.seen)} ({taken}) | "
        f"{f['incremental checkpoints']} | {f['folds']} ({f['longest chain folded']}) | "
        f"{f['checkpoints dropped']} ({f['retentions']}) | {f['compactions']} "
        f"({f['compactions rotating a segment by size']}) | {f['segments discarded']} | "
        f"{followed} |"
    )


# -- discarding log segments (tests/test_log_discard.py) ----------------------------------------

DISCARD_HEADER = (
    "| workload | crash points | crash states | with the discard committed "
    "| acknowledged records lost | discarded segments resurrected | other violations | seconds |"
)


@dataclass
class DiscardOutcome:
    crash_points: int = 0
    states: int = 0
    committed: int = 0
    states_with_violations: int = 0
    found: Counter[str] = field(default_factory=Counter)


def explore_discard_kinds(w: DiscardWorkload) -> DiscardOutcome:
    """``tests.test_log_discard.explore_discard``, its violations counted by kind."""
    out = DiscardOutcome()
    for at in w.fs.crash_points():
        out.crash_points += 1
        for label, disk in w.fs.crash_states(at):
            out.states += 1
            done, problems = check_discard_state(w, disk, at, f"op {at} {label}")
            out.committed += done
            out.states_with_violations += bool(problems)
            for problem in problems:
                if "acknowledged LSNs" in problem:
                    out.found["lost"] += 1
                elif "discarded segments left" in problem or "START was durable" in problem:
                    out.found["resurrected"] += 1
                else:
                    out.found["other"] += 1
    return out


DISCARD_WORKLOADS: dict[str, Callable[[], DiscardWorkload]] = {
    "1 handle: 40 appends, discard, 16 appends (default test run)": lambda: run_discard_workload(
        before=40, after=16
    ),
    "a follower whose segment was discarded appends 16 (default test run)": lambda: (
        run_discard_workload(before=40, after=16, follower=True)
    ),
    "1 handle: 150 appends, discard, 80 appends (-m slow)": lambda: run_discard_workload(
        before=150, after=80
    ),
    "a follower appends 80 after a discard of 150 (-m slow)": lambda: run_discard_workload(
        before=150, after=80, follower=True
    ),
}

# -- SIGKILL loops with checkpoints (tests/test_checkpoint_kill.py) -----------------------------

KILL_SEEDS = range(1, 6)
KILL_HEADER = (
    "| seed | rounds x writers x batches | kills (inside a commit / checkpoint / compaction / "
    "retention / between; late) | acknowledged batches | unacknowledged batches that landed "
    "| acknowledged checkpoints | dropped (by a killed retention) | compactions "
    "| checkpoints in the index at the end | problems | seconds |"
)


def _kill_row(seed: int) -> tuple[str, int]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wfstate-kill-") as tmp:
        try:
            loop, problems = run_kill_loop(Path(tmp), seed=seed)
        except (Exception, pytest.fail.Exception) as exc:
            return f"| {seed} | run failed: {exc!s:.200} |", 1
    f = loop.figures
    late = sum(r.late for r in loop.rounds)
    kinds = " / ".join(
        str(f.get(f"kills {k}", 0))
        for k in (
            "inside a commit",
            "inside a checkpoint",
            "inside a compaction",
            "inside a retention",
            "between operations",
        )
    )
    row = (
        f"| {seed} | {len(loop.rounds)} x {loop.procs} x {loop.commits} | {f['kills']} "
        f"({kinds}; {late}) | {f['acknowledged batches']} | "
        f"{f['unacknowledged batches of killed writers that landed']} | "
        f"{f['acknowledged checkpoints']} | {f['checkpoints dropped']} "
        f"({f['acknowledged checkpoints dropped by a killed retention']}) | "
        f"{f.get('compactions', 0)} | {f['checkpoints in the index']} | {len(problems)} | "
        f"{time.perf_counter() - start:.1f} |"
    )
    return row, len(problems)


def _sections() -> tuple[list[str], int]:
    """The sections the issue-7 suites write (each runs its thorough variant and raises
    ``AssertionError`` on a violation), and how many of them failed."""
    sections, failed = [], 0
    for name, make in (
        ("mixed workload", crashmixed.reliability_section),
        ("two-phase commit", _twophase_section),
        ("recover", _recover_section),
        ("state machine", storemachine.reliability_section),
        ("error injection", faultinject.reliability_section),
        ("corruption", storecorruption.reliability_section),
        ("segment dictionaries", logdictionary.reliability_section),
    ):
        start = time.perf_counter()
        try:
            sections.append(make().rstrip() + "\n")
        except AssertionError as exc:
            failed += 1
            sections.append(f"## {name}: FAILED\n\n```\n{exc!s:.3000}\n```\n")
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return sections, failed


def _twophase_section() -> str:
    """The two-phase-commit workloads of ``tests/test_twophase_crash.py``, every crash point."""
    rows, bad = [], []
    for make in (tx_one_handle, tx_two_handles):
        w = make()
        o = explore_txns(w)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(o.states.items()))
        figures = ", ".join(f"{k} {v}" for k, v in sorted(w.figures.items()))
        rows.append(
            f"| {w.name} | {figures} | {o.crash_points} | {o.total_states} ({kinds}) "
            f"| {o.violations} |"
        )
        bad += o.problems()
    assert not bad, bad
    return "\n".join(
        [
            "## Two-phase commit across `workflows/`, `checkpoints/`, `sessions/`",
            "",
            "Transactions of state files, embedded checkpoints and session records "
            "(`tests/test_twophase_crash.py`), by one handle and by two (a decider killed "
            "between its decision and its renames, finished by the other). In every crash "
            "state: the files are those of the first n transactions for some n at least the "
            "acknowledged ones, the checkpoint entries agree with the files, no decided temp "
            "file is left, a second open changes nothing.",
            "",
            "| workload | what it did | crash points | crash states by kind | violations |",
            "|---|---|---:|---|---:|",
            *rows,
        ]
    )


def _recover_section() -> str:
    """``recover`` plan and apply on real copies of the two-phase-commit crash states."""
    running = wfstate.twophase.running
    wfstate.twophase.running = lambda pid: False  # temp files count as left by a dead writer
    try:
        with tempfile.TemporaryDirectory(prefix="wfstate-recover-") as tmp:
            start = time.perf_counter()
            seen = run_crash_states(Path(tmp), stride=2)
    finally:
        wfstate.twophase.running = running
    return "\n".join(
        [
            "## `python -m wfstate recover`: the plan is what the apply does",
            "",
            "Every second crash point of the one-handle two-phase-commit workload, each crash "
            "state written to a real directory (`tests/test_recover.py`): the plan changes no "
            "byte; the apply's actions equal the plan's; the store after the apply equals a "
            "plain open of the crash state; every byte of every file is still somewhere "
            "(in place, moved to `quarantine/`, or cut into a `.broken-*` file), but the old "
            "versions a decided transaction replaced; a second apply finds the store clean. "
            "Any failed check stops the run, so the figures below are all clean.",
            "",
            "| crash states | repaired | transactions rolled forward | undecided aborted "
            "| torn tails cut | seconds |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {seen['states']} | {seen['repaired']} | {seen['rolled forward']} "
            f"| {seen['aborted']} | {seen['torn']} | {time.perf_counter() - start:.0f} |",
        ]
    )


def main() -> int:
    # Broken disks make checkpoints unreadable by design; the store logs each one it skips.
    logging.getLogger("wfstate").setLevel(logging.ERROR)
    workloads = dict(QUICK_WORKLOADS)
    workloads["always, 1 thread, 300 appends, rotating"] = lambda: run_workload(
        "always-1t-300", appends=300
    )
    workloads["always, 4 threads (group commit), 300 appends"] = lambda: run_workload(
        "always-4t-300", appends=300, threads=4, fs=SlowSyncFS()
    )
    workloads["always, 3 handles x 2 threads (three processes' writers), 300 appends"] = lambda: (
        run_workload("always-3h-300", appends=300, threads=6, handles=3, fs=SlowSyncFS())
    )
    workloads["interval (100 ms), sync every 7 appends, 150 appends"] = lambda: run_workload(
        "interval-150", durability="interval", appends=150, sync_every=7
    )
    rows, total, violations = [], 0, 0
    for name, factory in workloads.items():
        start = time.perf_counter()
        outcome = explore(factory())
        rows.append(_row(name, outcome, time.perf_counter() - start))
        total += outcome.total_states
        violations += outcome.violations
        print(rows[-1], file=sys.stderr)
    wal_total = total
    ck_rows, ck_figures = [], []
    for name, make in CK_WORKLOADS.items():
        start = time.perf_counter()
        w = make()
        ck = explore_checkpoints(w)
        ck_rows.append(_ck_row(name, ck, time.perf_counter() - start))
        ck_figures.append(_ck_figures(name, w))
        total += ck.total_states
        violations += ck.violations
        print(ck_rows[-1], file=sys.stderr)
    discard_rows = []
    for name, make_discard in DISCARD_WORKLOADS.items():
        start = time.perf_counter()
        d = explore_discard_kinds(make_discard())
        discard_rows.append(
            f"| {name} | {d.crash_points} | {d.states} | {d.committed} | {d.found['lost']} "
            f"| {d.found['resurrected']} | {d.found['other']} | "
            f"{time.perf_counter() - start:.1f} |"
        )
        total += d.states
        violations += sum(d.found.values())
        print(discard_rows[-1], file=sys.stderr)
    kill_rows = []
    for seed in KILL_SEEDS:
        row, problems = _kill_row(seed)
        kill_rows.append(row)
        violations += problems
        print(row, file=sys.stderr)
    broken = []

    def broken_row(name: str, states: int, caught: int) -> None:
        broken.append(f"| {name} | {states} | {caught} | {'yes' if caught else '**no**'} |")

    for name, broken_fs in BROKEN_VARIANTS.items():
        outcome = explore(run_workload(name, appends=40, fs=broken_fs()))
        broken_row(name, outcome.total_states, states_showing_the_bug(outcome))
    ck_broken: dict[str, Callable[[], SimFileSystem]] = {
        "checkpoint file renamed into place without fsync of `checkpoints/` (store, 1 handle)": (
            NoCheckpointDirSyncFS
        ),
        "checkpoint file not fsynced before its rename (store, 1 handle)": NoCheckpointFileSyncFS,
    }
    for name, ck_fs in ck_broken.items():
        ck = explore_checkpoints(checkpoints_one_handle(fs=ck_fs()))
        broken_row(name, ck.total_states, ck.states_with_violations)
    d = explore_discard_kinds(run_discard_workload(before=40, after=4, fs=NoStartDirSyncFS()))
    broken_row(
        "discard: directory fsync dropped (`START` may vanish after its segments are deleted)",
        d.states,
        d.states_with_violations,
    )
    sections, failed_sections = _sections()
    violations += failed_sections
    text = f"""# Reliability figures

Produced by `python -m tests.reliability` (committed code: `tests/crashcheck.py`,
`tests/simfs.py`, `tests/test_log_discard.py`, `tests/storerun.py`, `tests/crashmixed.py`,
`tests/test_twophase_crash.py`, `tests/test_recover.py`, `tests/storemachine.py`,
`tests/faultinject.py`, `tests/storecorruption.py`); do not edit by hand.
Machine: {platform.node() or "?"}, Python {platform.python_version()}.

## Crash simulator over the write-ahead log

For every operation of each workload, every disk a crash there could leave under the crash
model (DESIGN.md §3) is built: `prefix` (a process crash: every pending operation applied),
`synced-only` (only what was synced), `drop-one` (one unsynced write lost), `lost-entry` (one
unsynced directory change lost), `torn` (one unsynced write persisted in part: zeros, short,
garbage or a hole, in 512 B and 4 KiB pieces). Identical disks are counted once. On each, the
real recovery runs and is checked (see `tests/crashcheck.py`): acknowledged records present,
records read equal to a prefix of those appended, a second recovery changing nothing, and an
append after recovery reading back.

{HEADER}
|---|---:|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

{wal_total} crash states over the write-ahead log.

Under `none` and `interval`, a record counts as acknowledged-and-owed in an OS-crash state only
once a `sync()` covering it completed; in a process-crash (`prefix`) state every acknowledged
record is owed. Under `always` every acknowledged record is owed in every state.

## Crash simulator over checkpoints, retention and compaction

Store workloads (`tests/crashcheck.py`, run by `tests/test_checkpoint_crash.py`): batches of
mutations over several workflows, checkpoints (full and incremental; by hand, and in the larger
workloads by a policy after every completed step and every third batch), retentions that fold
incremental checkpoints whose parent they drop, and compactions that checkpoint what is
uncovered and discard the log before a new segment. With two handles on the one disk (two
processes' worth of writers' lock and catch-up), batches alternate between them, handle 0 takes
the checkpoints and handle 1 retains and compacts, so handle 0's next commit follows the
discard of the segment its view ended in. On every crash state of every operation the store is
reopened and checked: every workflow equals the model after a prefix of the batches holding
every acknowledged one; every checkpoint in the index is one the run took and reads as the
model's state of its workflow at its LSN; every acknowledged checkpoint is there unless a
retention begun by then dropped it, and no acknowledged drop is undone; the log starts no
earlier than the last acknowledged compaction's anchor and no segment before its start is left
once the store is open.

{CK_HEADER}
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(ck_rows)}

What the workloads did (before the crashes):

{CK_FIGURES_HEADER}
|---|---:|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(ck_figures)}

The larger two-handle workload and the SIGKILL loop found a bug on their first runs: a handle
kept writing through the descriptor it created a segment with, at its own position, over the
records another handle had appended to that segment since (acknowledged records lost). Segment
descriptors now append; `test_a_handle_appends_after_records_others_added_to_the_segment_it_created`
pins it.

## Crash simulator over discarding log segments

`Log.discard_before` alone (`tests/test_log_discard.py`): appends, a marker record beginning a
new segment, a discard before it, more appends (by the same handle, or by a second one whose
view ended in a discarded segment). On every crash state the log starts at 1 with every
acknowledged record, or at the marker (always once `START` was durable) with every acknowledged
record from it on and no discarded segment left or read; a second recovery changes nothing; an
append after recovery reads back.

{DISCARD_HEADER}
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(discard_rows)}

**Total: {total} crash states explored, {violations} violations.**

## SIGKILL loops with checkpoints

Real processes on a real directory (`tests/test_checkpoint_kill.py`, `tests/storerun.py`):
per round 3 writer processes commit 50 batches each, checkpoint every 5 batches, and the one of
process 0 compacts and retains 2 checkpoints per workflow every 20; one writer is SIGKILLed per
round at a seeded moment (after its n-th acknowledged batch, or n-th checkpoint, compaction or
retention begun, plus up to 15 ms; "inside" below: the last thing it reported was beginning
that step), and the next round's writers resume where the store's batches end. After every
round the store is reopened and checked against what every writer reported: every
acknowledged batch there, nothing else but a killed writer's last begun batch, states equal to
the model, every checkpoint verifying and holding the model's state at its LSN, acknowledged
checkpoints present unless a retention dropped them, drops final, the log starting at or after
the last acknowledged compaction; after the last round a compaction leaves no file no
checkpoint names. The writers use a file system whose `create_exclusive` appends
(the rotate bug above, which the plain one hits within a round).

{KILL_HEADER}
|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|
{chr(10).join(kill_rows)}

## The simulator sees bugs

Deliberately broken file systems run the same workloads; the simulator must report lost
acknowledged records, checkpoints that do not read as taken, or failed recoveries for each.

| broken variant | crash states | states showing the bug | caught |
|---|---:|---:|---|
{chr(10).join(broken)}

{chr(10).join(sections)}
## Elsewhere

Bit flips at every position of a log and truncation at every byte are tested in
`tests/test_corruption.py`; a SIGKILLed engine and `recover` in `tests/test_demo.py`; a
SIGKILLed engine taken over through the API in `tests/test_api_kill.py`; sessions ended, imported
and restored into files under the crash simulator in `tests/test_session_crash.py` and
`tests/test_txn_batch_crash.py`; several writer processes in `tests/test_store_multiprocess.py`;
a writer that died holding the lock in `tests/test_log_writers.py`.
"""
    DOC.write_text(text)
    print(f"wrote {DOC}: {total} crash states, {violations} violations", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
