"""The crash simulator over checkpoint creation, retention (fold + drop) and compaction
(segment discard), issue 4: in every crash state, after reopening,

- every workflow equals the model after one prefix of batches that includes every
  acknowledged batch (no acknowledged mutation is lost, nothing is half applied);
- every checkpoint in the index is one the run took, and reads as exactly the model's state
  of its workflow at its LSN (a fold holds the same state under the same id): no checkpoint
  loads wrong;
- every acknowledged checkpoint is in the index unless a retention under way dropped it, and
  no acknowledged drop comes back;
- once a compaction is acknowledged the log starts at or after its anchor, and no segment
  before the log's start is left on disk after the open (a deleted segment never comes back
  as live data).

The workloads and the checks are in :mod:`tests.crashcheck` (they also feed
``docs/reliability.md``): one handle; two handles alternating commits, one taking the
checkpoints and the other retaining and compacting, so the first follows discards of the
segment its view ended in (``on_discard``) under crashes; and, behind ``-m slow``, a larger
workload with automatic checkpoints, incremental chains deeper than two links folded, several
retentions and compactions, and segments rotated by size inside compactions. Tampered
workloads and broken disks show that each check fires.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.crashcheck import (
    CK_VIOLATIONS,
    CheckpointWorkload,
    CrashOutcome,
    NoCheckpointDirSyncFS,
    NoCheckpointFileSyncFS,
    checkpoints_close,
    checkpoints_large,
    checkpoints_one_handle,
    checkpoints_two_handles,
    explore_checkpoints,
)
from tests.simfs import SimFileSystem
from wfstate.fs import OS_FS, FileSystem
from wfstate.wal import Compression, Log


def _figures(w: CheckpointWorkload) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(w.figures.items()))


def _report(w: CheckpointWorkload, o: CrashOutcome) -> str:
    return (
        f"{w.name}: {o.total_states} crash states at {o.crash_points} crash points "
        f"({len(w.batch_lsns)} batches, {len(w.seen)} checkpoints; {_figures(w)}); "
        f"violations {o.violations}"
    )


def _assert_clean(o: CrashOutcome) -> None:
    assert o.violations == 0, "\n".join(o.problems())


def test_checkpoints_retention_and_compaction_survive_every_crash_state(
    crash_report: list[str],
) -> None:
    w = checkpoints_one_handle()
    o = explore_checkpoints(w)
    crash_report.append(_report(w, o))
    _assert_clean(o)
    assert o.total_states > 500


def test_a_close_that_compacts_survives_every_crash_state(crash_report: list[str]) -> None:
    """``compact_on_close_bytes``: a crash anywhere inside ``close``'s compaction leaves the
    old log or the new one, every acknowledged batch and checkpoint, and once ``close``
    returned, no discarded segment back."""
    w = checkpoints_close()
    o = explore_checkpoints(w)
    crash_report.append(_report(w, o))
    _assert_clean(o)
    assert o.total_states > 500


def test_two_handles_checkpointing_and_compacting_in_turn_survive_every_crash_state(
    crash_report: list[str],
) -> None:
    """Handle 1 retains and compacts while handle 0 commits and checkpoints: handle 0's next
    commit after the compaction follows a discard of the segment its view ended in."""
    w = checkpoints_two_handles()
    assert w.figures["discards followed by handle 0"] == 1
    o = explore_checkpoints(w)
    crash_report.append(_report(w, o))
    _assert_clean(o)
    assert o.total_states > 600


# -- the checks see bugs -----------------------------------------------------------------------


def _earlier_batch_acks(w: CheckpointWorkload) -> CheckpointWorkload:
    """Claim each batch acknowledged one operation before its sync completed."""
    return dataclasses.replace(w, batch_acks=[op - 1 for op in w.batch_acks])


def _shifted_lsns(w: CheckpointWorkload) -> CheckpointWorkload:
    """Model each checkpoint as the state one batch earlier than it was taken."""
    return dataclasses.replace(w, batch_lsns=[lsn + 1 for lsn in w.batch_lsns])


def _checkpoints_acked_at_start(w: CheckpointWorkload) -> CheckpointWorkload:
    """Claim each manual checkpoint acknowledged before its CHECKPOINT record was written."""
    acks = []
    for op, checkpoint_id in w.checkpoint_acks:
        before = max((a for a in w.batch_acks if a <= op), default=0)
        acks.append((before, checkpoint_id))
    return dataclasses.replace(w, checkpoint_acks=acks)


def _drops_acked_at_start(w: CheckpointWorkload) -> CheckpointWorkload:
    """Claim each drop acknowledged when its retention began (not once its record was durable);
    nothing counts as under way."""
    return dataclasses.replace(w, drops=[(op, start, c) for start, op, c in w.drops])


def _discards_acked_at_start(w: CheckpointWorkload) -> CheckpointWorkload:
    """Claim the compaction acknowledged once its first batch before was."""
    (op, lsn), *_ = w.discards
    before = max(a for a in w.batch_acks if a <= op)
    return dataclasses.replace(w, discards=[(before, lsn)])


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (_earlier_batch_acks, "acknowledged batches lost"),
        (_shifted_lsns, "checkpoints loading wrong"),
        (_checkpoints_acked_at_start, "acknowledged checkpoints lost"),
        (_drops_acked_at_start, "acknowledged checkpoints lost"),
        (_discards_acked_at_start, "discarded segments resurrected"),
    ],
)
def test_the_checks_report_a_tampered_workload(
    tamper: Callable[[CheckpointWorkload], CheckpointWorkload], kind: str
) -> None:
    o = explore_checkpoints(tamper(checkpoints_one_handle()), stride=2)
    assert o.found[kind], {k: len(v) for k, v in o.found.items()}


def test_the_checks_report_a_drop_acknowledged_before_it_is_durable() -> None:
    """A retention whose drop is taken as acknowledged as soon as it begins: states between
    its start and its durable CHECKPOINT_DROP record hold the checkpoint again."""
    w = checkpoints_one_handle()
    (start, op, checkpoint_id), *_ = w.drops
    tampered = dataclasses.replace(w, drops=[(start, start, checkpoint_id)])
    o = explore_checkpoints(tampered, points=range(start, op + 1))
    assert o.found["dropped checkpoints resurrected"], {k: len(v) for k, v in o.found.items()}


@pytest.mark.parametrize(
    ("disk", "kinds"),
    [
        (NoCheckpointDirSyncFS, {"checkpoints loading wrong", "recoveries raising"}),
        (NoCheckpointFileSyncFS, {"checkpoints loading wrong", "recoveries raising"}),
    ],
    ids=["rename without directory fsync", "checkpoint file not fsynced"],
)
def test_the_checks_catch_a_checkpoint_file_that_is_not_durable(
    crash_report: list[str], disk: Callable[[], SimFileSystem], kinds: set[str]
) -> None:
    o = explore_checkpoints(checkpoints_one_handle(fs=disk()), stride=3)
    crash_report.append(
        f"checkpoints-1h on a broken disk ({disk.__name__}): caught in "
        f"{o.states_with_violations} of {o.total_states} states (every third crash point)"
    )
    assert {k for k in CK_VIOLATIONS if o.found[k]} == kinds


# -- a bug this proof found: a handle wrote over records appended to the segment it created ---


@pytest.mark.parametrize("disk", ["simulated", "os"])
def test_a_handle_appends_after_records_others_added_to_the_segment_it_created(
    tmp_path: Path, disk: str
) -> None:
    """The descriptor of a segment a handle created must append: another handle appends to
    that segment between its write groups (it wrote at its own position, over them)."""
    fs: FileSystem = SimFileSystem() if disk == "simulated" else OS_FS
    wal = "/store/wal" if disk == "simulated" else str(tmp_path / "wal")
    options = {"fs": fs, "segment_size": 4096, "compression": Compression(codec="none")}
    a = Log.open(wal, **options)  # type: ignore[arg-type]
    b = Log.open(wal, **options)  # type: ignore[arg-type]
    a.append(b"x" * 3000)
    a.append(b"y" * 3000)  # a rotates: it creates segment 2
    b.append(b"b" * 100)  # b appends to segment 2
    a.append(b"a" * 100)  # a appends to segment 2 again
    a.close()
    b.close()
    with Log.open(wal, fs=fs) as log:
        got = [(r.lsn, r.payload[:1]) for r in log.read()]
    assert got == [(1, b"x"), (2, b"y"), (3, b"b"), (4, b"a")]


# -- larger workloads (-m slow) ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("handles", [1, 2], ids=["one handle", "two handles"])
def test_larger_workload_with_automatic_checkpoints_survives_every_crash_state(
    crash_report: list[str], handles: int
) -> None:
    """33 batches over 4 workflows, automatic checkpoints (post_step and every 3 batches,
    incremental up to 6 links), manual ones, 4 retentions folding chains of more than 2
    links, 3 compactions each rotating a segment by size before its own. About 3,000 crash
    states and 10 s per variant."""
    w = checkpoints_large(handles)
    assert w.figures["longest chain folded"] > 2
    assert w.figures["compactions rotating a segment by size"] == 3
    assert w.figures["checkpoints (automatic)"] and w.figures["checkpoints (post_step)"]
    if handles == 2:
        assert w.figures["discards followed by handle 0"] == 3
    o = explore_checkpoints(w)
    crash_report.append(_report(w, o))
    _assert_clean(o)
    assert o.total_states > 2500
