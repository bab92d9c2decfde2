"""What is in a store: ``python -m wfstate inspect``. Changes nothing.

The store is opened on a shadow (:func:`wfstate.offline.open_read_only`), so inspecting a store
that needs recovery shows it as recovery will leave it, and says how many repairs are pending.
"""

from __future__ import annotations

import os

import msgspec

from wfstate.checkpointindex import CheckpointInfo
from wfstate.checkpointreports import StoreStats
from wfstate.errors import CorruptionError, NotFoundError
from wfstate.format import WAL_DIR, parse_segment_name
from wfstate.offline import DEFAULT_LOCK_TIMEOUT, open_read_only
from wfstate.progress import Progress, quiet
from wfstate.repairfs import folded_writes
from wfstate.sessions import SessionInfo

__all__ = ["Inspection", "LogSegment", "WorkflowSummary", "inspect_store"]


class WorkflowSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow: its status, steps by status, last LSN; ``problem`` if it does not load."""

    workflow_id: str
    name: str = ""
    status: str = ""
    steps: dict[str, int] = msgspec.field(default_factory=dict)
    last_lsn: int = 0
    checkpoints: int = 0
    problem: str | None = None


class LogSegment(msgspec.Struct, frozen=True, kw_only=True):
    """A segment file of the log: its name, sequence number, first LSN and size in bytes."""

    name: str
    seq: int
    first_lsn: int
    bytes: int


class Inspection(msgspec.Struct, frozen=True, kw_only=True):
    """The store's workflows, sessions, checkpoints (newest first), log segments and sizes;
    ``pending_repairs``: how many changes recovery would make at the next open."""

    store: str
    stats: StoreStats
    workflows: tuple[WorkflowSummary, ...]
    sessions: tuple[SessionInfo, ...]
    checkpoints: tuple[CheckpointInfo, ...]
    segments: tuple[LogSegment, ...]
    pending_repairs: int


def inspect_store(
    path: str, *, progress: Progress = quiet, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> Inspection:
    """Describe the store at ``path``; ``NotFoundError`` if it is not one, ``CorruptionError``
    if it cannot be opened without a salvage recovery mode (``recover`` says more)."""
    offline = open_read_only(path, lock_timeout=lock_timeout)
    store = offline.store
    try:
        checkpoints = store.checkpoints()
        per_workflow: dict[str, int] = {}
        for info in checkpoints:
            per_workflow[info.workflow_id] = per_workflow.get(info.workflow_id, 0) + 1
        ids = store.list_workflows()
        workflows = []
        for workflow_id in progress(ids, label="workflows", total=len(ids)):
            count = per_workflow.get(workflow_id, 0)
            try:
                state = store.load(workflow_id)
            except (CorruptionError, NotFoundError) as exc:
                workflows.append(WorkflowSummary(workflow_id=workflow_id, checkpoints=count,
                                                 problem=str(exc)))  # fmt: skip
                continue
            steps: dict[str, int] = {}
            for step in state.workflow.steps:
                steps[step.status] = steps.get(step.status, 0) + 1
            workflows.append(
                WorkflowSummary(
                    workflow_id=workflow_id,
                    name=state.workflow.name,
                    status=state.workflow.status,
                    steps=steps,
                    last_lsn=state.metadata.last_lsn,
                    checkpoints=count,
                )
            )
        wal = os.path.join(store.path, WAL_DIR)
        segments = []
        for name in offline.fs.listdir(wal):
            parsed = parse_segment_name(name)
            if parsed is not None:
                size = offline.fs.file_size(os.path.join(wal, name))
                segments.append(LogSegment(name=name, seq=parsed[0], first_lsn=parsed[1],
                                           bytes=size))  # fmt: skip
        return Inspection(
            store=store.path,
            stats=store.stats(),
            workflows=tuple(workflows),
            sessions=tuple(store.sessions()),
            checkpoints=tuple(checkpoints),
            segments=tuple(segments),
            pending_repairs=len(folded_writes(offline.fs.actions)),
        )
    finally:
        store.close()
