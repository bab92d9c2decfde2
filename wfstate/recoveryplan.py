"""Crash recovery for an operator: a plan of what recovery will do, and carrying it out.

:func:`plan_recovery` runs the whole recovery on a shadow of the store (nothing is written: see
:mod:`wfstate.offline`) and reports what it found and would change; :func:`apply_recovery` runs
the very same steps on the disk, deleting nothing. The steps, in order:

1. open the store in the chosen recovery mode: the log is recovered (torn tails cut, with the
   cut bytes kept as ``*.broken-<offset>`` files; damaged segments moved to ``wal/quarantine/``
   as the mode decides), decided transactions are rolled forward, the temp files of undecided
   ones are moved to ``quarantine/``;
2. every checkpoint is verified; those that do not read are dropped from the index (a
   ``CHECKPOINT_DROP`` record, as retention does) and their files moved to ``quarantine/``,
   after checking which checkpoint (or the log) each workflow falls back to;
3. every workflow is loaded (a workflow that cannot be built from any checkpoint and the log is
   *unrecoverable*; nothing is changed for it beyond step 2);
4. the sessions whose owner died are listed with what each of their workflows needs (they are
   taken over with ``resume_session``, not changed here).

Because the plan is the real recovery run on a copy-on-write view, it cannot promise something
the apply does not do. Apply is idempotent: recovery that has nothing to do changes nothing, so
a second apply reports ``clean``. A crash during an apply leaves the store in a state the same
recovery repairs (each step is itself crash safe, see the modules that implement it).

When the chosen mode refuses to go on (``tolerate_torn_tail`` or ``absolute`` meeting durable
bytes that went bad), nothing is changed and the plan says why, and what each salvage mode
(``point_in_time``, ``skip_corrupted``) would do and lose instead.
"""

from __future__ import annotations

import contextlib
import os
from typing import Literal

import msgspec

from wfstate.backends.local import LocalStore
from wfstate.checkpointreports import CheckpointCheck
from wfstate.errors import CorruptionError, NotFoundError
from wfstate.format import QUARANTINE_DIR, WAL_DIR
from wfstate.offline import (
    DEFAULT_LOCK_TIMEOUT,
    OfflineStore,
    open_read_only,
    open_repairing,
    relative_damage,
)
from wfstate.progress import Progress, quiet
from wfstate.repairfs import RepairAction, folded_writes
from wfstate.retention import RetentionPolicy
from wfstate.sessions import CrashedSession
from wfstate.wal import LogDamage, RecoveryMode

__all__ = [
    "STRATEGIES",
    "BadCheckpoint",
    "DataLoss",
    "InDoubtTransaction",
    "ModeOption",
    "RecoveryPlan",
    "WorkflowRecovery",
    "apply_recovery",
    "load_workflows",
    "plan_recovery",
]

Status = Literal["clean", "needs_repair", "repaired", "unrecoverable"]

STRATEGIES: dict[RecoveryMode, str] = {
    "tolerate_torn_tail": (
        "tolerate a torn tail: cut the unsynced end of the last segment (never acknowledged "
        "under durability 'always'), refuse any other damage"
    ),
    "absolute": "absolute consistency: change nothing and refuse if the log has any damage",
    "point_in_time": (
        "point in time: end the log at the first damage; later records and segments are set "
        "aside (quarantined), not replayed"
    ),
    "skip_corrupted": (
        "skip corrupted: replay every record that verifies, skipping damaged ones (records of "
        "a workflow after a skipped one may build a state that never existed)"
    ),
}

_DROP_BAD_ONLY = RetentionPolicy(keep_last=None, max_age=None, max_bytes=None, ended_sessions=None)


class DataLoss(msgspec.Struct, frozen=True, kw_only=True):
    """What recovery gives up. ``torn_bytes``: the unsynced end cut from the log (never
    acknowledged under durability ``always``; under ``interval``/``none`` it may hold
    acknowledged records, up to what those levels allow losing). ``damaged_bytes``: durable
    bytes that went bad and are skipped or cut. ``segments_set_aside``: whole segments moved to
    ``wal/quarantine/``. ``workflows_lost``: workflows no checkpoint and log can rebuild."""

    torn_bytes: int
    damaged_bytes: int
    segments_set_aside: int
    workflows_lost: tuple[str, ...]

    @property
    def none(self) -> bool:
        return not (self.damaged_bytes or self.segments_set_aside or self.workflows_lost)


class InDoubtTransaction(msgspec.Struct, frozen=True, kw_only=True):
    """A transaction whose files were not all in place. ``resolution``: ``roll_forward`` (its
    ``TXN`` record is durable: ``files`` are renamed into place) or ``abort`` (never decided:
    ``files`` are its temp files, moved to ``quarantine/``)."""

    txn_id: str
    resolution: Literal["roll_forward", "abort"]
    files: tuple[str, ...]


class BadCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint that does not read: ``problem`` why; ``fallback`` the checkpoint its
    workflow is rebuilt from instead (None: the log alone, or nothing if the workflow is lost)."""

    checkpoint_id: str
    workflow_id: str
    problem: str
    fallback: str | None


class WorkflowRecovery(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow after recovery: ``recoverable`` it loads; ``problem`` why not."""

    workflow_id: str
    recoverable: bool
    problem: str | None = None


class ModeOption(msgspec.Struct, frozen=True, kw_only=True):
    """What another recovery mode would do: ``refused`` why it cannot, else its ``loss``."""

    mode: RecoveryMode
    refused: str | None
    loss: DataLoss | None


class RecoveryPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A recovery plan (``applied`` False) or the report of one carried out (True).

    ``status``: ``clean`` (nothing to do), ``needs_repair`` (a plan with changes to make),
    ``repaired`` (an apply made them), ``unrecoverable`` (the mode refuses, see ``refused``
    and ``alternatives``, or some workflow cannot be rebuilt). Paths are relative to the store.
    """

    store: str
    mode: RecoveryMode
    strategy: str
    applied: bool
    status: Status
    refused: str | None
    estimated_loss: DataLoss
    log_damage: tuple[LogDamage, ...]
    transactions: tuple[InDoubtTransaction, ...]
    bad_checkpoints: tuple[BadCheckpoint, ...]
    workflows: tuple[WorkflowRecovery, ...]
    crashed_sessions: tuple[CrashedSession, ...]
    orphaned_files: tuple[str, ...]
    actions: tuple[RepairAction, ...]
    alternatives: tuple[ModeOption, ...] = ()


def plan_recovery(
    path: str,
    *,
    mode: RecoveryMode = "tolerate_torn_tail",
    progress: Progress = quiet,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> RecoveryPlan:
    """What recovering the store at ``path`` in ``mode`` would find, change and lose; the disk
    is not changed. ``NotFoundError`` if ``path`` is not a store; ``LockTimeoutError`` if a
    running process holds the writers' lock longer than ``lock_timeout``."""
    return _recover(path, mode, progress, lock_timeout, apply=False)


def apply_recovery(
    path: str,
    *,
    mode: RecoveryMode = "tolerate_torn_tail",
    progress: Progress = quiet,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> RecoveryPlan:
    """Recover the store at ``path`` in ``mode`` (the steps of the module docstring), keeping
    everything removed in ``quarantine/``; returns what was done. When the mode refuses,
    nothing is changed (status ``unrecoverable``, with the alternatives)."""
    return _recover(path, mode, progress, lock_timeout, apply=True)


def _recover(
    path: str, mode: RecoveryMode, progress: Progress, lock_timeout: float, *, apply: bool
) -> RecoveryPlan:
    opener = open_repairing if apply else open_read_only
    try:
        offline = opener(path, mode=mode, lock_timeout=lock_timeout)
    except CorruptionError as exc:
        return _refused(path, mode, exc, progress, lock_timeout, applied=apply)
    try:
        return _carry_out(offline, mode, progress, applied=apply)
    finally:
        offline.store.close()


def _carry_out(
    offline: OfflineStore, mode: RecoveryMode, progress: Progress, *, applied: bool
) -> RecoveryPlan:
    store, fs = offline.store, offline.fs
    opened = store.open_report
    transactions = [
        InDoubtTransaction(txn_id=t.txn_id, resolution="roll_forward", files=t.files)
        for t in opened.rolled_forward
    ]
    if opened.undecided:
        transactions.append(
            InDoubtTransaction(txn_id="(undecided)", resolution="abort", files=opened.undecided)
        )
    infos = store.checkpoints()
    checks: list[CheckpointCheck] = []
    for info in progress(infos, label="verifying checkpoints", total=len(infos)):
        with contextlib.suppress(NotFoundError):  # dropped by a fold of its chain meanwhile
            checks.extend(store.verify(info.id))
    bad = [c for c in checks if not c.ok]
    bad_checkpoints = [_fallback(store, c) for c in bad]
    if bad:
        store.retain(_DROP_BAD_ONLY)
    workflows = load_workflows(store, progress)
    crashed = store.detect_crashed_sessions()
    orphans = store.compact(dry_run=True).orphans_deleted
    actions = folded_writes(fs.actions)
    loss = _loss(opened.log_damage, actions, workflows)
    if loss.workflows_lost:
        status: Status = "unrecoverable"
    elif actions:
        status = "repaired" if applied else "needs_repair"
    else:
        status = "clean"
    return RecoveryPlan(
        store=store.path,
        mode=mode,
        strategy=STRATEGIES[mode],
        applied=applied,
        status=status,
        refused=None,
        estimated_loss=loss,
        log_damage=tuple(relative_damage(store.path, d) for d in opened.log_damage),
        transactions=tuple(transactions),
        bad_checkpoints=tuple(bad_checkpoints),
        workflows=tuple(workflows),
        crashed_sessions=tuple(crashed),
        orphaned_files=tuple(f"checkpoints/{name}" for name in orphans),
        actions=tuple(actions),
    )


def _fallback(store: LocalStore, check: CheckpointCheck) -> BadCheckpoint:
    info = check.checkpoint
    suggestion = store.recovery_suggestions(info.workflow_id)
    fallback = suggestion.recommended.id if suggestion.recommended is not None else None
    return BadCheckpoint(
        checkpoint_id=info.id,
        workflow_id=info.workflow_id,
        problem=check.problem or "does not read",
        fallback=fallback,
    )


def load_workflows(store: LocalStore, progress: Progress = quiet) -> list[WorkflowRecovery]:
    """Build every workflow of ``store``: which load, and why the others do not (a
    ``CorruptionError``: no readable checkpoint and log rebuild it)."""
    ids = store.list_workflows()
    found = []
    for workflow_id in progress(ids, label="loading workflows", total=len(ids)):
        try:
            store.load(workflow_id)
        except CorruptionError as exc:
            found.append(WorkflowRecovery(workflow_id=workflow_id, recoverable=False,
                                          problem=str(exc)))  # fmt: skip
        except NotFoundError:
            continue  # deleted by another process meanwhile
        else:
            found.append(WorkflowRecovery(workflow_id=workflow_id, recoverable=True))
    return found


def _loss(
    damage: tuple[LogDamage, ...],
    actions: list[RepairAction],
    workflows: list[WorkflowRecovery],
) -> DataLoss:
    torn = sum(d.length for d in damage if d.kind in ("torn_tail", "torn_segment"))
    damaged = sum(d.length for d in damage if d.kind == "corruption")
    set_aside_dir = os.path.join(WAL_DIR, QUARANTINE_DIR) + os.sep
    set_aside = sum(1 for a in actions if a.kind == "rename" and a.to.startswith(set_aside_dir))
    return DataLoss(
        torn_bytes=torn,
        damaged_bytes=damaged,
        segments_set_aside=set_aside,
        workflows_lost=tuple(w.workflow_id for w in workflows if not w.recoverable),
    )


def _refused(
    path: str,
    mode: RecoveryMode,
    exc: CorruptionError,
    progress: Progress,
    lock_timeout: float,
    *,
    applied: bool,
) -> RecoveryPlan:
    alternatives = []
    if mode in ("tolerate_torn_tail", "absolute"):
        for other in ("point_in_time", "skip_corrupted"):
            try:
                plan = plan_recovery(path, mode=other, progress=progress, lock_timeout=lock_timeout)
            except CorruptionError as again:
                alternatives.append(ModeOption(mode=other, refused=str(again), loss=None))
            else:
                alternatives.append(ModeOption(mode=other, refused=plan.refused,
                                               loss=plan.estimated_loss))  # fmt: skip
    nothing = DataLoss(torn_bytes=0, damaged_bytes=0, segments_set_aside=0, workflows_lost=())
    return RecoveryPlan(
        store=os.path.normpath(path),
        mode=mode,
        strategy=STRATEGIES[mode],
        applied=applied,
        status="unrecoverable",
        refused=str(exc),
        estimated_loss=nothing,
        log_damage=(),
        transactions=(),
        bad_checkpoints=(),
        workflows=(),
        crashed_sessions=(),
        orphaned_files=(),
        actions=(),
        alternatives=tuple(alternatives),
    )
