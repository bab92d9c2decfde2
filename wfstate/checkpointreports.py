"""What a store tells its operator about checkpoints, the log and their growth.

Plain frozen values (msgspec Structs, so they print, compare and encode as JSON for the CLI);
they are computed by the store and change nothing.
"""

from __future__ import annotations

import msgspec

from wfstate.checkpointindex import CheckpointInfo
from wfstate.wal.reader import LogDamage


class CheckpointCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The result of verifying one checkpoint.

    ``ok``: the file reads as its entry (checksums, parent chain complete, the state it
    yields has the recorded checksum). ``matches_log``: the state equals replaying the log to
    the checkpoint's LSN (None: the log no longer holds that history, or the workflow's
    incarnation is gone). ``problem``: why not, when ``ok`` is False or ``matches_log`` is
    False.
    """

    checkpoint: CheckpointInfo
    ok: bool
    matches_log: bool | None
    problem: str | None = None


class RecoverySuggestion(msgspec.Struct, frozen=True, kw_only=True):
    """How to take a workflow back to a checkpoint, and what it would cost.

    ``recommended``: the newest checkpoint of the workflow's current incarnation that reads
    (None: none does). ``bad``: ``(checkpoint id, reason)`` for each checkpoint of the
    workflow that does not read. ``batches_lost``: batches after ``recommended`` that
    restoring it would undo (they stay in the log until compaction; restoring a later
    checkpoint undoes the restore). ``lsn_lost_after``: the LSN they follow.
    """

    workflow_id: str
    recommended: CheckpointInfo | None
    bad: tuple[tuple[str, str], ...]
    batches_lost: int
    lsn_lost_after: int


class CompactionReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a compaction did (or, dry, would do).

    ``checkpointed``: workflows checkpointed so that the log before the anchor is covered.
    ``segments_discarded``: segment files deleted. ``orphans_deleted``: checkpoint files no
    entry named (left by crashes). ``log_first_lsn``: where the log starts afterwards.
    ``sessions_forgotten``: ended sessions the anchor no longer lists
    (``RetentionPolicy.ended_sessions``).
    """

    dry_run: bool
    checkpointed: tuple[str, ...]
    segments_discarded: tuple[str, ...]
    orphans_deleted: tuple[str, ...]
    log_first_lsn: int
    sessions_forgotten: tuple[str, ...] = ()


class StoreStats(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes that grow, so that growth shows before it hurts.

    ``log_bytes``/``log_segments``: the segment files of the log (from ``log_first_lsn`` to
    ``last_lsn``). ``uncovered_batches``: batches a load would replay on top of the newest
    checkpoints (summed over workflows); ``bytes_since_compaction``: batch bytes this process
    logged or read since the last compaction it saw. ``checkpoint_bytes``: the files of every
    checkpoint in the index. ``bad_checkpoints``: ids found not to read by this process.
    ``auto_checkpoint_failures``: automatic checkpoints or compactions that failed (logged).
    ``appended_payload_bytes``/``appended_stored_bytes``: the records this handle appended
    since it was opened, before and after compression (:attr:`compression_ratio`).
    ``cached_state_bytes``: the estimated size of the workflow states held materialized in
    memory (the table's cache, bounded by ``cache_bytes``; an estimate from the sizes of the
    batches that built them, not a measurement of Python objects).
    ``checkpoints_by_workflow``: per workflow with checkpoints, ``(count, bytes)`` of its
    checkpoint files (every incarnation, imported ones included).
    """

    workflows: int
    last_lsn: int
    log_first_lsn: int
    log_segments: int
    log_bytes: int
    uncovered_batches: int
    bytes_since_compaction: int
    checkpoints: int
    checkpoint_bytes: int
    bad_checkpoints: tuple[str, ...]
    auto_checkpoint_failures: int
    appended_payload_bytes: int = 0
    appended_stored_bytes: int = 0
    cached_state_bytes: int = 0
    checkpoints_by_workflow: dict[str, tuple[int, int]] = {}

    @property
    def compression_ratio(self) -> float | None:
        """Stored / payload bytes of this handle's appends (0.3: 70 % saved); None before
        any append."""
        if not self.appended_payload_bytes:
            return None
        return self.appended_stored_bytes / self.appended_payload_bytes


class RolledForward(msgspec.Struct, frozen=True, kw_only=True):
    """A decided transaction (its ``TXN`` record is in the log) whose files were not all in
    place at open: ``files`` the participant paths the open renamed into place."""

    txn_id: str
    files: tuple[str, ...]


class OpenReport(msgspec.Struct, frozen=True, kw_only=True):
    """What opening the store found and repaired (beyond replaying the log).

    ``log_damage``: what the log's recovery found (torn tails cut, corruption handled by the
    recovery mode), with file, offset and byte count. ``rolled_forward``: decided transactions
    the open finished. ``undecided``: temp files of transactions never decided (their writers
    died before the ``TXN`` record was durable), removed by the open; paths relative to the
    store directory.
    """

    log_damage: tuple[LogDamage, ...]
    rolled_forward: tuple[RolledForward, ...]
    undecided: tuple[str, ...]
