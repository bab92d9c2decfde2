"""The operator's reports as text: what ``python -m wfstate`` prints without ``--json``.

Each function turns one report value into lines for a terminal. They only format: every figure
comes from the report (the same value ``--json`` prints), so text and JSON never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from wfstate.checkpointreports import CompactionReport
from wfstate.inspection import Inspection
from wfstate.recoveryplan import DataLoss, RecoveryPlan
from wfstate.repairfs import RepairAction
from wfstate.retention import RetentionPlan
from wfstate.verification import VerifyReport

__all__ = [
    "compaction_text",
    "inspection_text",
    "recovery_text",
    "verify_text",
]

_STATUS = {
    "clean": "CLEAN: nothing to repair",
    "needs_repair": "NEEDS REPAIR: run again with --apply to carry out the actions below",
    "repaired": "REPAIRED: the actions below were carried out",
    "unrecoverable": "UNRECOVERABLE in this mode: read below what is lost or refused",
}


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _plural(n: int, word: str, many: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def action_text(action: RepairAction) -> str:
    """One repair action as a line."""
    if action.kind == "write":
        return f"write {action.path} ({_plural(action.size, 'byte')})"
    if action.kind == "truncate":
        cut = action.from_size - action.size
        return f"truncate {action.path} from {action.from_size} to {action.size} bytes ({cut} cut)"
    if action.kind == "rename":
        return f"rename {action.path} -> {action.to}"
    if action.kind == "quarantine":
        return f"quarantine {action.path} ({_plural(action.size, 'byte')}) -> {action.to}"
    return f"{action.kind} {action.path}"


def _loss_text(loss: DataLoss) -> str:
    parts = []
    if loss.torn_bytes:
        parts.append(
            f"{_plural(loss.torn_bytes, 'torn byte')} cut from the end of the log (never "
            "synced: not acknowledged under durability 'always')"
        )
    if loss.damaged_bytes:
        parts.append(f"{_plural(loss.damaged_bytes, 'damaged byte')} of durable log skipped or cut")
    if loss.segments_set_aside:
        parts.append(f"{_plural(loss.segments_set_aside, 'segment')} set aside in wal/quarantine/")
    if loss.workflows_lost:
        parts.append(f"workflows that cannot be rebuilt: {', '.join(loss.workflows_lost)}")
    return "; ".join(parts) if parts else "none"


def recovery_text(plan: RecoveryPlan) -> list[str]:
    """A recovery plan, or the report of one applied."""
    what = "recovery report" if plan.applied else "recovery plan (nothing was changed)"
    lines = [
        f"wfstate {what}: {plan.store}",
        f"mode: {plan.mode} ({plan.strategy})",
        f"status: {_STATUS[plan.status]}",
    ]
    if plan.refused is not None:
        lines.append(f"refused: {plan.refused}")
        lines.append("nothing was changed. Other modes:")
        for option in plan.alternatives:
            if option.refused is not None or option.loss is None:
                lines.append(f"  --mode {option.mode}: refused too ({option.refused})")
            else:
                lines.append(f"  --mode {option.mode}: would lose {_loss_text(option.loss)}")
        return lines
    lines.append(f"estimated data loss: {_loss_text(plan.estimated_loss)}")
    lines.append("log damage:" if plan.log_damage else "log damage: none")
    for d in plan.log_damage:
        lines.append(
            f"  {d.kind.replace('_', ' ')}: {d.path} at offset {d.offset}, "
            f"{_plural(d.length, 'byte')} ({d.reason})"
        )
    lines.append("transactions in doubt:" if plan.transactions else "transactions in doubt: none")
    for t in plan.transactions:
        if t.resolution == "roll_forward":
            lines.append(f"  {t.txn_id}: decided, roll forward: {', '.join(t.files)}")
        else:
            lines.append(
                f"  never decided, abort (temp files to quarantine/): {', '.join(t.files)}"
            )
    if plan.bad_checkpoints:
        lines.append("checkpoints that do not read (dropped, files kept in quarantine/):")
    else:
        lines.append("checkpoints that do not read: none")
    for b in plan.bad_checkpoints:
        fallback = b.fallback or "the log alone"
        lines.append(
            f"  {b.checkpoint_id} of {b.workflow_id}: {b.problem}; falls back to {fallback}"
        )
    ok = sum(1 for w in plan.workflows if w.recoverable)
    lines.append(f"workflows: {ok} recoverable, {len(plan.workflows) - ok} not")
    for w in plan.workflows:
        if not w.recoverable:
            lines.append(f"  {w.workflow_id}: cannot be rebuilt: {w.problem}")
    if plan.crashed_sessions:
        lines.append("crashed sessions (take over with resume_session):")
    else:
        lines.append("crashed sessions: none")
    for crashed in plan.crashed_sessions:
        s = crashed.session
        lines.append(f"  {s.id} of user {s.user!r}, started {_when(s.started)}")
        for left in crashed.workflows:
            doubt = ", ".join(left.in_doubt) or "none"
            lines.append(
                f"    {left.workflow_id}: last completed step {left.last_completed or '-'}; "
                f"in doubt: {doubt}; action: {left.action.replace('_', ' ')}"
            )
    if plan.orphaned_files:
        lines.append(f"orphaned files (removed by `compact`): {', '.join(plan.orphaned_files)}")
    lines.append(f"actions ({len(plan.actions)}):" if plan.actions else "actions: none")
    lines.extend(f"  {action_text(a)}" for a in plan.actions)
    return lines


def verify_text(report: VerifyReport) -> list[str]:
    """A verify report."""
    status = {
        "clean": "CLEAN",
        "needs_repair": "NEEDS REPAIR (see `recover`)",
        "unrecoverable": "UNRECOVERABLE without a salvage mode (see `recover`)",
    }[report.status]
    lines = [f"wfstate verify: {report.store}", f"status: {status}"]
    lines.append("log damage:" if report.log_damage else "log: every record verifies")
    for d in report.log_damage:
        lines.append(
            f"  {d.kind.replace('_', ' ')}: {d.path} at offset {d.offset}, "
            f"{_plural(d.length, 'byte')} ({d.reason})"
        )
    if report.open_refused is not None:
        lines.append(f"the store does not open in the default mode: {report.open_refused}")
        return lines
    lines.append(f"pending repairs at the next open: {len(report.pending_repairs)}")
    lines.extend(f"  {action_text(a)}" for a in report.pending_repairs)
    checks: Sequence[tuple[str, int, int]] = (
        ("checkpoints", report.checkpoints_checked, len(report.checkpoint_problems)),
        ("workflows", report.workflows_checked, len(report.workflow_problems)),
        ("state files", report.state_files_checked, -1),
        ("session files", report.session_files_checked, -1),
    )
    for label, checked, bad in checks:
        lines.append(f"{label}: {checked} checked" + (f", {bad} with problems" if bad >= 0 else ""))
    lines.append(f"damaged files: {len(report.file_problems)}")
    for p in (*report.checkpoint_problems, *report.workflow_problems, *report.file_problems):
        lines.append(f"  {p.path}: {p.problem}")
    return lines


def inspection_text(found: Inspection) -> list[str]:
    """An inspection of the store."""
    st = found.stats
    lines = [
        f"wfstate store: {found.store}",
        f"log: LSN {st.log_first_lsn}..{st.last_lsn} in {_plural(st.log_segments, 'segment')}, "
        f"{st.log_bytes} bytes; {_plural(st.uncovered_batches, 'batch', 'batches')} beyond "
        "the newest checkpoints",
        f"checkpoints: {st.checkpoints} ({st.checkpoint_bytes} bytes)"
        + (f", {len(st.bad_checkpoints)} bad" if st.bad_checkpoints else ""),
        f"pending repairs at the next open: {found.pending_repairs}",
        f"workflows ({len(found.workflows)}):",
    ]
    for w in found.workflows:
        if w.problem is not None:
            lines.append(f"  {w.workflow_id}: does not load: {w.problem}")
            continue
        steps = ", ".join(f"{n} {status}" for status, n in sorted(w.steps.items())) or "no steps"
        lines.append(
            f"  {w.workflow_id} {w.name!r}: {w.status}; steps: {steps}; last LSN {w.last_lsn}; "
            f"{_plural(w.checkpoints, 'checkpoint')}"
        )
    lines.append(f"sessions ({len(found.sessions)}):")
    for s in found.sessions:
        lines.append(
            f"  {s.id} of {s.user!r}: {s.status}, started {_when(s.started)}, ended "
            f"{_when(s.ended)}; workflows: {', '.join(s.workflows) or '-'}"
        )
    lines.append(f"checkpoints ({len(found.checkpoints)}, newest first):")
    for c in found.checkpoints:
        kind = "incremental" if c.parent else "full"
        lines.append(
            f"  {c.id} of {c.workflow_id} at LSN {c.lsn}: {c.type}, {kind}, {c.size} bytes, "
            f"{_when(c.created)}" + (f", tags {', '.join(c.tags)}" if c.tags else "")
        )
    lines.append("segments:")
    for seg in found.segments:
        lines.append(f"  {seg.name}: {seg.bytes} bytes from LSN {seg.first_lsn}")
    return lines


def compaction_text(retained: RetentionPlan, compacted: CompactionReport) -> list[str]:
    """What ``compact`` did (or, with ``--dry-run``, would do)."""
    verb = "would" if compacted.dry_run else "did"
    dropped = ", ".join(i.id for i in retained.drop) or "none"
    folded = ", ".join(i.id for i in retained.fold) or "none"
    return [
        f"retention {verb} drop: {dropped} ({retained.bytes_dropped} bytes); fold: {folded}",
        f"compaction {verb} checkpoint: {', '.join(compacted.checkpointed) or 'none'}",
        f"segments discarded: {', '.join(compacted.segments_discarded) or 'none'}",
        f"orphaned checkpoint files deleted: {', '.join(compacted.orphans_deleted) or 'none'}",
        f"sessions forgotten: {', '.join(compacted.sessions_forgotten) or 'none'}",
        f"the log now starts at LSN {compacted.log_first_lsn}",
    ]
