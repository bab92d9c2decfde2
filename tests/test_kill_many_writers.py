"""SIGKILL loop "small segments, many writers" (DESIGN.md §10 tier 5), on a real directory.

The checkpoint kill loop of :mod:`tests.storerun` (``run_kill_loop``: writers that commit,
checkpoint, and in process 0 compact and retain; one SIGKILLed per round, after a batch, in a
checkpoint, a compaction or a retention) with 6 writer processes and 4 KiB log segments, so a
segment is left for the next every few batches, writers keep finding the segment they were
appending to rotated by another process, and every compaction discards several segments under
five live writers. After every round the store is reopened and checked against what every
writer reported (``check_kill_loop``): every acknowledged batch there and nothing else but a
killed writer's last begun one, states equal to the model, acknowledged checkpoints present
and verifying unless dropped, no discarded segment back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storerun import KillLoop, kill_loop_summary, run_kill_loop

MANY_WRITERS = 6
TINY_SEGMENT = 4096


def run_many_writers(tmp_path: Path, *, seed: int, rounds: int, commits: int) -> KillLoop:
    """One loop; raises AssertionError with the problems if its checks found any."""
    loop, problems = run_kill_loop(
        tmp_path,
        seed=seed,
        procs=MANY_WRITERS,
        rounds=rounds,
        commits=commits,
        checkpoint_every=5,
        maintain_every=10,
        segment_size=TINY_SEGMENT,
    )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
    assert loop.figures["kills"] == rounds
    # rotation and discards all the time: several segments per compaction
    assert loop.figures["segments discarded"] >= 2 * loop.figures["compactions"] > 0
    return loop


def test_six_writers_on_tiny_segments_survive_a_sigkill_each_round(
    tmp_path: Path, crash_report: list[str]
) -> None:
    """4 rounds of 6 writers x 30 batches (about 5 s)."""
    loop = run_many_writers(tmp_path, seed=1, rounds=4, commits=30)
    crash_report.append(kill_loop_summary("many writers, 4 KiB segments, seed 1", loop))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_six_writers_on_tiny_segments_long(
    tmp_path: Path, seed: int, crash_report: list[str]
) -> None:
    """8 rounds of 6 writers x 60 batches per seed (every kind of kill moment twice)."""
    loop = run_many_writers(tmp_path, seed=seed, rounds=8, commits=60)
    crash_report.append(kill_loop_summary(f"many writers, 4 KiB segments, seed {seed}", loop))
