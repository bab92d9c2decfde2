"""Regenerate ``docs/reliability.md`` from the crash exploration: ``python -m tests.reliability``.

Runs every workload of :mod:`tests.crashcheck` (the quick ones of the default test run and
larger ones), plus the deliberately broken variants that the simulator must catch, and writes
the figures as a table. Nothing in the document is typed by hand.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from tests.crashcheck import (
    BROKEN_VARIANTS,
    QUICK_WORKLOADS,
    Outcome,
    SlowSyncFS,
    explore,
    run_workload,
    states_showing_the_bug,
)

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


def main() -> int:
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
    broken = []
    for name, broken_fs in BROKEN_VARIANTS.items():
        outcome = explore(run_workload(name, appends=40, fs=broken_fs()))
        caught = states_showing_the_bug(outcome)
        broken.append(
            f"| {name} | {outcome.total_states} | {caught} | {'yes' if caught else '**no**'} |"
        )
    text = f"""# Reliability figures

Produced by `python -m tests.reliability` (committed code: `tests/crashcheck.py`,
`tests/simfs.py`); do not edit by hand. Machine: {platform.node() or "?"}, Python
{platform.python_version()}.

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

**Total: {total} crash states explored, {violations} violations.**

Under `none` and `interval`, a record counts as acknowledged-and-owed in an OS-crash state only
once a `sync()` covering it completed; in a process-crash (`prefix`) state every acknowledged
record is owed. Under `always` every acknowledged record is owed in every state.

## The simulator sees bugs

Deliberately broken file systems run the same workload; the simulator must report lost
acknowledged records or failed recoveries for each.

| broken variant | crash states | states showing the bug | caught |
|---|---:|---:|---|
{chr(10).join(broken)}

## Not yet covered here

Checkpoints, two-phase commit, sessions, error injection over whole workloads, SIGKILL loops and
bit-flip sweeps of whole stores arrive with their issues. Bit flips at every position of a log
and truncation at every byte are tested in `tests/test_corruption.py`; a SIGKILLed writer in
`tests/test_demo.py`; batches of mutations over the crash simulator, by one handle and by two
alternating handles, in `tests/test_store_crash.py`; several writer processes (4 x 500 commits
with a reader, and one writer SIGKILLed mid-run while others go on) in
`tests/test_store_multiprocess.py`; a writer that died holding the lock (its torn record, its
torn segment creation) in `tests/test_log_writers.py`, with the crash simulator over the next
writer's repair.
"""
    DOC.write_text(text)
    print(f"wrote {DOC}: {total} crash states, {violations} violations", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
